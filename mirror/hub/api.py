"""The read API clients call: repo info, revision, tree, paths-info, refs, commits, whoami.

Answers come from the metadata cache; JSON is stripped of xet fields (unless configured otherwise)
and pagination links point at the mirror, never at the upstream.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from mirror.errors import BadRequest, MethodNotAllowed, NotFound, UpstreamUnavailable
from mirror.hub import xet
from mirror.hub.paths import ApiTarget
from mirror.repo import RepoRef
from mirror.services import SERVICES, Services
from mirror.tokens import bearer_token

TREE_PAGE = 1000
TREE_PAGE_EXPANDED = 50
AGENT_HARNESSES = {"standardEnvVars": [], "harnesses": {}}
TRUE = ("1", "true", "True")


def mirror_origin(request: web.Request, services: Services) -> str:
    return services.config.server.public_url or f"{request.scheme}://{request.host}"


def json_response(
    services: Services,
    data: Any,
    headers: dict[str, str] | None = None,
    cache_as: tuple[RepoRef, Hashable] | None = None,
) -> web.Response:
    """JSON (xet-stripped per config); `cache_as` keeps the bytes of an answer fixed for a commit."""
    body = services.responses.get(*cache_as) if cache_as else None
    if body is None:
        if services.config.hub.strip_xet:
            data = xet.strip_json(data)
        body = json.dumps(data, separators=(",", ":")).encode()
        if cache_as:
            services.responses.put(*cache_as, body)
    return web.Response(body=body, content_type="application/json", headers=headers)


def canonical_query(request: web.Request, drop: tuple[str, ...] = ()) -> str:
    return urlencode(sorted((k, v) for k, v in request.query.items() if k not in drop))


def _require(request: web.Request, *methods: str) -> None:
    if request.method not in methods:
        raise MethodNotAllowed(request.method, methods)


async def handle_api(request: web.Request, target: ApiTarget) -> web.StreamResponse:
    services = request.app[SERVICES]
    token = bearer_token(request.headers.get("Authorization"))
    repo = target.repo
    await services.allowlist.check(repo)
    if target.op == "xet-read-token":
        raise NotFound("xet is not served by this mirror; download over HTTP (the mirror strips xet headers)")
    if target.op == "auth-check":
        _require(request, "GET")
        return await passthrough(request, services, f"{repo.api_path}/auth-check", token)
    await services.policy.check(repo, token, files=False)

    if target.op in ("info", "revision"):
        _require(request, "GET", "HEAD")
        query = canonical_query(request)
        data = await services.revisions.info(repo, target.revision, query, token)
        sha = data.get("sha") if isinstance(data, dict) else None
        return json_response(services, data, cache_as=(repo, ("info", sha, query)) if sha else None)

    if target.op == "tree":
        _require(request, "GET")
        return await _tree(request, services, target, token)

    if target.op == "paths-info":
        _require(request, "POST")
        paths, expand = await _paths_info_body(request)
        assert target.revision is not None
        data = await services.metadata.paths_info(repo, target.revision, paths, expand, token)
        return json_response(services, data)

    if target.op == "refs":
        _require(request, "GET")
        include_prs = request.query.get("include_prs", "") in TRUE
        return json_response(services, await services.metadata.refs(repo, include_prs, token))

    if target.op == "commits":
        _require(request, "GET")
        assert target.revision is not None
        commit, items, next_query = await services.metadata.commits(
            repo, target.revision, canonical_query(request), token
        )
        headers = {}
        if next_query is not None:
            url = f"{mirror_origin(request, services)}{repo.api_path}/commits/{commit}?{next_query}"
            headers["Link"] = f'<{url}>; rel="next"'
        return json_response(services, items, headers)

    raise NotFound(f"unsupported API operation {target.op}")


async def _tree(request: web.Request, services: Services, target: ApiTarget, token: str | None) -> web.Response:
    assert target.revision is not None
    recursive = request.query.get("recursive", "") in TRUE
    expand = request.query.get("expand", "") in TRUE
    try:
        cursor = int(request.query.get("cursor", "0"))
    except ValueError:
        raise BadRequest("invalid cursor") from None
    if cursor < 0:
        raise BadRequest("invalid cursor")
    commit, entries = await services.metadata.tree(target.repo, target.revision, target.path, recursive, expand, token)
    page_size = TREE_PAGE_EXPANDED if expand else TREE_PAGE
    page = entries[cursor : cursor + page_size]
    headers = {}
    if cursor + page_size < len(entries):
        # Pin the commit in the link so that every page comes from the same snapshot.
        path = f"{target.repo.api_path}/tree/{commit}" + (f"/{quote(target.path, safe='')}" if target.path else "")
        query = urlencode(
            {"recursive": str(recursive).lower(), "expand": str(expand).lower(), "cursor": cursor + page_size}
        )
        headers["Link"] = f'<{mirror_origin(request, services)}{path}?{query}>; rel="next"'
    key = ("tree", commit, target.path, recursive, expand, cursor)
    return json_response(services, page, headers, cache_as=(target.repo, key))


async def _paths_info_body(request: web.Request) -> tuple[list[str], bool]:
    if request.content_type == "application/json":
        try:
            body = await request.json()
            paths, expand = body.get("paths", []), bool(body.get("expand", False))
        except (ValueError, AttributeError):
            raise BadRequest("paths-info body must be a JSON object or a form") from None
    else:
        form = await request.post()
        paths = [str(p) for p in form.getall("paths", [])]
        expand = str(form.get("expand", "false")) in TRUE
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths) or len(paths) > 10_000:
        raise BadRequest("paths must be a list of at most 10000 strings")
    return paths, expand


async def passthrough(request: web.Request, services: Services, path: str, token: str | None) -> web.Response:
    """Forward a small uncached GET (whoami, auth-check) with the caller's token."""
    resp = await services.upstream.request("GET", services.upstream.url(path), token)
    async with resp:
        body = await resp.read()
    if resp.status >= 500:
        raise UpstreamUnavailable(f"upstream answered {resp.status}")
    keep = ("Content-Type", "X-Error-Code", "X-Error-Message")
    return web.Response(status=resp.status, body=body, headers={h: resp.headers[h] for h in keep if h in resp.headers})


async def handle_whoami(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    return await passthrough(request, services, "/api/whoami-v2", bearer_token(request.headers.get("Authorization")))


async def handle_agent_harnesses(request: web.Request) -> web.Response:
    # Answered locally: the client asks on every start, and no upstream is needed for it.
    return web.json_response(AGENT_HARNESSES)
