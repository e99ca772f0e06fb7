"""llama.cpp's `-hf user/repo[:tag]` downloads through the mirror (HF_ENDPOINT / MODEL_ENDPOINT).

Replayed with curl, header for header, from llama.cpp's sources:

- older builds (common/download.cpp, `common_get_hf_file`, libcurl): `GET {endpoint}v2/{repo}/manifests/{tag}`
  with `User-Agent: llama-cpp`, `Accept: application/json` and the token; `ggufFile.rfilename` (and
  `mmprojFile.rfilename`) name the files. Each is then `HEAD` (following redirects; the final status
  must be 200, its ETag is kept) and `GET` at `{endpoint}{repo}/resolve/main/{file}`, split siblings
  (`-0000N-of-0000M`) too. A file already on disk is only HEAD-ed, and fetched again if the ETag changed.
- current builds (common/hf-cache.cpp, cpp-httplib): `GET {endpoint}api/models/{repo}/refs` (the
  `main` branch's `targetCommit`), `GET {endpoint}api/models/{repo}/tree/{commit}?recursive=true`
  (one page, files only), then `HEAD` and `GET` at `{endpoint}{repo}/resolve/{commit}/{path}`, with
  `User-Agent: llama-cpp/<build>`; the token only when it looks like one (`hf_` + 34 or more letters and digits).

The emulator does not answer the manifest route: `HubFront` (tests/support/stub_upstream.py) answers it from the
emulator's tree the way the Hub does for llama.cpp, and forwards everything else.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from testbed.hubemu import HubEmulator
from tests.support.mirrors import start_mirror
from tests.support.stub_upstream import HubFront
from tests.support.tools import run, tool

REPO = "org/tiny-GGUF"
TOKEN = "hf_" + "a1B2c3D4e5" * 4  # shaped like a Hub token, so current llama.cpp sends it
Q4 = os.urandom(2 * 1024 * 1024 + 11)
Q8_PARTS = [os.urandom(1024 * 1024 + 5), os.urandom(700_000)]
FILES = {
    "README.md": b"# tiny gguf\n",
    "tiny-Q4_K_M.gguf": Q4,
    "Q8_0/tiny-Q8_0-00001-of-00002.gguf": Q8_PARTS[0],
    "Q8_0/tiny-Q8_0-00002-of-00002.gguf": Q8_PARTS[1],
    "mmproj-tiny-f16.gguf": os.urandom(300_000),
}
OLD_HEADERS = ["-H", "User-Agent: llama-cpp", "-H", "Accept: application/json"]
NEW_AGENT = "llama-cpp/b7000-abcdef0"


@dataclass
class ManifestCalls:
    headers: list[dict[str, str]]


def manifest_route(front: list[HubFront], calls: ManifestCalls) -> web.RequestHandler:
    """`GET /v2/{ns}/{name}/manifests/{tag}` as the Hub answers llama.cpp: the GGUF file for the tag."""

    async def manifest(request: web.Request) -> web.Response:
        calls.headers.append({k.lower(): v for k, v in request.headers.items()})
        if not request.headers.get("User-Agent", "").startswith("llama-cpp"):
            # Other clients get an OCI manifest of blobs the mirror does not serve.
            raise web.HTTPNotAcceptable()
        repo = f"{request.match_info['ns']}/{request.match_info['name']}"
        status, tree = await front[0].fetch_json(request, f"/api/models/{repo}/tree/main?recursive=true")
        if status != 200 or not isinstance(tree, list):
            raise web.HTTPBadGateway() if status >= 500 else web.HTTPUnauthorized()
        files = [e for e in tree if e["type"] == "file" and e["path"].endswith(".gguf")]
        tag = request.match_info["tag"]
        tag = "Q4_K_M" if tag == "latest" else tag
        models = [
            e
            for e in files
            if "mmproj" not in e["path"]
            and re.search(rf"{re.escape(tag)}[.-]", e["path"], re.I)
            and not re.search(r"-0000[2-9]-of-", e["path"])
        ]
        if not models:
            return web.json_response({"error": f"no GGUF file for tag {tag}"}, status=404)

        def describe(entry: dict) -> dict:
            lfs = entry.get("lfs") or {}
            return {
                "rfilename": entry["path"],
                "blobId": entry["oid"],
                "size": entry["size"],
                "lfs": {"sha256": lfs.get("oid"), "size": entry["size"], "pointerSize": lfs.get("pointerSize")},
            }

        answer = {"ggufFile": describe(models[0])}
        mmproj = [e for e in files if "mmproj" in e["path"]]
        if mmproj:
            answer["mmprojFile"] = describe(mmproj[0])
        return web.json_response(answer)

    return manifest


@dataclass
class World:
    hub: HubEmulator
    front: HubFront
    manifests: ManifestCalls


@pytest.fixture
def world() -> Iterator[World]:
    calls = ManifestCalls([])
    with HubEmulator() as hub:
        holder: list[HubFront] = []
        routes = {"/v2/{ns}/{name}/manifests/{tag}": manifest_route(holder, calls)}
        with HubFront(hub, routes) as front:
            holder.append(front)
            hub.add_repo("model", REPO, FILES)
            yield World(hub, front, calls)


def curl(*args: str) -> str:
    proc = run(tool("curl"), "-sS", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def head(url: str, *headers: str) -> dict[str, str]:
    """`HEAD` following redirects, as libcurl with CURLOPT_NOBODY and CURLOPT_FOLLOWLOCATION: the last response."""
    out = curl("-I", "-L", *headers, url)
    fields: dict[str, str] = {}
    for line in out.replace("\r", "").splitlines():
        if line.startswith("HTTP/"):
            fields = {":status": line.split()[1]}
        elif ":" in line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    return fields


def download(url: str, target: Path, *headers: str) -> str:
    """llama.cpp's HEAD then GET of one file; returns the ETag it stores beside the file."""
    meta = head(url, *headers)
    assert meta[":status"] == "200", meta
    assert meta.get("accept-ranges") == "bytes", "llama.cpp resumes only when ranges are advertised"
    target.parent.mkdir(parents=True, exist_ok=True)
    curl("-L", "-f", *headers, "-o", str(target), url)
    assert target.stat().st_size == int(meta["content-length"])
    return meta["etag"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def old_llamacpp(endpoint: str, tag: str, cache: Path, token: str | None = TOKEN) -> dict[str, str]:
    """An older llama.cpp's `-hf org/tiny-GGUF:{tag}`: {file: ETag}. Files already in `cache` are HEAD-ed only."""
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    body = curl("-w", "\n%{http_code}", *OLD_HEADERS, *auth, f"{endpoint}/v2/{REPO}/manifests/{tag}")
    text, _, status = body.rpartition("\n")
    assert status == "200", body
    manifest = json.loads(text)
    names = [manifest["ggufFile"]["rfilename"]]
    if "mmprojFile" in manifest:
        names.append(manifest["mmprojFile"]["rfilename"])
    split = re.match(r"(.+)-00001-of-(\d{5})\.gguf$", names[0])
    if split:
        names += [f"{split.group(1)}-{i:05d}-of-{split.group(2)}.gguf" for i in range(2, int(split.group(2)) + 1)]
    etags = {}
    for name in names:
        url = f"{endpoint}/{REPO}/resolve/main/{name}"
        target = cache / f"{REPO.replace('/', '_')}_{name.replace('/', '_')}"
        agent = ["-H", "User-Agent: llama-cpp", *auth]
        if target.exists():
            etags[name] = head(url, *agent)["etag"]
        else:
            etags[name] = download(url, target, *agent)
        assert sha256(target.read_bytes()) == sha256(FILES[name]), name
    return etags


def new_llamacpp(endpoint: str, tag: str, cache: Path) -> list[str]:
    """A current llama.cpp's `-hf org/tiny-GGUF:{tag}`: the files it fetched, checked."""
    agent = ["-H", f"User-Agent: {NEW_AGENT}", "-H", "Accept: application/json", "-H", f"Authorization: Bearer {TOKEN}"]
    refs = json.loads(curl("-f", *agent, f"{endpoint}/api/models/{REPO}/refs"))
    commit = next(b["targetCommit"] for b in refs["branches"] if b["name"] == "main")
    tree = json.loads(curl("-f", *agent, f"{endpoint}/api/models/{REPO}/tree/{commit}?recursive=true"))
    files = [e["path"] for e in tree if e["type"] == "file"]
    primary = next(p for p in files if re.search(rf"{tag}[.-]", p, re.I) and "mmproj" not in p)
    split = re.match(r"(.+)-\d{5}-of-(\d{5})\.gguf$", primary)
    wanted = [p for p in files if split and p.startswith(split.group(1)) and p.endswith(f"-of-{split.group(2)}.gguf")]
    wanted = wanted or [primary]
    for path in wanted:
        target = cache / "snapshots" / commit / path
        download(f"{endpoint}/{REPO}/resolve/{commit}/{path}", target, *agent[:2], *agent[4:])
        assert sha256(target.read_bytes()) == sha256(FILES[path]), path
    return wanted


def test_an_older_llamacpp_finds_its_file_through_the_manifest(world: World, tmp_path: Path) -> None:
    mirror = start_mirror(world.front.url, tmp_path / "mirror-cache")
    try:
        first = old_llamacpp(mirror.url, "Q4_K_M", tmp_path / "cache")
        assert sorted(first) == ["mmproj-tiny-f16.gguf", "tiny-Q4_K_M.gguf"]
        # Upstream was asked as llama.cpp asks (the Hub names the GGUF file only to it), with the token.
        sent = world.manifests.headers[0]
        assert sent["user-agent"] == "llama-cpp" and sent["accept"] == "application/json"
        assert sent["authorization"] == f"Bearer {TOKEN}"
        # A second run HEADs the files and finds the same ETags, so nothing is fetched again.
        assert old_llamacpp(mirror.url, "Q4_K_M", tmp_path / "cache") == first
        # The manifest is kept for the refs TTL: one upstream call for both runs.
        assert len(world.manifests.headers) == 1
    finally:
        mirror.stop()


def test_an_older_llamacpp_fetches_every_split(world: World, tmp_path: Path) -> None:
    mirror = start_mirror(world.front.url, tmp_path / "mirror-cache")
    try:
        etags = old_llamacpp(mirror.url, "Q8_0", tmp_path / "cache", token=None)
        assert sorted(etags)[:2] == ["Q8_0/tiny-Q8_0-00001-of-00002.gguf", "Q8_0/tiny-Q8_0-00002-of-00002.gguf"]
        assert "authorization" not in world.manifests.headers[0]
    finally:
        mirror.stop()


def test_a_current_llamacpp_uses_refs_tree_and_resolve(world: World, tmp_path: Path) -> None:
    mirror = start_mirror(world.front.url, tmp_path / "mirror-cache")
    try:
        assert new_llamacpp(mirror.url, "Q4_K_M", tmp_path / "hub") == ["tiny-Q4_K_M.gguf"]
        assert new_llamacpp(mirror.url, "Q8_0", tmp_path / "hub") == [
            "Q8_0/tiny-Q8_0-00001-of-00002.gguf",
            "Q8_0/tiny-Q8_0-00002-of-00002.gguf",
        ]
        assert world.manifests.headers == []
    finally:
        mirror.stop()


def test_bad_manifest_requests_never_reach_upstream(world: World, tmp_path: Path) -> None:
    mirror = start_mirror(world.front.url, tmp_path / "mirror-cache")
    try:
        for path in [
            f"/v2/{REPO}/manifests/Q4%0AK",
            f"/v2/{REPO}/manifests/..",
            f"/v2/{REPO}/manifests/%2E%2E",
            f"/v2/{REPO}/manifests/a%2Fb",
            "/v2/org/a..b/manifests/latest",
            "/v2/org%2Fa/b/manifests/latest",
        ]:
            status = curl("--path-as-is", "-o", os.devnull, "-w", "%{http_code}", *OLD_HEADERS, mirror.url + path)
            assert status in ("400", "404"), (path, status)
        assert world.manifests.headers == []
    finally:
        mirror.stop()


def test_both_flows_work_from_the_cache_while_upstream_is_down(world: World, tmp_path: Path) -> None:
    """What cannot work offline: a tag or a repo never asked for, and files never fetched."""
    mirror = start_mirror(world.front.url, tmp_path / "mirror-cache", cache={"revision_ttl": 0, "refs_ttl": 0})
    try:
        first = old_llamacpp(mirror.url, "Q4_K_M", tmp_path / "old")
        new_llamacpp(mirror.url, "Q4_K_M", tmp_path / "new")
        mirror.settle()
        world.hub.faults.down()
        # Fresh client caches: every file comes down again, from the mirror alone.
        assert old_llamacpp(mirror.url, "Q4_K_M", tmp_path / "old-again") == first
        assert new_llamacpp(mirror.url, "Q4_K_M", tmp_path / "new-again") == ["tiny-Q4_K_M.gguf"]
        status = curl("-o", os.devnull, "-w", "%{http_code}", *OLD_HEADERS, f"{mirror.url}/v2/{REPO}/manifests/Q8_0")
        assert status.startswith("5"), status
    finally:
        world.hub.faults.up()
        mirror.stop()
