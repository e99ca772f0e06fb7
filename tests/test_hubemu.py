"""Sanity tests for the Hub emulator, mostly driven by the real huggingface_hub client."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import huggingface_hub
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from testbed.hubemu import HubEmulator, git_blob_sha1, sha256_hex

CONFIG = b'{"model_type": "emu"}'
WEIGHTS = bytes(range(256)) * 400  # LFS by suffix and by size
FILES = {"config.json": CONFIG, "weights.safetensors": WEIGHTS, "sub/dir/a.txt": b"hello", "empty.txt": b""}


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Isolate the real client: no implicit token, telemetry, xet or user cache. Returns the cache dir."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    # hf_xet is installed; without this the client would switch to xet on the LFS 302's headers.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return tmp_path / "cache"


@pytest.fixture
def emu(hub: HubEmulator, client: Path) -> HubEmulator:
    hub.add_repo("model", "org/name", FILES)
    return hub


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))


def fetch(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _opener.open(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def read_truncated(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET expecting the server to cut the body short; returns (declared length, bytes received)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
    resp = conn.getresponse()
    declared = int(resp.headers["Content-Length"])
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    conn.close()
    return declared, info.value.partial


def cdn_location(emu: HubEmulator, path: str = "weights.safetensors") -> str:
    status, headers, _ = fetch(f"{emu.url}/org/name/resolve/main/{path}")
    assert status == 302
    return headers["Location"]


# -- the real client -------------------------------------------------------------------------------


def test_hf_hub_download_plain_and_lfs(emu: HubEmulator, client: Path) -> None:
    commit = emu.get_repo("model", "org/name").head()  # type: ignore[union-attr]
    plain = Path(hf_hub_download("org/name", "config.json", cache_dir=client, endpoint=emu.url))
    assert plain.read_bytes() == CONFIG
    assert plain.resolve().name == git_blob_sha1(CONFIG)
    assert plain.parent.name == commit
    repo_dir = client / "models--org--name"
    assert (repo_dir / "refs" / "main").read_text() == commit
    # The branch URL 307s to the commit-pinned resolve-cache URL, which the GET then uses directly.
    assert [(r.method, r.path.split("?")[0]) for r in emu.requests] == [
        ("HEAD", "/org/name/resolve/main/config.json"),
        ("HEAD", f"/api/resolve-cache/models/org/name/{commit}/config.json"),
        ("GET", f"/api/resolve-cache/models/org/name/{commit}/config.json"),
    ]

    emu.clear_requests()
    lfs = Path(hf_hub_download("org/name", "weights.safetensors", cache_dir=client, endpoint=emu.url, token="hf_good"))
    assert lfs.read_bytes() == WEIGHTS
    assert lfs.resolve().name == sha256_hex(WEIGHTS)
    hub_head, *rest = emu.requests
    assert (hub_head.method, hub_head.origin, hub_head.headers["authorization"]) == ("HEAD", "hub", "Bearer hf_good")
    # With xet disabled the GET goes back to resolve and follows the 302 to the CDN without the token.
    assert [(r.method, r.origin) for r in rest] == [("GET", "hub"), ("GET", "cdn")]
    assert "authorization" not in rest[1].headers
    assert emu.count(path_contains="xet-read-token") == 0

    emu.clear_requests()
    hf_hub_download("org/name", "config.json", cache_dir=client, endpoint=emu.url)
    assert emu.count(method="GET") == 0  # cached blob: HEAD only


def test_hf_hub_download_revision_forms(emu: HubEmulator, client: Path) -> None:
    repo = emu.get_repo("model", "org/name")
    assert repo is not None
    first = repo.head()
    second = repo.commit({"config.json": b"v2"}, message="bump", delete=("empty.txt",))
    repo.tag("v1.0", first)
    pr = repo.create_pr(second)
    repo.create_branch("dev", first)
    assert repo.files(second)["config.json"] == b"v2" and "empty.txt" not in repo.files(second)
    assert repo.files(second)["weights.safetensors"] == WEIGHTS
    expected = {
        "main": b"v2",
        "v1.0": CONFIG,
        f"refs/pr/{pr}": b"v2",
        first: CONFIG,
        first[:7]: CONFIG,
        "dev": CONFIG,
    }
    for rev, content in expected.items():
        path = hf_hub_download("org/name", "config.json", revision=rev, cache_dir=client, endpoint=emu.url)
        assert Path(path).read_bytes() == content, rev
    assert emu.count(path_contains="refs%2Fpr%2F1") > 0


def test_snapshot_download_follows_tree_pagination(client: Path) -> None:
    files = {f"d{i % 3}/f{i:02}.txt": f"file {i}".encode() for i in range(12)}
    with HubEmulator(page_size=5) as emu:
        emu.add_repo("dataset", "org/data", files)
        folder = Path(snapshot_download("org/data", repo_type="dataset", cache_dir=client, endpoint=emu.url))
        assert {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == files
        # 12 files + 3 directories at 5 per page
        assert emu.count(path_contains="/api/datasets/org/data/tree/") == 3
        assert emu.count(path_contains="cursor=") == 2


def test_api_shapes(client: Path) -> None:
    with HubEmulator(expand_page_size=2, commits_page_size=2) as emu:
        repo = emu.add_repo("model", "org/name", FILES)
        for i in range(3):
            repo.commit({f"extra{i}.txt": b"x"}, message=f"commit {i}\n\nbody")
        repo.tag("v1")
        repo.create_pr()
        api = HfApi(endpoint=emu.url)

        info = api.model_info("org/name", files_metadata=True)
        assert info.sha == repo.head()
        siblings = {s.rfilename: s for s in info.siblings or []}
        assert siblings["weights.safetensors"].lfs is not None
        assert siblings["weights.safetensors"].lfs.sha256 == sha256_hex(WEIGHTS)
        assert siblings["config.json"].blob_id == git_blob_sha1(CONFIG) and siblings["config.json"].lfs is None

        refs = api.list_repo_refs("org/name", include_pull_requests=True)
        assert [b.name for b in refs.branches] == ["main"] and [t.name for t in refs.tags] == ["v1"]
        assert [p.ref for p in refs.pull_requests or []] == ["refs/pr/1"] and refs.converts == []

        commits = api.list_repo_commits("org/name")  # 4 commits at 2 per page
        assert [c.title for c in commits] == ["commit 2", "commit 1", "commit 0", "initial commit"]
        assert commits[0].message == "commit 2\n\nbody"

        tree = list(api.list_repo_tree("org/name", recursive=True, expand=True))  # pages of 2
        assert [e.path for e in tree] == sorted(e.path for e in tree)
        assert {"sub", "sub/dir", "sub/dir/a.txt", "weights.safetensors"} <= {e.path for e in tree}
        by_path = {e.path: e for e in tree}
        assert by_path["extra2.txt"].last_commit.title == "commit 2"  # type: ignore[union-attr]
        assert by_path["config.json"].last_commit.title == "initial commit"  # type: ignore[union-attr]
        assert by_path["weights.safetensors"].security.status == "safe"  # type: ignore[union-attr]

        infos = api.get_paths_info("org/name", ["sub/dir", "weights.safetensors", "nope"], expand=True)
        assert [(type(i).__name__, i.path) for i in infos] == [
            ("RepoFolder", "sub/dir"),
            ("RepoFile", "weights.safetensors"),
        ]
        weights = infos[1]
        assert weights.lfs.sha256 == sha256_hex(WEIGHTS) and len(weights.xet_hash or "") == 64  # type: ignore[union-attr]

        listing = list(api.list_repo_tree("org/name", path_in_repo="sub/dir"))
        assert [e.path for e in listing] == ["sub/dir/a.txt"]
        assert api.list_repo_files("org/name", revision="v1") == sorted(repo.files("v1"))

        emu.users["hf_user"] = "alice"
        assert api.whoami(token="hf_user")["name"] == "alice"
        with pytest.raises(HfHubHTTPError):
            api.whoami(token="hf_bad")

        emu.add_repo("space", "org/app", {"app.py": b"print()"})
        emu.add_repo("dataset", "legacy", {"data.csv": b"a,b\n"})
        assert api.space_info("org/app").sdk == "gradio"
        assert api.dataset_info("legacy").id == "legacy"
        assert api.file_exists("legacy", "data.csv", repo_type="dataset")
        assert not api.file_exists("legacy", "nope.csv", repo_type="dataset")


def test_error_codes_map_to_client_exceptions(emu: HubEmulator, client: Path) -> None:
    emu.add_repo("model", "org/gated", {"a.txt": b"a"}, gated="manual")
    emu.add_repo("model", "org/private", {"a.txt": b"a"}, private=True)

    def download(repo_id: str, filename: str = "a.txt", **kwargs: object) -> str:
        return hf_hub_download(repo_id, filename, cache_dir=client, endpoint=emu.url, **kwargs)  # type: ignore[arg-type]

    with pytest.raises(RepositoryNotFoundError):
        download("org/missing")
    with pytest.raises(RepositoryNotFoundError):
        download("org/private")
    with pytest.raises(RevisionNotFoundError):
        download("org/name", "config.json", revision="nope")
    with pytest.raises(RemoteEntryNotFoundError):
        download("org/name", "missing.json")
    with pytest.raises(GatedRepoError):
        download("org/gated")
    with pytest.raises(GatedRepoError):
        download("org/gated", token="hf_wrong")
    assert Path(download("org/gated", token="hf_good")).read_bytes() == b"a"
    assert Path(download("org/private", token="hf_good")).read_bytes() == b"a"

    api = HfApi(endpoint=emu.url)
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/name", revision="nope")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/private")
    assert api.model_info("org/gated").gated == "manual"  # metadata of gated repos is public
    with pytest.raises(HfHubHTTPError) as info:
        list(api.list_repo_tree("org/name", path_in_repo="additional_chat_templates"))
    assert info.value.response.headers["X-Error-Code"] == "EntryNotFound"
    assert fetch(f"{emu.url}/api/models/org/gated/auth-check")[0] == 401
    assert fetch(f"{emu.url}/api/models/org/gated/auth-check", headers={"Authorization": "Bearer hf_good"})[0] == 200
    status, headers, _ = fetch(f"{emu.url}/org/missing/resolve/main/a", headers={"Authorization": "Bearer x"})
    assert (status, headers["X-Error-Code"]) == (404, "RepoNotFound")


def test_resume_after_dropped_connection(hub: HubEmulator, client: Path) -> None:
    # The client writes in 10 MB steps, so only a drop past 10 MB makes it resume with a Range.
    big = os.urandom(24 << 20)
    hub.add_repo("model", "org/big", {"model.safetensors": big})
    hub.faults.drop_after(15 << 20, path_contains="model.safetensors", origin="cdn")
    path = hf_hub_download("org/big", "model.safetensors", cache_dir=client, endpoint=hub.url)
    assert Path(path).read_bytes() == big
    cdn = [r for r in hub.requests if r.origin == "cdn"]
    assert len(cdn) == 2 and cdn[1].headers["range"] == f"bytes={10 * 1024 * 1024}-"


def test_emulator_runs_real_clients_in_subprocess(emu: HubEmulator, tmp_path: Path) -> None:
    # HF_ENDPOINT is only read at import time, so this is how a mirror-less client sees the emulator.
    script = "from huggingface_hub import hf_hub_download as d; print(open(d('org/name', 'sub/dir/a.txt')).read())"
    env = {**os.environ, "HF_ENDPOINT": emu.url, "HF_HOME": str(tmp_path), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "hello", out.stderr


# -- raw wire checks -------------------------------------------------------------------------------


def test_resolve_headers_and_ranges(emu: HubEmulator) -> None:
    repo = emu.get_repo("model", "org/name")
    assert repo is not None
    commit = repo.head()
    status, headers, body = fetch(f"{emu.url}/org/name/resolve/{commit}/config.json")
    assert (status, body, headers["ETag"]) == (200, CONFIG, f'"{git_blob_sha1(CONFIG)}"')
    assert headers["X-Repo-Commit"] == commit and "Content-Range" not in headers

    status, headers, body = fetch(f"{emu.url}/org/name/resolve/main/weights.safetensors", "HEAD")
    assert status == 302 and body == b""
    assert headers["X-Linked-Etag"] == f'"{sha256_hex(WEIGHTS)}"' and headers["X-Linked-Size"] == str(len(WEIGHTS))
    assert 'rel="xet-auth"' in headers["Link"] and len(headers["X-Xet-Hash"]) == 64
    assert headers["Location"].startswith(emu.cdn_url + "/xet-bridge-us/")

    cdn = headers["Location"]
    status, headers, body = fetch(cdn, headers={"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (206, WEIGHTS[10:20], f"bytes 10-19/{len(WEIGHTS)}")
    assert not any(h.lower().startswith(("x-repo", "x-linked", "x-xet")) for h in headers)
    assert fetch(cdn, headers={"Range": "bytes=-5"})[2] == WEIGHTS[-5:]
    assert fetch(cdn, headers={"Range": f"bytes={len(WEIGHTS) - 3}-"})[2] == WEIGHTS[-3:]
    status, headers, _ = fetch(cdn, headers={"Range": f"bytes={len(WEIGHTS)}-"})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{len(WEIGHTS)}")

    empty = f"{emu.url}/org/name/resolve/{commit}/empty.txt"
    status, headers, body = fetch(empty)
    assert (status, headers["Content-Length"], body) == (200, "0", b"")
    assert fetch(empty, headers={"Range": "bytes=0-"})[0] == 416

    raw = f"{emu.url}/api/models/org/name/tree/{commit[:8]}/sub%2Fdir?recursive=false"
    assert [e["path"] for e in json.loads(fetch(raw)[2])] == ["sub/dir/a.txt"]
    assert json.loads(fetch(f"{emu.url}/api/agent-harnesses")[2]) == {"standardEnvVars": [], "harnesses": {}}
    assert fetch(f"{emu.url}/api/unknown")[0] == 404
    status, headers, _ = fetch(f"{emu.url}/api/models/org/name/xet-read-token/main")
    assert status == 200 and "X-Xet-Access-Token" in headers


def test_fault_drop_after_and_corrupt(emu: HubEmulator) -> None:
    cdn = cdn_location(emu)
    emu.faults.drop_after(100, path_contains="weights")
    assert read_truncated(cdn) == (len(WEIGHTS), WEIGHTS[:100])
    emu.faults.drop_after(10, path_contains="weights")
    assert read_truncated(cdn, {"Range": "bytes=1000-"}) == (len(WEIGHTS) - 1000, WEIGHTS[1000:1010])
    assert fetch(cdn)[2] == WEIGHTS  # times=1 used up

    emu.faults.corrupt(path_contains="weights", offset=5000, times=1)
    body = fetch(cdn, headers={"Range": "bytes=4000-"})[2]
    assert len(body) == len(WEIGHTS) - 4000 and body[1000] == WEIGHTS[5000] ^ 0xFF
    assert body[:1000] == WEIGHTS[4000:5000] and body[1001:] == WEIGHTS[5001:]
    assert fetch(cdn)[2] == WEIGHTS


async def test_aiohttp_client_sees_truncated_body(emu: HubEmulator) -> None:
    # The emulator has its own loop and thread, so async tests can talk to it without blocking it.
    emu.faults.drop_after(1000, path_contains="weights")
    url = f"{emu.url}/org/name/resolve/main/weights.safetensors"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200 and resp.url.port == urlsplit(emu.cdn_url).port
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


def test_fault_status_delay_throttle(emu: HubEmulator) -> None:
    url = f"{emu.url}/api/models/org/name"
    emu.faults.status(429, path_contains="/api/models", headers={"Retry-After": "1"})
    status, headers, _ = fetch(url)
    assert (status, headers["Retry-After"]) == (429, "1")
    assert fetch(url)[0] == 200
    emu.faults.status(503, times=2)
    assert [fetch(url)[0] for _ in range(3)] == [503, 503, 200]

    emu.faults.delay(0.3, path_contains="config.json", times=1)
    started = time.monotonic()
    fetch(f"{emu.url}/org/name/resolve/main/config.json", "HEAD")
    assert time.monotonic() - started >= 0.3

    emu.faults.throttle(200_000, path_contains="weights")
    started = time.monotonic()
    assert fetch(cdn_location(emu))[2] == WEIGHTS  # 100 kB at 200 kB/s
    assert time.monotonic() - started >= 0.45
    emu.faults.clear()


def test_fault_down_up_and_expired_urls(emu: HubEmulator) -> None:
    old = cdn_location(emu)
    emu.faults.down()
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected, urllib.error.URLError)):
        fetch(f"{emu.url}/api/models/org/name")
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected, urllib.error.URLError)):
        fetch(old)
    emu.faults.up()
    assert fetch(old)[0] == 200

    emu.faults.expire_signed_urls()
    status, _, body = fetch(old)
    assert status == 403 and b"AccessDenied" in body
    assert fetch(cdn_location(emu))[2] == WEIGHTS


def test_request_log_and_stop(client: Path) -> None:
    emu = HubEmulator().start()
    try:
        emu.add_repo("model", "solo", {"a.txt": b"a"})
        fetch(f"{emu.url}/solo/resolve/main/a.txt", "HEAD", {"Authorization": "Bearer t", "X-Custom": "1"})
        (record,) = emu.requests
        assert (record.method, record.origin, record.path) == ("HEAD", "hub", "/solo/resolve/main/a.txt")
        assert record.headers["authorization"] == "Bearer t" and record.headers["x-custom"] == "1"
        assert emu.count(method="head", origin="hub", path_contains="a.txt") == 1
        assert emu.count(origin="cdn") == 0
        emu.clear_requests()
        assert emu.requests == []
        port = urlsplit(emu.url).port
    finally:
        emu.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port or 0), timeout=1):
        pass


def test_repo_model_matches_git(tmp_path: Path) -> None:
    assert git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    emu = HubEmulator(lfs_threshold=4)
    repo = emu.add_repo("model", "org/git", {"a.txt": b"abc", "big.txt": b"abcdef", "d/e/f.txt": b"x", "d/g": b"y"})
    commit = repo.resolve("main")
    assert commit is not None and commit.files["big.txt"].pointer is not None
    # Check tree ids against git itself, with the LFS pointer standing in for the LFS content.
    work = tmp_path / "git"
    for path, blob in commit.files.items():
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob.pointer if blob.pointer is not None else blob.data)
    git = ["git", "-C", str(work)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    tree = subprocess.run([*git, "write-tree"], check=True, capture_output=True, text=True).stdout.strip()
    assert commit.dir_oids[""] == tree
    sub = subprocess.run([*git, "rev-parse", f"{tree}:d"], check=True, capture_output=True, text=True)
    assert commit.dir_oids["d"] == sub.stdout.strip()
    assert huggingface_hub.__version__ == "2.4.0"


# -- as strict as the Hub --------------------------------------------------------------------------


def post(url: str, body: bytes, content_type: str | None) -> tuple[int, dict[str, str], bytes]:
    """A POST with exactly this Content-Type, or none at all (urllib would add a form one)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    headers = {"Content-Type": content_type} if content_type else {}
    conn.request("POST", parts.path, body=body, headers=headers)
    resp = conn.getresponse()
    answer = (resp.status, dict(resp.headers), resp.read())
    conn.close()
    return answer


FORM = "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("content_type", "body", "paths"),
    [
        (FORM, b"paths=config.json&paths=sub%2Fdir&paths=nope&expand=false", ["config.json", "sub/dir"]),
        (f"{FORM}; charset=utf-8", b"paths=config.json", ["config.json"]),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="paths"\r\n\r\nconfig.json\r\n--b--\r\n',
            ["config.json"],
        ),
        ("application/json", b'{"paths": ["config.json", "nope"], "expand": false}', ["config.json"]),
        ("application/json", b'{"paths": "config.json"}', ["config.json"]),
        ("application/json", b'["config.json"]', []),
        # The reported bug: a form labelled text/plain. A web server does not read it as a form, so
        # the Hub saw no `paths` and answered []; so does the emulator, whatever the body says.
        ("text/plain; charset=utf-8", b"paths=config.json", []),
        ("text/plain", b'{"paths": ["config.json"]}', []),
        ("application/octet-stream", b"paths=config.json", []),
        (None, b"paths=config.json", []),
        (FORM, b"", []),
    ],
)
def test_paths_info_reads_the_body_only_as_its_content_type_says(
    emu: HubEmulator, content_type: str | None, body: bytes, paths: list[str]
) -> None:
    status, _, answer = post(f"{emu.url}/api/models/org/name/paths-info/main", body, content_type)
    assert status == 200
    assert [entry["path"] for entry in json.loads(answer)] == paths


def test_paths_info_refuses_what_a_body_parser_refuses(emu: HubEmulator) -> None:
    url = f"{emu.url}/api/models/org/name/paths-info/main"
    assert post(url, b'{"paths": ["a"', "application/json")[0] == 400
    assert post(url, b'"config.json"', "application/json")[0] == 400
    assert post(url, b'{"paths": [1]}', "application/json")[0] == 400
    status, headers, _ = post(f"{emu.url}/api/models/org/name/paths-info/nope", b"paths=a", FORM)
    assert (status, headers["X-Error-Code"]) == (404, "RevisionNotFound")
    # paths-info is POST only, like the Hub's route; other methods find no route.
    assert fetch(url)[0] == 404 and fetch(url, "PUT", body=b"paths=a")[0] == 404


def test_repo_info_siblings_carry_blobs_only_when_asked(emu: HubEmulator) -> None:
    repo = emu.get_repo("model", "org/name")
    assert repo is not None
    commit = repo.head()
    for path in (
        "/api/models/org/name",
        f"/api/models/org/name/revision/{commit}",
        "/api/models/org/name/revision/main",
    ):
        bare = json.loads(fetch(emu.url + path)[2])["siblings"]
        assert all(set(s) == {"rfilename"} for s in bare), path
        siblings = {s["rfilename"]: s for s in json.loads(fetch(f"{emu.url}{path}?blobs=true")[2])["siblings"]}
        assert siblings["config.json"] == {
            "rfilename": "config.json",
            "size": len(CONFIG),
            "blobId": git_blob_sha1(CONFIG),
        }
        weights = siblings["weights.safetensors"]
        assert weights["size"] == len(WEIGHTS) and weights["lfs"]["sha256"] == sha256_hex(WEIGHTS)
        assert weights["lfs"]["size"] == len(WEIGHTS) and weights["lfs"]["pointerSize"] > 100
        assert weights["blobId"] != sha256_hex(WEIGHTS)  # the pointer's git sha1, not the content hash
    info = json.loads(fetch(f"{emu.url}/api/models/org/name?securityStatus=true")[2])
    assert info["securityRepoStatus"]["scansDone"] is True


def test_treesize(emu: HubEmulator) -> None:
    base = f"{emu.url}/api/models/org/name/treesize"
    total = sum(len(data) for data in FILES.values())
    assert json.loads(fetch(f"{base}/main")[2]) == {"path": "", "size": total}
    assert json.loads(fetch(f"{base}/main/sub%2Fdir")[2]) == {"path": "sub/dir", "size": 5}
    assert json.loads(fetch(f"{base}/main/sub/dir")[2]) == {"path": "sub/dir", "size": 5}
    assert json.loads(fetch(f"{base}/main/weights.safetensors")[2])["size"] == len(WEIGHTS)
    status, headers, _ = fetch(f"{base}/main/nope")
    assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound")
    status, headers, _ = fetch(f"{base}/nope")
    assert (status, headers["X-Error-Code"]) == (404, "RevisionNotFound")


def test_auth_check(emu: HubEmulator) -> None:
    emu.add_repo("model", "org/gated", {"a.txt": b"a"}, gated="auto")
    emu.add_repo("model", "org/private", {"a.txt": b"a"}, private=True)
    good, bad = {"Authorization": "Bearer hf_good"}, {"Authorization": "Bearer hf_bad"}

    def check(repo: str, headers: dict[str, str] | None = None, suffix: str = "") -> tuple[int, str | None]:
        status, answer_headers, _ = fetch(f"{emu.url}/api/models/{repo}/auth-check{suffix}", headers=headers)
        return status, answer_headers.get("X-Error-Code")

    assert check("org/name") == (200, None)
    assert check("org/gated") == (401, "GatedRepo")
    assert check("org/gated", bad) == (403, "GatedRepo")
    assert check("org/gated", good) == (200, None)
    assert check("org/private") == (401, "RepoNotFound")
    assert check("org/private", bad) == (404, "RepoNotFound")
    assert check("org/private", good) == (200, None)
    assert check("org/missing") == (401, "RepoNotFound")
    assert check("org/name", good, "/write")[0] == 403  # emulator tokens are read tokens
    assert check("org/name", good, "/other")[0] == 404


def test_repo_listings(client: Path) -> None:
    with HubEmulator(list_page_size=2) as emu:
        for i in range(5):
            emu.add_repo("model", f"org/m{i}", {"a.txt": b"a"})
        emu.add_repo("model", "org/secret", {"a.txt": b"a"}, private=True)
        emu.add_repo("model", "org/gated", {"a.txt": b"a"}, gated="manual")
        emu.add_repo("model", "other/m", {"a.txt": b"a"})
        emu.add_repo("model", "legacy", {"a.txt": b"a"})
        emu.add_repo("dataset", "org/d", {"a.csv": b"a"})
        emu.add_repo("space", "org/s", {"app.py": b""})
        api = HfApi(endpoint=emu.url)

        public = ["org/gated", "org/m0", "org/m1", "org/m2", "org/m3", "org/m4"]
        assert [m.id for m in api.list_models(author="org")] == public
        assert emu.count(path_contains="cursor=") == 2  # 6 repos at 2 a page: 3 pages
        assert [m.id for m in api.list_models(author="org", token="hf_good")] == sorted([*public, "org/secret"])
        assert [m.id for m in api.list_models(author="org", limit=3)] == public[:3]
        assert [m.id for m in api.list_models(search="M3")] == ["org/m3"]
        assert [m.id for m in api.list_models(author="org", gated=True)] == ["org/gated"]
        assert [d.id for d in api.list_datasets(author="org")] == ["org/d"]
        assert [s.id for s in api.list_spaces(author="org")] == ["org/s"]
        assert list(api.list_models(author="nobody")) == []
        assert len(list(api.list_models())) == 8

        (item,) = api.list_models(author="other")
        assert item.id == "other/m" and item.siblings is None and item.sha is None
        (item,) = api.list_models(author="other", full=True)
        assert [s.rfilename for s in item.siblings or []] == ["a.txt"] and item.sha is not None
        (item,) = api.list_models(author="other", expand=["sha"])
        assert item.sha is not None and item.private is None

        status, headers, body = fetch(f"{emu.url}/api/models?author=org&limit=2&sort=lastModified&direction=1")
        assert status == 200 and len(json.loads(body)) == 2
        link = headers["Link"]
        assert link.startswith(f"<{emu.url}/api/models?author=org&limit=2&sort=lastModified&direction=1&cursor=")
        assert link.endswith('>; rel="next"')
        for bad in ("sort=nope", "limit=x", "limit=0", "direction=2", "cursor=nope", "gated=maybe"):
            assert fetch(f"{emu.url}/api/models?{bad}")[0] == 400, bad
        assert fetch(f"{emu.url}/api/models", "POST", body=b"")[0] == 404


def test_refuses_what_the_hub_refuses(emu: HubEmulator) -> None:
    base = f"{emu.url}/api/models/org/name"
    assert fetch(f"{base}/commits/main?p=-1")[0] == 400
    assert fetch(f"{base}/commits/main?limit=x")[0] == 400
    assert json.loads(fetch(f"{base}/commits/main?p=5")[2]) == []
    assert len(json.loads(fetch(f"{base}/commits/main?limit=1")[2])) == 1
    status, headers, _ = fetch(f"{base}/commits/nope")
    assert (status, headers["X-Error-Code"]) == (404, "RevisionNotFound")
    status, headers, _ = fetch(f"{base}/tree/nope")
    assert (status, headers["X-Error-Code"]) == (404, "RevisionNotFound")
    status, headers, _ = fetch(f"{base}/revision/nope")
    assert (status, headers["X-Error-Code"]) == (404, "RevisionNotFound")
    for method, url in [
        ("DELETE", base),
        ("POST", f"{base}/tree/main"),
        ("GET", f"{base}/refs/main"),
        ("POST", f"{emu.url}/org/name/resolve/main/config.json"),
        ("GET", f"{base}/unknown-op/main"),
    ]:
        status, headers, _ = fetch(url, method, body=b"" if method == "POST" else None)
        assert (status, headers.get("X-Error-Code")) == (404, None), (method, url)
