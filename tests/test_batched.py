"""batched(): regrouping an upstream body into chunks, for plain and chunked transfer encodings."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from mirror.upstream import batched

PIECES = [os.urandom(n) for n in (1, 70_000, 300_000, 5, 200_000)]
BODY = b"".join(PIECES)
CHUNK = 128 * 1024


async def send(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    if request.query.get("chunked"):
        resp.enable_chunked_encoding()
    else:
        resp.content_length = len(BODY)
    await resp.prepare(request)
    for piece in PIECES:
        await resp.write(piece)
    await resp.write_eof()
    return resp


@pytest.mark.parametrize("chunked", [False, True])
async def test_batched_regroups_the_whole_body(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], chunked: bool
) -> None:
    app = web.Application()
    app.router.add_get("/", send)
    client = await aiohttp_client(app)
    async with client.get("/", params={"chunked": "1"} if chunked else {}) as resp:
        assert (resp.headers.get("Transfer-Encoding") == "chunked") is chunked
        chunks = [chunk async for chunk in batched(resp.content, CHUNK)]
    assert b"".join(chunks) == BODY
    # Every chunk but the last reaches the size (the sender is fast: no chunk is cut by the wait).
    assert all(len(chunk) >= CHUNK for chunk in chunks[:-1]) and all(chunks)
