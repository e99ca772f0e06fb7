"""`GET /api/models|datasets|spaces`: the Hub's repo listings, with `Link: rel="next"` cursor pagination.

What huggingface_hub (2.4, `HfApi.list_models` / `list_datasets` / `list_spaces`) sends and parses:
`author`, `search`, `filter`, `gated`, `sort`, `limit`, `full`, `expand` (repeated) and, on later pages,
whatever the previous page's `Link` says. It only requires `id` per item; the rest is optional.

Choices where the Hub's behaviour is not pinned down by a client:
- Without `sort` the order is by id, ascending (the Hub's own default order is unspecified; a fixed one
  keeps pages deterministic). With `sort` it is descending unless `direction=1`, ties by id.
- `limit` is the page size, capped at 1000 like the Hub's tree pages (the client stops after `limit`
  items anyway). The next page's link keeps every parameter but `cursor`, which is opaque, as the
  Hub's is; the client only ever copies the link.
- Unknown `sort`/`direction` values and malformed `limit`/`gated`/`cursor` are a 400, as the Hub's
  query validation is assumed to; unknown parameters are ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from .repos import API_SEGMENT, Repo
from .server import HubError, decode_cursor, encode_cursor, token_of
from .shapes import repo_data

if TYPE_CHECKING:
    from .emulator import HubEmulator

MAX_PAGE = 1000
# The `sort` values the Hub accepts; huggingface_hub maps its snake_case names to these camelCase ones.
SORTS = frozenset({"createdAt", "downloads", "downloadsAllTime", "lastModified", "likes", "trendingScore", "id"})
# The properties one listing item carries when neither `full` nor `expand` is asked for (as the Hub
# answers `/api/{type}?author=...`): a smaller set than repo info, different per type.
DEFAULT_FIELDS = {
    "model": ("_id", "id", "likes", "trendingScore", "private", "downloads", "tags", "createdAt", "modelId"),
    "dataset": (
        "_id",
        "id",
        "author",
        "disabled",
        "gated",
        "lastModified",
        "likes",
        "trendingScore",
        "private",
        "sha",
        "downloads",
        "tags",
        "createdAt",
    ),
    "space": ("_id", "id", "likes", "trendingScore", "private", "sdk", "tags", "createdAt"),
}


def _int_param(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise HubError(400, f"Invalid {name}: {value[:50]}")
    return int(value)


def _bool_param(request: web.Request, name: str) -> bool | None:
    value = request.query.get(name)
    if value is None:
        return None
    if value.lower() not in ("true", "false", "1", "0"):
        raise HubError(400, f"Invalid {name}: {value[:50]}")
    return value.lower() in ("true", "1")


def _visible(repo: Repo, token: str | None) -> bool:
    # Private repos are listed to those who may read them; gated ones to everyone, like their info.
    return not repo.private or token in repo.tokens


def list_repos(emu: HubEmulator, request: web.Request, repo_type: str) -> web.Response:
    author = request.query.get("author")
    searches = [s.lower() for s in request.query.getall("search", [])]
    filters = request.query.getall("filter", [])
    gated = _bool_param(request, "gated")
    sort = request.query.get("sort")
    if sort is not None and sort not in SORTS:
        raise HubError(400, f"Invalid sort: {sort[:50]}")
    direction = request.query.get("direction")
    if direction not in (None, "1", "-1"):
        raise HubError(400, f"Invalid direction: {direction[:50]}")
    limit = _int_param(request, "limit")
    if limit == 0:
        raise HubError(400, "Invalid limit: 0")
    offset = decode_cursor(request.query["cursor"]) if "cursor" in request.query else 0
    full = bool(_bool_param(request, "full"))
    expand = request.query.getall("expand", [])

    token = token_of(request)
    items = []
    for repo in emu.repos():
        head = repo.resolve("main")
        if repo.repo_type != repo_type or head is None or not _visible(repo, token):
            continue
        data = {**repo_data(repo, head, blobs=False), "trendingScore": 0, "downloadsAllTime": 0}
        if author is not None and data["author"] != author:
            continue
        if any(s not in repo.repo_id.lower() for s in searches):
            continue
        if any(f not in data["tags"] for f in filters):
            continue
        if gated is not None and bool(repo.gated) != gated:
            continue
        items.append(data)
    items.sort(key=lambda d: str(d["id"]))
    if sort is not None:
        # list.sort is stable in both directions, so equal keys stay in id order.
        items.sort(key=lambda d: d.get(sort, 0), reverse=direction != "1")

    page_size = min(limit or emu.list_page_size, MAX_PAGE)
    page = items[offset : offset + page_size]
    headers = {}
    if offset + page_size < len(items):
        params = [(k, v) for k, v in request.query.items() if k != "cursor"]
        params.append(("cursor", encode_cursor(offset + page_size)))
        headers["Link"] = f'<{emu.url}/api/{API_SEGMENT[repo_type]}?{urlencode(params)}>; rel="next"'
    return web.json_response([_shape(d, repo_type, full, expand) for d in page], headers=headers)


def _shape(data: dict[str, Any], repo_type: str, full: bool, expand: list[str]) -> dict[str, Any]:
    if expand:
        return {k: v for k, v in data.items() if k in ("_id", "id", *expand)}
    if full:
        return {k: v for k, v in data.items() if k not in ("xetEnabled", "usedStorage")}
    return {k: data[k] for k in DEFAULT_FIELDS[repo_type] if k in data}
