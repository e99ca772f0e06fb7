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
from mirror.tasks import stop, within
from mirror.tokens import is_token
from mirror.upstream import Upstream

log = logging.getLogger(__name__)

STORAGE_SCAN_INTERVAL = 60.0
# How often the background check keeps hub_mirror_ready current (the alert HubMirrorUnready reads it).
READINESS_INTERVAL = 15.0
# A store that accepts connections and never answers is not ready either: the check gives up here.
READINESS_TIMEOUT = 10.0


async def check_ready(storage: Storage, metrics: Metrics) -> str | None:
    """Why storage is not ready (reachable and writable), or None; hub_mirror_ready follows the answer.

    The one decision behind both /readyz and the background check, so the metric and the endpoint
    never disagree.
    """
    try:
        await within(storage.check_writable(), READINESS_TIMEOUT)
        problem = None
    except StorageError as exc:
        problem = exc.message
    except asyncio.TimeoutError:
        problem = f"{storage.name} storage: no answer to the readiness check within {READINESS_TIMEOUT:.0f} s"
    metrics.ready.set(0 if problem else 1)
    return problem


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
    storage_error = await check_ready(storage, request.app[METRICS])
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
    """Keep the storage gauges current: readiness every 15 s, a scan of the blob store every minute.

    Two loops side by side in this one task (app.py starts and stops it), so a long scan of a big
    bucket never delays the readiness check.
    """
    loops = [asyncio.ensure_future(loop(storage, metrics)) for loop in (_scan_usage, _watch_ready)]
    try:
        await asyncio.gather(*loops)
    finally:
        await stop(*loops)


async def _watch_ready(storage: Storage, metrics: Metrics) -> None:
    """hub_mirror_ready without anyone calling /readyz; a change either way is logged once."""
    was_ready: bool | None = None
    while True:
        try:
            problem = await check_ready(storage, metrics)
        except Exception as exc:  # a check must never end the loop; an unexpected failure is unready
            log.exception("storage readiness check failed")
            metrics.ready.set(0)
            problem = repr(exc)
        if problem and was_ready is not False:
            log.warning("storage not ready (hub_mirror_ready 0): %s", problem)
        elif not problem and was_ready is False:
            log.info("storage ready again (hub_mirror_ready 1)")
        was_ready = not problem
        await asyncio.sleep(READINESS_INTERVAL)


async def _scan_usage(storage: Storage, metrics: Metrics) -> None:
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
