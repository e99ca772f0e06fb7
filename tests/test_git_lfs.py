"""git-lfs through the mirror: the batch API answered by the mirror, objects served from the blob cache.

The HTTP tests speak the batch protocol as git-lfs does (tests/support/git.py); the end-to-end tests
run the real `git` and `git-lfs` through the mirror against the emulator's git server. Upstream LFS
traffic is counted at the emulator's CDN origin, where every LFS byte comes from.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mirror.cache import keys
from mirror.cache.blobs.access import AccessLog
from mirror.config import load_config
from mirror.hub.appkeys import RECORDS
from mirror.lifecycle.gc import GarbageCollector
from mirror.lifecycle.inventory import referenced_blobs
from mirror.repo import RepoRef
from mirror.storage.configured import build_storage
from testbed.hubemu import HubEmulator
from testbed.mirror_server import MirrorThread, metric
from tests.support.git import (
    LFS_HEADERS,
    basic,
    clone,
    files,
    git_server_upstream,
    lfs_batch,
    run,
    sealed_git_env,
    with_token,
)
from tests.support.http import send
from tests.support.mirrors import start_mirror
from tests.support.storage_faults import FaultyStorage

TOKEN = "hf_good"
A = os.urandom(300_000)
B = os.urandom(50_000)
GATED = os.urandom(20_000)
DATA = os.urandom(40_000)


def oid(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def repos(hub: HubEmulator) -> HubEmulator:
    hub.add_repo("model", "org/m", {"config.json": b"{}", "a.bin": A, "b.bin": B}, lfs=["a.bin", "b.bin"])
    hub.add_repo("model", "org/gated", {"g.bin": GATED}, lfs=["g.bin"], gated="auto", tokens=(TOKEN,))
    hub.add_repo("dataset", "org/d", {"d.bin": DATA}, lfs=["d.bin"])
    return hub


def cdn_gets(hub: HubEmulator) -> int:
    return hub.count(method="GET", origin="cdn")


def href_path(answer: dict, index: int = 0) -> str:
    return urlsplit(answer["objects"][index]["actions"]["download"]["href"]).path


# -- the batch API and the object route ------------------------------------------------------------


def test_batch_answers_point_at_the_mirror_and_objects_come_from_the_cache(
    repos: HubEmulator, mirror: MirrorThread
) -> None:
    repos.clear_requests()
    status, headers, answer = lfs_batch(mirror.url, "org/m", [(oid(A), len(A)), (oid(B), len(B))])
    assert status == 200 and headers["Content-Type"].startswith("application/vnd.git-lfs+json")
    assert answer["transfer"] == "basic" and answer["hash_algo"] == "sha256"
    for index, data in enumerate((A, B)):
        item = answer["objects"][index]
        assert item["oid"] == oid(data) and item["size"] == len(data) and "error" not in item
        assert item["actions"]["download"]["href"] == f"{mirror.url}/org/m.git/info/lfs/objects/{oid(data)}"
    assert cdn_gets(repos) == 0  # the batch moves no LFS byte
    for index, data in enumerate((A, B)):
        status, headers, body = send(mirror.url, "GET", href_path(answer, index))
        assert status == 200 and body == data
        assert headers["ETag"] == f'"{oid(data)}"' and headers["X-Cache"] == "MISS"
    assert cdn_gets(repos) == 2
    # Again: from the cache, and the upstream is not asked whether they belong to the repo.
    repos.clear_requests()
    _, _, again = lfs_batch(mirror.url, "org/m", [(oid(A), len(A))])
    status, headers, body = send(mirror.url, "GET", href_path(again))
    assert status == 200 and body == A and headers["X-Cache"] == "HIT"
    assert repos.count() == 0
    # The same blob serves the resolve of the file.
    status, headers, body = send(mirror.url, "GET", "/org/m/resolve/main/a.bin")
    assert status == 200 and body == A and headers["X-Cache"] == "HIT" and cdn_gets(repos) == 0
    assert metric(mirror.url, "hub_mirror_requests_total", route="git_lfs_batch") >= 2
    assert metric(mirror.url, "hub_mirror_requests_total", route="git_lfs_object") >= 3


def test_files_downloaded_by_resolve_are_a_clones_lfs_cache(repos: HubEmulator, mirror: MirrorThread) -> None:
    assert send(mirror.url, "GET", "/org/m/resolve/main/a.bin")[2] == A
    before = cdn_gets(repos)
    _, _, answer = lfs_batch(mirror.url, "org/m", [(oid(A), len(A))])
    status, headers, body = send(mirror.url, "GET", href_path(answer))
    assert status == 200 and body == A and headers["X-Cache"] == "HIT"
    assert cdn_gets(repos) == before


def test_objects_the_repo_does_not_have_are_refused_per_object(repos: HubEmulator, mirror: MirrorThread) -> None:
    stranger = os.urandom(1000)
    asked = [(oid(stranger), 1000), (oid(DATA), len(DATA)), (oid(A), len(A) + 1), (oid(B), len(B)), ("XYZ", 1)]
    status, _, answer = lfs_batch(mirror.url, "org/m", asked)
    assert status == 200
    errors = {item["oid"]: item.get("error", {}).get("code") for item in answer["objects"]}
    # Not in the repo (another repo's object is no exception), the wrong size, no oid: refused;
    # the one object that is the repo's is answered.
    assert errors == {oid(stranger): 404, oid(DATA): 404, oid(A): 422, oid(B): None, "XYZ": 422}
    # An object never confirmed for the repo is not served by its route, though the blob may be cached.
    assert send(mirror.url, "GET", f"/datasets/org/d.git/info/lfs/objects/{oid(DATA)}")[0] == 404
    status, _, body = send(mirror.url, "GET", f"/org/m.git/info/lfs/objects/{oid(DATA)}")
    assert status == 404 and "batch" in json.loads(body)["message"]
    assert send(mirror.url, "GET", "/org/m.git/info/lfs/objects/" + "A" * 64)[0] == 400


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Content-Type": "text/plain"}, b'{"operation": "download", "objects": []}', 415),
        ({}, b'{"operation": "download", "objects": []}', 415),
        (LFS_HEADERS, b"[not json", 400),
        (LFS_HEADERS, b'["download"]', 400),
        (LFS_HEADERS, b"[" * 100_000, 400),  # past the JSON parser's depth
        (LFS_HEADERS, b'{"operation": "upload", "objects": []}', 403),
        (LFS_HEADERS, b'{"operation": "verify", "objects": []}', 422),
        (LFS_HEADERS, b'{"operation": "download", "transfers": ["ssh"], "objects": []}', 422),
        (LFS_HEADERS, b'{"operation": "download", "hash_algo": "sha512", "objects": []}', 422),
        (LFS_HEADERS, b'{"operation": "download", "objects": {}}', 422),
        (LFS_HEADERS, b'{"operation": "download", "objects": [{"oid": "a", "size": -1}]}', 422),
        (LFS_HEADERS, b'{"operation": "download", "objects": [{"oid": "a", "size": true}]}', 422),
        (LFS_HEADERS, json.dumps({"operation": "download", "objects": [{"oid": "a", "size": 1}] * 1001}).encode(), 422),
        (LFS_HEADERS, b"x" * (1024 * 1024 + 1), 413),
    ],
)
def test_bad_batches_are_refused_before_the_upstream_is_asked(
    repos: HubEmulator, mirror: MirrorThread, headers: dict[str, str], body: bytes, status: int
) -> None:
    repos.clear_requests()
    got, answer_headers, answer = send(mirror.url, "POST", "/org/m.git/info/lfs/objects/batch", headers, body)
    assert got == status
    assert answer_headers["Content-Type"].startswith("application/vnd.git-lfs+json")
    assert json.loads(answer)["message"] and answer_headers["X-Error-Message"]
    assert repos.count() == 0


@pytest.mark.parametrize(("method", "status"), [("POST", 405), ("PUT", 405), ("DELETE", 405)])
def test_the_object_route_only_reads(repos: HubEmulator, mirror: MirrorThread, method: str, status: int) -> None:
    assert send(mirror.url, method, f"/org/m.git/info/lfs/objects/{oid(A)}", body=b"")[0] == status


def test_ranges_of_an_object_while_it_fills_and_after(repos: HubEmulator, mirror: MirrorThread) -> None:
    _, _, answer = lfs_batch(mirror.url, "org/m", [(oid(A), len(A))])
    path = href_path(answer)
    status, headers, body = send(mirror.url, "GET", path, {"Range": "bytes=1000-1999"})
    assert status == 206 and body == A[1000:2000] and headers["Content-Range"] == f"bytes 1000-1999/{len(A)}"
    mirror.settle()
    status, headers, body = send(mirror.url, "GET", path, {"Range": "bytes=-10"})
    assert status == 206 and body == A[-10:] and headers["X-Cache"] == "HIT"
    status, headers, body = send(mirror.url, "HEAD", path)
    assert status == 200 and headers["Content-Length"] == str(len(A)) and body == b""


def test_concurrent_downloads_of_one_object_make_one_upstream_fetch(repos: HubEmulator, mirror: MirrorThread) -> None:
    repos.faults.throttle(200_000, origin="cdn")  # slow enough that every client joins the fill
    _, _, answer = lfs_batch(mirror.url, "org/m", [(oid(A), len(A))])
    path = href_path(answer)
    bodies: list[bytes] = []

    def fetch() -> None:
        bodies.append(send(mirror.url, "GET", path)[2])

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert bodies == [A] * 6
    assert cdn_gets(repos) == 1


def test_a_fill_resumes_with_a_fresh_href_after_drops_and_expiry(repos: HubEmulator, mirror: MirrorThread) -> None:
    _, _, answer = lfs_batch(mirror.url, "org/m", [(oid(A), len(A))])
    repos.clear_requests()
    repos.faults.drop_after(100_000, origin="cdn", times=2)
    repos.faults.expire_signed_urls()  # hrefs the upstream gave before now are refused
    status, _, body = send(mirror.url, "GET", href_path(answer))
    assert status == 200 and body == A
    # One batch per attempt: each attempt asks the upstream for a fresh signed href.
    assert repos.count(method="POST", path_contains="/info/lfs/objects/batch") == 3
    assert repos.count(method="GET", origin="cdn") == 3


def test_corrupt_upstream_bytes_are_never_served_whole_nor_kept(repos: HubEmulator, mirror: MirrorThread) -> None:
    _, _, answer = lfs_batch(mirror.url, "org/m", [(oid(B), len(B))])
    repos.faults.corrupt(origin="cdn", offset=100, times=1)
    try:
        status, _, body = send(mirror.url, "GET", href_path(answer))
    except (ConnectionError, http.client.HTTPException):  # cut before its last byte
        status, body = 0, b""
    assert body != B  # cut (or refused) before its last byte: the client has no complete wrong copy
    mirror.settle()
    assert mirror.call(mirror.storage.stat(keys.blob_key(oid(B)))) is None
    status, _, body = send(mirror.url, "GET", href_path(answer))
    assert status == 200 and body == B


# -- policy ----------------------------------------------------------------------------------------


def test_gated_objects_need_the_token_on_both_routes(repos: HubEmulator, mirror: MirrorThread) -> None:
    objects = [(oid(GATED), len(GATED))]
    status, headers, _ = lfs_batch(mirror.url, "org/gated", objects)
    assert status == 401 and headers["LFS-Authenticate"].startswith("Basic realm=")
    status, _, _ = lfs_batch(mirror.url, "org/gated", objects, {"Authorization": basic("u", "hf_wrong")})
    assert status in (401, 403)
    credentials = {"Authorization": basic("u", TOKEN)}
    status, _, answer = lfs_batch(mirror.url, "org/gated", objects, credentials)
    assert status == 200
    download = answer["objects"][0]["actions"]["download"]
    assert download["header"] == credentials  # git-lfs sends them with the download
    path = urlsplit(download["href"]).path
    status, headers, _ = send(mirror.url, "GET", path)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
    assert send(mirror.url, "GET", path, {"Authorization": basic("u", "hf_wrong")})[0] in (401, 403)
    status, _, body = send(mirror.url, "GET", path, credentials)
    assert status == 200 and body == GATED
    # Once cached too, the object is not served without the token.
    assert send(mirror.url, "GET", path)[0] == 401
    assert send(mirror.url, "GET", path, {"Authorization": f"Bearer {TOKEN}"})[2] == GATED


def test_the_allow_list_refuses_lfs_as_it_refuses_resolve(repos: HubEmulator, tmp_path: Path) -> None:
    server = start_mirror(repos.url, tmp_path / "cache", policy={"enforce_allowlist": True})
    try:
        repos.clear_requests()
        status, headers, answer = lfs_batch(server.url, "org/m", [(oid(A), len(A))])
        resolve_status, resolve_headers, _ = send(server.url, "GET", "/org/m/resolve/main/a.bin")
        assert status == resolve_status == 404
        assert headers["X-Error-Code"] == resolve_headers["X-Error-Code"] == "RepoNotFound"
        assert answer["message"] == resolve_headers["X-Error-Message"]
        object_status, object_headers, _ = send(server.url, "GET", f"/org/m.git/info/lfs/objects/{oid(A)}")
        assert object_status == 404 and object_headers["X-Error-Message"] == resolve_headers["X-Error-Message"]
        assert repos.count() == 0
    finally:
        server.stop()


# -- the upstream down -----------------------------------------------------------------------------


def test_cached_objects_are_served_with_the_upstream_down(repos: HubEmulator, mirror: MirrorThread) -> None:
    _, _, answer = lfs_batch(mirror.url, "org/m", [(oid(A), len(A))])
    assert send(mirror.url, "GET", href_path(answer))[2] == A
    assert send(mirror.url, "GET", "/datasets/org/d/resolve/main/d.bin")[2] == DATA  # cached by resolve only
    mirror.settle()
    repos.faults.down()
    status, _, answer = lfs_batch(mirror.url, "org/m", [(oid(A), len(A)), (oid(B), len(B))])
    assert status == 200
    a, b = answer["objects"]
    assert send(mirror.url, "GET", urlsplit(a["actions"]["download"]["href"]).path)[2] == A
    # B was never fetched: it cannot be confirmed nor served, and says so.
    assert b["error"]["code"] == 503 and "upstream" in b["error"]["message"]
    # A file the mirror resolved is the repo's object, though git-lfs never asked for it before.
    _, _, answer = lfs_batch(mirror.url, "datasets/org/d", [(oid(DATA), len(DATA))])
    status, _, body = send(mirror.url, "GET", href_path(answer))
    assert status == 200 and body == DATA


# -- what the records keep -------------------------------------------------------------------------


def test_gc_keeps_the_blobs_of_lfs_objects_and_a_purge_forgets_them(repos: HubEmulator, tmp_path: Path) -> None:
    server = start_mirror(repos.url, tmp_path / "cache", admin={"token": "admin-secret"})
    try:
        _, _, answer = lfs_batch(server.url, "org/m", [(oid(A), len(A))])
        assert send(server.url, "GET", href_path(answer))[2] == A
        server.settle()
        storage, blob = server.storage, keys.blob_key(oid(A))
        assert blob in server.call(referenced_blobs(storage))
        report = server.call(GarbageCollector(storage, AccessLog(storage), grace=0, min_idle=0).run(apply=True))
        assert report.counts.get("blob", 0) == 0
        assert server.call(storage.stat(blob)) is not None
        record = server.call(server.part(RECORDS).get(keys.lfs_key(RepoRef("model", "org/m"), oid(A))))
        assert record == {"etag": oid(A), "size": len(A)}
        admin = {"Authorization": "Bearer admin-secret"}
        status, _, body = send(server.url, "DELETE", "/admin/repos/model/org/m", admin)
        assert status == 204, body
        repos.clear_requests()
        # Forgotten: the object route no longer serves it, and a batch asks the upstream again.
        assert send(server.url, "GET", href_path(answer))[0] == 404
        lfs_batch(server.url, "org/m", [(oid(A), len(A))])
        assert repos.count(method="POST", path_contains="/info/lfs/objects/batch") == 1
    finally:
        server.stop()


# -- end to end with the real git and git-lfs -------------------------------------------------------


@pytest.fixture
def lfs_env(repos: HubEmulator, tmp_path: Path) -> Iterator[dict[str, str]]:
    if shutil.which("git") is None or shutil.which("git-lfs") is None:
        pytest.skip("git and git-lfs are not installed")
    if not git_server_upstream(repos):
        pytest.skip("the Hub emulator has no git server")
    env = sealed_git_env(tmp_path / "home")
    run(["git", "lfs", "install", "--skip-repo"], env, tmp_path)
    yield env


def checked_out(repo: Path) -> dict[str, bytes]:
    """The working tree's files but the .gitattributes the emulator's git server adds (no API lists it)."""
    return {path: data for path, data in files(repo).items() if path != ".gitattributes"}


def lfs_files(repo: HubEmulator, repo_type: str, repo_id: str) -> dict[str, bytes]:
    found = repo.get_repo(repo_type, repo_id)
    assert found is not None
    return {path: blob.data for path, blob in found.commits[found.head()].files.items()}


def test_git_clone_smudges_lfs_from_the_mirror_and_a_second_clone_moves_no_lfs_byte(
    repos: HubEmulator, mirror: MirrorThread, lfs_env: dict[str, str], tmp_path: Path
) -> None:
    repos.clear_requests()
    done = clone(f"{mirror.url}/org/m", tmp_path / "first", lfs_env)
    assert done.returncode == 0, done.stderr
    assert checked_out(tmp_path / "first") == lfs_files(repos, "model", "org/m")
    assert cdn_gets(repos) == 2  # a.bin and b.bin, once each
    mirror.settle()
    repos.clear_requests()
    done = clone(f"{mirror.url}/org/m.git", tmp_path / "second", lfs_env)
    assert done.returncode == 0, done.stderr
    assert {p: hashlib.sha256(d).hexdigest() for p, d in checked_out(tmp_path / "second").items()} == {
        p: hashlib.sha256(d).hexdigest() for p, d in lfs_files(repos, "model", "org/m").items()
    }
    assert cdn_gets(repos) == 0
    assert repos.count(method="POST", path_contains="/info/lfs/objects/batch") == 0


def test_skip_smudge_clone_then_lfs_pull(
    repos: HubEmulator, mirror: MirrorThread, lfs_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**lfs_env, "GIT_LFS_SKIP_SMUDGE": "1"}
    dest = tmp_path / "m"
    assert clone(f"{mirror.url}/org/m", dest, env).returncode == 0
    assert (dest / "a.bin").read_bytes().startswith(b"version https://git-lfs.github.com/spec/v1")
    assert cdn_gets(repos) == 0
    run(["git", "lfs", "pull"], lfs_env, dest)
    assert checked_out(dest) == lfs_files(repos, "model", "org/m")


def test_fetch_of_a_new_commit_with_a_new_lfs_file(
    repos: HubEmulator, mirror: MirrorThread, lfs_env: dict[str, str], tmp_path: Path
) -> None:
    dest = tmp_path / "d"
    assert clone(f"{mirror.url}/datasets/org/d", dest, lfs_env).returncode == 0
    repo = repos.get_repo("dataset", "org/d")
    assert repo is not None
    repo.lfs_paths = frozenset({"d.bin", "more.bin"})
    more = os.urandom(25_000)
    repo.commit({"more.bin": more, "d.bin": DATA[::-1]}, message="more")
    run(["git", "pull", "-q", "--ff-only"], lfs_env, dest)
    assert (dest / "more.bin").read_bytes() == more and (dest / "d.bin").read_bytes() == DATA[::-1]
    # The old version is still the repo's: a checkout of the first commit smudges it from the mirror.
    run(["git", "checkout", "-q", "HEAD~1"], lfs_env, dest)
    assert (dest / "d.bin").read_bytes() == DATA


def test_gated_clone_with_the_token_in_the_url_or_a_credential_helper(
    repos: HubEmulator, mirror: MirrorThread, lfs_env: dict[str, str], tmp_path: Path
) -> None:
    refused = clone(f"{mirror.url}/org/gated", tmp_path / "anonymous", lfs_env)
    assert refused.returncode != 0
    done = clone(with_token(f"{mirror.url}/org/gated", TOKEN), tmp_path / "url", lfs_env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "url" / "g.bin").read_bytes() == GATED
    store = tmp_path / "credentials"
    store.write_text(with_token(mirror.url, TOKEN) + "\n")
    store.chmod(0o600)
    run(["git", "config", "--global", "credential.helper", f"store --file={store}"], lfs_env, tmp_path)
    done = clone(f"{mirror.url}/org/gated", tmp_path / "helper", lfs_env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "helper" / "g.bin").read_bytes() == GATED


def test_with_the_upstream_down_cached_lfs_objects_still_pull_and_clones_fail_clearly(
    repos: HubEmulator, mirror: MirrorThread, lfs_env: dict[str, str], tmp_path: Path
) -> None:
    dest = tmp_path / "m"
    assert clone(f"{mirror.url}/org/m", dest, {**lfs_env, "GIT_LFS_SKIP_SMUDGE": "1"}).returncode == 0
    for name in ("a.bin", "b.bin"):
        assert send(mirror.url, "GET", f"/org/m/resolve/main/{name}")[0] == 200  # cached the way hf download does
    mirror.settle()
    repos.faults.down()
    started = time.monotonic()
    run(["git", "lfs", "pull"], lfs_env, dest)
    assert checked_out(dest) == lfs_files(repos, "model", "org/m")
    failed = clone(f"{mirror.url}/org/m", tmp_path / "offline", lfs_env)
    assert failed.returncode != 0 and "upstream" in failed.stderr
    assert time.monotonic() - started < 60


def test_a_repo_the_allow_list_refuses_cannot_be_cloned(
    repos: HubEmulator, lfs_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_mirror(repos.url, tmp_path / "cache", policy={"enforce_allowlist": True})
    try:
        repos.clear_requests()
        refused = clone(f"{server.url}/org/m", tmp_path / "m", lfs_env)
        assert refused.returncode != 0 and "allow-list" in refused.stderr
        assert repos.count() == 0
    finally:
        server.stop()


def test_object_downloads_count_as_cache_hits_and_misses(repos: HubEmulator, mirror: MirrorThread) -> None:
    _, _, answer = lfs_batch(mirror.url, "org/m", [(oid(B), len(B))])
    for _ in range(2):
        assert send(mirror.url, "GET", href_path(answer))[2] == B
    assert mirror.metric("hub_mirror_cache_lookups_total", kind="blob", result="miss") == 1
    assert mirror.metric("hub_mirror_cache_lookups_total", kind="blob", result="hit") == 1


def test_a_disk_that_fills_mid_object_serves_no_wrong_bytes_and_keeps_nothing(
    repos: HubEmulator, tmp_path: Path
) -> None:
    config = load_config(None, {"upstream": {"url": repos.url}, "cache": {"dir": str(tmp_path / "cache")}}, environ={})
    store = FaultyStorage(build_storage(config))
    server = MirrorThread(config, storage=store).start()
    try:
        _, _, answer = lfs_batch(server.url, "org/m", [(oid(A), len(A))])
        store.faults.fail_after(100_000, message="disk full")
        try:
            status, _, body = send(server.url, "GET", href_path(answer))
        except (ConnectionError, http.client.HTTPException):
            status, body = 0, b""
        assert body != A and status in (0, 200, 503)  # cut or refused, never complete
        assert store.faults.injected >= 1
        server.settle()
        assert server.call(store.stat(keys.blob_key(oid(A)))) is None
        store.faults.clear()
        assert send(server.url, "GET", href_path(answer))[2] == A
    finally:
        store.faults.clear()
        server.stop()


def test_every_kind_of_answer_on_one_keep_alive_connection(repos: HubEmulator, mirror: MirrorThread) -> None:
    """JSON, errors of both shapes, a 206, a HEAD and whole objects, in turn on one connection."""
    _, _, answer = lfs_batch(mirror.url, "org/m", [(oid(A), len(A)), (oid(B), len(B))])
    a_path, b_path = href_path(answer, 0), href_path(answer, 1)
    batch = json.dumps({"operation": "download", "objects": [{"oid": oid(B), "size": len(B)}]}).encode()
    parts = urlsplit(mirror.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    steps: list[tuple[str, str, dict[str, str], bytes | None, int, bytes | None]] = [
        ("GET", a_path, {}, None, 200, A),  # a miss, filled while it streams
        ("GET", "/org/m.git/info/lfs/objects/" + "0" * 64, {}, None, 404, None),
        ("GET", b_path, {"Range": "bytes=10-19"}, None, 206, B[10:20]),
        ("POST", "/org/m.git/info/lfs/objects/batch", {"Content-Type": "text/plain"}, batch, 415, None),
        ("HEAD", a_path, {}, None, 200, b""),
        ("POST", "/org/m.git/info/lfs/objects/batch", LFS_HEADERS, batch, 200, None),
        ("GET", "/org/m.git/info/refs", {}, None, 400, None),
        ("GET", a_path, {}, None, 200, A),
        ("GET", b_path, {}, None, 200, B),
    ]
    try:
        for method, path, headers, body, status, expected in steps:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == status, (method, path, resp.status)
            if expected is not None:
                assert data == expected, (method, path)
            assert not resp.will_close, "the mirror closed a connection it should have kept"
    finally:
        conn.close()
