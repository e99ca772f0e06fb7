"""Operations endpoints and background measurements: /healthz, /readyz, /metrics, storage usage."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mirror.admin.routes import is_admin
from mirror.errors import StorageError
from mirror.services import SERVICES, Services

log = logging.getLogger(__name__)

STORAGE_SCAN_INTERVAL = 60.0
UPSTREAM_PROBE_TTL = 10.0


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
    services = request.app[SERVICES]
    storage_error: str | None = None
    try:
        await services.storage.check_writable()
    except StorageError as exc:
        storage_error = exc.message
    ready = storage_error is None
    body: dict[str, object] = {
        "status": "ready" if ready else "unready",
        "storage": "ok" if ready else "unavailable",
        "upstream": "reachable" if await upstream_reachable(services) else "unreachable",
    }
    if is_admin(request):
        body.update({"config": "loaded", "storage_backend": services.storage.name, "storage": storage_error or "ok"})
    return web.json_response(body, status=200 if ready else 503)


async def upstream_reachable(services: Services, cached: bool = True) -> bool:
    """A cheap probe of the upstream origin, remembered for a few seconds (unless `cached` is False)."""
    now = time.monotonic()
    last = services.upstream_probe
    if cached and last is not None and now - last[1] < UPSTREAM_PROBE_TTL:
        return last[0]
    try:
        async with services.upstream.session.get(
            services.upstream.url("/api/agent-harnesses"),
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=3),
        ) as resp:
            reachable = resp.status < 500
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        reachable = False
    services.upstream_probe = (reachable, now)
    services.upstream.record_outcome(reachable)
    return reachable


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[SERVICES].metrics.registry
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def measure_storage(services: Services) -> None:
    """Keep the storage gauges current; a scan of the blob store every minute."""
    while True:
        try:
            count, total = await services.storage.usage("blobs/")
            services.metrics.storage_blobs.labels(services.storage.name).set(count)
            services.metrics.storage_bytes.labels(services.storage.name).set(total)
            services.metrics.storage_scan_timestamp.set(time.time())
        except (StorageError, OSError) as exc:
            log.warning("cannot measure storage usage: %s", exc)
        await asyncio.sleep(STORAGE_SCAN_INTERVAL)


async def probe_upstream(services: Services, interval: float) -> None:
    """Keep hub_mirror_upstream_up true on a quiet mirror: probe when traffic has said nothing.

    Client traffic feeds the breaker (and so the gauge) already; a probe is sent only when no
    upstream outcome was seen for `interval` seconds, so a busy mirror sends none.
    """
    while True:
        last = services.upstream.last_outcome_at
        if last is None or time.monotonic() - last >= interval:
            try:
                await upstream_reachable(services, cached=False)
            except Exception:  # a probe must never end the loop
                log.exception("upstream probe failed")
        last = services.upstream.last_outcome_at or time.monotonic()
        await asyncio.sleep(max(1.0, last + interval - time.monotonic()))


def add_ops_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
