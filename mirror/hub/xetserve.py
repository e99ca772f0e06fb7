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

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from mirror.cache import keys
from mirror.cache.metadata.entries import FileEntry
from mirror.errors import BadRequest, Forbidden, MethodNotAllowed, NotFound, Unauthorized, UpstreamUnavailable
from mirror.hub.api import mirror_origin
from mirror.hub.appkeys import ACCESS, BLOBS, CONFIG, FILLER, POLICY, RECORDS, STORAGE, XET_SECRET, XET_TOKENS
from mirror.hub.observe import ROUTE
from mirror.hub.paths import ApiTarget
from mirror.hub.ranges import parse_range
from mirror.hub.resolve import cut
from mirror.metrics import current_stats
from mirror.repo import OID_RE, RepoRef
from mirror.tokens import bearer_token
from mirror.xet import tokens
from mirror.xet.format import HEADER_SIZE, stored_chunk_header

log = logging.getLogger(__name__)

TOKEN_TTL = 900  # seconds, like the Hub's CAS tokens; hf_xet refreshes through the xet-auth route
URL_TTL = 3600
COLD_WAIT = 30.0  # seconds a reconstruction waits for the fill of a file not cached yet


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


async def _reconstruction(request: web.Request, file_hash: str) -> web.Response:
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
    terms, filled = await _terms(request, entry, request.app[XET_TOKENS].get(access))
    span = parse_range(request.headers.get("Range"), entry.size) or (0, entry.size)
    body = _reconstruction_json(request, secret, entry, terms, span)
    stats = current_stats()
    if stats is not None:
        stats.cache = "miss" if filled else "hit"
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def _terms(request: web.Request, entry: FileEntry, hub_token: str | None) -> tuple[list[dict[str, Any]], bool]:
    """The file's terms as its Xet fill recorded them, and whether the file had to be filled first."""
    records = request.app[RECORDS]
    # Not cached (never, or evicted since its split was recorded): its chunks come with a fill.
    filled = not await request.app[BLOBS].is_stored(entry)
    if filled:
        token = hub_token if hub_token is not None else request.app[CONFIG].upstream.token or None
        fill = request.app[FILLER].join(entry, token)
        deadline = time.monotonic() + COLD_WAIT
        while not fill.done and time.monotonic() < deadline:
            await fill.wait_progress(deadline - time.monotonic())
        if not fill.done:
            raise UpstreamUnavailable(
                "the file is being fetched from upstream; ask again shortly", headers={"Retry-After": "2"}
            )
        if fill.error is not None and not fill.verified:
            raise fill.error
    record = await records.get(keys.xet_terms_key(entry.etag))
    terms = record.get("terms") if isinstance(record, dict) else None
    if not isinstance(terms, list) or not terms:
        raise NotFound(f"{entry.label} is cached without its Xet chunks: download it over HTTP")
    return terms, filled


def _reconstruction_json(
    request: web.Request, secret: bytes, entry: FileEntry, terms: list[dict[str, Any]], span: tuple[int, int]
) -> dict[str, Any]:
    """v1 reconstruction of bytes [start, end) of the file: the terms overlapping them, and our URLs."""
    start, end = span
    origin = mirror_origin(request)
    expires = int(time.time()) + URL_TTL
    out_terms: list[dict[str, Any]] = []
    fetch_info: dict[str, list[dict[str, Any]]] = {}
    offset_into_first = 0
    for index, term in enumerate(terms):
        length = sum(term["lengths"])
        first, last = term["offset"], term["offset"] + length
        if last <= start or first >= end:
            continue
        if not out_terms:
            offset_into_first = start - first
        chunk_range = {"start": term["start"], "end": term["end"]}
        out_terms.append({"hash": term["xorb"], "unpacked_length": length, "range": chunk_range})
        path = f"/xet/chunks/{entry.etag}/{index}"
        url = f"{origin}{path}?expires={expires}&sig={tokens.sign_path(secret, path, expires)}"
        encoded = HEADER_SIZE * len(term["lengths"]) + length
        entries = fetch_info.setdefault(term["xorb"], [])
        if not any(e["range"] == chunk_range for e in entries):
            entries.append({"range": chunk_range, "url": url, "url_range": {"start": 0, "end": encoded - 1}})
    return {"offset_into_first_range": offset_into_first, "terms": out_terms, "fetch_info": fetch_info}


async def _chunks(request: web.Request, etag: str, index_text: str) -> web.StreamResponse:
    """One term's chunks, each behind its 8-byte header (uncompressed), from the cached blob."""
    secret = await request.app[XET_SECRET].get()
    path = f"/xet/chunks/{etag}/{index_text}"
    query = request.rel_url.query
    if not tokens.path_signed(secret, path, query.get("expires", ""), query.get("sig", "")):
        raise Forbidden("this chunk URL is not signed by this mirror, or has expired: ask for a new reconstruction")
    record = await request.app[RECORDS].get(keys.xet_terms_key(etag)) if OID_RE.fullmatch(etag) else None
    terms = record.get("terms") if isinstance(record, dict) else None
    index_ok = index_text.isascii() and index_text.isdigit() and len(index_text) < 9
    if not isinstance(terms, list) or not index_ok or int(index_text) >= len(terms):
        raise NotFound("no such chunk range")
    term = terms[int(index_text)]
    lengths: list[int] = term["lengths"]
    first = term["offset"]
    encoded = HEADER_SIZE * len(lengths) + sum(lengths)
    span = parse_range(request.headers.get("Range"), encoded)
    start, end = span if span else (0, encoded)
    blob_key = keys.blob_key(etag)
    if await request.app[STORAGE].stat(blob_key) is None:
        raise NotFound("the file holding these chunks left the cache: ask for a new reconstruction")
    headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
    if span:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{encoded}"
    response = web.StreamResponse(status=206 if span else 200, headers=headers)
    response.content_length = end - start
    if request.method == "HEAD":
        await response.prepare(request)
        await response.write_eof()
        return response
    release = await request.app[ACCESS].begin_read(blob_key)
    try:
        await response.prepare(request)
        sent = 0
        try:
            body = _framed(request.app[STORAGE].read_range(blob_key, first, first + sum(lengths)), lengths)
            async for piece in _sliced(body, start, end):
                await response.write(piece)
                sent += len(piece)
            if sent != end - start:
                raise ConnectionResetError(f"chunk range ended after {sent} of {end - start} bytes")
        except Exception as exc:  # after the headers, only a cut tells the client
            log.warning("cutting Xet chunks of %s: %s", etag, exc)
            cut(request)
            return response
        stats = current_stats()
        if stats is not None:
            stats.bytes_sent += sent
            stats.cache = "hit"
        await response.write_eof()
        return response
    finally:
        release()


async def _framed(raw: AsyncIterator[bytes], lengths: list[int]) -> AsyncIterator[bytes]:
    """The blob's bytes as Xet chunks: each `lengths[i]` bytes behind a header saying "stored as is"."""
    buffer = bytearray()
    pending = iter(lengths)
    want = next(pending, None)
    async for piece in raw:
        buffer += piece
        while want is not None and len(buffer) >= want:
            yield stored_chunk_header(want) + bytes(buffer[:want])
            del buffer[:want]
            want = next(pending, None)
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
