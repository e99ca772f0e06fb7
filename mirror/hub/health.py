"""Operations endpoints and background measurements: /healthz, /readyz, /metrics, storage usage."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mirror.cache import keys
from mirror.errors import StorageError
from mirror.hub.appkeys import CONFIG, METRICS, STORAGE, UPSTREAM
from mirror.metrics import Metrics
from mirror.storage import Storage
from mirror.tokens import is_token
from mirror.upstream import Upstream

log = logging.getLogger(__name__)

STORAGE_SCAN_INTERVAL = 60.0


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and serving HTTP."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when storage is reachable and writable; upstream is reported, not required.

    Cached data keeps being served while upstream is down, so taking the mirror out of a load
    balancer for an upstream outage would only make things worse.

    Anyone may probe, so the plain answer says only ready or not, storage ok or not, upstream
    reachable or not. Storage errors name the endpoint, bucket and prefix; they are shown only to
    a caller with the admin token.
    """
    storage = request.app[STORAGE]
    storage_error: str | None = None
    try:
        await storage.check_writable()
    except StorageError as exc:
        storage_error = exc.message
    ready = storage_error is None
    body: dict[str, object] = {
        "status": "ready" if ready else "unready",
        "storage": "ok" if ready else "unavailable",
        "upstream": "reachable" if await request.app[UPSTREAM].probe() else "unreachable",
    }
    if is_token(request.headers.get("Authorization"), request.app[CONFIG].admin.token):
        body.update({"config": "loaded", "storage_backend": storage.name, "storage": storage_error or "ok"})
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS].registry
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def measure_storage(storage: Storage, metrics: Metrics) -> None:
    """Keep the storage gauges current; a scan of the blob store every minute."""
    while True:
        try:
            count, total = await storage.usage(keys.BLOBS)
            metrics.storage_blobs.labels(storage.name).set(count)
            metrics.storage_bytes.labels(storage.name).set(total)
            metrics.storage_scan_timestamp.set(time.time())
        except (StorageError, OSError) as exc:
            log.warning("cannot measure storage usage: %s", exc)
        await asyncio.sleep(STORAGE_SCAN_INTERVAL)


async def probe_upstream(upstream: Upstream, interval: float) -> None:
    """Keep hub_mirror_upstream_up true on a quiet mirror: probe when traffic has said nothing.

    Client traffic feeds the breaker (and so the gauge) already; a probe is sent only when no
    upstream outcome was seen for `interval` seconds, so a busy mirror sends none.
    """
    while True:
        last = upstream.last_outcome_at
        if last is None or time.monotonic() - last >= interval:
            try:
                await upstream.probe(cached=False)
            except Exception:  # a probe must never end the loop
                log.exception("upstream probe failed")
        last = upstream.last_outcome_at or time.monotonic()
        await asyncio.sleep(max(1.0, last + interval - time.monotonic()))


def add_health_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
