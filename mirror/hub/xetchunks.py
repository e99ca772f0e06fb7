"""The chunk route of the mirror's Xet CAS: `GET /xet/chunks/{blob}/{terms}` (hub/xetserve.py).

A URL names a run of the file's terms ("3+7+9": a xorb's touching chunk ranges, merged in the
reconstruction) and is signed by the mirror, as a CAS's xorb URLs are. The chunks go out each
behind its 8-byte header, stored uncompressed, from:

- the cached, verified blob, once the file is cached (its split record says where each term is);
- the running fill, once every byte of the run is written and verified on its own
  (cache/blobs/xetplan.py), the request waiting up to COLD_WAIT, then 503 + Retry-After;
- the replica filling the file (relayed, hub/relay.py), or, without fill leases, storage once that
  replica published it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiohttp import web

from mirror.cache import keys
from mirror.cache.blobs.blobs import BlobBody
from mirror.cache.blobs.fill import Fill
from mirror.cache.blobs.xetplan import PlannedTerm
from mirror.errors import Forbidden, NotFound, NotReady
from mirror.hub.appkeys import ACCESS, FILLER, RECORDS, REPLICAS, STORAGE, XET_SECRET
from mirror.hub.ranges import parse_range
from mirror.hub.relay import forwarded
from mirror.hub.resolve import send_body
from mirror.metrics import current_stats
from mirror.replicas import PEER_HEADER
from mirror.repo import OID_RE
from mirror.xet import tokens
from mirror.xet.format import HEADER_SIZE, stored_chunk_header

COLD_WAIT = 30.0  # seconds a request waits for a fill's first answer or for verified chunks, before 503
PUBLISH_POLL = 0.5  # seconds between looks for a blob another replica is filling
PUBLISH_GRACE = 2.0  # seconds a blob whose split record exists may take to appear (its publish)


def plan_of(fill: Fill) -> list[PlannedTerm] | None:
    """The terms of the file a fill is fetching, once it knows them (only Xet fills do)."""
    return fill.xet_body.plan if fill.xet_body is not None else None


async def split_terms(request: web.Request, etag: str) -> list[dict[str, Any]] | None:
    """The terms of a cached blob's split record (written once the blob was verified), as stored."""
    record = await request.app[RECORDS].get(keys.xet_terms_key(etag)) if OID_RE.fullmatch(etag) else None
    terms = record.get("terms") if isinstance(record, dict) else None
    return terms if isinstance(terms, list) and terms else None


# Terms one chunk URL may name: ~9 bytes each keeps it well inside aiohttp's 8 KiB request line.
MAX_RUN = 256


async def handle_chunks(request: web.Request, etag: str, run_text: str) -> web.StreamResponse:
    """The chunks of a run of terms (indexes joined by "+", as the reconstruction named them), each
    behind its 8-byte header (uncompressed): from the cached blob, or, while the file's fill runs,
    from the fill once every byte of the run is verified."""
    secret = await request.app[XET_SECRET].get()
    path = f"/xet/chunks/{etag}/{run_text}"
    query = request.rel_url.query
    if not tokens.path_signed(secret, path, query.get("expires", ""), query.get("sig", "")):
        raise Forbidden("this chunk URL is not signed by this mirror, or has expired: ask for a new reconstruction")
    parts = run_text.split("+")
    valid = len(parts) <= MAX_RUN and all(p.isascii() and p.isdigit() and len(p) < 9 for p in parts)
    if not valid or not OID_RE.fullmatch(etag):
        raise NotFound("no such chunk range")
    run = [int(p) for p in parts]
    blob_key = keys.blob_key(etag)
    for attempt in range(2):  # a fill that ends while this request waits leaves the blob to storage
        recorded = await split_terms(request, etag)
        if recorded is not None and max(run) < len(recorded) and await request.app[STORAGE].stat(blob_key) is not None:
            if any(PlannedTerm.from_record(recorded[i]) is None for i in run):
                raise NotFound(f"the split record of {etag} is damaged: download the file over HTTP")
            spans = [(recorded[i]["offset"], recorded[i]["lengths"]) for i in run]
            release = await request.app[ACCESS].begin_read(blob_key)
            try:
                storage = request.app[STORAGE]
                body = _joined(storage.read_range(blob_key, first, first + sum(lengths)) for first, lengths in spans)
                return await _send_chunks(request, body, [n for _, lengths in spans for n in lengths], "hit")
            finally:
                release()
        fill = request.app[FILLER].running(blob_key)
        plan = plan_of(fill) if fill is not None else None
        if plan is not None and max(run) >= len(plan):
            raise NotFound("no such chunk range")
        if fill is None or plan is None:
            # Not in storage, and not filling here: the replica holding its fill lease serves it
            # while filling; without one (or unreachable), it serves here once published. A split
            # record is written just before its blob is published: with one, the blob is about to
            # appear (a short wait), or it left the cache.
            holder = await request.app[FILLER].holder(blob_key)
            if holder is not None and request.app.get(REPLICAS) is not None and PEER_HEADER not in request.headers:
                answer = await forwarded(request, holder.url)
                if answer is not None:
                    return answer
            wait = COLD_WAIT if recorded is None else PUBLISH_GRACE
            if attempt == 0 and await _published(request, etag, wait):
                continue
            if recorded is not None:
                raise NotFound("the file holding these chunks left the cache: ask for a new reconstruction")
            raise NotReady("these chunks are not cached yet: ask again, or ask for a new reconstruction")
        planned = [plan[i] for i in run]
        deadline = time.monotonic() + COLD_WAIT
        while not fill.done and not all(fill.xet_verified(t.offset, t.last) for t in planned):
            if time.monotonic() >= deadline:
                raise NotReady("these chunks are being fetched from upstream; ask again shortly")
            await fill.wait_progress(deadline - time.monotonic())
        if fill.done:
            if fill.error is not None and not fill.verified:
                raise fill.error
            continue
        assert fill.xet_body is not None
        lengths: list[int] = []
        for term in planned:
            found = fill.xet_body.chunk_map.lengths(term.offset, term.last) or []
            if len(found) != term.end - term.start:
                raise NotReady(f"the upstream's chunks of {etag} do not match its reconstruction yet")
            lengths += found
        body = _joined(fill.stream(t.offset, t.last, hold_last=False) for t in planned)
        return await _send_chunks(request, body, lengths, "miss")
    raise NotFound("the file holding these chunks left the cache: ask for a new reconstruction")


async def _joined(bodies: Iterable[AsyncIterator[bytes]]) -> AsyncIterator[bytes]:
    """The bodies one after another, each opened only when the one before it ended."""
    for body in bodies:
        async with contextlib.aclosing(body) as pieces:
            async for piece in pieces:
                yield piece


async def _published(request: web.Request, etag: str, wait: float) -> bool:
    """Whether the blob and its split record appear in storage within `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        if await split_terms(request, etag) is not None and await request.app[STORAGE].stat(keys.blob_key(etag)):
            return True
        if time.monotonic() + PUBLISH_POLL > deadline:
            return False
        await asyncio.sleep(PUBLISH_POLL)


async def _send_chunks(
    request: web.Request, raw: AsyncIterator[bytes], lengths: list[int], cache: str
) -> web.StreamResponse:
    """Send the run's bytes (`raw`) as its chunks, or the part of them the request's Range names."""
    encoded = HEADER_SIZE * len(lengths) + sum(lengths)
    span = parse_range(request.headers.get("Range"), encoded)
    start, end = span if span else (0, encoded)
    headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
    if span:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{encoded}"
    response = web.StreamResponse(status=206 if span else 200, headers=headers)
    response.content_length = end - start
    stats = current_stats()
    if stats is not None:
        stats.cache = cache
    async with contextlib.aclosing(raw):
        if request.method == "HEAD":
            with contextlib.suppress(ConnectionResetError):
                await response.prepare(request)
                await response.write_eof()
            return response
        chunks = _sliced(_framed(raw, lengths), start, end)
        await send_body(
            request, response, BlobBody(source="cache" if cache == "hit" else "fill", chunks=chunks), start, end
        )
    return response


async def _framed(raw: AsyncIterator[bytes], lengths: list[int]) -> AsyncIterator[bytes]:
    """The blob's bytes as Xet chunks: each `lengths[i]` bytes behind a header saying "stored as is"."""
    buffer = bytearray()
    pending = iter(lengths)
    want = next(pending, None)
    async for piece in raw:
        buffer += piece
        # Every whole chunk that arrived, framed, in one piece: one copy, one write.
        frames: list[bytes | memoryview] = []
        used = 0
        with memoryview(buffer) as view:
            while want is not None and len(buffer) - used >= want:
                frames += (stored_chunk_header(want), view[used : used + want])
                used += want
                want = next(pending, None)
            out = b"".join(frames) if frames else b""
            del frames  # the slices of `view` go before it is released
        del buffer[:used]
        if out:
            yield out
    if want is not None or buffer:
        raise ConnectionResetError("the cached file is shorter or longer than its recorded chunks")


async def _sliced(pieces: AsyncIterator[bytes], start: int, end: int) -> AsyncIterator[bytes]:
    pos = 0
    async for piece in pieces:
        lo, hi = max(start - pos, 0), min(end - pos, len(piece))
        pos += len(piece)
        if lo < hi:
            yield piece[lo:hi]
        if pos >= end:
            return
