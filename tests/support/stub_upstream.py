"""Small upstreams for behaviours the Hub emulator (testbed/hubemu) does not have.

`StubServer` runs an aiohttp app on 127.0.0.1 in a thread of its own (the clients under test block,
so servers never share their event loop). `HubFront` stands in front of the emulator: it answers a
few routes itself and forwards everything else as it is, rewriting links and redirects that name
the emulator so that the mirror only ever sees one upstream origin.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from testbed.hubemu import HubEmulator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "date", "server"})


class StubServer:
    def __init__(self) -> None:
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        raise NotImplementedError

    async def on_start(self) -> None:
        """Set up what the handlers need, in the server's loop, before it listens."""

    async def on_stop(self) -> None:
        """Release it, after the server stopped."""

    def __enter__(self) -> Any:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        await self.on_start()
        # A short shutdown timeout: stopping must not wait on bodies a test abandoned.
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
        await self.on_stop()

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class HubFront(StubServer):
    """The emulator behind a front that answers `routes` itself and forwards the rest."""

    def __init__(self, hub: HubEmulator, routes: dict[str, Handler] | None = None) -> None:
        super().__init__()
        self.hub = hub
        self.routes = routes or {}
        self._session: aiohttp.ClientSession | None = None

    async def on_start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def on_stop(self) -> None:
        assert self._session is not None
        await self._session.close()

    def app(self) -> web.Application:
        app = web.Application()
        for pattern, handler in self.routes.items():
            app.router.add_route("*", pattern, handler)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        return app

    async def fetch_json(self, request: web.Request, path: str) -> tuple[int, object]:
        """GET an emulator path with the caller's Authorization: (status, parsed JSON or None)."""
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        async with self._session.get(self.hub.url + path, headers=headers) as resp:
            body = await resp.read()
            return resp.status, json.loads(body) if resp.status == 200 else None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        body = await request.read()
        try:
            upstream = await self._session.request(
                request.method,
                self.hub.url + request.rel_url.raw_path_qs,
                headers=headers,
                data=body or None,
                allow_redirects=False,
            )
        except aiohttp.ClientError:
            raise web.HTTPBadGateway() from None
        async with upstream:
            out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() in HOP_BY_HOP:
                    continue
                if name.lower() in ("link", "location"):
                    value = value.replace(self.hub.url, self.url)
                out.headers.add(name, value)
            await out.prepare(request)
            if request.method != "HEAD":
                try:
                    async for chunk in upstream.content.iter_chunked(64 * 1024):
                        await out.write(chunk)
                except aiohttp.ClientError:
                    request.transport.close()  # type: ignore[union-attr]  # cut, as upstream did
                    return out
            await out.write_eof()
            return out
