"""Dispatch on the raw path to the resolve, API, llama.cpp manifest and git handlers."""

from __future__ import annotations

from aiohttp import web

from mirror.errors import MethodNotAllowed, NotFound
from mirror.hub.api import handle_agent_harnesses, handle_api, handle_listing, handle_whoami
from mirror.hub.appkeys import CONFIG
from mirror.hub.git import handle_git
from mirror.hub.llamacpp import handle_manifest
from mirror.hub.observe import GIT_ROUTES, REPO_TYPE, ROUTE
from mirror.hub.paths import parse_api, parse_git, parse_listing, parse_manifest, parse_resolve
from mirror.hub.resolve import handle_resolve
from mirror.hub.xetserve import handle_cas, handle_token


async def dispatch(request: web.Request) -> web.StreamResponse:
    raw = request.rel_url.raw_path
    if raw.startswith("/xet/") and request.app[CONFIG].hub.xet == "serve":
        request[ROUTE] = "xet_cas"
        return await handle_cas(request)
    if raw.startswith("/api/"):
        request[ROUTE] = "api_other"
        if raw == "/api/whoami-v2":
            return await handle_whoami(request)
        if raw == "/api/agent-harnesses":
            return await handle_agent_harnesses(request)
        listed = parse_listing(raw)
        if listed is not None:
            request[ROUTE] = "api_listing"
            request[REPO_TYPE] = listed
            return await handle_listing(request, listed)
        api_target = parse_api(raw)
        if api_target is None:
            raise NotFound(f"unknown API path {raw[:200]}")
        request[ROUTE] = f"api_{api_target.op.replace('-', '_')}"
        request[REPO_TYPE] = api_target.repo.repo_type
        if api_target.op == "xet-read-token" and request.app[CONFIG].hub.xet == "serve":
            return await handle_token(request, api_target)
        return await handle_api(request, api_target)
    if raw.startswith("/v2/"):
        manifest = parse_manifest(raw)
        if manifest is not None:
            request[ROUTE] = "api_llamacpp_manifest"
            request[REPO_TYPE] = manifest.repo.repo_type
            return await handle_manifest(request, manifest)
    resolve_target = parse_resolve(raw)
    if resolve_target is None:
        git_target = parse_git(raw)
        if git_target is None:
            raise NotFound(f"no route for {raw[:200]}")
        request[ROUTE] = GIT_ROUTES[git_target.endpoint]
        request[REPO_TYPE] = git_target.repo.repo_type
        return await handle_git(request, git_target)
    request[ROUTE] = "resolve"
    request[REPO_TYPE] = resolve_target.repo.repo_type
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(request.method, ("GET", "HEAD"))
    return await handle_resolve(request, resolve_target)


def add_routes(app: web.Application) -> None:
    # [\s\S], not `.`: a decoded %0A in a path must reach dispatch (and its 400), not the router's 404.
    app.router.add_route("*", "/{tail:[\\s\\S]*}", dispatch)
