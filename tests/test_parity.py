"""Parity: the real huggingface_hub client gets the same answers through the mirror as from the Hub.

Each test runs one client call twice in a fresh interpreter (HF_ENDPOINT is read at import): once
straight at the Hub emulator, once at a mirror whose upstream is that emulator. The answers are
turned into plain JSON and compared after normalising only what may legitimately differ:
- the endpoint origin inside any string (pagination links, URLs in messages);
- xet fields (`xet_hash`, `xetHash`, `xetEnabled`), which the mirror strips (checked to be absent);
- where the client put its cache (paths are made relative to HF_HOME).

Both runs disable xet: straight at the emulator the client would otherwise switch to xet for LFS
files, which the emulator's CDN does not speak, and via the mirror it never sees xet headers anyway.
The emulator's page sizes are made small so every paginated call crosses several `Link` pages.
"""

from __future__ import annotations

import json
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from testbed.hubemu import HubEmulator
from testbed.mirror_server import MirrorThread
from tests.support.client import run_client

CONFIG = b'{"model_type": "tiny", "hidden_size": 8}'
WEIGHTS = bytes(range(256)) * 1200  # LFS by suffix and by size
TOKENIZER = b'{"version": "1.0", "model": {}}' * 400  # LFS by name, like the real repos
GATED_TOKEN = "hf_parity_reader"
XET_KEYS = frozenset({"xet_hash", "xetHash", "xetEnabled"})
ENV = {"HF_HUB_DISABLE_XET": "1"}

# Turns client objects (dataclasses with extra attributes, datetimes) into JSON, and records an
# exception as its type so that both sides can be compared even when a call fails.
HELPERS = """
import dataclasses, datetime, hashlib

def plain(o):
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return {"__type__": type(o).__name__, **{k: plain(v) for k, v in vars(o).items()}}
    if isinstance(o, dict):
        return {str(k): plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [plain(v) for v in o]
    if isinstance(o, datetime.datetime):
        return o.isoformat()
    if o is None or isinstance(o, (str, int, float, bool)):
        return o
    return repr(o)

def capture(name, fn):
    try:
        out[name] = plain(fn())
    except Exception as exc:
        out[name] = {"raised": type(exc).__name__}

HOME = os.environ["HF_HOME"]

def cache_tree(repo_folder):
    # Every file and link of one repo's cache, relative to it; links as their blob's name.
    root = os.path.join(HOME, "hub", repo_folder)
    listing = {}
    for base, _, files in os.walk(root):
        for name in files:
            full = os.path.join(base, name)
            rel = os.path.relpath(full, root)
            if rel.startswith(("trees" + os.sep, ".locks")):
                continue
            data = open(full, "rb").read()
            listing[rel] = [os.path.basename(os.path.realpath(full)), hashlib.sha256(data).hexdigest()]
    return listing

def local(path):
    return [os.path.relpath(path, HOME), os.path.basename(os.path.realpath(path))]
"""
HELPERS += f"TOKEN = {GATED_TOKEN!r}\n"


def populate(hub: HubEmulator) -> None:
    """Repos for every call, with page sizes small enough that each listing spans several pages."""
    hub.page_size = 3
    hub.expand_page_size = 2
    hub.commits_page_size = 2
    hub.list_page_size = 2
    tiny = hub.add_repo(
        "model",
        "org/tiny",
        {
            "config.json": CONFIG,
            "model.safetensors": WEIGHTS,
            "tokenizer.json": TOKENIZER,
            "sub/dir/notes.txt": b"nested",
            "empty.txt": b"",
        },
    )
    tiny.tag("v1.0")
    for i in range(4):
        tiny.commit({f"extra/e{i}.txt": f"extra {i}".encode()}, message=f"extra {i}\n\nbody {i}")
    pr_commit = tiny.commit({"config.json": b'{"pr": true}'}, message="pr", branch="pr-branch")
    tiny.create_pr(pr_commit)
    for i in range(3):
        hub.add_repo("model", f"org/model-{i}", {"config.json": f'{{"n": {i}}}'.encode()})
    hub.add_repo("model", "org/gated", {"config.json": b"{}"}, gated="manual", tokens=(GATED_TOKEN,))
    hub.add_repo("model", "org/private", {"config.json": b"{}"}, private=True, tokens=(GATED_TOKEN,))
    hub.add_repo("model", "other/model", {"config.json": b"{}"})
    hub.add_repo("model", "legacy", {"config.json": b"{}"})
    for i in range(3):
        hub.add_repo("dataset", f"org/data-{i}", {"data/train.csv": b"a,b\n1,2\n", "README.md": b"# d"})
    hub.add_repo("dataset", "other/data", {"README.md": b"# other"})
    hub.add_repo("space", "org/app", {"app.py": b"print('hi')\n"})
    hub.add_repo("space", "org/app-2", {"app.py": b"print('hi 2')\n"})


def normalise(value: Any, origins: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: normalise(v, origins) for k, v in value.items() if k not in XET_KEYS}
    if isinstance(value, list):
        return [normalise(v, origins) for v in value]
    if isinstance(value, str):
        for origin in origins:
            value = value.replace(origin, "<endpoint>")
    return value


def xet_leaks(value: Any, where: str = "") -> list[str]:
    """Where a xet field carries a value (the mirror must strip them all)."""
    if isinstance(value, dict):
        found = [f"{where}.{k}" for k, v in value.items() if k in XET_KEYS and v not in (None, False)]
        return found + [leak for k, v in value.items() for leak in xet_leaks(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [leak for i, v in enumerate(value) for leak in xet_leaks(v, f"{where}[{i}]")]
    return []


def raised(result: dict[str, Any]) -> dict[str, str]:
    return {name: value["raised"] for name, value in result.items() if isinstance(value, dict) and "raised" in value}


def parity(hub: HubEmulator, mirror: MirrorThread, tmp_path: Path, script: str) -> tuple[dict, dict]:
    """Run `script` straight at the emulator and through the mirror; both answers, normalised."""
    code = HELPERS + textwrap.dedent(script)
    direct = run_client(hub.url, code, tmp_path / "direct", env=ENV)
    via_mirror = run_client(mirror.url, code, tmp_path / "mirror", env=ENV)
    assert xet_leaks(via_mirror) == [], "the mirror passed xet fields on"
    origins = (hub.url, hub.cdn_url, mirror.url)
    return normalise(direct, origins), normalise(via_mirror, origins)


@pytest.fixture
def world(hub: HubEmulator, mirror: MirrorThread) -> HubEmulator:
    populate(hub)
    return hub


CALLS: dict[str, tuple[str, list[str]]] = {
    # name: (client script, the results straight from the emulator that must be a success)
    "model_info": (
        """
        api = HfApi()
        capture("plain", lambda: api.model_info("org/tiny"))
        capture("files_metadata", lambda: api.model_info("org/tiny", files_metadata=True))
        capture("expand", lambda: api.model_info("org/tiny", expand=["sha", "siblings", "gated"]))
        capture("gated", lambda: api.model_info("org/gated", files_metadata=True))
        capture("private", lambda: api.model_info("org/private"))
        capture("private_token", lambda: api.model_info("org/private", token=TOKEN))
        capture("missing", lambda: api.model_info("org/nope"))
        """,
        ["plain", "files_metadata", "expand", "gated", "private_token"],
    ),
    "repo_info_at_revision": (
        """
        api = HfApi()
        for rev in ("v1.0", "refs/pr/1", "pr-branch", "main", "nope"):
            capture(rev, lambda: api.repo_info("org/tiny", revision=rev, files_metadata=True))
        capture("dataset", lambda: api.repo_info("org/data-0", repo_type="dataset", revision="main"))
        capture("space", lambda: api.repo_info("org/app", repo_type="space", revision="main"))
        """,
        ["v1.0", "refs/pr/1", "pr-branch", "main", "dataset", "space"],
    ),
    "list_repo_files": (
        """
        api = HfApi()
        capture("main", lambda: api.list_repo_files("org/tiny"))
        capture("v1.0", lambda: api.list_repo_files("org/tiny", revision="v1.0"))
        capture("dataset", lambda: api.list_repo_files("org/data-0", repo_type="dataset"))
        """,
        ["main", "v1.0", "dataset"],
    ),
    "list_repo_tree": (
        """
        api = HfApi()
        capture("recursive", lambda: list(api.list_repo_tree("org/tiny", recursive=True)))
        capture("expand", lambda: list(api.list_repo_tree("org/tiny", recursive=True, expand=True)))
        capture("top", lambda: list(api.list_repo_tree("org/tiny")))
        capture("sub", lambda: list(api.list_repo_tree("org/tiny", path_in_repo="sub/dir", expand=True)))
        capture("missing", lambda: list(api.list_repo_tree("org/tiny", path_in_repo="additional_chat_templates")))
        """,
        ["recursive", "expand", "top", "sub"],
    ),
    "get_paths_info": (
        """
        api = HfApi()
        wanted = ["config.json", "model.safetensors", "sub", "sub/dir/notes.txt", "nope"]
        capture("plain", lambda: api.get_paths_info("org/tiny", wanted))
        capture("expand", lambda: api.get_paths_info("org/tiny", wanted, expand=True))
        capture("v1.0", lambda: api.get_paths_info("org/tiny", "config.json", revision="v1.0"))
        """,
        ["plain", "expand", "v1.0"],
    ),
    "list_repo_refs": (
        """
        api = HfApi()
        capture("with_prs", lambda: api.list_repo_refs("org/tiny", include_pull_requests=True))
        capture("without", lambda: api.list_repo_refs("org/tiny"))
        """,
        ["with_prs", "without"],
    ),
    "list_repo_commits": (
        """
        api = HfApi()
        capture("main", lambda: api.list_repo_commits("org/tiny"))
        capture("formatted", lambda: api.list_repo_commits("org/tiny", formatted=True))
        capture("v1.0", lambda: api.list_repo_commits("org/tiny", revision="v1.0"))
        capture("nope", lambda: api.list_repo_commits("org/tiny", revision="nope"))
        """,
        ["main", "formatted", "v1.0"],
    ),
    "file_exists": (
        """
        api = HfApi()
        capture("yes", lambda: api.file_exists("org/tiny", "config.json"))
        capture("lfs", lambda: api.file_exists("org/tiny", "model.safetensors"))
        capture("no", lambda: api.file_exists("org/tiny", "nope.json"))
        capture("no_repo", lambda: api.file_exists("org/nope", "config.json"))
        capture("bad_rev", lambda: api.file_exists("org/tiny", "config.json", revision="nope"))
        capture("gated", lambda: api.file_exists("org/gated", "config.json"))
        capture("gated_token", lambda: api.file_exists("org/gated", "config.json", token=TOKEN))
        """,
        ["yes", "lfs", "no", "no_repo", "bad_rev", "gated_token"],
    ),
    "auth_check": (
        """
        api = HfApi()
        capture("public", lambda: api.auth_check("org/tiny"))
        capture("gated", lambda: api.auth_check("org/gated"))
        capture("gated_wrong", lambda: api.auth_check("org/gated", token="hf_wrong"))
        capture("gated_token", lambda: api.auth_check("org/gated", token=TOKEN))
        capture("private", lambda: api.auth_check("org/private"))
        """,
        ["public", "gated_token"],
    ),
    "list_models": (
        """
        api = HfApi()
        capture("author", lambda: list(api.list_models(author="org")))
        capture("author_token", lambda: list(api.list_models(author="org", token=TOKEN)))
        capture("limit", lambda: list(api.list_models(author="org", limit=3)))
        capture("search", lambda: list(api.list_models(search="model-")))
        capture("sort", lambda: list(api.list_models(author="org", sort="last_modified")))
        capture("full", lambda: list(api.list_models(author="org", full=True)))
        capture("expand", lambda: list(api.list_models(author="other", expand=["sha", "siblings"])))
        capture("nobody", lambda: list(api.list_models(author="nobody")))
        """,
        ["author", "author_token", "limit", "search", "sort", "full", "expand", "nobody"],
    ),
    "list_datasets": (
        """
        api = HfApi()
        capture("author", lambda: list(api.list_datasets(author="org")))
        capture("limit", lambda: list(api.list_datasets(author="org", limit=1)))
        capture("search", lambda: list(api.list_datasets(search="data-1")))
        capture("full", lambda: list(api.list_datasets(author="other", full=True)))
        """,
        ["author", "limit", "search", "full"],
    ),
    "list_spaces": (
        """
        api = HfApi()
        capture("author", lambda: list(api.list_spaces(author="org")))
        """,
        ["author"],
    ),
    "hf_hub_download": (
        """
        for name in ("config.json", "model.safetensors", "tokenizer.json", "empty.txt", "sub/dir/notes.txt"):
            capture(name, lambda: local(hf_hub_download("org/tiny", name)))
        capture("v1.0", lambda: local(hf_hub_download("org/tiny", "config.json", revision="v1.0")))
        capture("pr", lambda: local(hf_hub_download("org/tiny", "config.json", revision="refs/pr/1")))
        capture("dataset", lambda: local(hf_hub_download("org/data-0", "data/train.csv", repo_type="dataset")))
        capture("missing", lambda: hf_hub_download("org/tiny", "nope.json"))
        capture("gated", lambda: hf_hub_download("org/gated", "config.json"))
        out["cache"] = cache_tree("models--org--tiny")
        """,
        ["config.json", "model.safetensors", "tokenizer.json", "empty.txt", "sub/dir/notes.txt", "v1.0", "pr"],
    ),
    "snapshot_download": (
        """
        capture("all", lambda: os.path.relpath(snapshot_download("org/tiny"), HOME))
        capture("again", lambda: os.path.relpath(snapshot_download("org/tiny"), HOME))
        capture("v1.0", lambda: os.path.relpath(snapshot_download("org/tiny", revision="v1.0"), HOME))
        capture("dataset", lambda: os.path.relpath(
            snapshot_download("org/data-1", repo_type="dataset", allow_patterns=["data/*"]), HOME))
        capture("bad_rev", lambda: snapshot_download("org/tiny", revision="nope"))
        out["cache"] = cache_tree("models--org--tiny")
        out["dataset_cache"] = cache_tree("datasets--org--data-1")
        """,
        ["all", "again", "v1.0", "dataset"],
    ),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_client_call_parity(world: HubEmulator, mirror: MirrorThread, tmp_path: Path, call: str) -> None:
    script, must_succeed = CALLS[call]
    direct, via_mirror = parity(world, mirror, tmp_path, script)
    # The emulator is the reference: every call it is meant to answer must work straight at it.
    assert not set(raised(direct)) & set(must_succeed), raised(direct)
    assert via_mirror == direct


def raw_get(url: str) -> tuple[int, dict[str, str], Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        return error.code, dict(error.headers), json.loads(body) if body.startswith(b"{") else body.decode()


@pytest.mark.parametrize(
    "path",
    [
        "/api/models/org/tiny/treesize/main",
        "/api/models/org/tiny/treesize/main/sub%2Fdir",
        "/api/models/org/tiny/treesize/v1.0",
        "/api/datasets/org/data-0/treesize/main/data",
    ],
)
def test_treesize_parity(world: HubEmulator, mirror: MirrorThread, path: str) -> None:
    """hfd.sh's `treesize` call (no huggingface_hub client has one): same status and JSON."""
    status, _, body = raw_get(world.url + path)
    assert status == 200 and isinstance(body["size"], int)
    assert raw_get(mirror.url + path)[::2] == (status, body)


def test_treesize_missing_path_parity(world: HubEmulator, mirror: MirrorThread) -> None:
    path = "/api/models/org/tiny/treesize/main/nope"
    status, headers, _ = raw_get(world.url + path)
    assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound")
    status, headers, _ = raw_get(mirror.url + path)
    assert (status, headers.get("X-Error-Code")) == (404, "EntryNotFound")


def all_pages(origin: str, path: str) -> list[Any]:
    """Every item of a paginated listing, checking each next link leads back to `origin`."""
    items: list[Any] = []
    url: str | None = origin + path
    while url is not None:
        status, headers, body = raw_get(url)
        assert status == 200, (url, body)
        items += body
        link = headers.get("Link")
        url = None
        if link:
            assert link.startswith(f"<{origin}/") and link.endswith('>; rel="next"'), link
            url = link[1 : -len('>; rel="next"')]
    return items


@pytest.mark.parametrize(
    "path",
    [
        "/api/models?author=org",
        "/api/datasets?author=org&limit=1",
        "/api/models/org/tiny/tree/main?recursive=true&expand=false",
        "/api/models/org/tiny/tree/main?recursive=true&expand=true",
        "/api/models/org/tiny/commits/main",
    ],
)
def test_pagination_links_point_at_whoever_answered(world: HubEmulator, mirror: MirrorThread, path: str) -> None:
    """The same items over all pages (page sizes may differ), each `next` link on the server that sent it."""
    direct = all_pages(world.url, path)
    assert len(direct) > 2, "the emulator's pages are small: this listing spans several"
    origins = (world.url, mirror.url)
    assert normalise(all_pages(mirror.url, path), origins) == normalise(direct, origins)
