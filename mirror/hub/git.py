"""`git clone` and `git fetch` through the mirror: git's smart HTTP, passed through to upstream.

Clone and fetch (`info/refs?service=git-upload-pack`, `git-upload-pack`) go to the upstream as they
came, streamed both ways with one chunk in memory: packs are neither cached nor rewritten. git-lfs's
batch API and objects are the mirror's own (hub/lfs.py): LFS bytes come from the blob cache.

The mirror is read-only: a push (`service=git-receive-pack`, or an LFS upload) is refused with 403.
Before anything goes upstream, the repo is checked exactly as a resolve is (allow-list, then
gated/private access for the caller's token).

git sends its token as HTTP Basic (`http://user:hf_xxx@mirror/org/repo`, or a credential helper),
the HF client as Bearer: both are accepted, and only the token goes upstream (as Bearer, to the
upstream origin only). A 401 carries `WWW-Authenticate: Basic`, without which git would not ask
its credential helper, and errors are text/plain, which git prints (`remote: ...`); git-lfs gets
its JSON `{"message": ...}`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from mirror.errors import BadRequest, HubError, MethodNotAllowed, ReadOnly, UpstreamError, UpstreamUnavailable
from mirror.hub.appkeys import POLICY, UPSTREAM
from mirror.hub.errors import error_response
from mirror.hub.lfs import READ_ONLY, handle_lfs_batch, handle_lfs_object
from mirror.hub.observe import GIT_ROUTES, ROUTE
from mirror.hub.paths import LFS_OBJECT, GitTarget
from mirror.hub.resolve import cut
from mirror.metrics import current_stats
from mirror.tokens import BASIC_REALM, git_token
from mirror.upstream import LFS_BATCH_PATH as LFS_BATCH
from mirror.upstream import LFS_TYPE

log = logging.getLogger(__name__)

UPLOAD_PACK = "git-upload-pack"
RECEIVE_PACK = "git-receive-pack"
CHUNK = 64 * 1024
METHODS = {"info/refs": ("GET",), UPLOAD_PACK: ("POST",)}
# What git sends that the upstream needs. The server hands request bodies over as they came on the
# wire (app.py), so a gzipped body goes upstream as git sent it, with its encoding and length.
REQUEST_HEADERS = ("Content-Type", "Content-Encoding", "Accept", "Git-Protocol", "User-Agent")
RESPONSE_HEADERS = (
    "Content-Type",
    "Content-Encoding",
    "Cache-Control",
    "Expires",
    "Pragma",
    "X-Error-Code",
    "X-Error-Message",
)
REDIRECTS = (301, 302, 303, 307, 308)


async def handle_git(request: web.Request, target: GitTarget) -> web.StreamResponse:
    try:
        if target.endpoint == LFS_BATCH:
            return await handle_lfs_batch(request, target)
        if target.endpoint == LFS_OBJECT:
            return await handle_lfs_object(request, target)
        return await _handle(request, target)
    except HubError as exc:
        if exc.status >= 500:
            log.warning("%s %s -> %d %s", request.method, request.path, exc.status, exc.message)
        return git_error(target, exc)


def git_error(target: GitTarget, error: HubError) -> web.Response:
    """The mirror's error in the shape git (text/plain, printed as `remote: ...`) or git-lfs (JSON) shows."""
    shaped = error_response(error)  # status, X-Error-Code and X-Error-Message as every error has them
    headers = {k: v for k, v in shaped.headers.items() if k.lower() not in ("content-type", "content-length")}
    if error.status == 401:
        headers.update(_challenge(target))
    if target.endpoint in (LFS_BATCH, LFS_OBJECT):
        body = json.dumps({"message": error.message}).encode()
        return web.Response(status=error.status, body=body, content_type=LFS_TYPE, headers=headers)
    return web.Response(status=error.status, text=error.message + "\n", content_type="text/plain", headers=headers)


def _challenge(target: GitTarget) -> dict[str, str]:
    """What makes git (and git-lfs) ask for credentials and try again."""
    if target.endpoint in (LFS_BATCH, LFS_OBJECT):
        return {"WWW-Authenticate": BASIC_REALM, "LFS-Authenticate": BASIC_REALM}
    return {"WWW-Authenticate": BASIC_REALM}


async def _handle(request: web.Request, target: GitTarget) -> web.StreamResponse:
    service = request.query.get("service") if target.endpoint == "info/refs" else None
    if target.endpoint == RECEIVE_PACK or service == RECEIVE_PACK:
        request[ROUTE] = GIT_ROUTES[RECEIVE_PACK]
        raise ReadOnly(READ_ONLY)
    if request.method not in METHODS[target.endpoint]:
        raise MethodNotAllowed(request.method, METHODS[target.endpoint])
    if target.endpoint == "info/refs" and service != UPLOAD_PACK:
        raise BadRequest(f"hub-mirror speaks git's smart HTTP only: ask info/refs?service={UPLOAD_PACK}")
    path = target.upstream_path + (f"?service={UPLOAD_PACK}" if service else "")
    headers = {name: request.headers[name] for name in REQUEST_HEADERS if name in request.headers}
    body: AsyncIterator[bytes] | None = None
    if target.endpoint == UPLOAD_PACK:
        if "Content-Length" in request.headers:
            headers["Content-Length"] = request.headers["Content-Length"]  # else: sent chunked
        body = _request_body(request)

    token = git_token(request.headers.get("Authorization"))
    await request.app[POLICY].check(target.repo, token, files=True)

    async with request.app[UPSTREAM].stream(request.method, path, token, headers=headers, body=body) as answer:
        if answer.status >= 500:
            raise UpstreamUnavailable(f"upstream answered {answer.status} to git's {target.endpoint}")
        if answer.status in REDIRECTS:
            # Off the upstream's origin, or a POST whose streamed body cannot be sent again.
            raise UpstreamError(f"upstream redirected git's {target.endpoint}; not followed", status=502)
        passed = {name: answer.headers[name] for name in RESPONSE_HEADERS if name in answer.headers}
        if answer.status == 401:
            passed.update(_challenge(target))
        response = web.StreamResponse(status=answer.status, headers=passed)
        length = answer.headers.get("Content-Length", "")
        if length.isdigit():
            response.content_length = int(length)
        await _relay(request, response, answer.chunks)
        return response


async def _request_body(request: web.Request) -> AsyncIterator[bytes]:
    # aiohttp reads the client no faster than this is consumed: one chunk in memory.
    async for chunk in request.content.iter_chunked(CHUNK):
        yield chunk


async def _relay(request: web.Request, response: web.StreamResponse, chunks: AsyncIterator[bytes]) -> None:
    """Send the upstream's body as it arrives; once the headers are out, a failure can only cut."""
    stats = current_stats()
    await response.prepare(request)
    try:
        async for chunk in chunks:
            await response.write(chunk)
            if stats is not None:
                stats.bytes_sent += len(chunk)
    except Exception as exc:
        if stats is not None:
            stats.cut = True
        if isinstance(exc, ConnectionError):
            log.debug("client left %s: %s", request.rel_url.raw_path, exc)
        else:
            log.warning("cutting %s: %s", request.rel_url.raw_path, exc)
        cut(request)
        return
    await response.write_eof()
