"""The emulator's git side, driven by the real `git` and `git-lfs` (no mirror): smart HTTP clones and
fetches, the LFS batch API and its CDN downloads, auth for gated/private repos, refused pushes."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from testbed.hubemu import HubEmulator, sha256_hex

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or subprocess.run(["git", "lfs", "version"], capture_output=True).returncode != 0,
    reason="needs git and git-lfs (scripts/test.sh installs them)",
)

WEIGHTS = hashlib.sha256(b"w").digest() * 4096  # 128 KiB, LFS by suffix and size
SHARD = os.urandom(20_000)  # LFS by size only
FILES = {
    "config.json": b'{"model_type": "emu"}',
    "model.safetensors": WEIGHTS,
    "sub/dir/big file.txt": SHARD,
    "sub/dir/a.txt": b"hello",
    "empty.txt": b"",
}
LFS = {"model.safetensors", "sub/dir/big file.txt"}
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def git_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """git with a HOME of its own (git-lfs installed there), no prompts, no system config, no proxy."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "",
        "NO_PROXY": "127.0.0.1,localhost",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "LANG": "C",
    }
    subprocess.run(["git", "lfs", "install", "--skip-repo"], env=env, check=True, capture_output=True)
    return env


def git(
    env: dict[str, str], *args: str, cwd: Path | None = None, check: bool = True, **extra: str
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["git", *args], env={**env, **extra}, cwd=cwd, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def http(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with _opener.open(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def tree_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


def test_clone_smudges_lfs_files_and_heads_match_the_api(
    hub: HubEmulator, git_env: dict[str, str], tmp_path: Path
) -> None:
    repo = hub.add_repo("model", "org/m", FILES)
    clone = tmp_path / "m"
    git(git_env, "clone", f"{hub.url}/org/m", str(clone))
    files = tree_files(clone)
    attributes = files.pop(".gitattributes").decode()  # generated: not part of the API listing
    assert {path: sha256_hex(data) for path, data in files.items()} == {
        path: sha256_hex(data) for path, data in FILES.items()
    }
    assert "/model.safetensors filter=lfs" in attributes and "/sub/dir/big[[:space:]]file.txt filter=lfs" in attributes
    head = git(git_env, "rev-parse", "HEAD", cwd=clone).stdout.strip()
    status, _, body = http(f"{hub.url}/api/models/org/m")
    assert head == repo.head() == json.loads(body)["sha"]
    status, headers, _ = http(f"{hub.url}/org/m/resolve/main/config.json")
    assert status == 200 and headers["X-Repo-Commit"] == head
    assert git(git_env, "status", "--porcelain", cwd=clone).stdout == ""  # smudged files match the index
    git(git_env, "fsck", "--full", "--strict", cwd=clone)
    # The pointers git stores are the emulator's (same blob ids as the tree API's).
    commit = repo.resolve("main")
    assert commit is not None
    for path in LFS:
        blob_id = git(git_env, "rev-parse", f"HEAD:{path}", cwd=clone).stdout.strip()
        assert blob_id == commit.files[path].oid
    # Request log: smart HTTP and one batch on the hub, one GET per LFS object on the CDN.
    assert hub.count("GET", "hub", "/org/m/info/refs") == 1
    assert hub.count("POST", "hub", "/org/m/git-upload-pack") >= 1
    assert hub.count("POST", "hub", "/org/m.git/info/lfs/objects/batch") == 1
    assert hub.count("GET", "cdn") == 2
    for path in LFS:
        assert hub.count("GET", "cdn", sha256_hex(FILES[path])) == 1


def test_skip_smudge_clone_then_lfs_pull(hub: HubEmulator, git_env: dict[str, str], tmp_path: Path) -> None:
    repo = hub.add_repo("dataset", "org/d", FILES)
    clone = tmp_path / "d"
    git(git_env, "clone", f"{hub.url}/datasets/org/d.git", str(clone), GIT_LFS_SKIP_SMUDGE="1")
    commit = repo.resolve("main")
    assert commit is not None
    for path in LFS:
        assert (clone / path).read_bytes() == commit.files[path].pointer
    assert hub.count(origin="cdn") == 0 and hub.count(path_contains="lfs/objects/batch") == 0
    git(git_env, "lfs", "pull", cwd=clone)
    files = tree_files(clone)
    files.pop(".gitattributes")
    assert files == FILES
    assert hub.count("GET", "cdn") == len(LFS)
    assert git(git_env, "rev-parse", "HEAD", cwd=clone).stdout.strip() == repo.head()


def test_fetch_follows_new_commits_branches_tags_and_prs(
    hub: HubEmulator, git_env: dict[str, str], tmp_path: Path
) -> None:
    repo = hub.add_repo("space", "org/s", {"app.py": b"print(1)\n", "model.safetensors": WEIGHTS})
    clone = tmp_path / "s"
    git(git_env, "clone", f"{hub.url}/spaces/org/s", str(clone))
    first = repo.head()
    second = repo.commit({"app.py": b"print(2)\n", "more.bin": SHARD}, message="second", delete=["model.safetensors"])
    repo.create_branch("dev")
    dev = repo.commit({"dev.txt": b"dev"}, branch="dev")
    repo.tag("v1", first)
    pr = repo.create_pr(dev)
    remote = dict(
        reversed(line.split("\t"))
        for line in git(git_env, "ls-remote", f"{hub.url}/spaces/org/s", cwd=clone).stdout.splitlines()
    )
    assert remote == {
        "HEAD": second,
        "refs/heads/main": second,
        "refs/heads/dev": dev,
        "refs/tags/v1": first,
        f"refs/pr/{pr}": dev,
    }
    git(git_env, "pull", "--ff-only", cwd=clone)
    assert git(git_env, "rev-parse", "HEAD", cwd=clone).stdout.strip() == second
    assert git(git_env, "log", "--format=%s", cwd=clone).stdout.split("\n")[:2] == ["second", "initial commit"]
    files = tree_files(clone)
    files.pop(".gitattributes")
    assert files == repo.files()  # the new LFS file came through the batch API too
    git(git_env, "fetch", "origin", f"refs/pr/{pr}", cwd=clone)
    assert git(git_env, "rev-parse", "FETCH_HEAD", cwd=clone).stdout.strip() == dev


def test_gated_and_private_repos_need_the_token(hub: HubEmulator, git_env: dict[str, str], tmp_path: Path) -> None:
    hub.add_repo("model", "org/gated", FILES, gated="auto")
    hub.add_repo("model", "org/private", {"a.txt": b"a"}, private=True)
    host = hub.url.removeprefix("http://")
    anonymous = git(git_env, "clone", f"{hub.url}/org/gated", str(tmp_path / "g0"), check=False)
    assert anonymous.returncode != 0 and "could not read Username" in anonymous.stderr
    status, headers, _ = http(f"{hub.url}/org/gated/info/refs?service=git-upload-pack")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
    wrong = git(git_env, "clone", f"http://user:hf_bad@{host}/org/gated", str(tmp_path / "g1"), check=False)
    assert wrong.returncode != 0 and "403" in wrong.stderr
    clone = tmp_path / "g2"
    git(git_env, "clone", f"http://user:hf_good@{host}/org/gated", str(clone))  # LFS batch sends it too
    files = tree_files(clone)
    files.pop(".gitattributes")
    assert files == FILES
    # A Bearer token works as on the other routes.
    status, _, body = http(
        f"{hub.url}/org/gated.git/info/refs?service=git-upload-pack", headers={"Authorization": "Bearer hf_good"}
    )
    assert status == 200 and b"# service=git-upload-pack" in body
    hidden = git(git_env, "clone", f"http://user:hf_bad@{host}/org/private", str(tmp_path / "p0"), check=False)
    assert hidden.returncode != 0 and "not found" in hidden.stderr
    git(git_env, "clone", f"http://user:hf_good@{host}/org/private", str(tmp_path / "p1"))
    missing = git(git_env, "clone", f"{hub.url}/org/missing", str(tmp_path / "x"), check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_push_is_refused(hub: HubEmulator, git_env: dict[str, str], tmp_path: Path) -> None:
    hub.add_repo("model", "org/m", {"a.txt": b"a"})
    clone = tmp_path / "m"
    git(git_env, "clone", f"{hub.url}/org/m", str(clone))
    (clone / "b.txt").write_text("b")
    git(git_env, "add", "b.txt", cwd=clone)
    git(git_env, "commit", "-qm", "b", cwd=clone)
    push = git(git_env, "push", "origin", "main", cwd=clone, check=False)
    assert push.returncode != 0 and "403" in push.stderr
    status, _, body = http(f"{hub.url}/org/m/info/refs?service=git-receive-pack")
    assert status == 403 and b"not authorized to push" in body
    lfs_headers = {"Content-Type": "application/vnd.git-lfs+json", "Accept": "application/vnd.git-lfs+json"}
    upload = json.dumps({"operation": "upload", "objects": [{"oid": "0" * 64, "size": 1}]}).encode()
    status, _, _ = http(f"{hub.url}/org/m.git/info/lfs/objects/batch", upload, lfs_headers)
    assert status == 403


def test_lfs_batch_and_gzip_upload_pack_on_the_wire(hub: HubEmulator) -> None:
    repo = hub.add_repo("model", "org/m", FILES)
    lfs_headers = {"Content-Type": "application/vnd.git-lfs+json", "Accept": "application/vnd.git-lfs+json"}
    oid = sha256_hex(WEIGHTS)
    request = {
        "operation": "download",
        "transfers": ["basic"],
        "objects": [{"oid": oid, "size": len(WEIGHTS)}, {"oid": "f" * 64, "size": 3}],
    }
    status, headers, body = http(
        f"{hub.url}/org/m.git/info/lfs/objects/batch", json.dumps(request).encode(), lfs_headers
    )
    assert status == 200 and headers["Content-Type"].startswith("application/vnd.git-lfs+json")
    found, unknown = json.loads(body)["objects"]
    assert (found["oid"], found["size"]) == (oid, len(WEIGHTS))
    href = found["actions"]["download"]["href"]
    assert href.startswith(hub.cdn_url) and "Signature=" in href
    assert unknown["error"]["code"] == 404
    assert http(href)[2] == WEIGHTS
    # A gzip-compressed upload-pack request (git compresses large ones), protocol v0.
    want = f"want {repo.head()}\n"
    pkt = f"{len(want) + 4:04x}{want}0000" + "0009done\n"
    status, headers, body = http(
        f"{hub.url}/org/m/git-upload-pack",
        gzip.compress(pkt.encode()),
        {"Content-Type": "application/x-git-upload-pack-request", "Content-Encoding": "gzip"},
    )
    assert status == 200 and headers["Content-Type"] == "application/x-git-upload-pack-result"
    assert body.startswith(b"0008NAK\n") and b"PACK" in body


def test_faults_apply_to_git_routes(hub: HubEmulator, git_env: dict[str, str]) -> None:
    hub.add_repo("model", "org/m", {"a.txt": b"a"})
    hub.faults.status(500, path_contains="/org/m/info/refs")
    failed = git(git_env, "ls-remote", f"{hub.url}/org/m", check=False)
    assert failed.returncode != 0 and "500" in failed.stderr
    assert git(git_env, "ls-remote", f"{hub.url}/org/m").stdout.count("refs/heads/main") == 1
    hub.faults.down()
    assert git(git_env, "ls-remote", f"{hub.url}/org/m", check=False).returncode != 0
    hub.faults.up()
    assert hub.count("GET", "hub", "/org/m/info/refs") == 3
