"""`git clone` and `git fetch` through the mirror: git's smart HTTP, passed through to upstream.

Clone and fetch (`info/refs?service=git-upload-pack`, `git-upload-pack`) go to the upstream as they
came, streamed both ways with one chunk in memory: packs are neither cached nor rewritten. git-lfs's
batch API (`{repo}.git/info/lfs/objects/batch`) is passed on too, for downloads only, so the hrefs
it answers with point at the upstream's storage: LFS bytes come from there, not from the mirror.

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

import base64
import binascii
import json
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from mirror.errors import BadRequest, HubError, MethodNotAllowed, PayloadTooLarge, UpstreamError, UpstreamUnavailable
from mirror.hub.appkeys import POLICY, UPSTREAM
from mirror.hub.errors import error_response
from mirror.hub.observe import GIT_ROUTES, ROUTE
from mirror.hub.paths import GitTarget
from mirror.hub.resolve import cut
from mirror.metrics import current_stats
from mirror.tokens import bearer_token

log = logging.getLogger(__name__)

READ_ONLY = "hub-mirror is read-only: push to the Hub itself"
REALM = 'Basic realm="Hugging Face Hub mirror", charset="UTF-8"'
UPLOAD_PACK = "git-upload-pack"
RECEIVE_PACK = "git-receive-pack"
LFS_BATCH = "info/lfs/objects/batch"
LFS_TYPE = "application/vnd.git-lfs+json"
CHUNK = 64 * 1024
# git-lfs asks for 100 objects per batch (lfs.transfer.batchSize); a few KiB. This bounds what one
# request makes the mirror hold, since the operation must be read before the batch goes upstream.
MAX_LFS_BATCH = 1024 * 1024
METHODS = {"info/refs": ("GET",), UPLOAD_PACK: ("POST",), LFS_BATCH: ("POST",)}
# What git and git-lfs send that the upstream needs. Content-Encoding is not among them: the
# server hands request bodies over decoded, so they go upstream decoded (and without the length).
REQUEST_HEADERS = ("Content-Type", "Accept", "Git-Protocol", "User-Agent")
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


class ReadOnly(HubError):
    status = 403
    code = "ReadOnlyMirror"


def git_token(authorization: str | None) -> str | None:
    """The caller's token: Bearer as the HF client sends it, or the password of git's HTTP Basic.

    Basic's user name is ignored (the Hub takes any); no password is anonymous. The token passes the
    same checks as a bearer token before it is hashed for a cache key or sent upstream.
    """
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return bearer_token(authorization)
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        decoded = ""
    _, colon, password = decoded.partition(":")
    if not colon:
        raise BadRequest(
            "malformed Authorization header: Basic credentials are base64 of user:token",
            headers={"WWW-Authenticate": REALM},
        )
    return bearer_token(f"Bearer {password}") if password else None


async def handle_git(request: web.Request, target: GitTarget) -> web.StreamResponse:
    try:
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
    if target.endpoint == LFS_BATCH:
        body = json.dumps({"message": error.message}).encode()
        return web.Response(status=error.status, body=body, content_type=LFS_TYPE, headers=headers)
    return web.Response(status=error.status, text=error.message + "\n", content_type="text/plain", headers=headers)


def _challenge(target: GitTarget) -> dict[str, str]:
    """What makes git (and git-lfs) ask for credentials and try again."""
    if target.endpoint == LFS_BATCH:
        return {"WWW-Authenticate": REALM, "LFS-Authenticate": REALM}
    return {"WWW-Authenticate": REALM}


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
    body: bytes | AsyncIterator[bytes] | None = None
    if target.endpoint == LFS_BATCH:
        body = await _lfs_download_batch(request)
    elif target.endpoint == UPLOAD_PACK:
        if "Content-Length" in request.headers and "Content-Encoding" not in request.headers:
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


async def _lfs_download_batch(request: web.Request) -> bytes:
    """The batch request's bytes, once they are known to ask for downloads only."""
    if request.content_length is not None and request.content_length > MAX_LFS_BATCH:
        raise PayloadTooLarge(f"an LFS batch request is limited to {MAX_LFS_BATCH} bytes")
    body = await request.content.read(MAX_LFS_BATCH + 1)
    if len(body) > MAX_LFS_BATCH:
        raise PayloadTooLarge(f"an LFS batch request is limited to {MAX_LFS_BATCH} bytes")
    try:
        operation = json.loads(body).get("operation")
    except (ValueError, AttributeError):
        operation = None
    if not isinstance(operation, str):
        raise BadRequest("an LFS batch request is a JSON object with an operation")
    if operation != "download":
        raise ReadOnly(READ_ONLY)
    return body


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
