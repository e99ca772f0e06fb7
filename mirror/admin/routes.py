"""The admin API under /admin/: allow-list, sync jobs, cached repos.

Authenticated with `Authorization: Bearer <admin token>` (compared in constant time); without a
configured token the API does not exist (404). Every change is written to the `mirror.audit` log
with who, what and when, never the token.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

from aiohttp import web

from mirror.errors import BadRequest, HubError, NotFound
from mirror.hub.appkeys import ACCESS, ALLOWLIST, CONFIG, MAINTENANCE, PURGE, STORAGE, SYNC
from mirror.hub.bodies import read_body
from mirror.lifecycle.usage import repo_usage
from mirror.policy.allowlist import AllowEntry
from mirror.repo import REPO_TYPES, RepoRef, validate_repo_id
from mirror.tokens import bearer_token, fingerprint, same_token

audit_log = logging.getLogger("mirror.audit")

# The largest valid allow-list entry (every list at its cap) is about 50 KB.
MAX_BODY = 64 * 1024
# Longer audit lines are cut: a log line must not grow with what a caller sends.
MAX_AUDIT_CHARS = 2000


class AdminAuthError(HubError):
    status = 401


def _authorise(request: web.Request) -> str:
    """The caller's identity for the audit log, or an error; never the token itself."""
    expected = request.app[CONFIG].admin.token
    if not expected:
        raise NotFound("the admin API is disabled: set HUB_MIRROR_ADMIN_TOKEN (or admin.token) to enable it")
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise AdminAuthError(
            "admin API: missing 'Authorization: Bearer <admin token>'",
            headers={"WWW-Authenticate": 'Bearer realm="hub-mirror admin"'},
        )
    if not same_token(token, expected):
        raise HubError("admin API: wrong admin token", status=403)
    return f"admin-token:{fingerprint(token)[:8]}@{request.remote}"


def _audit(who: str, action: str, target: Any) -> None:
    text = json.dumps(target, default=str)
    if len(text) > MAX_AUDIT_CHARS:
        text = f"{text[:MAX_AUDIT_CHARS]}... ({len(text) - MAX_AUDIT_CHARS} more characters)"
        # The structured copy is cut the same way; the full entry is in storage.
        target = {"truncated": text}
    audit_log.info(
        "%s %s %s",
        who,
        action,
        text,
        extra={"audit": {"who": who, "action": action, "target": target, "at": time.time()}},
    )


async def _json_body(request: web.Request) -> Any:
    raw = await read_body(request, MAX_BODY, "admin request body")
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body must be JSON (UTF-8)") from None


async def list_allowlist(request: web.Request) -> web.Response:
    _authorise(request)
    entries = await request.app[ALLOWLIST].entries()
    return web.json_response([e.to_json() for e in entries])


async def add_allowlist(request: web.Request) -> web.Response:
    who = _authorise(request)
    entry = AllowEntry.from_request(await _json_body(request))
    await request.app[ALLOWLIST].add(entry)
    _audit(who, "allowlist.add", entry.to_json())
    return web.json_response(entry.to_json(), status=201)


async def remove_allowlist(request: web.Request) -> web.Response:
    who = _authorise(request)
    removed = await request.app[ALLOWLIST].remove(request.match_info["id"])
    if removed is None:
        raise NotFound(f"no allow-list entry {request.match_info['id']}")
    _audit(who, "allowlist.remove", removed.to_json())
    return web.Response(status=204)


async def start_sync(request: web.Request) -> web.Response:
    who = _authorise(request)
    body = await _json_body(request) if request.can_read_body else {}
    if not isinstance(body, dict) or set(body) - {"repo_type", "repo"}:
        raise BadRequest('body must be {} or {"repo_type": ..., "repo": ...}')
    repo_type, repo = body.get("repo_type"), body.get("repo")
    if repo_type is not None and repo_type not in REPO_TYPES:
        raise BadRequest(f"repo_type must be one of {', '.join(REPO_TYPES)}")
    if repo is not None:
        if not isinstance(repo, str):
            raise BadRequest("repo must be a repo id")
        validate_repo_id(repo)
    job = await request.app[SYNC].submit("api", repo_type, repo)
    _audit(who, "sync.start", {"job": job.id, "repo_type": repo_type, "repo": repo})
    return web.json_response(job.to_json(), status=202)


async def list_sync(request: web.Request) -> web.Response:
    _authorise(request)
    return web.json_response(await request.app[SYNC].list())


async def get_sync(request: web.Request) -> web.Response:
    _authorise(request)
    return web.json_response(await request.app[SYNC].get(request.match_info["id"]))


async def list_repos(request: web.Request) -> web.Response:
    """What is cached, per repo: revisions -> commits, files and bytes per commit, stored blobs and
    bytes, last read, pinned or not."""
    _authorise(request)
    usage = await repo_usage(request.app[STORAGE], request.app[ACCESS], request.app[ALLOWLIST])
    return web.json_response(usage["repos"])


async def cache_usage(request: web.Request) -> web.Response:
    """Storage totals, the size limit, and what the last eviction pass found (pinned over limit)."""
    _authorise(request)
    config = request.app[CONFIG].cache
    usage = await repo_usage(request.app[STORAGE], request.app[ACCESS], request.app[ALLOWLIST])
    maintenance = request.app[MAINTENANCE]
    last = maintenance.evictor.last if maintenance.evictor is not None else None
    totals = usage["totals"]
    return web.json_response(
        {
            **totals,
            "max_bytes": config.max_bytes,
            "pinned_over_limit": bool(config.max_bytes and totals["pinned_bytes"] > config.max_bytes),
            "maintenance_leader": maintenance.leader,
            "last_eviction": None if last is None else dataclasses.asdict(last),
        }
    )


async def purge_repo(request: web.Request) -> web.Response:
    who = _authorise(request)
    repo_type = request.match_info["type"].removesuffix("s")
    if repo_type not in REPO_TYPES:
        raise BadRequest(f"repo type must be one of {', '.join(REPO_TYPES)}")
    repo = RepoRef(repo_type, validate_repo_id(request.match_info["repo"]))
    removed = await request.app[PURGE].repo(repo)
    _audit(who, "repos.purge", {"repo_type": repo.repo_type, "repo": repo.repo_id, "records": removed})
    return web.Response(status=204)


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/admin/allowlist", list_allowlist)
    app.router.add_post("/admin/allowlist", add_allowlist)
    app.router.add_delete("/admin/allowlist/{id}", remove_allowlist)
    app.router.add_post("/admin/sync", start_sync)
    app.router.add_get("/admin/sync", list_sync)
    app.router.add_get("/admin/sync/{id}", get_sync)
    app.router.add_get("/admin/repos", list_repos)
    app.router.add_get("/admin/usage", cache_usage)
    app.router.add_delete("/admin/repos/{type}/{repo:.+}", purge_repo)
