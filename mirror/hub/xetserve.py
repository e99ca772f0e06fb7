"""The mirror as its clients' Xet CAS (`hub.xet: serve`): hf_xet downloads by chunks from the cache.

The flow hf_xet follows against the Hub, with the mirror in every role:

1. The resolve HEAD of a file the upstream stores in Xet carries `X-Xet-Hash` and a `xet-auth`
   link to the mirror's `/api/{type}s/{repo}/xet-read-token/{rev}`.
2. That route checks the repo as a resolve does (allow-list, gated/private for the Hub token) and
   answers a CAS token of the mirror's own (short-lived, bound to the repo) with `casUrl` = the
   mirror's `/xet` (JSON body and the `X-Xet-*` headers older clients read).
3. `GET /xet/v1/reconstructions/{hash}` (`/v2` is 404: hf_xet falls back) answers the file's real
   terms (xorb hashes and chunk ranges, as the upstream's CAS gave them to the fill) with one
   signed URL per term, on the mirror.
4. `GET /xet/chunks/{blob}/{term}` serves the term's chunks, read from the cached, verified blob,
   each behind its 8-byte chunk header (stored uncompressed: the LAN is not the upstream link).

A file the mirror has not cached yet is filled from the upstream's CAS first (a Xet fill, which
records the file's terms once verified); the reconstruction is answered when the fill is done,
or 503 with Retry-After while it runs long. A file cached over HTTP before Xet fills were on has
no terms: its resolve does not advertise Xet, and clients download it over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp
from aiohttp import web

from mirror.cache import keys
from mirror.cache.blobs.fill import Fill
from mirror.cache.blobs.xetplan import PlannedTerm
from mirror.cache.metadata.entries import FileEntry
from mirror.errors import BadRequest, Forbidden, MethodNotAllowed, NotFound, NotReady, Unauthorized
from mirror.hub.api import mirror_origin
from mirror.hub.appkeys import (
    ACCESS,
    BLOBS,
    CONFIG,
    FILLER,
    METRICS,
    POLICY,
    RECORDS,
    REPLICAS,
    STORAGE,
    XET_SECRET,
    XET_TOKENS,
)
from mirror.hub.observe import ROUTE
from mirror.hub.paths import ApiTarget
from mirror.hub.ranges import parse_range
from mirror.hub.resolve import cut
from mirror.metrics import current_stats
from mirror.replicas import PEER_HEADER
from mirror.repo import OID_RE, RepoRef
from mirror.tokens import bearer_token
from mirror.xet import tokens
from mirror.xet.format import HEADER_SIZE, stored_chunk_header

log = logging.getLogger(__name__)

TOKEN_TTL = 900  # seconds, like the Hub's CAS tokens; hf_xet refreshes through the xet-auth route
URL_TTL = 3600
PUBLISH_POLL = 0.5  # seconds between looks for a blob another replica is filling
COLD_WAIT = 30.0  # seconds a request waits for a fill's first answer or for verified chunks, before 503


async def handle_token(request: web.Request, target: ApiTarget) -> web.Response:
    """`/api/{type}s/{repo}/xet-read-token/{rev}`: a CAS token of the mirror's, after the resolve's checks."""
    if request.method != "GET":
        raise MethodNotAllowed(request.method, ("GET",))
    token = bearer_token(request.headers.get("Authorization"))
    await request.app[POLICY].check(target.repo, token, files=True)
    expires = int(time.time()) + TOKEN_TTL
    secret = await request.app[XET_SECRET].get()
    access = tokens.issue(secret, target.repo.repo_type, target.repo.repo_id, expires)
    request.app[XET_TOKENS][access] = token
    cas_url = f"{mirror_origin(request)}/xet"
    body = {"accessToken": access, "exp": expires, "casUrl": cas_url}
    headers = {"X-Xet-Cas-Url": cas_url, "X-Xet-Access-Token": access, "X-Xet-Token-Expiration": str(expires)}
    headers["Cache-Control"] = "no-store"
    return web.json_response(body, headers=headers)


async def handle_cas(request: web.Request) -> web.StreamResponse:
    """Everything under `/xet/`: the mirror's CAS routes."""
    parts = request.rel_url.raw_path.split("/")[2:]  # after "", "xet"
    if parts == ["v1", "telemetry"] and request.method == "POST":
        return web.json_response({})
    if len(parts) == 3 and parts[0] == "v2" and parts[1] == "reconstructions":
        raise NotFound("only v1 reconstructions are served")  # hf_xet falls back to v1 on 404
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(request.method, ("GET", "HEAD"))
    if len(parts) == 3 and parts[0] == "v1" and parts[1] == "reconstructions":
        request[ROUTE] = "xet_reconstruction"
        return await _reconstruction(request, parts[2])
    if len(parts) == 3 and parts[0] == "chunks":
        request[ROUTE] = "xet_chunks"
        return await _chunks(request, parts[1], parts[2])
    raise NotFound(f"no CAS route {request.rel_url.raw_path[:200]}")


async def _reconstruction(request: web.Request, file_hash: str) -> web.StreamResponse:
    secret = await request.app[XET_SECRET].get()
    access = bearer_token(request.headers.get("Authorization")) or ""
    grant = tokens.check(secret, access)
    if grant is None:
        raise Unauthorized("missing, expired or unknown CAS token: ask xet-read-token again")
    if not OID_RE.fullmatch(file_hash):
        raise BadRequest("a file is named by its 64-character Xet hash")
    repo = RepoRef(grant.repo_type, grant.repo_id)
    where = await request.app[RECORDS].get(keys.xet_file_key(repo, file_hash))
    if not isinstance(where, dict) or not all(k in where for k in ("etag", "size", "commit", "path")):
        raise NotFound(f"no file with Xet hash {file_hash} is known in {repo.repo_id}: resolve it first")
    entry = FileEntry(repo, where["commit"], where["path"], where["etag"], where["size"], file_hash)
    answer = await _terms(request, entry, request.app[XET_TOKENS].get(access))
    if isinstance(answer, web.StreamResponse):
        return answer  # the replica filling the file answered
    terms, filled = answer
    span = parse_range(request.headers.get("Range"), entry.size) or (0, entry.size)
    body = _reconstruction_json(request, secret, entry, terms, span)
    stats = current_stats()
    if stats is not None:
        stats.cache = "miss" if filled else "hit"
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def _terms(
    request: web.Request, entry: FileEntry, hub_token: str | None
) -> tuple[list[PlannedTerm], bool] | web.StreamResponse:
    """The file's terms, and whether it had to be filled: as recorded for a cached file, else as
    the upstream's CAS gave them to the fill just started (or joined), whose chunks the chunk
    route then serves as they are verified. When another replica holds the file's fill lease,
    that replica's answer (its fill has the terms, and it serves the chunks while filling)."""
    if await request.app[BLOBS].is_stored(entry):
        return await _recorded_terms(request, entry.etag), False
    # Not cached (never, or evicted since its split was recorded): its chunks come with a fill.
    token = hub_token if hub_token is not None else request.app[CONFIG].upstream.token or None
    replicas = request.app.get(REPLICAS)
    may_proxy = replicas is not None and PEER_HEADER not in request.headers
    unreachable: frozenset[str] = frozenset()
    while True:
        started = await request.app[FILLER].start(entry, token, may_proxy=may_proxy, unreachable=unreachable)
        if started is None:  # published meanwhile
            return await _recorded_terms(request, entry.etag), False
        if isinstance(started, Fill):
            fill = started
            break
        answer = await _forwarded(request, started.url)
        if answer is not None:
            return answer
        unreachable |= {started.url}
    deadline = time.monotonic() + COLD_WAIT
    while not fill.done and _plan(fill) is None and time.monotonic() < deadline:
        await fill.wait_progress(deadline - time.monotonic())
    if fill.done:
        if fill.error is not None and not fill.verified:
            raise fill.error
        return await _recorded_terms(request, entry.etag), True
    plan = _plan(fill)
    if plan is None:
        raise NotReady("the file is being fetched from upstream; ask again shortly")
    return plan, True


def _plan(fill: Fill) -> list[PlannedTerm] | None:
    return fill.xet_body.plan if fill.xet_body is not None else None


async def _recorded(request: web.Request, etag: str) -> list[dict[str, Any]] | None:
    record = await request.app[RECORDS].get(keys.xet_terms_key(etag)) if OID_RE.fullmatch(etag) else None
    terms = record.get("terms") if isinstance(record, dict) else None
    return terms if isinstance(terms, list) and terms else None


async def _recorded_terms(request: web.Request, etag: str) -> list[PlannedTerm]:
    terms = [PlannedTerm.from_record(item) for item in await _recorded(request, etag) or ()]
    if not terms or None in terms:
        raise NotFound(f"the file {etag} is cached without its Xet chunks: download it over HTTP")
    return [term for term in terms if term is not None]


def _reconstruction_json(
    request: web.Request, secret: bytes, entry: FileEntry, terms: list[PlannedTerm], span: tuple[int, int]
) -> dict[str, Any]:
    """v1 reconstruction of bytes [start, end) of the file: the terms overlapping them, and our URLs.

    Each xorb's chunk ranges are merged where they overlap or touch, as the reference CAS does:
    hf_xet joins consecutive terms of one xorb into one fetch and looks for one range holding it.
    A merged range's URL names the terms whose chunks tile it, in order; a range no terms tile
    exactly is left as one entry per term.
    """
    start, end = span
    origin = mirror_origin(request)
    expires = int(time.time()) + URL_TTL
    out_terms: list[dict[str, Any]] = []
    used: dict[str, list[int]] = {}
    offset_into_first = 0
    for index, term in enumerate(terms):
        if term.last <= start or term.offset >= end:
            continue
        if not out_terms:
            offset_into_first = start - term.offset
        out_terms.append(
            {"hash": term.xorb, "unpacked_length": term.length, "range": {"start": term.start, "end": term.end}}
        )
        used.setdefault(term.xorb, []).append(index)

    def entry_for(run: list[int]) -> dict[str, Any]:
        path = f"/xet/chunks/{entry.etag}/{'+'.join(map(str, run))}"
        url = f"{origin}{path}?expires={expires}&sig={tokens.sign_path(secret, path, expires)}"
        encoded = sum(HEADER_SIZE * (terms[i].end - terms[i].start) + terms[i].length for i in run)
        chunk_range = {"start": terms[run[0]].start, "end": terms[run[-1]].end}
        return {"range": chunk_range, "url": url, "url_range": {"start": 0, "end": encoded - 1}}

    fetch_info: dict[str, list[dict[str, Any]]] = {}
    for xorb, indexes in used.items():
        entries = fetch_info[xorb] = []
        for group in _merged(terms, indexes):
            run = _tiling(terms, group)
            for piece in [run] if run is not None else [[i] for i in group]:
                made = entry_for(piece)
                if not any(e["range"] == made["range"] for e in entries):
                    entries.append(made)
    return {"offset_into_first_range": offset_into_first, "terms": out_terms, "fetch_info": fetch_info}


def _merged(terms: list[PlannedTerm], indexes: list[int]) -> list[list[int]]:
    """The terms of one xorb grouped by merged chunk range (ranges that overlap or touch), by start."""
    groups: list[list[int]] = []
    reach = -1
    for index in sorted(indexes, key=lambda i: (terms[i].start, -terms[i].end)):
        if groups and terms[index].start <= reach:
            groups[-1].append(index)
            reach = max(reach, terms[index].end)
        else:
            groups.append([index])
            reach = terms[index].end
    return groups


def _tiling(terms: list[PlannedTerm], group: list[int]) -> list[int] | None:
    """Terms of the group whose chunk ranges follow each other exactly over the group's whole range."""
    last = max(terms[i].end for i in group)
    pos, run = terms[group[0]].start, []
    while pos < last:
        reaching = [i for i in group if terms[i].start == pos]
        if not reaching:
            return None  # a range starts inside another: no whole terms tile it
        best = max(reaching, key=lambda i: terms[i].end)
        run.append(best)
        pos = terms[best].end
    return run


MAX_RUN = 4096  # terms one chunk URL may name (a xorb has at most 8192 chunks)


async def _chunks(request: web.Request, etag: str, run_text: str) -> web.StreamResponse:
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
        recorded = await _recorded(request, etag)
        if recorded is not None and max(run) < len(recorded) and await request.app[STORAGE].stat(blob_key) is not None:
            spans = [(recorded[i]["offset"], recorded[i]["lengths"]) for i in run]
            release = await request.app[ACCESS].begin_read(blob_key)
            try:
                storage = request.app[STORAGE]
                body = _joined(storage.read_range(blob_key, first, first + sum(lengths)) for first, lengths in spans)
                return await _send_chunks(request, etag, body, [n for _, lengths in spans for n in lengths], "hit")
            finally:
                release()
        fill = request.app[FILLER].running(blob_key)
        plan = _plan(fill) if fill is not None else None
        if fill is None or plan is None or max(run) >= len(plan):
            if recorded is not None:
                raise NotFound("the file holding these chunks left the cache: ask for a new reconstruction")
            # Not published yet, and not filling here: the replica holding its fill lease serves it
            # while filling; without one (or unreachable), it serves here once published.
            holder = await request.app[FILLER].holder(blob_key)
            if holder is not None and request.app.get(REPLICAS) is not None and PEER_HEADER not in request.headers:
                answer = await _forwarded(request, holder.url)
                if answer is not None:
                    return answer
            if attempt == 0 and await _published(request, etag, COLD_WAIT):
                continue
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
        return await _send_chunks(request, etag, body, lengths, "miss")
    raise NotFound("the file holding these chunks left the cache: ask for a new reconstruction")


async def _joined(bodies: Iterable[AsyncIterator[bytes]]) -> AsyncIterator[bytes]:
    """The bodies one after another, each opened only when the one before it ended."""
    for body in bodies:
        async with contextlib.aclosing(body) as pieces:
            async for piece in pieces:
                yield piece


RELAYED = ("Content-Type", "Content-Length", "Content-Range", "Accept-Ranges", "Cache-Control", "Retry-After",
           "X-Error-Code", "X-Error-Message")  # fmt: skip


async def _forwarded(request: web.Request, holder: str) -> web.StreamResponse | None:
    """The answer of the replica at `holder` to this same request (it fills the file), relayed; None
    when it cannot be reached. The Host goes along, so the URLs it answers name what the client
    called, and the peer header keeps it from forwarding again."""
    headers = {"Host": request.host}
    for name in ("Authorization", "Range"):
        if name in request.headers:
            headers[name] = request.headers[name]
    resp = await request.app[REPLICAS].forward(holder, request.rel_url.raw_path_qs, headers)
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


async def _published(request: web.Request, etag: str, wait: float) -> bool:
    """Whether the blob and its split record appear in storage within `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        if await _recorded(request, etag) is not None and await request.app[STORAGE].stat(keys.blob_key(etag)):
            return True
        if time.monotonic() + PUBLISH_POLL > deadline:
            return False
        await asyncio.sleep(PUBLISH_POLL)


async def _send_chunks(
    request: web.Request, etag: str, raw: AsyncIterator[bytes], lengths: list[int], cache: str
) -> web.StreamResponse:
    """Send the term's bytes (`raw`) as its chunks, or the part of them the request's Range names."""
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
        try:
            await response.prepare(request)
            if request.method == "HEAD":
                await response.write_eof()
                return response
        except ConnectionResetError:  # the client left while waiting for its chunks
            return response
        sent = 0
        served = request.app[METRICS].bytes_served.labels("cache" if cache == "hit" else "fill")
        try:
            async for piece in _sliced(_framed(raw, lengths), start, end):
                await response.write(piece)
                sent += len(piece)
                served.inc(len(piece))
            if sent != end - start:
                raise ConnectionResetError(f"chunk range ended after {sent} of {end - start} bytes")
        except Exception as exc:  # after the headers, only a cut tells the client
            transport = request.transport
            if transport is None or transport.is_closing():
                log.info("client left during Xet chunks of %s after %d bytes", etag, sent)
            else:
                log.warning("cutting Xet chunks of %s: %s", etag, exc)
            cut(request)
            return response
        if stats is not None:
            stats.bytes_sent += sent
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
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
