"""`HEAD|GET /{repo}/resolve/{rev}/{path}`: file bytes, with the Hub's headers, from the cache.

The mirror answers 200 itself (never a redirect to upstream or a CDN): hits and misses share this
code, and the headers are those the HF client reads (X-Repo-Commit, ETag = content hash,
X-Linked-Etag/X-Linked-Size for LFS, true Content-Length, Accept-Ranges). The one redirect is
opt-in: GETs of cached LFS files to a presigned URL of the mirror's own object store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
from typing import BinaryIO
from urllib.parse import quote

from aiohttp import web

from mirror.cache.blobs.blobs import BlobBody
from mirror.cache.metadata.entries import FileEntry
from mirror.errors import PreconditionFailed, ResumeRefused
from mirror.hub.appkeys import BLOBS, ENTRIES, METRICS, POLICY, REVISIONS
from mirror.hub.conditional import precondition_status, range_applies
from mirror.hub.errors import error_response
from mirror.hub.paths import ResolveTarget
from mirror.hub.ranges import parse_range, restarts_on_full_answer
from mirror.hub.xetlinks import xet_headers
from mirror.metrics import current_stats
from mirror.replicas import PEER_HEADER
from mirror.repo import Fetchable
from mirror.tokens import bearer_token

log = logging.getLogger(__name__)

EXPOSED = (
    "X-Repo-Commit, X-Linked-Etag, X-Linked-Size, ETag, Content-Range, Accept-Ranges, X-Error-Code, X-Error-Message"
)


def file_headers(entry: FileEntry) -> dict[str, str]:
    name = entry.path.rsplit("/", 1)[-1]
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    headers = {
        "ETag": f'"{entry.etag}"',
        "X-Repo-Commit": entry.commit,
        "Accept-Ranges": "bytes",
        "Content-Type": mimetypes.guess_type(name)[0] or "application/octet-stream",
        "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}; filename=\"{ascii_name}\"",
        "Access-Control-Expose-Headers": EXPOSED,
    }
    if entry.is_lfs:
        headers["X-Linked-Etag"] = f'"{entry.etag}"'
        headers["X-Linked-Size"] = str(entry.size)
    return headers


async def handle_resolve(request: web.Request, target: ResolveTarget) -> web.StreamResponse:
    token = bearer_token(request.headers.get("Authorization"))
    await request.app[POLICY].check(target.repo, token, files=True)
    commit = await request.app[REVISIONS].resolve(target.repo, target.revision, token)
    entry = await request.app[ENTRIES].get(target.repo, commit, target.path, token)
    headers = file_headers(entry) | await xet_headers(request, entry)

    precondition = precondition_status(request.headers, headers["ETag"], request.method)
    if precondition is not None:
        return not_modified(entry, precondition)
    range_header = request.headers.get("Range") if range_applies(request.headers, headers["ETag"]) else None
    return await serve_blob(request, entry, headers, token, range_header, redirectable=entry.is_lfs)


async def serve_blob(
    request: web.Request,
    blob: Fetchable,
    headers: dict[str, str],
    token: str | None,
    range_header: str | None,
    *,
    redirectable: bool,
) -> web.StreamResponse:
    """A blob's bytes (all, or the Range asked for) with `headers`: from the cache, a fill, or a peer.

    `redirectable`: a GET of a cached blob may be answered with a 302 to the object store (only
    LFS files: their 302 carries X-Linked-Etag/X-Linked-Size, as the Hub's CDN redirects do).
    """
    if range_header and await request.app[BLOBS].resume_unsafe(blob):
        # Some client may hold bad bytes of this blob from a fill that failed verification, so no
        # Range of it is served: clients that start over get the whole file (RFC 9110 lets a
        # server ignore Range), the others an error that stops them (see hub/ranges.py).
        if not restarts_on_full_answer(request.headers.get("User-Agent")):
            raise ResumeRefused(
                f"An upstream copy of {blob.label} once failed verification, so a partial download of it may hold "
                "bad bytes: delete the partial file and download it again without resuming."
            )
        range_header = None
        headers["Accept-Ranges"] = "none"
    span = parse_range(range_header, blob.size)
    start, end = span if span else (0, blob.size)
    status = 206 if span else 200
    if span:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"

    if request.method == "HEAD":
        headers["X-Cache"] = "HIT" if await request.app[BLOBS].is_cached(blob) else "MISS"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = end - start
        await response.prepare(request)
        await response.write_eof()
        return response

    # A request from another replica (streaming a fill of ours) is never passed on or redirected.
    from_peer = PEER_HEADER in request.headers
    disposition = headers.get("Content-Disposition") if redirectable and not from_peer else None
    body = await request.app[BLOBS].open(blob, token, start, end, disposition, may_proxy=not from_peer)
    try:
        headers["X-Cache"] = "HIT" if body.source == "cache" else "MISS"
        stats = current_stats()
        if stats is not None:
            joined = stats.joined_fill or body.source == "peer"
            stats.cache = "hit" if body.source == "cache" else ("coalesced" if joined else "miss")
        if body.url is not None:
            request.app[METRICS].redirects.inc()
            return redirect(body.url, headers)
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = end - start
        await send_body(request, response, body, start, end)
        return response
    finally:
        body.release()


def not_modified(entry: FileEntry, status: int) -> web.Response:
    """304 (the client's copy is current) or 412 (If-Match named other content), without a body."""
    headers = {"ETag": f'"{entry.etag}"', "X-Repo-Commit": entry.commit}
    if status == 412:
        return error_response(PreconditionFailed(f'{entry.path} has ETag "{entry.etag}", not the one If-Match names'))
    return web.Response(status=status, headers=headers)


def redirect(location: str, headers: dict[str, str]) -> web.Response:
    """A 302 to the object store, with the file's headers, like the Hub's redirect to its CDN.

    Clients follow it for the GET (dropping their Authorization header, as it leaves the origin) and
    send their Range again; the presigned URL needs no credentials of theirs.
    """
    headers = {name: value for name, value in headers.items() if name not in ("Content-Range", "Content-Type")}
    headers["Location"] = location
    return web.Response(status=302, headers=headers, text=f"Found. Redirecting to {location}")


async def send_body(request: web.Request, response: web.StreamResponse, body: BlobBody, start: int, end: int) -> None:
    """Send [start, end) after the headers; a failure once they are out cuts the connection.

    The headers promise exactly end - start bytes. Once they are on the wire, nothing may follow
    but those bytes: a second response (an error page) on a keep-alive connection would shift every
    later answer on it by one, and the client would store one file's bytes under another's name.
    """
    served = request.app[METRICS].bytes_served.labels(body.source)
    stats = current_stats()
    handle = None
    if body.path is not None and end > start:
        # Opened before the headers go out, so a vanished file is still an error status.
        handle = open(body.path, "rb")  # noqa: SIM115 (closed below, after the headers went out)
    try:
        try:
            await response.prepare(request)
        except ConnectionResetError as exc:  # the client left before the headers went out
            log.debug("client left %s before the headers: %s", request.path, exc)
            request.app[METRICS].client_disconnects.inc()
            return
        sent = 0
        try:
            if handle is not None:
                sent = await _sendfile(request, response, handle, start, end)
            elif body.chunks is not None:
                async for chunk in body.chunks:
                    await response.write(chunk)
                    sent += len(chunk)
                    served.inc(len(chunk))
                    if stats is not None:
                        stats.bytes_sent += len(chunk)
            if sent != end - start:
                raise ConnectionResetError(f"body ended after {sent} of {end - start} bytes")
        except Exception as exc:
            if stats is not None:
                stats.cut = True
            if _client_went_away(request, exc):
                # Normal: aria2c closes its extra connections, ranges get cancelled, users press ^C.
                log.debug("client left %s after %d bytes: %s", request.path, sent, exc)
                request.app[METRICS].client_disconnects.inc()
            else:
                # The only honest signal left is to cut the connection: the client sees a short
                # body (and retries) rather than a complete wrong one.
                log.warning("cutting %s after %d bytes: %s", request.rel_url.raw_path, sent, exc)
            cut(request)
            return
        if handle is not None:
            served.inc(sent)
            if stats is not None:
                stats.bytes_sent += sent
        with contextlib.suppress(ConnectionResetError):  # every byte went out; the client may be gone
            await response.write_eof()
    finally:
        if handle is not None:
            handle.close()


def _client_went_away(request: web.Request, exc: Exception) -> bool:
    """The body stopped because the client closed its connection, not because of the mirror."""
    transport = request.transport
    return isinstance(exc, ConnectionError) or transport is None or transport.is_closing()


def cut(request: web.Request) -> None:
    """Drop the client's connection: after the headers, this is how a failed body must end."""
    if request.transport is not None:
        request.transport.abort()


async def _sendfile(request: web.Request, response: web.StreamResponse, handle: BinaryIO, start: int, end: int) -> int:
    """Bytes sent: fewer than asked when the file on disk is shorter than its entry says."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("client went away")
    try:
        return await asyncio.get_running_loop().sendfile(transport, handle, start, end - start)
    except NotImplementedError:
        handle.seek(start)
        remaining = end - start
        while remaining > 0:
            data = await asyncio.to_thread(handle.read, min(1024 * 1024, remaining))
            if not data:
                raise ConnectionResetError(f"cached file ended {remaining} bytes early") from None
            remaining -= len(data)
            await response.write(data)
        return end - start
