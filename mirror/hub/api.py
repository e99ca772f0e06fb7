"""The read API clients call: repo info, revision, tree, treesize, paths-info, refs, commits,
repo listings, whoami.

Answers come from the metadata cache; JSON is stripped of xet fields (unless configured otherwise)
and pagination links point at the mirror, never at the upstream.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from aiohttp import web

from mirror.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    UnsupportedMediaType,
)
from mirror.hub import xet
from mirror.hub.appkeys import ALLOWLIST, CONFIG, LISTINGS, POLICY, RESPONSES, REVISIONS, UPSTREAM
from mirror.hub.bodies import read_body
from mirror.hub.paths import ApiTarget
from mirror.policy import AllowList
from mirror.repo import MAX_PATH_LENGTH, RepoRef
from mirror.tokens import bearer_token

TREE_PAGE = 1000
TREE_PAGE_EXPANDED = 50
AGENT_HARNESSES = {"standardEnvVars": [], "harnesses": {}}
TRUE = ("1", "true", "True")
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
MAX_PATHS = 10_000
# 10000 typical paths fit with room to spare; the bound is what one request may make the mirror hold.
MAX_PATHS_INFO_BODY = 4 * 1024 * 1024
MAX_PAGE_NUMBER = 10**9

# The `expand` values huggingface_hub's model_info/dataset_info/space_info send (hf_api.py,
# ExpandModelProperty_T and its siblings). Anything else is dropped: it would only make a new
# cache key and an upstream call for the same answer.
_COMMON_EXPAND = (
    "author cardData createdAt disabled lastModified likes private resourceGroup sha siblings tags trendingScore "
    "usedStorage"
)
EXPAND_PROPERTIES: dict[str, frozenset[str]] = {
    "model": frozenset(
        f"{_COMMON_EXPAND} baseModels childrenModelCount config downloads downloadsAllTime evalResults gated gguf "
        "inference inferenceProviderMapping library_name mask_token model-index pipeline_tag safetensors spaces "
        "transformersInfo widgetData".split()
    ),
    "dataset": frozenset(
        f"{_COMMON_EXPAND} citation description downloads downloadsAllTime gated mainSize paperswithcode_id".split()
    ),
    "space": frozenset(f"{_COMMON_EXPAND} datasets models region runtime sdk subdomain".split()),
}
# Repo-info flags as huggingface_hub sends them (`files_metadata=True` goes out as `blobs=true`).
INFO_FLAGS = ("blobs", "securityStatus")
COMMITS_EXPAND = frozenset({"formatted"})
# The query parameters huggingface_hub's list_models / list_datasets / list_spaces send (hf_api.py),
# plus `direction` (older clients and the Hub's own links) and the `cursor` of the Hub's next-page
# links. Anything else is dropped: it would only make a new cache key for the same answer.
_COMMON_LISTING = "author search filter sort direction limit full expand cursor"
LISTING_PARAMS: dict[str, frozenset[str]] = {
    "model": frozenset(
        f"{_COMMON_LISTING} apps gated inference inference_provider pipeline_tag num_parameters config cardData".split()
    ),
    "dataset": frozenset(f"{_COMMON_LISTING} gated".split()),
    "space": frozenset(f"{_COMMON_LISTING} linked datasets models".split()),
}
# Sent as `true` or not at all (false is the Hub's default).
LISTING_FLAGS = frozenset({"full", "config", "cardData", "linked"})
MAX_LISTING_VALUES = 32  # values of one parameter (filter=a&filter=b...)
MAX_LISTING_VALUE = 256
MAX_CURSOR = 2048  # the Hub's cursors are opaque base64; this leaves ample room
METHODS = {
    "info": ("GET", "HEAD"),
    "revision": ("GET", "HEAD"),
    "tree": ("GET",),
    "treesize": ("GET",),
    "paths-info": ("POST",),
    "refs": ("GET",),
    "commits": ("GET",),
}


def mirror_origin(request: web.Request) -> str:
    return request.app[CONFIG].server.public_url or f"{request.scheme}://{request.host}"


def json_response(
    request: web.Request,
    data: Any,
    headers: dict[str, str] | None = None,
    cache_as: tuple[RepoRef, Hashable] | None = None,
) -> web.Response:
    """JSON (xet-stripped per config); `cache_as` keeps the bytes of an answer fixed for a commit."""
    responses = request.app[RESPONSES]
    body = responses.get(*cache_as) if cache_as else None
    if body is None:
        if request.app[CONFIG].hub.strip_xet:
            data = xet.strip_json(data)
        body = json.dumps(data, separators=(",", ":")).encode()
        if cache_as:
            responses.put(*cache_as, body)
    return web.Response(body=body, content_type="application/json", headers=headers)


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true")


def _page_number(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 10) or int(value) > MAX_PAGE_NUMBER:
        raise BadRequest(f"{name} must be a whole number up to {MAX_PAGE_NUMBER}")
    return int(value)


def canonical_query(request: web.Request, op: str, repo_type: str) -> str:
    """The query of an info/revision or commits call, reduced to what the Hub defines for it ("" for other ops).

    It becomes a cache key and the upstream query, so every spelling of one question must map to
    one string: unknown parameters and `expand` values are dropped, booleans written `true` (false
    is the default and is left out), page numbers as plain integers, the result sorted.
    """
    params: list[tuple[str, str]] = []
    if op in ("info", "revision"):
        params += [(flag, "true") for flag in INFO_FLAGS if _truthy(request.query.get(flag))]
        known = EXPAND_PROPERTIES.get(repo_type, frozenset())
        params += [("expand", v) for v in set(request.query.getall("expand", [])) if v in known]
    elif op == "commits":
        for name in ("p", "limit"):
            number = _page_number(request, name)
            if number is not None and (name != "p" or number > 0):
                params.append((name, str(number)))
        params += [("expand[]", v) for v in set(request.query.getall("expand[]", [])) if v in COMMITS_EXPAND]
    return urlencode(sorted(params))


def listing_query(request: web.Request, repo_type: str) -> str:
    """The query of a repo listing, reduced to what the Hub defines for it (see canonical_query).

    Flags become `true` or are left out, `limit` a plain integer, `direction` 1 or -1, `expand`
    only known properties; repeated values are kept once each, the whole sorted. Values that
    could not be a real query (control characters, too long, too many) are refused.
    """
    known = LISTING_PARAMS[repo_type]
    params: set[tuple[str, str]] = set()
    for name in known:
        values = request.query.getall(name, [])
        if len(values) > MAX_LISTING_VALUES:
            raise BadRequest(f"at most {MAX_LISTING_VALUES} values of {name}")
        for value in values:
            limit = MAX_CURSOR if name == "cursor" else MAX_LISTING_VALUE
            if len(value) > limit or any(ord(c) < 32 or c == "\x7f" for c in value):
                raise BadRequest(f"{name} must be printable text of at most {limit} characters")
        if name in LISTING_FLAGS:
            if any(_truthy(v) for v in values):
                params.add((name, "true"))
        elif name == "limit":
            number = _page_number(request, "limit")
            if number:
                params.add((name, str(number)))
        elif name == "direction":
            params.update((name, v) for v in values if v in ("1", "-1"))
        elif name == "expand":
            params.update((name, v) for v in values if v in EXPAND_PROPERTIES[repo_type])
        elif name == "gated":
            # httpx writes Python booleans in lower case, other clients may not.
            params.update((name, v.lower() if v.lower() in ("true", "false") else v) for v in values if v)
        else:
            params.update((name, v) for v in values if v)
    return urlencode(sorted(params))


def _require(request: web.Request, *methods: str) -> None:
    if request.method not in methods:
        raise MethodNotAllowed(request.method, methods)


async def handle_api(request: web.Request, target: ApiTarget) -> web.StreamResponse:
    token = bearer_token(request.headers.get("Authorization"))
    repo = target.repo
    await request.app[POLICY].check_listed(repo)
    if target.op == "xet-read-token":
        raise NotFound("xet is not served by this mirror; download over HTTP (the mirror strips xet headers)")
    if target.op == "auth-check":
        _require(request, "GET")
        return await passthrough(request, f"{repo.api_path}/auth-check", token)
    # The request itself is checked before anything (the access policy) is asked of upstream.
    if target.op in METHODS:
        _require(request, *METHODS[target.op])
    query = canonical_query(request, target.op, repo.repo_type)
    paths_info = await _paths_info_body(request) if target.op == "paths-info" else None
    await request.app[POLICY].check(repo, token, files=False)

    if target.op in ("info", "revision"):
        data = await request.app[REVISIONS].info(repo, target.revision, query, token)
        sha = data.get("sha") if isinstance(data, dict) else None
        return json_response(request, data, cache_as=(repo, ("info", sha, query)) if sha else None)

    if target.op == "tree":
        return await _tree(request, target, token)

    if target.op == "treesize":
        assert target.revision is not None
        commit, size = await request.app[LISTINGS].treesize(repo, target.revision, target.path, token)
        return json_response(request, size, cache_as=(repo, ("treesize", commit, target.path)))

    if paths_info is not None:
        paths, expand = paths_info
        assert target.revision is not None
        data = await request.app[LISTINGS].paths_info(repo, target.revision, paths, expand, token)
        return json_response(request, data)

    if target.op == "refs":
        include_prs = request.query.get("include_prs", "") in TRUE
        return json_response(request, await request.app[LISTINGS].refs(repo, include_prs, token))

    if target.op == "commits":
        assert target.revision is not None
        commit, items, next_query = await request.app[LISTINGS].commits(repo, target.revision, query, token)
        headers = {}
        if next_query is not None:
            url = f"{mirror_origin(request)}{repo.api_path}/commits/{commit}?{next_query}"
            headers["Link"] = f'<{url}>; rel="next"'
        return json_response(request, items, headers)

    raise NotFound(f"unsupported API operation {target.op}")


async def handle_listing(request: web.Request, repo_type: str) -> web.Response:
    """`GET /api/{models|datasets|spaces}?author=...`: one page of upstream's repo listing.

    The caller's token goes to the upstream origin only (upstream.py); the next-page link names the
    mirror. With the allow-list enforced, repos it does not allow are left out of the page.
    """
    _require(request, "GET", "HEAD")
    token = bearer_token(request.headers.get("Authorization"))
    query = listing_query(request, repo_type)
    items, next_path = await request.app[LISTINGS].listing(repo_type, query, token)
    if request.app[ALLOWLIST].enforce:
        items = [item for item in items if await _allowed(request.app[ALLOWLIST], repo_type, item)]
    headers = {}
    if next_path is not None:
        headers["Link"] = f'<{mirror_origin(request)}{next_path}>; rel="next"'
    return json_response(request, items, headers)


async def _allowed(allowlist: AllowList, repo_type: str, item: Any) -> bool:
    repo_id = item.get("id") if isinstance(item, dict) else None
    return isinstance(repo_id, str) and await allowlist.allows(RepoRef(repo_type, repo_id))


async def _tree(request: web.Request, target: ApiTarget, token: str | None) -> web.Response:
    assert target.revision is not None
    recursive = request.query.get("recursive", "") in TRUE
    expand = request.query.get("expand", "") in TRUE
    try:
        cursor = int(request.query.get("cursor", "0"))
    except ValueError:
        raise BadRequest("invalid cursor") from None
    if cursor < 0:
        raise BadRequest("invalid cursor")
    commit, entries = await request.app[LISTINGS].tree(
        target.repo, target.revision, target.path, recursive, expand, token
    )
    if cursor > len(entries):
        # Each cursor is a cache key: only those inside the listing may make one.
        raise BadRequest("cursor is past the end of the listing")
    page_size = TREE_PAGE_EXPANDED if expand else TREE_PAGE
    page = entries[cursor : cursor + page_size]
    headers = {}
    if cursor + page_size < len(entries):
        # Pin the commit in the link so that every page comes from the same snapshot.
        path = f"{target.repo.api_path}/tree/{commit}" + (f"/{quote(target.path, safe='')}" if target.path else "")
        query = urlencode(
            {"recursive": str(recursive).lower(), "expand": str(expand).lower(), "cursor": cursor + page_size}
        )
        headers["Link"] = f'<{mirror_origin(request)}{path}?{query}>; rel="next"'
    key = ("tree", commit, target.path, recursive, expand, cursor)
    return json_response(request, page, headers, cache_as=(target.repo, key))


async def _paths_info_body(request: web.Request) -> tuple[list[str], bool]:
    """`paths` and `expand` from a form (what huggingface_hub sends) or a JSON object.

    Parsed by Content-Type only, like the Hub: a body of any other type is refused, not guessed at.
    """
    if request.content_type not in (FORM, JSON):
        raise UnsupportedMediaType(f"paths-info takes a {FORM} or {JSON} body, not {request.content_type[:100]}")
    raw = await read_body(request, MAX_PATHS_INFO_BODY, "paths-info body")
    charset = request.charset or "utf-8"
    try:
        text = raw.decode(charset)
    except (UnicodeDecodeError, LookupError):
        raise BadRequest(f"paths-info body is not valid {charset[:40]} text") from None
    paths: Any
    expand: Any
    if request.content_type == JSON:
        try:
            body = json.loads(text) if text.strip() else {}
        except RecursionError:
            raise BadRequest("paths-info JSON is nested too deeply") from None
        except ValueError:
            raise BadRequest("paths-info body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest('paths-info JSON must be an object like {"paths": ["a.txt"], "expand": false}')
        paths, expand = body.get("paths", []), body.get("expand", False)
        if not isinstance(expand, bool):
            raise BadRequest("expand must be true or false")
    else:
        try:
            pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_PATHS + 10)
        except ValueError:
            raise BadRequest(f"paths-info form has more than {MAX_PATHS} paths") from None
        paths = [value for key, value in pairs if key == "paths"]
        expand = any(key == "expand" and value in TRUE for key, value in pairs)
    if not isinstance(paths, list) or len(paths) > MAX_PATHS or not all(isinstance(p, str) for p in paths):
        raise BadRequest(f"paths must be a list of at most {MAX_PATHS} strings")
    for path in paths:
        _check_path(path)
    return paths, expand


def _check_path(path: str) -> None:
    """A paths-info path that could name a file: upstream omits the missing ones, so no more is needed."""
    if len(path) > MAX_PATH_LENGTH:
        raise BadRequest(f"a path is longer than {MAX_PATH_LENGTH} characters")
    if any(ord(c) < 32 or c == "\x7f" for c in path):
        raise BadRequest("a path contains control characters")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates from JSON escapes cannot be sent upstream or stored.
        raise BadRequest("a path is not valid Unicode") from None


async def passthrough(request: web.Request, path: str, token: str | None) -> web.Response:
    """Forward a small uncached GET (whoami, auth-check) with the caller's token."""
    answer = await request.app[UPSTREAM].passthrough(path, token)
    return web.Response(status=answer.status, body=answer.body, headers=answer.headers)


async def handle_whoami(request: web.Request) -> web.Response:
    return await passthrough(request, "/api/whoami-v2", bearer_token(request.headers.get("Authorization")))


async def handle_agent_harnesses(request: web.Request) -> web.Response:
    # Answered locally: the client asks on every start, and no upstream is needed for it.
    return web.json_response(AGENT_HARNESSES)
