"""Relaying a client's request to the replica that fills the file it asks for.

With fill leases (server.advertise_url), one replica fills a cold file and the others relay what
only that replica can answer while it fills (the Xet CAS routes: its fill knows the file's terms
and which chunks are verified). The client's Host goes along, so URLs in the answer name what
the client called, and the peer header keeps the holder from forwarding again.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from mirror.hub.appkeys import REPLICAS
from mirror.hub.resolve import cut

log = logging.getLogger(__name__)

# Content-Length is set from the answer's own, below.
RELAYED = ("Content-Type", "Content-Range", "Accept-Ranges", "Cache-Control", "Retry-After", "X-Error-Code",
           "X-Error-Message")  # fmt: skip


async def forwarded(request: web.Request, holder: str) -> web.StreamResponse | None:
    """The answer of the replica at `holder` to this same request (it fills the file), relayed; None
    when it cannot be reached. The Host goes along, so the URLs it answers name what the client
    called, and the peer header keeps it from forwarding again."""
    headers = {"Host": request.host}
    for name in ("Authorization", "Range"):
        if name in request.headers:
            headers[name] = request.headers[name]
    # The same method: a HEAD relayed as a GET would put the holder's body on the client's connection.
    resp = await request.app[REPLICAS].forward(holder, request.method, request.rel_url.raw_path_qs, headers)
    if resp is None:
        return None
    async with resp:
        relayed = {name: resp.headers[name] for name in RELAYED if name in resp.headers}
        response = web.StreamResponse(status=resp.status, headers=relayed)
        if resp.content_length is not None:
            response.content_length = resp.content_length
        try:
            await response.prepare(request)
            async for piece in resp.content.iter_chunked(1024 * 1024):
                await response.write(piece)
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.info("relaying %s from replica %s stopped: %s", request.rel_url.path, holder, exc)
            cut(request)
        return response
