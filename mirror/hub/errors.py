"""The one place where errors become Hub-compatible responses.

Status, `X-Error-Code` and `X-Error-Message` follow the Hub, since the HF client picks its exception
(RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError, GatedRepoError) from them.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

from mirror.errors import HubError, StorageError

log = logging.getLogger(__name__)
STORAGE_UNAVAILABLE = "the mirror's cache storage is unavailable; try again later"


def _header_safe(text: str) -> str:
    cleaned = "".join(c if 32 <= ord(c) < 127 else " " for c in text)
    return cleaned[:1000]


def error_response(error: HubError) -> web.Response:
    headers = dict(error.headers)
    headers["X-Error-Message"] = _header_safe(error.message)
    if error.code:
        headers["X-Error-Code"] = error.code
    body = json.dumps({"error": error.message})
    return web.Response(status=error.status, text=body, content_type="application/json", headers=headers)


@web.middleware
async def hub_errors(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not _cut_if_started(request) and exc.status >= 400:
            # aiohttp's own answers (no route, method not allowed) in the Hub's shape too.
            kept = {name: exc.headers[name] for name in ("Allow",) if name in exc.headers}
            return error_response(HubError(exc.reason or "error", status=exc.status, headers=kept))
        raise
    except (ConnectionResetError, OSError) as exc:
        # The client went away while we were answering: nothing to send.
        log.debug("client connection lost: %s", exc)
        raise
    except StorageError as exc:
        # Its message names the store (endpoint, bucket, prefix, path): the log has it, the client not.
        log.warning("%s %s -> 503 %s", request.method, request.path, exc.message)
        _cut_if_started(request)
        return error_response(HubError(STORAGE_UNAVAILABLE, status=503))
    except HubError as exc:
        if exc.status >= 500:
            log.warning("%s %s -> %d %s", request.method, request.path, exc.status, exc.message)
        _cut_if_started(request)
        return error_response(exc)
    except Exception:
        log.exception("unhandled error for %s %s", request.method, request.path)
        _cut_if_started(request)
        return error_response(HubError("internal error in the mirror", status=500))


def _cut_if_started(request: web.Request) -> bool:
    """Close the connection if this request's status line and headers are already out; True if so.

    A second response on a keep-alive connection would be read as the answer to the client's next
    request, shifting every later answer by one. Cut, aiohttp cannot write the error either.
    """
    writer = request.writer
    if writer is None or writer.output_size == 0:
        return False
    log.warning("%s %s failed after its headers were sent; closing the connection", request.method, request.path)
    if request.transport is not None:
        request.transport.abort()
    return True
