"""paths-info through the mirror against an upstream as strict as the Hub about request bodies.

The Hub parses a form body only when it is labelled `application/x-www-form-urlencoded`. A form
sent as a bare string goes out as `text/plain`, the Hub sees no `paths` and answers `[]`; the
mirror used to store that `[]` as the commit's answer for good. The stub below is an upstream that
behaves like the Hub on exactly this point, which the emulator (parsing any body) did not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mirror.cache import keys
from mirror.repo import RepoRef
from testbed.mirror_server import MirrorThread
from tests.support.client import run_client
from tests.support.mirrors import start_mirror
from tests.support.stub_upstream import StubServer

REPO = "org/strict"
COMMIT = "c" * 40
FORM = "application/x-www-form-urlencoded"
FILES = {"config.json": b'{"a": 1}', "sub/a.txt": b"nested", "README.md": b"# strict"}


def _oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _entries() -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {
        path: {"type": "file", "oid": _oid(data), "size": len(data), "path": path} for path, data in FILES.items()
    }
    entries["sub"] = {"type": "directory", "oid": "d" * 40, "size": 0, "path": "sub"}
    return entries


class StrictHub(StubServer):
    """The few Hub API routes paths-info needs, parsing request bodies by Content-Type only."""

    def __init__(self) -> None:
        super().__init__()
        self.paths_info_content_types: list[str] = []
        self.tree_calls = 0
        # A broken upstream answers [] to every paths-info call, whatever it is asked.
        self.answer_empty = False
        self.down = False

    def app(self) -> web.Application:
        app = web.Application()
        base = f"/api/models/{REPO}"
        app.router.add_get(base, self._info)
        app.router.add_get(base + "/revision/{rev}", self._info)
        app.router.add_get(base + "/tree/{rev}", self._tree)
        app.router.add_post(base + "/paths-info/{rev}", self._paths_info)
        return app

    def _check_up(self) -> None:
        if self.down:
            raise web.HTTPServiceUnavailable()

    async def _info(self, request: web.Request) -> web.Response:
        self._check_up()
        return web.json_response({"id": REPO, "sha": COMMIT, "private": False, "gated": False, "siblings": []})

    async def _tree(self, request: web.Request) -> web.Response:
        self._check_up()
        self.tree_calls += 1
        entries = sorted(_entries().values(), key=lambda e: e["path"])
        if request.query.get("recursive") != "true":
            entries = [e for e in entries if "/" not in e["path"]]
        return web.json_response(entries)

    async def _paths_info(self, request: web.Request) -> web.Response:
        self._check_up()
        self.paths_info_content_types.append(request.headers.get("Content-Type", ""))
        # Like aiohttp, Starlette or any real server: a form is a form only when labelled one.
        form = await request.post() if request.content_type == FORM else {}
        paths = form.getall("paths", []) if form else []
        if self.answer_empty:
            paths = []
        entries = _entries()
        return web.json_response([entries[p] for p in paths if p in entries])


@pytest.fixture
def strict() -> Iterator[StrictHub]:
    with StrictHub() as hub:
        yield hub


@pytest.fixture
def mirror(strict: StrictHub, tmp_path: Path) -> Iterator[MirrorThread]:
    server = start_mirror(strict.url, tmp_path / "mirror-cache")
    yield server
    server.stop()


def paths_info(mirror: MirrorThread, home: Path, paths: list[str]) -> list[str]:
    out = run_client(
        mirror.url,
        f"""
        out["paths"] = sorted(e.path for e in HfApi().get_paths_info({REPO!r}, {paths!r}))
        """,
        home,
    )
    return list(out["paths"])


def stored(mirror: MirrorThread, key: str) -> Any:
    """The metadata record (a JSON document) that storage holds under `key`, or None."""
    data = mirror.call(mirror.storage.get_bytes(key))
    return None if data is None else json.loads(data)


def test_the_form_reaches_a_strict_upstream_as_a_form(strict: StrictHub, mirror: MirrorThread, tmp_path: Path) -> None:
    assert paths_info(mirror, tmp_path, ["config.json", "sub", "nope"]) == ["config.json", "sub"]
    assert strict.paths_info_content_types == [FORM]
    # Asked again: the answer is the commit's for good, so upstream is not asked twice.
    assert paths_info(mirror, tmp_path, ["nope", "sub", "config.json"]) == ["config.json", "sub"]
    assert len(strict.paths_info_content_types) == 1


def test_an_empty_answer_for_paths_that_may_exist_is_never_stored(
    strict: StrictHub, mirror: MirrorThread, tmp_path: Path
) -> None:
    strict.answer_empty = True
    assert paths_info(mirror, tmp_path, ["config.json", "sub"]) == []
    strict.answer_empty = False
    # Nothing was kept from the broken answer: upstream is asked again and its real answer counts.
    assert paths_info(mirror, tmp_path, ["config.json", "sub"]) == ["config.json", "sub"]
    assert len(strict.paths_info_content_types) == 2


def test_a_short_answer_is_checked_against_the_cached_tree(
    strict: StrictHub, mirror: MirrorThread, tmp_path: Path
) -> None:
    run_client(mirror.url, f'out["n"] = len(HfApi().list_repo_files({REPO!r}))', tmp_path)
    assert strict.tree_calls == 1
    strict.answer_empty = True
    # The commit's tree lists both paths: an answer without them is upstream's fault, and the
    # mirror answers from the tree instead of passing the fault on (or keeping it).
    assert paths_info(mirror, tmp_path, ["config.json", "sub", "nope"]) == ["config.json", "sub"]
    strict.answer_empty = False
    wanted = sorted({"config.json", "sub", "nope"})
    key = keys.api_key(RepoRef("model", REPO), COMMIT, keys.PATHS_INFO, json.dumps([wanted, False]))
    assert stored(mirror, key) is None
    # Paths the tree does not list may well be missing: an empty answer for them is a fact.
    assert paths_info(mirror, tmp_path, ["nope", "also-nope"]) == []
    calls = len(strict.paths_info_content_types)
    assert paths_info(mirror, tmp_path, ["nope", "also-nope"]) == []
    assert len(strict.paths_info_content_types) == calls


def test_a_poisoned_record_from_an_older_mirror_is_never_served(
    strict: StrictHub, mirror: MirrorThread, tmp_path: Path
) -> None:
    repo = RepoRef("model", REPO)
    wanted = sorted({"config.json", "sub"})
    # What an older mirror stored after the text/plain request: `[]`, as the commit's answer.
    old_key = keys.api_key(repo, COMMIT, "paths-info", json.dumps([wanted, False]))
    mirror.call(mirror.storage.put_bytes(old_key, json.dumps({"value": []}).encode()))
    assert paths_info(mirror, tmp_path, ["config.json", "sub"]) == ["config.json", "sub"]
    assert strict.paths_info_content_types == [FORM]


def test_upstream_down_answers_from_the_cached_tree(strict: StrictHub, mirror: MirrorThread, tmp_path: Path) -> None:
    run_client(mirror.url, f'out["n"] = len(HfApi().list_repo_files({REPO!r}))', tmp_path)
    strict.down = True
    assert paths_info(mirror, tmp_path, ["config.json", "sub/a.txt", "nope"]) == ["config.json", "sub/a.txt"]
