"""`git clone` and `git fetch` through the mirror: git's smart HTTP, passed through.

The first tests need no git server upstream: routing, refusals (push, LFS uploads, the allow-list,
gated repos without a token) and the token git sends as HTTP Basic. The end-to-end tests run the
real `git` through the mirror against the emulator's git server. git-lfs: tests/test_git_lfs.py.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mirror.errors import BadRequest
from mirror.hub.git import READ_ONLY
from mirror.hub.paths import GitTarget, parse_git, parse_resolve
from mirror.tokens import git_token
from testbed.hubemu import HubEmulator
from testbed.mirror_server import MirrorThread, metric
from tests.support.git import (
    LFS_HEADERS,
    REFS,
    basic,
    clone,
    files,
    git_server_upstream,
    head,
    run,
    sealed_git_env,
    with_token,
)
from tests.support.http import send
from tests.support.mirrors import start_mirror

TOKEN = "hf_good"
LFS_DATA = os.urandom(30_000)
BIG = os.urandom(3 * 1024 * 1024)


# -- paths and tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/org/m/info/refs", ("model", "org/m", False, "info/refs")),
        ("/org/m.git/info/refs", ("model", "org/m", True, "info/refs")),
        ("/org/m.git/git-upload-pack", ("model", "org/m", True, "git-upload-pack")),
        ("/org/m/git-receive-pack", ("model", "org/m", False, "git-receive-pack")),
        ("/gpt2.git/info/refs", ("model", "gpt2", True, "info/refs")),
        ("/models/org/m/info/refs", ("model", "org/m", False, "info/refs")),
        ("/datasets/org/d.git/info/refs", ("dataset", "org/d", True, "info/refs")),
        ("/datasets/squad/git-upload-pack", ("dataset", "squad", False, "git-upload-pack")),
        ("/spaces/org/app/info/refs", ("space", "org/app", False, "info/refs")),
        ("/org/m.git/info/lfs/objects/batch", ("model", "org/m", True, "info/lfs/objects/batch")),
    ],
)
def test_git_paths(raw: str, expected: tuple[str, str, bool, str]) -> None:
    target = parse_git(raw)
    assert isinstance(target, GitTarget)
    assert (target.repo.repo_type, target.repo.repo_id, target.dot_git, target.endpoint) == expected
    # Upstream is asked the same way (models/ being the default prefix, it is left out).
    assert target.upstream_path == raw.removeprefix("/models")


def test_lfs_object_paths() -> None:
    oid = "ab" * 32
    target = parse_git(f"/datasets/org/d.git/info/lfs/objects/{oid}")
    assert target is not None and (target.repo.repo_type, target.repo.repo_id) == ("dataset", "org/d")
    assert (target.endpoint, target.oid) == ("info/lfs/objects", oid)
    batch = parse_git("/org/m.git/info/lfs/objects/batch")
    assert batch is not None and (batch.endpoint, batch.oid) == ("info/lfs/objects/batch", "")
    for bad in ("xyz", oid.upper(), oid + "0", "%00"):
        with pytest.raises(BadRequest):
            parse_git(f"/org/m.git/info/lfs/objects/{bad}")


def test_resolve_urls_stay_resolve_urls() -> None:
    # A file named info/refs; the dispatcher asks parse_resolve first.
    assert parse_resolve("/org/m/resolve/main/info/refs") is not None
    assert parse_git("/org/m/resolve/main/info/refs") is None
    assert parse_git("/org/m/tree/main") is None
    assert parse_git("/info/refs") is None
    assert parse_git("/a/b/c/info/refs") is None


@pytest.mark.parametrize(
    "raw", ["/org/m%0A/info/refs", "/org/a..b.git/info/refs", "/org/.git/info/refs", "/%ff/m/git-upload-pack"]
)
def test_bad_git_paths(raw: str) -> None:
    with pytest.raises(BadRequest):
        parse_git(raw)


def test_tokens_from_basic_and_bearer() -> None:
    assert git_token(None) is None
    assert git_token(f"Bearer {TOKEN}") == TOKEN
    assert git_token(basic("user", TOKEN)) == TOKEN
    assert git_token(basic("", TOKEN)) == TOKEN
    assert git_token(basic("user", "with:colon")) == "with:colon"
    assert git_token(basic("user", "")) is None  # no password: anonymous
    for bad in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), basic("u", "bad\x01token")):
        with pytest.raises(BadRequest):
            git_token(bad)


# -- refusals, through a mirror (no git server upstream needed) ------------------------------------


@pytest.fixture
def repos(hub: HubEmulator) -> HubEmulator:
    # big.dat is no LFS file: its 3 MiB go through the pack, in many chunks.
    hub.add_repo("model", "org/m", {"config.json": b"{}", "w.bin": LFS_DATA, "big.dat": BIG}, lfs=["w.bin"])
    hub.add_repo("dataset", "org/d", {"data.csv": b"a,b\n1,2\n"})
    hub.add_repo("model", "org/gated", {"config.json": b'{"gated": true}'}, gated="auto", tokens=(TOKEN,))
    hub.add_repo("model", "org/private", {"config.json": b"{}"}, private=True, tokens=(TOKEN,))
    return hub


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/org/m/info/refs?service=git-receive-pack"),
        ("GET", "/org/m.git/info/refs?service=git-receive-pack"),
        ("POST", "/org/m.git/git-receive-pack"),
        ("POST", "/datasets/org/d/git-receive-pack"),
    ],
)
def test_push_is_refused(repos: HubEmulator, mirror: MirrorThread, method: str, path: str) -> None:
    repos.clear_requests()
    status, headers, body = send(mirror.url, method, path, body=b"0000" if method == "POST" else None)
    assert status == 403
    assert headers["Content-Type"].startswith("text/plain")  # git prints it as `remote: ...`
    assert body.decode().strip() == READ_ONLY
    assert headers["X-Error-Message"] == READ_ONLY and headers["X-Error-Code"] == "ReadOnlyMirror"
    assert repos.count() == 0
    assert metric(mirror.url, "hub_mirror_requests_total", route="git_receive_pack") >= 1


def test_lfs_upload_is_refused(repos: HubEmulator, mirror: MirrorThread) -> None:
    repos.clear_requests()
    batch = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": "0" * 64, "size": 1}]}
    lfs = LFS_HEADERS
    path = "/org/m.git/info/lfs/objects/batch"
    status, headers, body = send(mirror.url, "POST", path, lfs, json.dumps(batch).encode())
    assert status == 403 and json.loads(body) == {"message": READ_ONLY}
    assert headers["Content-Type"].startswith("application/vnd.git-lfs+json")
    status, _, _ = send(mirror.url, "POST", path, lfs, b"[not json")
    assert status == 400
    assert repos.count() == 0


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/org/m/info/refs", 400),  # the dumb protocol
        ("GET", "/org/m/info/refs?service=git-frobnicate", 400),
        ("POST", f"/org/m/{REFS}", 405),
        ("GET", "/org/m/git-upload-pack", 405),
        ("GET", "/org/m.git/info/lfs/objects/batch", 405),
        ("GET", f"/org/m%0A/{REFS}", 400),
        ("GET", f"/org/a..b.git/{REFS}", 400),
        ("GET", f"/a/b/c/{REFS}", 404),
    ],
)
def test_bad_requests(repos: HubEmulator, mirror: MirrorThread, method: str, path: str, status: int) -> None:
    repos.clear_requests()
    assert send(mirror.url, method, path, body=b"" if method == "POST" else None)[0] == status
    assert repos.count() == 0


def test_allowlist_refuses_as_resolve_does(repos: HubEmulator, tmp_path: Path) -> None:
    server = start_mirror(repos.url, tmp_path / "cache", policy={"enforce_allowlist": True})
    try:
        repos.clear_requests()
        status, headers, body = send(server.url, "GET", f"/org/m.git/{REFS}")
        resolve_status, resolve_headers, _ = send(server.url, "GET", "/org/m/resolve/main/config.json")
        assert status == resolve_status == 404
        assert headers["X-Error-Code"] == resolve_headers["X-Error-Code"] == "RepoNotFound"
        assert headers["X-Error-Message"] == resolve_headers["X-Error-Message"]
        assert "allow-list" in body.decode()
        assert repos.count() == 0
    finally:
        server.stop()


@pytest.mark.parametrize("repo", ["org/gated", "org/private"])
def test_gated_and_private_repos_ask_for_credentials(repos: HubEmulator, mirror: MirrorThread, repo: str) -> None:
    repos.clear_requests()
    status, headers, _ = send(mirror.url, "GET", f"/{repo}.git/{REFS}")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
    assert repos.count(path_contains="/info/refs") == 0
    status, headers, _ = send(mirror.url, "POST", f"/{repo}.git/info/lfs/objects/batch", LFS_HEADERS, b"{}")
    assert status == 400  # the body is checked first: no batch, no policy question
    batch = json.dumps({"operation": "download", "objects": []}).encode()
    status, headers, _ = send(mirror.url, "POST", f"/{repo}.git/info/lfs/objects/batch", LFS_HEADERS, batch)
    assert status == 401 and headers["LFS-Authenticate"].startswith("Basic realm=")


def test_upstream_down_is_a_quick_clear_5xx(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    server = start_mirror(f"http://127.0.0.1:{port}", tmp_path / "cache")
    try:
        started = time.monotonic()
        status, headers, body = send(server.url, "GET", f"/org/m.git/{REFS}")
        assert 500 <= status < 600 and time.monotonic() - started < 10
        assert headers["Content-Type"].startswith("text/plain") and "upstream" in body.decode()
    finally:
        server.stop()


# -- end to end with the real git --------------------------------------------------------------------


@pytest.fixture
def git_env(repos: HubEmulator, tmp_path: Path) -> Iterator[dict[str, str]]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    if not git_server_upstream(repos):
        pytest.skip("the Hub emulator has no git server yet")
    yield {**sealed_git_env(tmp_path / "home"), "GIT_LFS_SKIP_SMUDGE": "1"}


@pytest.mark.parametrize("suffix", ["", ".git"])
def test_clone_through_the_mirror_equals_a_clone_from_upstream(
    repos: HubEmulator, mirror: MirrorThread, git_env: dict[str, str], tmp_path: Path, suffix: str
) -> None:
    direct, mirrored = tmp_path / "direct", tmp_path / "mirrored"
    assert clone(f"{repos.url}/org/m{suffix}", direct, git_env).returncode == 0
    done = clone(f"{mirror.url}/org/m{suffix}", mirrored, git_env)
    assert done.returncode == 0, done.stderr
    assert head(mirrored, git_env) == head(direct, git_env) == repos.get_repo("model", "org/m").head()  # type: ignore[union-attr]
    assert files(mirrored) == files(direct)
    assert files(mirrored)["config.json"] == b"{}" and files(mirrored)["big.dat"] == BIG
    assert metric(mirror.url, "hub_mirror_requests_total", route="git_refs") >= 1
    assert metric(mirror.url, "hub_mirror_requests_total", route="git_upload_pack") >= 1


def test_clone_a_dataset_and_fetch_a_new_commit(
    repos: HubEmulator, mirror: MirrorThread, git_env: dict[str, str], tmp_path: Path
) -> None:
    dest = tmp_path / "d"
    done = clone(f"{mirror.url}/datasets/org/d", dest, git_env)
    assert done.returncode == 0, done.stderr
    assert files(dest)["data.csv"] == b"a,b\n1,2\n"
    repo = repos.get_repo("dataset", "org/d")
    assert repo is not None
    new = repo.commit({"more.csv": b"3,4\n"}, message="more")
    # Protocol v0 too: its negotiation goes in the POST body the way v2's does not.
    for protocol in ("2", "0"):
        run(["git", "-c", f"protocol.version={protocol}", "fetch", "-q", "origin"], git_env, dest)
        assert run(["git", "rev-parse", "origin/main"], git_env, dest).stdout.strip() == new
    run(["git", "merge", "-q", "--ff-only", "origin/main"], git_env, dest)
    assert files(dest)["more.csv"] == b"3,4\n"


def test_gated_repo_with_and_without_a_token(
    repos: HubEmulator, mirror: MirrorThread, git_env: dict[str, str], tmp_path: Path
) -> None:
    refused = clone(f"{mirror.url}/org/gated", tmp_path / "anonymous", git_env)
    assert refused.returncode != 0
    # git asked for credentials (and could not prompt): the 401 carried a Basic challenge.
    assert "could not read Username" in refused.stderr or "Authentication failed" in refused.stderr
    wrong = clone(with_token(f"{mirror.url}/org/gated", "hf_wrong"), tmp_path / "wrong", git_env)
    assert wrong.returncode != 0
    done = clone(with_token(f"{mirror.url}/org/gated.git", TOKEN), tmp_path / "ok", git_env)
    assert done.returncode == 0, done.stderr
    assert files(tmp_path / "ok")["config.json"] == b'{"gated": true}'
    # As a header too, the way `git -c http.extraHeader` sends a Hub token.
    header = ["git", "-c", f"http.extraHeader=Authorization: Bearer {TOKEN}", "clone", "-q"]
    run([*header, f"{mirror.url}/org/private", str(tmp_path / "private")], git_env, tmp_path)
    assert files(tmp_path / "private")["config.json"] == b"{}"


def test_git_push_is_refused_with_the_message(
    repos: HubEmulator, mirror: MirrorThread, git_env: dict[str, str], tmp_path: Path
) -> None:
    dest = tmp_path / "m"
    assert clone(f"{mirror.url}/org/m", dest, git_env).returncode == 0
    (dest / "new.txt").write_text("new")
    run(["git", "add", "new.txt"], git_env, dest)
    run(["git", "commit", "-q", "-m", "new"], git_env, dest)
    pushed = run(["git", "push", "origin", "HEAD:main"], git_env, dest, check=False)
    assert pushed.returncode != 0 and READ_ONLY in pushed.stderr and "403" in pushed.stderr


def test_gzip_request_bodies_are_passed(repos: HubEmulator, mirror: MirrorThread, git_env: dict[str, str]) -> None:
    """git gzips large negotiation bodies; the mirror hands them upstream as they are."""
    sha = repos.get_repo("model", "org/m").head()  # type: ignore[union-attr]
    request = f"0032want {sha}\n".encode() + b"0000" + b"0009done\n"
    headers = {"Content-Type": "application/x-git-upload-pack-request", "Content-Encoding": "gzip"}
    compressed = gzip.compress(request)
    repos.clear_requests()
    status, answer, body = send(mirror.url, "POST", "/org/m.git/git-upload-pack", headers, compressed)
    assert status == 200, body[:300]
    assert answer["Content-Type"] == "application/x-git-upload-pack-result"
    assert body.startswith(b"0008NAK\n") and b"PACK" in body
    # Upstream got git's bytes as they were: still gzipped, with their own length.
    (sent,) = [r for r in repos.requests if r.path.endswith("/git-upload-pack")]
    assert sent.headers["content-encoding"] == "gzip" and sent.headers["content-length"] == str(len(compressed))


def test_large_chunked_request_bodies_are_streamed(
    repos: HubEmulator, mirror: MirrorThread, git_env: dict[str, str]
) -> None:
    """git sends bodies over http.postBuffer chunked (a fetch with many haves); they go upstream as they come."""
    sha = repos.get_repo("model", "org/m").head()  # type: ignore[union-attr]

    def body() -> Iterator[bytes]:
        yield f"0032want {sha}\n".encode() + b"0000"
        for _ in range(40):  # 2 MiB of haves upstream knows nothing of
            yield b"".join(f"0032have {os.urandom(20).hex()}\n".encode() for _ in range(1000))
        yield b"0009done\n"

    parts = urlsplit(mirror.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        headers = {"Content-Type": "application/x-git-upload-pack-request", "Transfer-Encoding": "chunked"}
        conn.request("POST", "/org/m.git/git-upload-pack", body=body(), headers=headers, encode_chunked=True)
        resp = conn.getresponse()
        answer = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, answer[:300]
    assert answer.startswith(b"0008NAK\n") and b"PACK" in answer
