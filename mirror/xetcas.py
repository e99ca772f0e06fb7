"""The upstream's Xet CAS, as a client: access tokens, file reconstructions, and xorb byte ranges.

The Hub hands out CAS access per repo (`GET /api/{type}s/{repo}/xet-read-token/{rev}` with the
Hub token: `{"accessToken", "exp", "casUrl"}`, or the older `X-Xet-*` headers); the CAS then
answers `GET {casUrl}/v1/reconstructions/{file hash}` (optionally for a byte `Range`) with the
terms that rebuild the file (chunk ranges of xorbs) and, per xorb, signed URLs for byte ranges
that must be fetched with exactly their signed `Range` and no credentials (xet-core
`openapi/cas.openapi.yaml`, `spec/api.md`; hf_xet's `remote_client.rs`).

Everything the CAS answers is checked for shape before it is used; hashes and bytes are checked
by the caller (mirror/xet/format.py). The Hub token goes to the Hub's origin only, the CAS token
to the CAS only, and neither, nor a signed URL's query, is logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from cachetools import TTLCache

from mirror.errors import UpstreamError, UpstreamUnavailable
from mirror.repo import OID_RE, RepoRef
from mirror.tokens import fingerprint
from mirror.upstream import Upstream, batched, error_from_response, range_start, unreachable_reason

log = logging.getLogger(__name__)

# A xorb holds at most 64 MiB of chunks (spec/xorb.md), each with an 8-byte header.
MAX_XORB_BYTES = 64 * 1024 * 1024 + 8 * 8192
# Tokens are refreshed this long before they expire, as huggingface_hub does.
REFRESH_MARGIN = 60.0
MAX_RECONSTRUCTION = 16 * 1024 * 1024  # JSON of a reconstruction: ~200 bytes a term


class XorbUrlRefused(Exception):
    """A signed xorb URL was refused (expired, or its range no longer signed): ask for a new reconstruction."""


@dataclass(frozen=True)
class CasAccess:
    """Where the upstream's CAS is and the token it takes, for one repo (short-lived)."""

    url: str
    token: str
    expires: float


@dataclass(frozen=True)
class Term:
    """Chunks [start, end) of one xorb, `unpacked_length` bytes of the file."""

    xorb: str
    start: int
    end: int
    unpacked_length: int


@dataclass(frozen=True)
class XorbFetch:
    """Where chunks [start, end) of a xorb can be fetched: `url` with `Range: bytes=first-last`."""

    xorb: str
    start: int
    end: int
    url: str
    first: int
    last: int  # inclusive, as the CAS writes it

    @property
    def length(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class Reconstruction:
    """How to rebuild (a byte range of) a file: skip `offset` bytes of the first term, then the terms in order."""

    offset: int
    terms: tuple[Term, ...]
    fetches: Mapping[str, tuple[XorbFetch, ...]]

    def fetch_for(self, term: Term) -> XorbFetch:
        """The fetch whose chunk range covers the term (the CAS lists one for every term)."""
        for fetch in self.fetches.get(term.xorb, ()):
            if fetch.start <= term.start and term.end <= fetch.end:
                return fetch
        raise UpstreamError(f"the CAS reconstruction gives no fetch for chunks of xorb {term.xorb}", status=502)


class XetCas:
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        # (repo, token fingerprint) -> access; bounded, and each entry dropped before its token expires.
        self._access: TTLCache[tuple[RepoRef, str], CasAccess] = TTLCache(maxsize=4096, ttl=3600)

    async def access(self, repo: RepoRef, revision: str, token: str | None, *, fresh: bool = False) -> CasAccess:
        """A CAS token for the repo, asked of the Hub with the caller's token (kept until near its expiry)."""
        key = (repo, fingerprint(token))
        known = None if fresh else self._access.get(key)
        if known is not None and known.expires - REFRESH_MARGIN > time.time():
            return known
        path = f"{repo.api_path}/xet-read-token/{quote(revision, safe='')}"
        body, headers = await self.upstream.api_json(path, token)
        found = _access_of(body, headers)
        self._access[key] = found
        return found

    async def reconstruction(
        self, repo: RepoRef, revision: str, file_hash: str, token: str | None, byte_range: tuple[int, int] | None = None
    ) -> Reconstruction:
        """The terms rebuilding the file (or bytes [first, last] of it, inclusive); a refused token is renewed once."""
        if not OID_RE.fullmatch(file_hash):
            raise UpstreamError(f"{file_hash[:80]!r} is not a Xet file hash", status=502)
        for attempt in range(2):
            cas = await self.access(repo, revision, token, fresh=attempt > 0)
            url = f"{cas.url.rstrip('/')}/v1/reconstructions/{file_hash}"
            headers = {"Authorization": f"Bearer {cas.token}"}
            if byte_range is not None:
                headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
            resp = await self.upstream.request("GET", url, None, headers=headers, follow=False)
            async with resp:
                body = await self.upstream.read_answer(resp, "CAS reconstruction", MAX_RECONSTRUCTION)
                if resp.status == 401 and attempt == 0:
                    continue  # expired or revoked: ask the Hub for a new token
                if resp.status != 200:
                    raise await error_from_response(resp, body)
            if len(body) > MAX_RECONSTRUCTION:
                raise UpstreamError("the CAS reconstruction is larger than any file needs", status=502)
            return parse_reconstruction(body)
        raise UpstreamError("the CAS refused a fresh token", status=502)

    async def xorb_range(self, fetch: XorbFetch, *, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        """The bytes of one fetch, in order; exactly `fetch.length` of them or an exception.

        The URL is signed for exactly its range, so a broken transfer cannot resume mid-range: the
        caller fetches it again, with a fresh reconstruction when the URL was refused.
        """
        headers = {"Range": f"bytes={fetch.first}-{fetch.last}", "Accept-Encoding": "identity"}
        resp = await self.upstream.request("GET", fetch.url, None, headers=headers, follow_off_origin=True)
        async with resp:
            if resp.status in (401, 403, 404, 410):
                raise XorbUrlRefused(f"CAS answered {resp.status} for a xorb range")
            if resp.status != 206 or range_start(resp) != fetch.first:
                raise UpstreamUnavailable(f"CAS answered {resp.status} for a xorb range, not the signed range")
            got = 0
            try:
                async for piece in batched(resp.content, chunk_size):
                    got += len(piece)
                    if got > fetch.length:
                        raise UpstreamError("the CAS sent more than the signed range", status=502)
                    if self.upstream.metrics is not None:
                        self.upstream.metrics.upstream_bytes.inc(len(piece))
                    yield piece
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise UpstreamUnavailable(f"xorb range broke off ({unreachable_reason(exc)})") from exc
            if got != fetch.length:
                raise UpstreamUnavailable(f"xorb range ended after {got} of {fetch.length} bytes")


def _access_of(body: Any, headers: Mapping[str, str]) -> CasAccess:
    """The token endpoint's answer: its JSON body, or the headers older Hubs send."""
    data = body if isinstance(body, dict) else {}
    url = data.get("casUrl") or headers.get("X-Xet-Cas-Url")
    token = data.get("accessToken") or headers.get("X-Xet-Access-Token")
    expires = data.get("exp") or headers.get("X-Xet-Token-Expiration")
    try:
        expires_at = float(expires) if expires is not None else 0.0
    except (TypeError, ValueError):
        expires_at = 0.0
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not isinstance(token, str):
        raise UpstreamError("the Hub's xet-read-token answer names no CAS URL and token", status=502)
    if not token or expires_at <= 0:
        raise UpstreamError("the Hub's xet-read-token answer has no usable token or expiry", status=502)
    return CasAccess(url, token, expires_at)


def parse_reconstruction(body: bytes) -> Reconstruction:
    """A v1 reconstruction answer, checked for every field the mirror relies on."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise UpstreamError("the CAS sent a reconstruction that is not JSON", status=502) from None
    if not isinstance(data, dict):
        raise UpstreamError("the CAS sent a reconstruction that is not an object", status=502)
    offset = data.get("offset_into_first_range")
    raw_terms, raw_fetches = data.get("terms"), data.get("fetch_info")
    if not _count(offset) or not isinstance(raw_terms, list) or not isinstance(raw_fetches, dict):
        raise UpstreamError("the CAS reconstruction lacks offset_into_first_range, terms or fetch_info", status=502)
    terms = tuple(_term(t) for t in raw_terms)
    fetches: dict[str, tuple[XorbFetch, ...]] = {}
    for xorb, entries in raw_fetches.items():
        if not OID_RE.fullmatch(str(xorb)) or not isinstance(entries, list):
            raise UpstreamError("the CAS reconstruction names a xorb that is not a hash", status=502)
        fetches[xorb] = tuple(_fetch(xorb, e) for e in entries)
    found = Reconstruction(int(offset), terms, fetches)
    for term in terms:
        found.fetch_for(term)  # raises if a term has nowhere to come from
    if terms and offset >= terms[0].unpacked_length:
        raise UpstreamError("the CAS reconstruction skips past its first term", status=502)
    return found


def _term(item: Any) -> Term:
    span = item.get("range") if isinstance(item, dict) else None
    if not isinstance(span, dict):
        raise UpstreamError("a CAS reconstruction term is malformed", status=502)
    xorb, start, end, length = item.get("hash"), span.get("start"), span.get("end"), item.get("unpacked_length")
    counts = _count(start) and _count(end) and _count(length)
    if not isinstance(xorb, str) or not OID_RE.fullmatch(xorb) or not counts:
        raise UpstreamError("a CAS reconstruction term is malformed", status=502)
    if not start < end or length <= 0:
        raise UpstreamError("a CAS reconstruction term has an empty range", status=502)
    return Term(xorb, start, end, length)


def _fetch(xorb: str, item: Any) -> XorbFetch:
    if not isinstance(item, dict):
        raise UpstreamError("a CAS fetch_info entry is malformed", status=502)
    span, url_span, url = item.get("range"), item.get("url_range"), item.get("url")
    if not isinstance(span, dict) or not isinstance(url_span, dict) or not isinstance(url, str):
        raise UpstreamError("a CAS fetch_info entry is malformed", status=502)
    start, end, first, last = span.get("start"), span.get("end"), url_span.get("start"), url_span.get("end")
    if not all(_count(v) for v in (start, end, first, last)) or not start < end or not first <= last:
        raise UpstreamError("a CAS fetch_info entry has an impossible range", status=502)
    if last - first + 1 > MAX_XORB_BYTES or urlsplit(url).scheme not in ("http", "https"):
        raise UpstreamError("a CAS fetch_info entry is larger than a xorb or has no http(s) URL", status=502)
    return XorbFetch(xorb, start, end, url, first, last)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
