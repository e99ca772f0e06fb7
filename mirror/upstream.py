"""One pooled HTTP client to the upstream Hub (huggingface.co or another mirror).

It follows redirects itself so that it can keep the rules the HF client keeps: the caller's token
goes to the upstream origin only (never to a CDN host), metadata is read from the last same-origin
response or the off-origin 3xx, and signed CDN URLs are used once and never stored.

Every request's outcome feeds a circuit breaker: after `breaker_failures` failures in a row
(connect errors, timeouts, 5xx) requests fail at once for `breaker_cooldown` seconds, so callers
with a last known answer serve it at once and the others get a 5xx at once instead of a hang. The
breaker's state is the `hub_mirror_upstream_up` gauge. Error messages for clients never name the
upstream's address; the detail goes to the log.

A file's bytes come out of `body` as plain chunks: a transfer that drops, stalls or ends early is
resumed here with Range (re-resolving the signed location each time), so nothing above the
transport handles HTTP responses or their errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

import aiohttp
from multidict import CIMultiDictProxy

from mirror import __version__
from mirror.config import UpstreamConfig
from mirror.errors import (
    EntryNotFound,
    GatedRepo,
    HubError,
    IntegrityError,
    RepoNotFound,
    RevisionNotFound,
    UpstreamError,
    UpstreamUnavailable,
)
from mirror.metrics import LogLimit, Metrics, observe_upstream
from mirror.repo import OID_RE, Fetchable, LfsObject, RepoRef

log = logging.getLogger(__name__)

MAX_REDIRECTS = 10
LFS_BATCH_PATH = "info/lfs/objects/batch"
LFS_TYPE = "application/vnd.git-lfs+json"
# An answer for git-lfs's 100 objects is ~60 KiB (signed hrefs); this bounds what one may hold.
MAX_LFS_ANSWER = 4 * 1024 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"
_ERROR_CLASSES: dict[str, type[HubError]] = {
    "RepoNotFound": RepoNotFound,
    "RevisionNotFound": RevisionNotFound,
    "EntryNotFound": EntryNotFound,
    "GatedRepo": GatedRepo,
}
# Headers of an upstream error worth passing to the client.
_PASSED_ERROR_HEADERS = ("X-Repo-Commit", "Retry-After", "RateLimit", "RateLimit-Policy")


class Breaker:
    """Fails requests at once after `failures` failures in a row, for `cooldown` seconds.

    Then one trial request goes through (half-open): a success closes the breaker, a failure opens
    it for another cooldown. Any success resets the count. `failures` 0 turns it off.
    """

    def __init__(self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self.clock = clock
        self._in_a_row = 0
        self._opened_at: float | None = None
        self._trial = False  # the half-open breaker's one request is in flight

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._trial or self.clock() >= self._opened_at + self.cooldown:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        """May a request go now? Past the cooldown the first caller gets True: the trial, whose
        outcome must be reported with success, failure or (no outcome) abandon."""
        if self._opened_at is None:
            return True
        if self._trial or self.clock() < self._opened_at + self.cooldown:
            return False
        self._trial = True
        return True

    def success(self) -> None:
        self._in_a_row = 0
        self._opened_at = None
        self._trial = False

    def failure(self) -> bool:
        """Count a failure; True if it opened the breaker."""
        self._in_a_row += 1
        reopen = self._opened_at is not None
        if reopen or (self.failures and self._in_a_row >= self.failures):
            # A late failure of a request sent before the breaker opened restarts the cooldown too.
            self._opened_at = self.clock()
            self._trial = False
            return not reopen
        return False

    def abandon(self) -> None:
        """The trial ended without an outcome (cancelled): let the next request try."""
        self._trial = False


def unreachable_reason(exc: BaseException) -> str:
    """Why a request got no answer, in words that hold no address (they reach clients)."""
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return "timed out"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS error"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc.os_error, socket.gaierror):
            return "name not resolved"
        return "cannot connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return "connection closed"
    return "connection error"


class RetryableBodyError(Exception):
    """A body fetch failed in a way that a new attempt (re-resolved, with Range) may fix."""


# Upstream bytes are handed on in batches of up to the caller's chunk size, or whatever arrived
# within this many seconds, so slow upstreams still reach clients promptly.
BATCH_WAIT = 0.05


def _joined(pieces: list[bytes]) -> bytes:
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


async def batched(stream: aiohttp.StreamReader, size: int) -> AsyncIterator[bytes]:
    """Chunks of about `size` bytes from a stream that hands out whatever arrived (often 256 KiB).

    Pieces are taken as received (readchunk hands out one buffered piece without joining, unlike
    readany) and joined once per chunk: at cold-fill rates every extra copy of the bytes costs a
    visible share of a core.
    """
    pieces: list[bytes] = []
    held = 0
    started = 0.0
    while True:
        try:
            data, end_of_http_chunk = await stream.readchunk()
        except BaseException:
            if pieces:
                yield _joined(pieces)  # keep what arrived; the caller resumes after it
            raise
        if not data:
            if end_of_http_chunk:
                continue  # a chunked body's chunk boundary, not its end
            break
        if not pieces:
            started = time.monotonic()
        pieces.append(data)
        held += len(data)
        if held >= size or time.monotonic() - started >= BATCH_WAIT:
            yield _joined(pieces)
            pieces, held = [], 0
    if pieces:
        yield _joined(pieces)


@dataclass(frozen=True)
class FileMeta:
    """What the upstream's resolve answer says about one file at one commit."""

    etag: str  # git blob sha1 (40 hex) for plain files, sha256 (64 hex) for LFS
    size: int
    xet_hash: str | None = None  # the Xet file hash (X-Xet-Hash) of a file stored in Xet


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
                # The Hub's API errors say "error"; its git-lfs answers say "message".
                message = parsed.get("error") or parsed.get("error_description") or parsed.get("message")
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
        self.breaker = Breaker(config.breaker_failures, config.breaker_cooldown)
        self.last_outcome_at: float | None = None  # when traffic or a probe last said anything
        self._probed: tuple[bool, float] | None = None  # (reachable, when) of the last probe
        self._failure_log = LogLimit(log)
        if metrics is not None:
            metrics.upstream_up.set(1)  # nothing has failed yet: traffic will say otherwise

    def record_outcome(self, ok: bool) -> None:
        """Feed one upstream outcome to the breaker (also for probes made outside `request`)."""
        self.last_outcome_at = time.monotonic()
        if ok:
            self.breaker.success()
        elif self.breaker.failure():
            log.warning(
                "upstream failed %d times in a row; failing upstream requests at once for %.0f s",
                self.breaker.failures,
                self.breaker.cooldown,
            )
            if self.metrics is not None:
                self.metrics.breaker_opens.inc()
        if self.metrics is not None:
            # With the breaker off, the gauge follows the last outcome so alerts still work.
            up = self.breaker.state == "closed" if self.breaker.failures else ok
            self.metrics.upstream_up.set(1 if up else 0)

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

    async def passthrough(self, path: str, token: str | None) -> Passed:
        """GET an upstream path with the caller's token and hand back its answer as it is."""
        resp = await self.request("GET", self.url(path), token)
        async with resp:
            try:
                body = await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise UpstreamUnavailable(f"upstream answer broke off ({unreachable_reason(exc)})") from exc
        if resp.status >= 500:
            raise UpstreamUnavailable(f"upstream answered {resp.status}")
        return Passed(resp.status, body, {h: resp.headers[h] for h in PASSED_HEADERS if h in resp.headers})

    async def probe(self, *, cached: bool = True) -> bool:
        """Whether the upstream origin answers (below 500) a cheap request now; the answer feeds
        the breaker and is reused for PROBE_TTL seconds unless `cached` is False."""
        now = time.monotonic()
        if cached and self._probed is not None and now - self._probed[1] < PROBE_TTL:
            return self._probed[0]
        try:
            async with self.session.get(
                self.url("/api/agent-harnesses"), allow_redirects=False, timeout=aiohttp.ClientTimeout(total=3)
            ) as resp:
                reachable = resp.status < 500
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            reachable = False
        self._probed = (reachable, now)
        self.record_outcome(reachable)
        return reachable

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
        follow: bool = True,
    ) -> aiohttp.ClientResponse:
        """Send a request, following redirects by hand.

        Same-origin redirects are followed (relative 307s to resolve-cache, renamed repos) unless
        `follow` is False (a streamed body cannot be sent twice). Off-origin ones are followed only
        when asked, without the token; otherwise the 3xx itself is returned, since it is what
        carries the Hub's metadata headers.
        """
        for _ in range(MAX_REDIRECTS + 1):
            upath = urlsplit(url).path
            metadata = "/api/" in upath or upath.endswith(LFS_BATCH_PATH)
            kind = "api" if metadata else ("head" if method == "HEAD" else "body")
            trial = self.breaker.state != "closed"
            if not self.breaker.allow():
                raise UpstreamUnavailable("upstream unavailable (failing at once after repeated failures)")
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
                self.record_outcome(False)
                reason = unreachable_reason(exc)
                # The address is the operator's business, not the client's: it goes to the log only.
                self._failure_log.warning(
                    reason, "upstream %s %s failed: %s: %s", method, _without_query(url), type(exc).__name__, exc
                )
                raise UpstreamUnavailable(f"upstream unreachable ({reason})") from exc
            except BaseException:
                if trial:
                    self.breaker.abandon()
                raise
            observe_upstream(self.metrics, kind, resp.status, started)
            self.record_outcome(resp.status < 500)
            location = resp.headers.get("Location")
            if not follow or resp.status not in (301, 302, 303, 307, 308) or not location:
                return resp
            target = urljoin(str(resp.url), location)
            if origin_of(target) != self.origin and not follow_off_origin:
                return resp
            resp.release()
            url = target
            if resp.status == 303:
                method, data = "GET", None
        raise UpstreamUnavailable("upstream redirected too many times")

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        token: str | None,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | AsyncIterable[bytes] | None = None,
    ) -> AsyncIterator[Streamed]:
        """Send a request to an upstream path and hand back its answer as it arrives.

        For git's smart HTTP, passed through both ways with one chunk in memory: `body` may be an
        async iterable (sent chunked as it comes), and the answer's body is read piece by piece. A
        streamed body cannot be sent a second time, so with one any redirect is returned as it is.
        """
        streamed_body = body is not None and not isinstance(body, bytes)
        resp = await self.request(method, self.url(path), token, headers=headers, data=body, follow=not streamed_body)
        async with resp:
            yield Streamed(resp.status, resp.headers, self._pieces(resp, path))

    async def _pieces(self, resp: aiohttp.ClientResponse, path: str) -> AsyncIterator[bytes]:
        try:
            async for piece in resp.content.iter_any():
                yield piece
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.record_outcome(False)
            reason = unreachable_reason(exc)
            self._failure_log.warning(
                ("stream", reason), "upstream answer to %s broke off: %s: %s", path, type(exc).__name__, exc
            )
            raise UpstreamUnavailable(f"upstream answer broke off ({reason})") from exc

    async def api_json(
        self,
        path: str,
        token: str | None,
        *,
        method: str = "GET",
        form: Sequence[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Any, CIMultiDictProxy[str]]:
        """Call an /api path (or an absolute upstream URL); return parsed JSON and headers.

        `form` goes out as an `application/x-www-form-urlencoded` body: the Hub parses a body by
        its Content-Type, and a bare string would be labelled `text/plain` and read as no form at
        all (paths-info then answers `[]`). `headers` are sent as well (Accept, User-Agent).
        """
        url = path if path.startswith(("http://", "https://")) else self.url(path)
        if origin_of(url) != self.origin:
            raise UpstreamError(f"refusing to follow a link off the upstream origin: {url}", status=502)
        extra = dict(headers or {})
        body: bytes | None = None
        if form is not None:
            body = urlencode(list(form)).encode()
            extra["Content-Type"] = FORM_TYPE
        resp = await self.request(method, url, token, headers=extra or None, data=body)
        async with resp:
            body = await self.read_answer(resp, "upstream answer")
            if resp.status >= 400 or resp.status in (301, 302, 303, 307, 308):
                raise await error_from_response(resp, body)
            try:
                return json.loads(body), resp.headers
            except ValueError:
                raise UpstreamUnavailable(f"upstream sent invalid JSON for {urlsplit(url).path}") from None

    async def read_answer(self, resp: aiohttp.ClientResponse, what: str, limit: int | None = None) -> bytes:
        """An answer's body (past `limit`, only its first limit + 1 bytes: the caller refuses it).

        A body that breaks off counts as a failure for the breaker and is logged without the URL's
        query (signed URLs carry credentials there); the caller gets UpstreamUnavailable.
        """
        try:
            if limit is None:
                return await resp.read()
            # StreamReader.read(n) returns what is buffered, up to n: read until the end or past the limit.
            body = bytearray()
            while len(body) <= limit and (piece := await resp.content.read(limit + 1 - len(body))):
                body += piece
            return bytes(body)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.record_outcome(False)
            reason = unreachable_reason(exc)
            self._failure_log.warning(
                ("body", reason),
                "upstream body of %s broke off: %s: %s",
                _without_query(str(resp.url)),
                type(exc).__name__,
                exc,
            )
            raise UpstreamUnavailable(f"{what} broke off ({reason})") from exc

    def resolve_url(self, repo: RepoRef, revision: str, path: str) -> str:
        return self.url(f"/{repo.url_prefix}{repo.repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}")

    async def file_meta(self, repo: RepoRef, revision: str, path: str, token: str | None) -> FileMeta:
        """HEAD the resolve URL the way the HF client does: same-origin redirects followed, the
        off-origin 302 (which carries X-Linked-Etag and X-Linked-Size) read, not followed."""
        resp = await self.request("HEAD", self.resolve_url(repo, revision, path), token)
        async with resp:
            if resp.status >= 400:
                raise await error_from_response(resp, b"")
            commit = resp.headers.get("X-Repo-Commit")
            etag = normalise_etag(resp.headers.get("X-Linked-Etag") or resp.headers.get("ETag"))
            xet_hash = (resp.headers.get("X-Xet-Hash") or "").strip().lower()
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
        if not OID_RE.fullmatch(xet_hash):
            xet_hash = ""  # absent or not a hash: the file is fetched over HTTP
        return FileMeta(etag=etag, size=size, xet_hash=xet_hash or None)

    async def body(self, file: Fetchable, token: str | None, start: int, *, chunk_size: int) -> AsyncIterator[bytes]:
        """The file's bytes from `start` to its end, in chunks of about `chunk_size`.

        A transfer that breaks (dropped connection, read timeout, body ended early, an expired
        signed URL, a 5xx) is resumed with Range from the next byte; `resume_attempts` failures in
        a row without a byte in between end it with UpstreamUnavailable. More bytes than the file's
        size are an IntegrityError. Refusals (401/403/404 from the Hub itself) end it at once.
        An LFS object's location comes from the batch API, asked again for each attempt.
        """
        pos = start
        failures = 0
        while pos < file.size:
            try:
                async with contextlib.aclosing(self._body_from(file, token, pos, chunk_size)) as chunks:
                    async for chunk in chunks:
                        if pos + len(chunk) > file.size:
                            raise IntegrityError(f"upstream sent more than the {file.size} bytes of {file.label}")
                        pos += len(chunk)
                        failures = 0
                        yield chunk
                if pos < file.size:
                    raise RetryableBodyError("upstream body ended early")
            except (RetryableBodyError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
                failures += 1
                if failures > self.config.resume_attempts:
                    raise UpstreamUnavailable(
                        f"upstream transfer of {file.label} failed {failures} times in a row: {exc}"
                    ) from exc
                if self.metrics is not None:
                    self.metrics.fill_resumes.inc()
                log.warning("upstream transfer of %s broke at byte %d (%s); resuming", file.label, pos, exc)
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))

    def lfs_batch_url(self, repo: RepoRef) -> str:
        return self.url(f"/{repo.url_prefix}{repo.repo_id}.git/{LFS_BATCH_PATH}")

    async def lfs_batch(
        self, repo: RepoRef, objects: Sequence[tuple[str, int]], token: str | None
    ) -> dict[str, LfsAction | LfsRefusal]:
        """Ask the upstream's LFS batch API where to download these (oid, size) objects from.

        Each oid gets its download action, or the upstream's refusal of that object (404: not in
        this repo). A refusal of the whole batch (401/403/404 for the repo) raises its HubError.
        Hrefs are signed and short-lived: used for one transfer, never stored.
        """
        request = {
            "operation": "download",
            "transfers": ["basic"],
            "objects": [{"oid": oid, "size": size} for oid, size in objects],
            "hash_algo": "sha256",
        }
        headers = {"Accept": LFS_TYPE, "Content-Type": LFS_TYPE}
        url = self.lfs_batch_url(repo)
        resp = await self.request("POST", url, token, headers=headers, data=json.dumps(request).encode())
        async with resp:
            body = await self.read_answer(resp, "upstream LFS batch answer", MAX_LFS_ANSWER)
            if resp.status >= 400 or resp.status in (301, 302, 303, 307, 308):
                raise await error_from_response(resp, body)
        try:
            answer = json.loads(body) if len(body) <= MAX_LFS_ANSWER else None
        except ValueError:
            answer = None
        listed = answer.get("objects") if isinstance(answer, dict) else None
        if not isinstance(listed, list):
            raise UpstreamError("upstream sent an LFS batch answer without its objects", status=502)
        wanted = dict(objects)
        found: dict[str, LfsAction | LfsRefusal] = {}
        for item in listed:
            parsed = _lfs_answer(item, wanted)
            if parsed is not None:
                found[parsed[0]] = parsed[1]
        for oid in wanted:
            found.setdefault(oid, LfsRefusal(404, "the upstream's LFS batch answer does not name this object"))
        return found

    async def _open_lfs(self, file: LfsObject, token: str | None, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """GET an LFS object from the href the upstream's batch API gives it now.

        The action's own headers go to the href's origin only: a redirect from there is followed
        with the Range alone (and the token only back on the upstream's origin).
        """
        answer = (await self.lfs_batch(file.repo, [(file.oid, file.size)], token))[file.oid]
        if isinstance(answer, LfsRefusal):
            if answer.code in (404, 410, 422):
                raise EntryNotFound(f"{file.label}: the upstream answered {answer.code} {answer.message}")
            raise RetryableBodyError(f"upstream LFS batch answered {answer.code} for it: {answer.message}")
        resp = await self.request("GET", answer.href, token, headers={**answer.headers, **headers}, follow=False)
        location = resp.headers.get("Location")
        if resp.status not in (301, 302, 303, 307, 308) or not location:
            return resp
        resp.release()
        target = urljoin(str(resp.url), location)
        return await self.request("GET", target, token, headers=headers or None, follow_off_origin=True)

    async def _body_from(self, file: Fetchable, token: str | None, pos: int, chunk_size: int) -> AsyncIterator[bytes]:
        """The file's bytes from `pos`, from one upstream response."""
        resp = await self._open_body(file, token, pos)
        async with resp:
            skip = pos if resp.status == 200 else 0  # upstream ignored the Range: drop what we have
            async for chunk in batched(resp.content, chunk_size):
                if self.metrics is not None:
                    self.metrics.upstream_bytes.inc(len(chunk))
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                if chunk:
                    yield chunk

    async def _open_body(self, file: Fetchable, token: str | None, offset: int) -> aiohttp.ClientResponse:
        """GET a file's bytes from `offset`, re-resolving the (signed) location every time.

        Returns a response with status 200 (the whole body: the caller skips `offset` bytes) or 206
        starting at `offset`. Raises RetryableBodyError for failures a new attempt may fix.
        """
        headers = {"Range": f"bytes={offset}-"} if offset else None
        try:
            if isinstance(file, LfsObject):
                resp = await self._open_lfs(file, token, headers or {})
            else:
                resp = await self.request(
                    "GET", self.resolve_url(file.repo, file.commit, file.path), token, headers=headers,
                    follow_off_origin=True,
                )  # fmt: skip
        except UpstreamUnavailable as exc:
            raise RetryableBodyError(str(exc)) from exc
        if resp.status == 200 or (resp.status == 206 and range_start(resp) == offset):
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


@dataclass(frozen=True)
class Streamed:
    """An upstream answer whose body is read as it arrives (`Upstream.stream`)."""

    status: int
    headers: CIMultiDictProxy[str]
    chunks: AsyncIterator[bytes]


@dataclass(frozen=True)
class Passed:
    """An upstream answer passed on as it is (small, uncached: whoami, auth-check)."""

    status: int
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class LfsAction:
    """Where the upstream's LFS batch API says an object downloads from (signed: use once)."""

    href: str
    headers: dict[str, str]


@dataclass(frozen=True)
class LfsRefusal:
    """The upstream's per-object error in an LFS batch answer (404: no such object in the repo)."""

    code: int
    message: str


def _lfs_answer(item: Any, wanted: Mapping[str, int]) -> tuple[str, LfsAction | LfsRefusal] | None:
    """(oid, action or refusal) of one object of an upstream batch answer; None if it names none we asked for."""
    if not isinstance(item, dict) or item.get("oid") not in wanted:
        return None
    oid = str(item["oid"])
    error = item.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        return oid, LfsRefusal(code if isinstance(code, int) else 404, str(error.get("message") or "refused"))
    if item.get("size") != wanted[oid]:
        return oid, LfsRefusal(422, f"the upstream says its size is {item.get('size')!r}")
    actions = item.get("actions")
    download = actions.get("download") if isinstance(actions, dict) else None
    href = download.get("href") if isinstance(download, dict) else None
    if not isinstance(href, str) or urlsplit(href).scheme not in ("http", "https"):
        return oid, LfsRefusal(404, "the upstream offers no download of it")
    header = download.get("header")
    headers = {str(k): str(v) for k, v in header.items()} if isinstance(header, dict) else {}
    return oid, LfsAction(href, headers)


PASSED_HEADERS = ("Content-Type", "X-Error-Code", "X-Error-Message")
PROBE_TTL = 10.0  # seconds a probe's answer is reused


def _without_query(url: str) -> str:
    # Signed CDN URLs carry their credentials in the query.
    return url.split("?", 1)[0]


def range_start(resp: aiohttp.ClientResponse) -> int | None:
    value = resp.headers.get("Content-Range", "")
    try:
        unit, rest = value.split(" ", 1)
        return int(rest.split("-", 1)[0]) if unit == "bytes" else None
    except ValueError:
        return None
