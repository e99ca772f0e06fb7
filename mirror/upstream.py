"""One pooled HTTP client to the upstream Hub (huggingface.co or another mirror).

It follows redirects itself so that it can keep the rules the HF client keeps: the caller's token
goes to the upstream origin only (never to a CDN host), metadata is read from the last same-origin
response or the off-origin 3xx, and signed CDN URLs are used once and never stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
from multidict import CIMultiDictProxy

from mirror import __version__
from mirror.config import UpstreamConfig
from mirror.errors import (
    EntryNotFound,
    GatedRepo,
    HubError,
    RepoNotFound,
    RevisionNotFound,
    UpstreamError,
    UpstreamUnavailable,
)
from mirror.metrics import Metrics, observe_upstream
from mirror.repo import RepoRef

log = logging.getLogger(__name__)

MAX_REDIRECTS = 10
_ERROR_CLASSES: dict[str, type[HubError]] = {
    "RepoNotFound": RepoNotFound,
    "RevisionNotFound": RevisionNotFound,
    "EntryNotFound": EntryNotFound,
    "GatedRepo": GatedRepo,
}
# Headers of an upstream error worth passing to the client.
_PASSED_ERROR_HEADERS = ("X-Repo-Commit", "Retry-After", "RateLimit", "RateLimit-Policy")


class RetryableBodyError(Exception):
    """A body fetch failed in a way that a new attempt (re-resolved, with Range) may fix."""


@dataclass(frozen=True)
class FileMeta:
    """What the upstream's resolve answer says about one file at one commit."""

    commit: str
    etag: str  # git blob sha1 (40 hex) for plain files, sha256 (64 hex) for LFS
    size: int

    @property
    def is_lfs(self) -> bool:
        return len(self.etag) == 64


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def normalise_etag(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"') or None


async def error_from_response(resp: aiohttp.ClientResponse, body: bytes | None = None) -> HubError:
    """The HubError that reproduces an upstream error answer for our client."""
    if body is None:
        try:
            body = await resp.content.read(64 * 1024)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            body = b""
    code = resp.headers.get("X-Error-Code")
    message = resp.headers.get("X-Error-Message")
    if not message and body:
        try:
            parsed = json.loads(body)
            if isinstance(parsed, dict):
                message = parsed.get("error") or parsed.get("error_description")
        except ValueError:
            message = None
    if resp.status >= 500:
        return UpstreamUnavailable(f"upstream answered {resp.status} {resp.reason or ''}".strip())
    message = str(message or f"upstream answered {resp.status} {resp.reason or ''}".strip())
    headers = {h: resp.headers[h] for h in _PASSED_ERROR_HEADERS if h in resp.headers}
    cls = _ERROR_CLASSES.get(code or "", UpstreamError)
    return cls(message, status=resp.status, code=code, headers=headers)


class Upstream:
    def __init__(self, config: UpstreamConfig, session: aiohttp.ClientSession, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.base = config.url.rstrip("/")
        self.origin = origin_of(self.base)
        self.session = session
        self.user_agent = f"hub-mirror/{__version__}"

    @staticmethod
    def new_session(config: UpstreamConfig) -> aiohttp.ClientSession:
        timeout = aiohttp.ClientTimeout(total=None, connect=config.connect_timeout, sock_read=config.read_timeout)
        connector = aiohttp.TCPConnector(limit=config.max_connections, ttl_dns_cache=300)
        # auto_decompress off: bodies are hashed and stored exactly as the file's bytes.
        # read_bufsize: bigger reads are cheaper, but what sits in the buffer when a connection
        # drops is lost (aiohttp raises before handing it out), so keep it well under drop sizes.
        return aiohttp.ClientSession(
            timeout=timeout, connector=connector, auto_decompress=False, read_bufsize=256 * 1024
        )

    def url(self, path: str) -> str:
        return self.base + path

    def _headers(self, url: str, token: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {"User-Agent": self.user_agent, "Accept-Encoding": "identity"}
        if extra:
            headers.update(extra)
        if token and origin_of(url) == self.origin:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def request(
        self,
        method: str,
        url: str,
        token: str | None,
        *,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        follow_off_origin: bool = False,
    ) -> aiohttp.ClientResponse:
        """Send a request, following redirects by hand.

        Same-origin redirects are always followed (relative 307s to resolve-cache, renamed repos).
        Off-origin ones are followed only when asked, without the token; otherwise the 3xx itself
        is returned, since it is what carries the Hub's metadata headers.
        """
        for _ in range(MAX_REDIRECTS + 1):
            kind = "api" if "/api/" in urlsplit(url).path else ("head" if method == "HEAD" else "body")
            started = time.monotonic()
            try:
                resp = await self.session.request(
                    method,
                    url,
                    headers=self._headers(url, token, headers),
                    data=data,
                    allow_redirects=False,
                )
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                observe_upstream(self.metrics, kind, None, started)
                raise UpstreamUnavailable(f"upstream unreachable: {type(exc).__name__}: {exc}") from exc
            observe_upstream(self.metrics, kind, resp.status, started)
            location = resp.headers.get("Location")
            if resp.status not in (301, 302, 303, 307, 308) or not location:
                return resp
            target = urljoin(str(resp.url), location)
            if origin_of(target) != self.origin and not follow_off_origin:
                return resp
            resp.release()
            url = target
            if resp.status == 303:
                method, data = "GET", None
        raise UpstreamUnavailable("upstream redirected too many times")

    async def api_json(
        self, path: str, token: str | None, *, method: str = "GET", form: Any = None
    ) -> tuple[Any, CIMultiDictProxy[str]]:
        """Call an /api path (or an absolute upstream URL); return parsed JSON and headers."""
        url = path if path.startswith(("http://", "https://")) else self.url(path)
        if origin_of(url) != self.origin:
            raise UpstreamError(f"refusing to follow a link off the upstream origin: {url}", status=502)
        resp = await self.request(method, url, token, data=form)
        async with resp:
            try:
                body = await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise UpstreamUnavailable(f"upstream body broke off: {exc}") from exc
            if resp.status >= 400 or resp.status in (301, 302, 303, 307, 308):
                raise await error_from_response(resp, body)
            try:
                return json.loads(body), resp.headers
            except ValueError:
                raise UpstreamUnavailable(f"upstream sent invalid JSON for {path}") from None

    def resolve_url(self, repo: RepoRef, revision: str, path: str) -> str:
        return self.url(f"/{repo.url_prefix}{repo.repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}")

    async def file_meta(self, repo: RepoRef, revision: str, path: str, token: str | None) -> FileMeta:
        """HEAD the resolve URL the way the HF client does (§B2 of the protocol notes)."""
        resp = await self.request("HEAD", self.resolve_url(repo, revision, path), token)
        async with resp:
            if resp.status >= 400:
                raise await error_from_response(resp, b"")
            commit = resp.headers.get("X-Repo-Commit")
            etag = normalise_etag(resp.headers.get("X-Linked-Etag") or resp.headers.get("ETag"))
            size_header = resp.headers.get("X-Linked-Size")
            if size_header is None and resp.status < 300:
                size_header = resp.headers.get("Content-Length")
        if not commit or not etag or size_header is None:
            raise UpstreamError(
                "upstream resolve answer lacks X-Repo-Commit, ETag or size; is it a Hugging Face Hub?",
                status=502,
            )
        etag = etag.lower()
        if len(etag) not in (40, 64) or any(c not in "0123456789abcdef" for c in etag):
            raise UpstreamError(f"upstream ETag {etag!r} is not a content hash; cannot verify", status=502)
        try:
            size = int(size_header)
        except ValueError:
            raise UpstreamError(f"upstream size {size_header!r} is not a number", status=502) from None
        return FileMeta(commit=commit.lower(), etag=etag, size=size)

    async def open_body(
        self, repo: RepoRef, commit: str, path: str, token: str | None, offset: int
    ) -> aiohttp.ClientResponse:
        """GET a file's bytes from `offset`, re-resolving the (signed) location every time.

        Returns a response with status 200 (the whole body: the caller skips `offset` bytes) or 206
        starting at `offset`. Raises RetryableBodyError for failures a new attempt may fix.
        """
        headers = {"Range": f"bytes={offset}-"} if offset else None
        try:
            resp = await self.request(
                "GET", self.resolve_url(repo, commit, path), token, headers=headers, follow_off_origin=True
            )
        except UpstreamUnavailable as exc:
            raise RetryableBodyError(str(exc)) from exc
        if resp.status == 200 or (resp.status == 206 and _range_start(resp) == offset):
            return resp
        try:
            if resp.status in (403, 404, 410) and origin_of(str(resp.url)) != self.origin:
                # An expired or refused signed URL: a new attempt re-resolves a fresh one.
                raise RetryableBodyError(f"CDN answered {resp.status}")
            if resp.status >= 500 or resp.status in (206, 408, 429):
                raise RetryableBodyError(f"upstream answered {resp.status}")
            raise await error_from_response(resp)
        finally:
            resp.release()


def _range_start(resp: aiohttp.ClientResponse) -> int | None:
    value = resp.headers.get("Content-Range", "")
    try:
        unit, rest = value.split(" ", 1)
        return int(rest.split("-", 1)[0]) if unit == "bytes" else None
    except ValueError:
        return None
