"""Per-request observation: request metrics, cache-result metrics and one access-log line.

Handlers mark what they learn on the request (route kind, repo type) and on the RequestStats in
the context (upstream calls, coalescing, bytes); this middleware turns it into metrics and a log
line. The Authorization header and query strings are never logged.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from mirror.hub.appkeys import METRICS
from mirror.metrics import CURRENT_REQUEST, RequestStats, status_class

access_log = logging.getLogger("mirror.access")

ROUTE = web.RequestKey("route", str)
REPO_TYPE = web.RequestKey("repo_type", str)
OPS_ROUTES = {"/healthz": "healthz", "/readyz": "readyz", "/metrics": "metrics"}
# git's smart HTTP and git-lfs, passed through to upstream (hub/git.py): endpoint -> route kind.
# A push (`info/refs?service=git-receive-pack` too) is refused and counted as git_receive_pack.
# Routes whose GETs send blob bytes from the cache (or its fill); their HEADs, the API and a Xet
# reconstruction (a miss when the file had to be filled first) are metadata lookups.
BLOB_ROUTES = frozenset({"resolve", "git_lfs_object", "xet_chunks"})
CACHED_ROUTES = BLOB_ROUTES | {"xet_reconstruction"}
GIT_ROUTES = {
    "info/refs": "git_refs",
    "git-upload-pack": "git_upload_pack",
    "git-receive-pack": "git_receive_pack",
    "info/lfs/objects/batch": "git_lfs_batch",
    "info/lfs/objects": "git_lfs_object",
}


@web.middleware
async def observe(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    stats = RequestStats()
    token = CURRENT_REQUEST.set(stats)
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not stats.bytes_sent and request.method != "HEAD" and isinstance(response, web.Response):
            # A whole-body answer (API JSON, /metrics, errors): its size is known before it is sent.
            stats.bytes_sent = response.content_length or 0
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        CURRENT_REQUEST.reset(token)
        _record(request, stats, status, time.monotonic() - started)


def _record(request: web.Request, stats: RequestStats, status: int, duration: float) -> None:
    metrics = request.app[METRICS]
    route = (
        request.get(ROUTE)
        or OPS_ROUTES.get(request.path)
        or ("admin" if request.path.startswith("/admin/") else "other")
    )
    metrics.requests.labels(
        route, request.method if request.method in ("GET", "HEAD", "POST") else "other", status_class(status)
    ).inc()
    metrics.request_duration.labels(route).observe(duration)
    cache = None
    if status < 400 and (route in CACHED_ROUTES or route.startswith("api_")):
        kind = "blob" if route in BLOB_ROUTES and request.method == "GET" else "metadata"
        cache = stats.cache_result()
        metrics.cache_lookups.labels(kind, cache).inc()
    access_log.info(
        "%s %s %d%s %dB %.1fms cache=%s upstream=%.1fms",
        request.method,
        request.rel_url.raw_path,
        status,
        " CUT" if stats.cut else "",
        stats.bytes_sent,
        duration * 1000,
        cache or "-",
        stats.upstream_seconds * 1000,
        extra={
            "http": {
                "method": request.method,
                "path": request.rel_url.raw_path,
                "status": status,
                "bytes": stats.bytes_sent,
                "cut": stats.cut,
                "duration_ms": round(duration * 1000, 3),
                "cache": cache,
                "upstream_ms": round(stats.upstream_seconds * 1000, 3),
                "upstream_calls": stats.upstream_calls,
                "route": route,
                "repo_type": request.get(REPO_TYPE),
                "remote": request.remote,
            }
        },
    )
