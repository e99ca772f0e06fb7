"""Serving file bodies: Range handling and chunked, fault-aware streaming without copying the data."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from aiohttp import web

from .faults import BodyPlan, Faults

CHUNK = 1 << 20
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class RangeNotSatisfiable(Exception):
    pass


class RangeSource(Protocol):
    """A body too large to hold, read in pieces (a `Synthetic` file)."""

    @property
    def size(self) -> int: ...

    def pieces(self, start: int, end: int) -> Iterator[memoryview]: ...


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range to serve, or None for the whole body.

    Syntactically invalid or multi-range headers are ignored (a full 200), as RFC 9110 allows.
    """
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    return start, min(end, size - 1)


async def send_body(
    request: web.Request,
    data: bytes | RangeSource,
    headers: Mapping[str, str],
    faults: Faults,
    origin: str,
    subject: str,
) -> web.StreamResponse:
    """Answer 200/206/416 for `data`; GET bodies go out in 1 MiB memoryview slices."""
    size = len(data) if isinstance(data, bytes) else data.size
    try:
        byte_range = parse_range(request.headers.get("Range"), size)
    except RangeNotSatisfiable:
        return web.Response(
            status=416,
            headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
            content_type="text/plain",
            text="Range Not Satisfiable",
        )
    start, end = byte_range if byte_range is not None else (0, size - 1)
    resp = web.StreamResponse(status=206 if byte_range else 200, headers=headers)
    resp.headers["Accept-Ranges"] = "bytes"
    resp.headers["Content-Length"] = str(end - start + 1)
    if byte_range:
        resp.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if request.method == "HEAD" or size == 0:
        await resp.prepare(request)
        await resp.write_eof()
        return resp
    plan = faults.body_plan(origin, subject)
    await resp.prepare(request)
    parts = [memoryview(data)[start : end + 1]] if isinstance(data, bytes) else data.pieces(start, end + 1)
    await _stream(request, resp, parts, start, end + 1 - start, plan)
    return resp


async def _stream(
    request: web.Request,
    resp: web.StreamResponse,
    parts: Iterable[memoryview],
    start: int,
    length: int,
    plan: BodyPlan,
) -> None:
    """Write `length` bytes that start at file offset `start`, given as consecutive views, under `plan`."""
    step = CHUNK
    if plan.bytes_per_second:
        step = max(1, min(CHUNK, int(plan.bytes_per_second / 20)))
    limit = length if plan.drop_after is None else min(length, plan.drop_after)
    sent = 0
    try:
        for part in parts:
            used = 0
            while used < len(part) and sent < limit:
                if plan.chunk_delay:
                    await asyncio.sleep(plan.chunk_delay)
                piece: memoryview | bytearray = part[used : used + min(step, limit - sent)]
                for offset in plan.corrupt_offsets:
                    if start + sent <= offset < start + sent + len(piece):
                        piece = bytearray(piece)  # copy only the one chunk being damaged
                        piece[offset - start - sent] ^= 0xFF
                await resp.write(piece)
                sent += len(piece)
                used += len(piece)
                if plan.bytes_per_second:
                    await asyncio.sleep(len(piece) / plan.bytes_per_second)
            if sent >= limit:
                break
    except ConnectionError:
        return  # the client went away; aiohttp would log it as a server error if it escaped
    if limit < length and request.transport is not None:
        # close() (unlike abort()) flushes what was written first, so the client gets exactly
        # `limit` bytes and then EOF before Content-Length is reached.
        request.transport.close()
        return
    await resp.write_eof()
