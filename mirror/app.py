"""App factory: wires config, upstream client, storage, cache and routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from mirror.admin.routes import SCHEDULER, SYNC, add_admin_routes
from mirror.cache.blobs.peers import Peers
from mirror.config import Config
from mirror.hub.errors import hub_errors
from mirror.hub.observe import observe
from mirror.hub.routes import add_routes
from mirror.lifecycle import Drain
from mirror.metrics import Metrics
from mirror.ops import add_ops_routes, measure_storage, probe_upstream
from mirror.services import SERVICES, Services
from mirror.storage import LocalStorage, Storage
from mirror.storage.s3 import S3Storage
from mirror.sync.jobs import SyncManager
from mirror.sync.scheduler import Scheduler
from mirror.upstream import Upstream

CONFIG = web.AppKey("config", Config)
DRAIN = web.AppKey("drain", Drain)
STORAGE = web.AppKey("storage", Storage)


def build_storage(config: Config) -> Storage:
    storage = config.storage
    if storage.backend == "s3":
        return S3Storage(
            storage.s3_bucket,
            endpoint=storage.s3_endpoint or None,
            prefix=storage.s3_prefix,
            region=storage.s3_region,
            part_size=storage.s3_part_size,
            stale_upload_age=storage.s3_stale_upload_age,
            max_concurrency=storage.s3_max_concurrency,
            parts_in_flight=storage.s3_parts_in_flight,
            presigned_redirects=storage.s3_presigned_redirects,
            presigned_expiry=storage.s3_presigned_expiry,
            public_endpoint=storage.s3_public_endpoint or None,
        )
    return LocalStorage(config.cache_dir)


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    storage = app[STORAGE] if STORAGE in app else build_storage(config)
    await storage.start()
    session = Upstream.new_session(config.upstream)
    peer_session = None
    if config.server.advertise_url:
        peer_session = Peers.new_session(config.upstream.connect_timeout, config.upstream.read_timeout)
    services = Services.build(config, storage, Upstream(config.upstream, session, Metrics()), peer_session)
    app[SERVICES] = services
    measurer = asyncio.create_task(measure_storage(services), name="measure-storage")
    prober = None
    if config.upstream.probe_interval > 0:
        prober = asyncio.create_task(probe_upstream(services, config.upstream.probe_interval), name="probe-upstream")
    sync = SyncManager(services, services.allowlist, services.pins)
    scheduler = Scheduler(sync, services.allowlist, services.records, config.sync, services.metrics)
    app[SYNC], app[SCHEDULER] = sync, scheduler
    sync.start()
    if config.sync.enabled:
        scheduler.start()
    try:
        yield
    finally:
        for task in (measurer, prober):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (measurer, prober) if t is not None), return_exceptions=True)
        await scheduler.close()
        await sync.close()
        # Verified blobs being published may finish within the shutdown grace; the rest is cut.
        await services.filler.close(app[DRAIN].remaining())
        await app[DRAIN].close()
        # Background revalidations use the upstream session: end them before it closes.
        await services.revisions.close()
        await services.metadata.close()
        await services.policy.close()
        await session.close()
        if peer_session is not None:
            await peer_session.close()
        await storage.close()


def create_app(config: Config, storage: Storage | None = None) -> web.Application:
    """The mirror's app; `storage` replaces the configured backend (tests wrap one to inject faults)."""
    drain = Drain(config.server.shutdown_grace)
    # observe is outermost so it sees the status hub_errors produced.
    app = web.Application(middlewares=[drain.track, observe, hub_errors], client_max_size=16 * 1024 * 1024)
    app[CONFIG] = config
    app[DRAIN] = drain
    app.on_shutdown.append(drain.begin)
    if storage is not None:
        app[STORAGE] = storage
    app.cleanup_ctx.append(_lifetime)
    add_ops_routes(app)
    add_admin_routes(app)
    add_routes(app)  # the catch-all Hub routes come last
    return app
