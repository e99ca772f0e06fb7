"""The mirror as its clients' Xet CAS (`hub.xet: serve`): hf_xet downloads by chunks from the cache.

The flow hf_xet follows against the Hub, with the mirror in every role:

1. The resolve HEAD of a file the upstream stores in Xet carries `X-Xet-Hash` and a `xet-auth`
   link to the mirror's `/api/{type}s/{repo}/xet-read-token/{rev}`.
2. That route checks the repo as a resolve does (allow-list, gated/private for the Hub token) and
   answers a CAS token of the mirror's own (short-lived, bound to the repo) with `casUrl` = the
   mirror's `/xet` (JSON body and the `X-Xet-*` headers older clients read).
3. `GET /xet/v1/reconstructions/{hash}` (`/v2` is 404: hf_xet falls back) answers the file's real
   terms (xorb hashes and chunk ranges, as the upstream's CAS gave them to the fill) with signed
   URLs on the mirror, one per merged chunk range of a xorb.
4. `GET /xet/chunks/{blob}/{terms}` serves the chunks (hub/xetchunks.py), each behind its 8-byte
   chunk header (stored uncompressed: the LAN is not the upstream link).

A file the mirror has not cached yet is filled from the upstream's CAS (a Xet fill); the
reconstruction is answered as soon as the fill knows the file's terms, and the chunk route serves
each run of terms once its bytes are verified. With fill leases, a replica that another is
filling the file for relays that replica's answers (hub/relay.py). A file cached over HTTP before
Xet fills were on has no terms: its resolve does not advertise Xet, and clients download it over
HTTP.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from mirror.cache import keys
from mirror.cache.blobs.fill import Fill
from mirror.cache.blobs.xetplan import PlannedTerm
from mirror.cache.metadata.entries import FileEntry
from mirror.errors import BadRequest, MethodNotAllowed, NotFound, NotReady, Unauthorized
from mirror.hub.api import mirror_origin
from mirror.hub.appkeys import (
    BLOBS,
    CONFIG,
    FILLER,
    POLICY,
    RECORDS,
    REPLICAS,
    XET_SECRET,
    XET_TOKENS,
)
from mirror.hub.observe import ROUTE
from mirror.hub.paths import ApiTarget
from mirror.hub.ranges import parse_range
from mirror.hub.relay import forwarded
from mirror.hub.xetchunks import COLD_WAIT, MAX_RUN, handle_chunks, plan_of, split_terms
from mirror.metrics import current_stats
from mirror.replicas import PEER_HEADER
from mirror.repo import OID_RE, RepoRef
from mirror.tokens import bearer_token
from mirror.xet import tokens
from mirror.xet.format import HEADER_SIZE

log = logging.getLogger(__name__)

TOKEN_TTL = 900  # seconds, like the Hub's CAS tokens; hf_xet refreshes through the xet-auth route
URL_TTL = 3600


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
        return await handle_chunks(request, parts[1], parts[2])
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
        answer = await forwarded(request, started.url)
        if answer is not None:
            return answer
        unreachable |= {started.url}
    deadline = time.monotonic() + COLD_WAIT
    while not fill.done and plan_of(fill) is None and time.monotonic() < deadline:
        await fill.wait_progress(deadline - time.monotonic())
    if fill.done:
        if fill.error is not None and not fill.verified:
            raise fill.error
        return await _recorded_terms(request, entry.etag), True
    plan = plan_of(fill)
    if plan is None:
        raise NotReady("the file is being fetched from upstream; ask again shortly")
    return plan, True


async def _recorded_terms(request: web.Request, etag: str) -> list[PlannedTerm]:
    terms = [PlannedTerm.from_record(item) for item in await split_terms(request, etag) or ()]
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
        listed: set[tuple[int, int]] = set()  # terms with the same range share an entry
        for group in _merged(terms, indexes):
            run = _tiling(terms, group)
            # A URL names at most MAX_RUN terms (request lines are bounded): longer runs are split.
            pieces = [run[i : i + MAX_RUN] for i in range(0, len(run), MAX_RUN)] if run else [[i] for i in group]
            for piece in pieces:
                chunk_range = (terms[piece[0]].start, terms[piece[-1]].end)
                if chunk_range not in listed:
                    listed.add(chunk_range)
                    entries.append(entry_for(piece))
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
    longest: dict[int, int] = {}  # chunk index -> the group's longest term starting there (the first of equals)
    for i in group:
        known = longest.get(terms[i].start)
        if known is None or terms[i].end > terms[known].end:
            longest[terms[i].start] = i
    last = max(terms[i].end for i in group)
    pos, run = terms[group[0]].start, []
    while pos < last:
        best = longest.get(pos)
        if best is None:
            return None  # a range starts inside another: no whole terms tile it
        run.append(best)
        pos = terms[best].end
    return run
