"""Repo listings (`/api/models?author=...`, datasets, spaces) through the mirror.

The upstream here is a stub of the Hub's listing only (the emulator answers one page, with no
cursor): pages of two with a `cursor` and an absolute `Link: <upstream...>; rel="next"`, and the
token's private repos listed for that token alone, as the Hub does.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from testbed.mirror_server import MirrorThread
from tests.support.client import run_client
from tests.support.mirrors import start_mirror
from tests.support.stub_upstream import StubServer

OWNER_TOKEN = "hf_owner_token_123"
PAGE = 2
REPOS = {
    "model": ["org/a", "org/b", "org/c", "org/d", "org/e", "other/x"],
    "dataset": ["org/data1", "org/data2", "org/data3"],
    "space": ["org/app"],
}
PRIVATE = {"model": "org/secret"}


class ListingHub(StubServer):
    """`GET /api/{models,datasets,spaces}` as the Hub answers it, and nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str | None]] = []  # (path and query, Authorization)
        self.down = False
        # Where next-page links point; None: at this server, like the Hub's own links.
        self.link_origin: str | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/{type:models|datasets|spaces}", self._list)
        return app

    async def _list(self, request: web.Request) -> web.Response:
        self.requests.append((request.rel_url.raw_path_qs, request.headers.get("Authorization")))
        if self.down:
            raise web.HTTPBadGateway()
        repo_type = request.match_info["type"].rstrip("s")
        names = list(REPOS[repo_type])
        if request.headers.get("Authorization") == f"Bearer {OWNER_TOKEN}" and repo_type in PRIVATE:
            names.append(PRIVATE[repo_type])
        author = request.query.get("author")
        search = request.query.get("search", "")
        names = sorted(n for n in names if (author is None or n.split("/")[0] == author) and search in n)
        start = int(request.query.get("cursor", "0"))
        size = int(request.query.get("limit", PAGE))
        page = names[start : start + size]
        headers = {}
        if start + size < len(names):
            params = [(k, v) for k, v in request.query.items() if k != "cursor"] + [("cursor", str(start + size))]
            query = "&".join(f"{k}={v}" for k, v in params)
            origin = self.link_origin or self.url
            headers["Link"] = f'<{origin}/api/{request.match_info["type"]}?{query}>; rel="next"'
        items = [{"id": n, "private": n in PRIVATE.values(), "xetEnabled": True} for n in page]
        return web.json_response(items, headers=headers)


@pytest.fixture
def listing_hub() -> Iterator[ListingHub]:
    with ListingHub() as hub:
        yield hub


@pytest.fixture
def mirror(listing_hub: ListingHub, tmp_path: Path) -> Iterator[MirrorThread]:
    server = start_mirror(listing_hub.url, tmp_path / "mirror-cache")
    yield server
    server.stop()


def get(url: str, token: str | None = None) -> tuple[Any, dict[str, str]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read()), dict(resp.headers)


def test_the_real_client_pages_through_the_mirror(
    listing_hub: ListingHub, mirror: MirrorThread, tmp_path: Path
) -> None:
    out = run_client(
        mirror.url,
        """
        api = HfApi()
        out["models"] = [m.id for m in api.list_models(author="org")]
        out["datasets"] = [d.id for d in api.list_datasets(author="org", search="data")]
        out["spaces"] = [s.id for s in api.list_spaces(author="org")]
        out["limited"] = [m.id for m in api.list_models(author="org", limit=3)]
        """,
        tmp_path,
    )
    assert out["models"] == ["org/a", "org/b", "org/c", "org/d", "org/e"]
    assert out["datasets"] == ["org/data1", "org/data2", "org/data3"]
    assert out["spaces"] == ["org/app"]
    assert out["limited"] == ["org/a", "org/b", "org/c"]


def test_next_links_name_the_mirror_and_xet_fields_are_stripped(listing_hub: ListingHub, mirror: MirrorThread) -> None:
    items, headers = get(f"{mirror.url}/api/models?author=org")
    assert [i["id"] for i in items] == ["org/a", "org/b"]
    assert all("xetEnabled" not in i for i in items)
    link = headers["Link"]
    assert link.startswith(f"<{mirror.url}/api/models?") and 'rel="next"' in link
    assert listing_hub.url not in link
    items, _ = get(link[1 : link.index(">")])
    assert [i["id"] for i in items] == ["org/c", "org/d"]


def test_a_link_off_the_upstream_origin_is_not_passed_on(listing_hub: ListingHub, mirror: MirrorThread) -> None:
    # Pointing clients at the Hub would take them, and their token, past the mirror.
    listing_hub.link_origin = "https://huggingface.co"
    items, headers = get(f"{mirror.url}/api/models?author=org")
    assert [i["id"] for i in items] == ["org/a", "org/b"]
    assert "Link" not in headers


def test_the_token_goes_upstream_and_answers_are_kept_per_token(listing_hub: ListingHub, mirror: MirrorThread) -> None:
    owned, _ = get(f"{mirror.url}/api/models?author=org&limit=10", OWNER_TOKEN)
    assert "org/secret" in [i["id"] for i in owned]
    anonymous, _ = get(f"{mirror.url}/api/models?author=org&limit=10")
    assert "org/secret" not in [i["id"] for i in anonymous]
    assert [auth for _, auth in listing_hub.requests] == [f"Bearer {OWNER_TOKEN}", None]


def test_junk_in_the_query_makes_no_new_cache_entry(listing_hub: ListingHub, mirror: MirrorThread) -> None:
    first, _ = get(f"{mirror.url}/api/models?author=org&full=True&utm_source=x")
    again, _ = get(f"{mirror.url}/api/models?junk=1&full=true&author=org&full=1")
    assert first == again
    assert len(listing_hub.requests) == 1
    # What went upstream is the canonical query: known parameters only.
    assert listing_hub.requests[0][0] == "/api/models?author=org&full=true"


@pytest.mark.parametrize(
    "query",
    ["author=" + "a" * 300, "author=a%0Ab", "filter=" + "&filter=".join(str(i) for i in range(40)), "limit=x"],
)
def test_queries_no_client_sends_are_refused(listing_hub: ListingHub, mirror: MirrorThread, query: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        get(f"{mirror.url}/api/models?{query}")
    assert info.value.code == 400
    assert listing_hub.requests == []


def test_the_last_known_answer_is_served_while_upstream_is_down(listing_hub: ListingHub, tmp_path: Path) -> None:
    cache = tmp_path / "mirror-cache"
    mirror = start_mirror(listing_hub.url, cache, cache={"refs_ttl": 0})
    try:
        fresh, _ = get(f"{mirror.url}/api/models?author=org")
        listing_hub.down = True
        stale, headers = get(f"{mirror.url}/api/models?author=org")
        assert stale == fresh and "Link" in headers
    finally:
        mirror.stop()
    # Across a restart too: the answer is in storage.
    mirror = start_mirror(listing_hub.url, cache, cache={"refs_ttl": 0})
    try:
        stale, _ = get(f"{mirror.url}/api/models?author=org")
        assert stale == fresh
        # A listing never asked before has nothing to fall back on: a 5xx, so clients know.
        with pytest.raises(urllib.error.HTTPError) as info:
            get(f"{mirror.url}/api/models?author=other")
        assert info.value.code >= 500
    finally:
        mirror.stop()
