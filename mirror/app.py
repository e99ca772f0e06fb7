"""App factory: wires config, upstream client, storage, cache and routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from mirror.config import Config
from mirror.hub.errors import hub_errors
from mirror.hub.observe import observe
from mirror.hub.routes import add_routes
from mirror.metrics import Metrics
from mirror.ops import add_ops_routes, measure_storage
from mirror.services import SERVICES, Services
from mirror.storage import LocalStorage, Storage
from mirror.upstream import Upstream

CONFIG = web.AppKey("config", Config)


def build_storage(config: Config) -> Storage:
    return LocalStorage(config.cache_dir)


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    storage = build_storage(config)
    await storage.start()
    session = Upstream.new_session(config.upstream)
    services = Services.build(config, storage, Upstream(config.upstream, session, Metrics()))
    app[SERVICES] = services
    measurer = asyncio.create_task(measure_storage(services), name="measure-storage")
    try:
        yield
    finally:
        measurer.cancel()
        await asyncio.gather(measurer, return_exceptions=True)
        await services.filler.close()
        await session.close()
        await storage.close()


def create_app(config: Config) -> web.Application:
    # observe is outermost so it sees the status hub_errors produced.
    app = web.Application(middlewares=[observe, hub_errors], client_max_size=16 * 1024 * 1024)
    app[CONFIG] = config
    app.cleanup_ctx.append(_lifetime)
    add_ops_routes(app)
    add_routes(app)
    return app
