"""App factory: wires config, upstream client, storage, cache and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from mirror.config import Config
from mirror.errors import StorageError
from mirror.hub.errors import hub_errors
from mirror.hub.routes import add_routes
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
    services = Services.build(config, storage, Upstream(config.upstream, session))
    app[SERVICES] = services
    try:
        yield
    finally:
        await services.filler.close()
        await session.close()
        await storage.close()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    try:
        await services.storage.check_writable()
    except StorageError as exc:
        return web.json_response({"status": "unready", "storage": exc.message}, status=503)
    return web.json_response({"status": "ready", "storage": "ok"})


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[hub_errors], client_max_size=16 * 1024 * 1024)
    app[CONFIG] = config
    app.cleanup_ctx.append(_lifetime)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    add_routes(app)
    return app
