"""Conformance: the real huggingface_hub client (2.x, hf_xet installed) through the mirror.

One emulator and one mirror serve the module; each test uses a fresh client cache (HF_HOME).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from testbed.hubemu import HubEmulator, git_blob_sha1, sha256_hex
from testbed.mirror_server import MirrorThread
from testbed.s3server import ACCESS_KEY, SECRET_KEY, S3Server
from tests.support.client import run_client
from tests.support.mirrors import start_mirror

CONFIG = b'{"model_type": "tiny", "hidden_size": 8}'
WEIGHTS = os.urandom(300_000)
TOKENIZER = b'{"version": "1.0", "model": {}}' * 400  # LFS by name, like the real repos
GOOD_TOKEN = "hf_good_token_123"
MANY = {f"dir{i % 7}/file{i:04d}.txt": f"content {i}".encode() for i in range(1100)}


class World:
    def __init__(self, hub: HubEmulator, mirror: MirrorThread) -> None:
        self.hub = hub
        self.mirror = mirror
        self.model = hub.add_repo(
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
        self.v1 = self.model.head()
        self.model.tag("v1.0", self.v1)
        self.pr_commit = self.model.commit({"config.json": b'{"pr": true}'}, message="pr", branch="pr-branch")
        self.pr = self.model.create_pr(self.pr_commit)
        self.dataset = hub.add_repo("dataset", "org/data", {"data/train.csv": b"a,b\n1,2\n", "README.md": b"# d"})
        self.space = hub.add_repo("space", "org/app", {"app.py": b"print('hi')\n"})
        self.many = hub.add_repo("model", "org/many", MANY)
        self.gated = hub.add_repo(
            "model", "org/gated", {"config.json": b"{}", "w.bin": b"x" * 20_000}, gated="manual", tokens=(GOOD_TOKEN,)
        )
        self.legacy = hub.add_repo("model", "gpt9", {"config.json": b'{"legacy": 1}'})

    def client(self, script: str, home: Path, **kw: object) -> dict:
        return run_client(self.mirror.url, script, home, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=["local", "s3"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The whole module runs once per storage backend: "works on S3" means the same as on disk."""
    with contextlib.ExitStack() as stack, HubEmulator() as hub:
        storage: dict[str, object] = {}
        if request.param == "s3":
            server = S3Server(tmp_path_factory.mktemp("seaweedfs")).start()
            stack.callback(server.close)
            server.create_bucket("conformance")
            env = {
                "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            }
            stack.enter_context(mock.patch.dict(os.environ, env))
            storage = {"backend": "s3", "s3_endpoint": server.endpoint, "s3_bucket": "conformance"}
        mirror = start_mirror(hub.url, tmp_path_factory.mktemp("mirror-cache"), storage=storage)
        stack.callback(mirror.stop)
        yield World(hub, mirror)


def _assert_never_left_mirror(world: World) -> None:
    """Clients never reach the CDN or ask for xet tokens: only the mirror does, without tokens."""
    assert world.hub.count(path_contains="xet-read-token") == 0
    for record in world.hub.requests:
        assert "hf_hub" not in record.headers.get("user-agent", ""), record
        if record.origin == "cdn":
            assert "authorization" not in record.headers


def test_plain_and_lfs_files_cache_like_the_hub(world: World, tmp_path: Path) -> None:
    out = world.client(
        """
        for name in ("config.json", "model.safetensors", "tokenizer.json", "empty.txt"):
            out[name] = os.path.realpath(hf_hub_download("org/tiny", name))
        cache = os.path.join(os.environ["HF_HOME"], "hub", "models--org--tiny")
        out["ref"] = open(os.path.join(cache, "refs", "main")).read()
        out["snapshot"] = sorted(os.listdir(os.path.join(cache, "snapshots", out["ref"])))
        """,
        tmp_path,
    )
    assert Path(out["config.json"]).name == git_blob_sha1(CONFIG)
    assert Path(out["config.json"]).read_bytes() == CONFIG
    assert Path(out["model.safetensors"]).name == sha256_hex(WEIGHTS)
    assert Path(out["model.safetensors"]).read_bytes() == WEIGHTS
    assert Path(out["tokenizer.json"]).name == sha256_hex(TOKENIZER)
    assert Path(out["empty.txt"]).read_bytes() == b""
    assert out["ref"] == world.model.head()
    assert out["snapshot"] == ["config.json", "empty.txt", "model.safetensors", "tokenizer.json"]
    _assert_never_left_mirror(world)


def test_second_download_is_a_head_only(world: World, tmp_path: Path) -> None:
    script = 'out["p"] = hf_hub_download("org/tiny", "model.safetensors")'
    world.client(script, tmp_path)
    world.mirror.requests.clear()
    world.client(script, tmp_path)
    resolve = [(m, p) for m, p in world.mirror.requests if "/resolve/" in p]
    assert resolve == [("HEAD", "/org/tiny/resolve/main/model.safetensors")]


def test_head_headers_match_the_hub(world: World) -> None:
    req = urllib.request.Request(f"{world.mirror.url}/org/tiny/resolve/main/model.safetensors", method="HEAD")
    with urllib.request.urlopen(req) as resp:
        headers = resp.headers
    assert headers["X-Repo-Commit"] == world.model.head()
    assert headers["X-Linked-Etag"] == f'"{sha256_hex(WEIGHTS)}"'
    assert headers["ETag"] == f'"{sha256_hex(WEIGHTS)}"'
    assert headers["X-Linked-Size"] == str(len(WEIGHTS))
    assert headers["Content-Length"] == str(len(WEIGHTS))
    assert headers["Accept-Ranges"] == "bytes"
    assert "X-Xet-Hash" not in headers and "Link" not in headers
    req = urllib.request.Request(f"{world.mirror.url}/org/tiny/resolve/main/config.json", method="HEAD")
    with urllib.request.urlopen(req) as resp:
        assert resp.headers["ETag"] == f'"{git_blob_sha1(CONFIG)}"'
        assert resp.headers["Content-Length"] == str(len(CONFIG))
        assert "X-Linked-Etag" not in resp.headers


def test_snapshot_download_pages_through_the_mirror(world: World, tmp_path: Path) -> None:
    world.mirror.requests.clear()
    out = world.client(
        """
        out["files"] = len(HfApi().list_repo_files("org/many"))
        path = snapshot_download("org/many", allow_patterns=["dir3/*"])
        out["got"] = sorted(os.path.relpath(os.path.join(r, f), path) for r, _, fs in os.walk(path) for f in fs)
        again = snapshot_download("org/many", allow_patterns=["dir3/*"])
        out["same"] = again == path
        """,
        tmp_path,
    )
    assert out["files"] == len(MANY)
    assert out["got"] == sorted(p for p in MANY if p.startswith("dir3/"))
    assert out["same"]
    assert any("cursor=" in p for _, p in world.mirror.requests), "client followed the mirror's Link"
    with urllib.request.urlopen(f"{world.mirror.url}/api/models/org/many/tree/main?recursive=true") as resp:
        link = resp.headers["Link"]
        assert link.startswith(f"<{world.mirror.url}/api/models/org/many/tree/{world.many.head()}?")
        assert len(json.loads(resp.read())) == 1000
    _assert_never_left_mirror(world)


def test_every_revision_form(world: World, tmp_path: Path) -> None:
    short = world.v1[:10]
    out = world.client(
        f"""
        api = HfApi()
        for rev in ("v1.0", "refs/pr/{world.pr}", "{world.v1}", "{short}", "main"):
            path = hf_hub_download("org/tiny", "config.json", revision=rev)
            out[rev] = [open(path, "rb").read().decode(), api.model_info("org/tiny", revision=rev).sha,
                        len(api.list_repo_files("org/tiny", revision=rev))]
        """,
        tmp_path,
    )
    assert out["v1.0"][:2] == [CONFIG.decode(), world.v1]
    assert out[f"refs/pr/{world.pr}"][:2] == ['{"pr": true}', world.pr_commit]
    assert out[world.v1][:2] == [CONFIG.decode(), world.v1]
    assert out[short][1] == world.v1
    assert out["main"][1] == world.model.head()
    assert all(v[2] == 5 for v in out.values())
    req = urllib.request.Request(f"{world.mirror.url}/org/tiny/resolve/refs%2Fpr%2F{world.pr}/config.json")
    with urllib.request.urlopen(req) as resp:
        assert resp.headers["X-Repo-Commit"] == world.pr_commit


def test_dataset_space_and_legacy_repos(world: World, tmp_path: Path) -> None:
    out = world.client(
        """
        api = HfApi()
        out["csv"] = open(hf_hub_download("org/data", "data/train.csv", repo_type="dataset")).read()
        out["ds_files"] = sorted(api.list_repo_files("org/data", repo_type="dataset"))
        out["ds_sha"] = api.dataset_info("org/data").sha
        out["app"] = open(hf_hub_download("org/app", "app.py", repo_type="space")).read()
        out["space_sha"] = api.space_info("org/app").sha
        out["legacy"] = open(hf_hub_download("gpt9", "config.json")).read()
        out["legacy_sha"] = api.model_info("gpt9").sha
        """,
        tmp_path,
    )
    assert out["csv"] == "a,b\n1,2\n"
    assert out["ds_files"] == ["README.md", "data/train.csv"]
    assert out["ds_sha"] == world.dataset.head()
    assert out["app"] == "print('hi')\n"
    assert out["space_sha"] == world.space.head()
    assert out["legacy"] == '{"legacy": 1}'
    assert out["legacy_sha"] == world.legacy.head()


def test_errors_map_to_the_client_exceptions(world: World, tmp_path: Path) -> None:
    out = world.client(
        f"""
        api = HfApi()
        out["missing_repo"] = err(hf_hub_download, "org/nope", "config.json")
        out["missing_file"] = err(hf_hub_download, "org/tiny", "nope.json")
        out["file_exists"] = api.file_exists("org/tiny", "nope.json")
        out["file_exists_yes"] = api.file_exists("org/tiny", "config.json")
        out["bad_rev"] = err(hf_hub_download, "org/tiny", "config.json", revision="nope")
        out["bad_rev_snapshot"] = err(snapshot_download, "org/tiny", revision="nope")
        out["gated"] = err(hf_hub_download, "org/gated", "config.json")
        out["gated_bad_token"] = err(hf_hub_download, "org/gated", "config.json", token="hf_wrong")
        out["gated_ok"] = open(hf_hub_download("org/gated", "w.bin", token="{GOOD_TOKEN}"), "rb").read() == b"x" * 20000
        out["repo_exists"] = [api.repo_exists("org/tiny"), api.repo_exists("org/nope")]
        cache = os.path.join(os.environ["HF_HOME"], "hub", "models--org--tiny", ".no_exist")
        out["no_exist"] = [f for _, _, fs in os.walk(cache) for f in fs]
        """,
        tmp_path,
    )
    assert out["missing_repo"] == "RepositoryNotFoundError"
    assert out["missing_file"] == "RemoteEntryNotFoundError"
    assert out["file_exists"] is False and out["file_exists_yes"] is True
    assert out["bad_rev"] == "RevisionNotFoundError"
    assert out["bad_rev_snapshot"] == "RevisionNotFoundError"
    assert out["gated"] == "GatedRepoError"
    assert out["gated_bad_token"] == "GatedRepoError"
    assert out["gated_ok"] is True
    assert out["repo_exists"] == [True, False]
    assert out["no_exist"] == ["nope.json"], "EntryNotFound carried X-Repo-Commit"
    _assert_never_left_mirror(world)


def test_api_shapes(world: World, tmp_path: Path) -> None:
    world.hub.users["hf_user_tok"] = "alice"
    out = world.client(
        """
        api = HfApi()
        info = api.model_info("org/tiny", files_metadata=True)
        out["siblings"] = {s.rfilename: [s.size, s.lfs.sha256 if s.lfs else None] for s in info.siblings}
        tree = list(api.list_repo_tree("org/tiny", recursive=True, expand=True))
        out["tree"] = {e.path: [type(e).__name__, getattr(e, "last_commit", None) is not None] for e in tree}
        out["sub"] = [e.path for e in api.list_repo_tree("org/tiny", path_in_repo="sub/dir")]
        out["paths"] = sorted(e.path for e in api.get_paths_info("org/tiny", ["config.json", "sub", "nope"]))
        refs = api.list_repo_refs("org/tiny", include_pull_requests=True)
        out["refs"] = [sorted(b.name for b in refs.branches), [t.name for t in refs.tags], refs.converts,
                       [p.ref for p in refs.pull_requests]]
        out["commits"] = [c.commit_id for c in api.list_repo_commits("org/tiny")]
        out["whoami"] = api.whoami(token="hf_user_tok")["name"]
        out["whoami_bad"] = err(api.whoami, token="hf_nobody")
        """,
        tmp_path,
    )
    assert out["siblings"]["model.safetensors"] == [len(WEIGHTS), sha256_hex(WEIGHTS)]
    assert out["siblings"]["config.json"] == [len(CONFIG), None]
    assert out["tree"]["config.json"] == ["RepoFile", True]
    assert out["tree"]["sub"][0] == "RepoFolder"
    assert out["sub"] == ["sub/dir/notes.txt"]
    assert out["paths"] == ["config.json", "sub"]
    assert out["refs"] == [["main", "pr-branch"], ["v1.0"], [], [f"refs/pr/{world.pr}"]]
    assert out["commits"] == [world.model.head()]
    assert out["whoami"] == "alice"
    assert out["whoami_bad"] is not None
    with urllib.request.urlopen(f"{world.mirror.url}/api/agent-harnesses") as resp:
        assert json.loads(resp.read()) == {"standardEnvVars": [], "harnesses": {}}
    with urllib.request.urlopen(f"{world.mirror.url}/api/models/org/tiny/tree/main?recursive=true") as resp:
        assert "xetHash" not in resp.read().decode()
    with urllib.request.urlopen(f"{world.mirror.url}/api/models/org/tiny") as resp:
        assert "xetEnabled" not in resp.read().decode()


def test_missing_folder_is_entry_not_found(world: World) -> None:
    url = f"{world.mirror.url}/api/models/org/tiny/tree/main/additional_chat_templates?recursive=false&expand=false"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url)
    assert info.value.code == 404
    assert info.value.headers["X-Error-Code"] == "EntryNotFound"


def test_range_reads_with_hffilesystem(world: World, tmp_path: Path) -> None:
    world.mirror.requests.clear()
    out = world.client(
        """
        from huggingface_hub import HfFileSystem
        fs = HfFileSystem()
        with fs.open("org/tiny/model.safetensors", "rb", block_size=4096) as f:
            f.seek(1000)
            out["chunk"] = f.read(500).hex()
        out["ls"] = sorted(p["name"] for p in fs.ls("org/tiny/sub"))
        """,
        tmp_path,
    )
    assert bytes.fromhex(out["chunk"]) == WEIGHTS[1000:1500]
    assert out["ls"] == ["org/tiny/sub/dir"]
    assert any("/resolve/" in p for _, p in world.mirror.requests)


def test_range_edge_cases(world: World) -> None:
    base = f"{world.mirror.url}/org/tiny/resolve/main"

    def get(name: str, rng: str) -> tuple[int, bytes, dict]:
        req = urllib.request.Request(f"{base}/{name}", headers={"Range": rng})
        try:
            with urllib.request.urlopen(req) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    status, body, headers = get("model.safetensors", "bytes=10-19")
    assert (status, body, headers["Content-Range"]) == (206, WEIGHTS[10:20], f"bytes 10-19/{len(WEIGHTS)}")
    status, body, _ = get("model.safetensors", "bytes=299990-")
    assert (status, body) == (206, WEIGHTS[299990:])
    status, body, _ = get("model.safetensors", "bytes=-5")
    assert (status, body) == (206, WEIGHTS[-5:])
    status, _, headers = get("model.safetensors", f"bytes={len(WEIGHTS)}-")
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(WEIGHTS)}"
    status, body, headers = get("config.json", "bytes=0-")
    assert (status, body) == (206, CONFIG)
    status, _, _ = get("empty.txt", "bytes=0-")
    assert status == 416
    with urllib.request.urlopen(f"{base}/model.safetensors") as resp:
        assert "Content-Range" not in resp.headers and resp.read() == WEIGHTS


def test_hf_download_cli(world: World, tmp_path: Path) -> None:
    hf = Path(sys.executable).parent / "hf"
    assert hf.exists(), "the hf CLI ships with huggingface_hub"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=world.mirror.url, HF_HOME=str(tmp_path / "home"), HF_HUB_DISABLE_TELEMETRY="1")
    target = tmp_path / "local"
    proc = subprocess.run(
        [str(hf), "download", "org/tiny", "--local-dir", str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (target / "model.safetensors").read_bytes() == WEIGHTS
    assert (target / "sub" / "dir" / "notes.txt").read_bytes() == b"nested"
    proc = subprocess.run(
        [str(hf), "download", "org/nope", "config.json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0 and "not found" in (proc.stderr + proc.stdout).lower()
    _assert_never_left_mirror(world)
