"""Allow-list, admin API, scheduled sync, scheduler lease and the admin CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirror.cache import keys
from mirror.sync import jobs
from testbed.hubemu import HubEmulator, sha256_hex
from testbed.mirror_server import MirrorProcess, MirrorThread
from tests.support.client import run_client
from tests.support.mirrors import start_mirror

ADMIN = "admin-secret-token-42"
WEIGHTS = os.urandom(400_000)


def call(base: str, method: str, path: str, body: Any = None, token: str | None = ADMIN) -> tuple[int, Any, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}{path}", data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def wait_job(base: str, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, job, _ = call(base, "GET", f"/admin/sync/{job_id}")
        if job["state"] in ("succeeded", "failed"):
            return job
        time.sleep(0.1)
    raise TimeoutError(f"sync job {job_id} did not finish")


@pytest.fixture
def admin_mirror(hub: HubEmulator, tmp_path: Path) -> Iterator[MirrorThread]:
    # The scheduler is off here so that only the jobs a test starts exist; it has its own test.
    server = start_mirror(hub.url, tmp_path / "cache", admin={"token": ADMIN}, sync={"enabled": False})
    yield server
    server.stop()


def entry(pattern: str, **extra: Any) -> dict:
    return {"repo_type": "model", "pattern": pattern, "revisions": ["main"], "sync_interval": "6h", **extra}


def test_admin_api_needs_the_token(hub: HubEmulator, admin_mirror: MirrorThread, mirror: MirrorThread) -> None:
    base = admin_mirror.url
    assert call(base, "GET", "/admin/allowlist", token=None)[0] == 401
    status, _, headers = call(base, "POST", "/admin/allowlist", entry("org/m"), token="wrong")
    assert status == 403 and headers["X-Error-Message"]
    assert call(base, "GET", "/admin/allowlist")[1] == [], "nothing was added by refused calls"
    status, _, headers = call(mirror.url, "GET", "/admin/allowlist")
    assert status == 404 and "disabled" in headers["X-Error-Message"]


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"repo_type": "widget", "pattern": "org/m"}, "repo_type"),
        ({"repo_type": "model", "pattern": "a/b/c"}, "pattern"),
        ({"repo_type": "model", "pattern": "../etc"}, "pattern"),
        ({"repo_type": "model", "pattern": ""}, "pattern"),
        ({"repo_type": "model", "pattern": "org/m", "sync_interval": "often"}, "sync_interval"),
        ({"repo_type": "model", "pattern": "org/m", "sync_interval": "1s"}, "sync_interval"),
        ({"repo_type": "model", "pattern": "org/m", "revisions": []}, "revisions"),
        ({"repo_type": "model", "pattern": "org/m", "revisions": ["../x"]}, "revision"),
        ({"repo_type": "model", "pattern": "org/m", "include": "*.json"}, "include"),
        ({"repo_type": "model", "pattern": "org/m", "colour": "blue"}, "unknown"),
    ],
)
def test_bad_entries_are_400_with_a_reason(admin_mirror: MirrorThread, body: dict, complaint: str) -> None:
    status, _, headers = call(admin_mirror.url, "POST", "/admin/allowlist", body)
    assert status == 400 and complaint in headers["X-Error-Message"]
    assert call(admin_mirror.url, "GET", "/admin/allowlist")[1] == []


def test_allowlist_crud_persists_across_restarts(hub: HubEmulator, tmp_path: Path) -> None:
    first = start_mirror(hub.url, tmp_path / "cache", admin={"token": ADMIN})
    try:
        status, created, _ = call(first.url, "POST", "/admin/allowlist", entry("Qwen/Qwen3-VL-*", include=["*.json"]))
        assert status == 201 and created["id"] and created["include"] == ["*.json"]
        second_id = call(first.url, "POST", "/admin/allowlist", entry("org/other"))[1]["id"]
        assert call(first.url, "DELETE", f"/admin/allowlist/{second_id}")[0] == 204
        assert call(first.url, "DELETE", f"/admin/allowlist/{second_id}")[0] == 404
    finally:
        first.stop()
    again = start_mirror(hub.url, tmp_path / "cache", admin={"token": ADMIN})
    try:
        assert [e["id"] for e in call(again.url, "GET", "/admin/allowlist")[1]] == [created["id"]]
    finally:
        again.stop()


def test_enforced_allowlist_through_the_hf_client(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo("model", "org/ok", {"config.json": b"{}"})
    hub.add_repo("model", "org/no", {"config.json": b"{}"})
    server = start_mirror(hub.url, tmp_path / "cache", admin={"token": ADMIN}, policy={"enforce_allowlist": True})
    try:
        call(server.url, "POST", "/admin/allowlist", entry("org/o*"))
        out = run_client(
            server.url,
            """
            out["ok"] = open(hf_hub_download("org/ok", "config.json")).read()
            try:
                hf_hub_download("org/no", "config.json")
            except Exception as exc:
                out["no"] = [type(exc).__name__, str(exc)]
            try:
                HfApi().model_info("org/no")
            except Exception as exc:
                out["info"] = type(exc).__name__
            """,
            tmp_path / "client",
        )
        assert out["ok"] == "{}"
        assert out["no"][0] == "RepositoryNotFoundError" and "allow-list" in out["no"][1]
        assert out["info"] == "RepositoryNotFoundError"
        assert hub.count(path_contains="org/no") == 0, "denied before anything reaches upstream"
        with urllib.request.urlopen(f"{server.url}/metrics") as resp:
            assert 'hub_mirror_allowlist_denials_total{repo_type="model"} 2.0' in resp.read().decode()
    finally:
        server.stop()


def test_sync_mirrors_ahead_of_demand_and_serves_with_upstream_down(
    hub: HubEmulator, admin_mirror: MirrorThread, tmp_path: Path
) -> None:
    repo = hub.add_repo("model", "org/m", {"config.json": b"{}", "w.safetensors": WEIGHTS, "notes.md": b"skip me"})
    call(admin_mirror.url, "POST", "/admin/allowlist", entry("org/m", exclude=["*.md"]))
    status, job, _ = call(admin_mirror.url, "POST", "/admin/sync", {"repo_type": "model", "repo": "org/m"})
    assert status == 202 and job["state"] == "queued"
    job = wait_job(admin_mirror.url, job["id"])
    assert job["state"] == "succeeded", job["errors"]
    assert job["bytes_done"] == job["bytes_total"] == len(WEIGHTS) + 2
    assert sorted(f["path"] for f in job["targets"][0]["files"]) == ["config.json", "w.safetensors"]
    assert job["targets"][0]["commit"] == repo.head()
    storage = admin_mirror.storage
    assert admin_mirror.call(storage.stat(keys.blob_key(sha256_hex(WEIGHTS)))) is not None

    hub.faults.down()
    out = run_client(
        admin_mirror.url,
        'out["p"] = snapshot_download("org/m", allow_patterns=["*.json", "*.safetensors"])',
        tmp_path / "client",
    )
    assert (Path(out["p"]) / "w.safetensors").read_bytes() == WEIGHTS
    hub.faults.up()
    _, repos, _ = call(admin_mirror.url, "GET", "/admin/repos")
    mine = next(r for r in repos if r["repo"] == "org/m")
    assert mine["revisions"]["main"] == repo.head() and mine["files"] >= 2


def test_main_does_not_move_until_a_sync_completes(hub: HubEmulator, admin_mirror: MirrorThread) -> None:
    repo = hub.add_repo("model", "org/m", {"config.json": b'{"v": 1}'})
    first = repo.head()
    call(admin_mirror.url, "POST", "/admin/allowlist", entry("org/m"))
    job = wait_job(admin_mirror.url, call(admin_mirror.url, "POST", "/admin/sync", {"repo": "org/m"})[1]["id"])
    assert job["state"] == "succeeded"

    new_weights = os.urandom(50_000)
    second = repo.commit({"config.json": b'{"v": 2}', "new.safetensors": new_weights}, message="v2")
    hub.faults.corrupt(path_contains="new.safetensors")
    job = wait_job(admin_mirror.url, call(admin_mirror.url, "POST", "/admin/sync", {"repo": "org/m"})[1]["id"])
    assert job["state"] == "failed" and any("new.safetensors" in e for e in job["errors"])
    # Upstream moved, but the mirror keeps reporting the last complete snapshot.
    assert call(admin_mirror.url, "GET", "/api/models/org/m/revision/main")[1]["sha"] == first
    with urllib.request.urlopen(f"{admin_mirror.url}/org/m/resolve/main/config.json") as resp:
        assert resp.headers["X-Repo-Commit"] == first and resp.read() == b'{"v": 1}'

    hub.faults.clear()
    job = wait_job(admin_mirror.url, call(admin_mirror.url, "POST", "/admin/sync", {"repo": "org/m"})[1]["id"])
    assert job["state"] == "succeeded"
    assert call(admin_mirror.url, "GET", "/api/models/org/m/revision/main")[1]["sha"] == second
    _, state, _ = call(admin_mirror.url, "GET", "/admin/sync")
    assert [j["state"] for j in state[:3]] == ["succeeded", "failed", "succeeded"]


def test_sync_honours_rate_limits(hub: HubEmulator, admin_mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/m", {"config.json": b"{}"})
    call(admin_mirror.url, "POST", "/admin/allowlist", entry("org/m"))
    hub.faults.status(429, path_contains="/revision/", times=2, headers={"Retry-After": "1"})
    started = time.monotonic()
    job = wait_job(admin_mirror.url, call(admin_mirror.url, "POST", "/admin/sync", {})[1]["id"])
    assert job["state"] == "succeeded", job["errors"]
    assert time.monotonic() - started >= 2, "waited Retry-After twice"
    assert hub.count(path_contains="/api/models/org/m/revision/main") == 3


def test_sync_of_a_glob_enumerates_the_namespace(hub: HubEmulator, admin_mirror: MirrorThread) -> None:
    for name in ("Tiny-VL-2B", "Tiny-VL-8B", "Other-1B"):
        hub.add_repo("model", f"qw/{name}", {"config.json": name.encode()})
    call(admin_mirror.url, "POST", "/admin/allowlist", entry("qw/Tiny-VL-*"))
    job = wait_job(admin_mirror.url, call(admin_mirror.url, "POST", "/admin/sync", {})[1]["id"])
    assert job["state"] == "succeeded"
    assert sorted(t["repo"] for t in job["targets"]) == ["qw/Tiny-VL-2B", "qw/Tiny-VL-8B"]


def test_scheduler_runs_due_entries(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo("model", "org/m", {"config.json": b"{}"})
    server = start_mirror(hub.url, tmp_path / "cache", admin={"token": ADMIN}, sync={"tick": 0.2, "lease_ttl": 2})
    try:
        call(server.url, "POST", "/admin/allowlist", entry("org/m", sync_interval="1m"))
        deadline = time.monotonic() + 10
        jobs: list = []
        while time.monotonic() < deadline and not any(j["state"] == "succeeded" for j in jobs):
            jobs = call(server.url, "GET", "/admin/sync")[1]
            time.sleep(0.1)
        assert [j["trigger"] for j in jobs] == ["schedule"] and jobs[0]["state"] == "succeeded"
        time.sleep(1)
        assert len(call(server.url, "GET", "/admin/sync")[1]) == 1, "not due again for a minute"
        with urllib.request.urlopen(f"{server.url}/metrics") as resp:
            text = resp.read().decode()
        assert 'hub_mirror_sync_runs_total{outcome="succeeded"} 1.0' in text
        assert "hub_mirror_sync_last_success_timestamp_seconds{entry=" in text
    finally:
        server.stop()


def _leader(url: str) -> float:
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("hub_mirror_sync_scheduler_leader "):
                    return float(line.split()[1])
    except OSError:
        pass
    return -1.0


def test_scheduler_lease_hands_over_between_processes(hub: HubEmulator, tmp_path: Path) -> None:
    env = {"HUB_MIRROR_SYNC_TICK": "0.3", "HUB_MIRROR_SYNC_LEASE_TTL": "1.5", "HUB_MIRROR_ADMIN_TOKEN": ADMIN}
    cache = str(tmp_path / "shared")
    procs = [MirrorProcess("--upstream", hub.url, "--cache-dir", cache, env=env).wait_ready() for _ in range(2)]
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sorted(_leader(p.url) for p in procs) != [0.0, 1.0]:
            time.sleep(0.2)
        leaders = [_leader(p.url) for p in procs]
        assert sorted(leaders) == [0.0, 1.0], "exactly one replica schedules"
        leader, follower = (procs[0], procs[1]) if leaders[0] == 1.0 else (procs[1], procs[0])
        leader.kill()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _leader(follower.url) != 1.0:
            time.sleep(0.2)
        assert _leader(follower.url) == 1.0, "the survivor took the lease over"
    finally:
        for proc in procs:
            proc.stop()


def test_purge_keeps_shared_blobs(hub: HubEmulator, admin_mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/a", {"w.safetensors": WEIGHTS})
    hub.add_repo("model", "org/b", {"w.safetensors": WEIGHTS})
    for name in ("a", "b"):
        with urllib.request.urlopen(f"{admin_mirror.url}/org/{name}/resolve/main/w.safetensors") as resp:
            assert resp.read() == WEIGHTS
    assert call(admin_mirror.url, "DELETE", "/admin/repos/model/org/a")[0] == 204
    assert call(admin_mirror.url, "DELETE", "/admin/repos/model/org/a")[0] == 404
    repos = [r["repo"] for r in call(admin_mirror.url, "GET", "/admin/repos")[1]]
    assert "org/a" not in repos and "org/b" in repos
    hub.clear_requests()
    with urllib.request.urlopen(f"{admin_mirror.url}/org/b/resolve/main/w.safetensors") as resp:
        assert resp.read() == WEIGHTS and resp.headers["X-Cache"] == "HIT"


def test_admin_cli(hub: HubEmulator, admin_mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/m", {"config.json": b"{}", "w.safetensors": WEIGHTS})
    env = {**os.environ, "HUB_MIRROR_ADMIN_TOKEN": ADMIN}

    def cli(*args: str, token: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mirror", *args, "--url", admin_mirror.url],
            env=env if token else {k: v for k, v in env.items() if k != "HUB_MIRROR_ADMIN_TOKEN"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    added = cli("allow", "add", "org/m", "--every", "12h", "--exclude", "*.md")
    assert added.returncode == 0 and "added" in added.stdout
    entry_id = added.stdout.split()[1].rstrip(":")
    listed = cli("allow", "list")
    assert entry_id in listed.stdout and "org/m" in listed.stdout and "every=12h" in listed.stdout
    synced = cli("sync", "org/m")
    assert synced.returncode == 0, synced.stderr
    assert "w.safetensors" in synced.stdout and "overall" in synced.stdout and "succeeded" in synced.stdout
    status = cli("status")
    assert status.returncode == 0 and "org/m" in status.stdout and "succeeded" in status.stdout
    assert cli("allow", "remove", entry_id).returncode == 0
    bad = cli("sync", "org/unknown")
    assert bad.returncode == 1 and "not on the allow-list" in bad.stderr
    no_token = cli("allow", "list", token=False)
    assert no_token.returncode == 4 and "HUB_MIRROR_ADMIN_TOKEN" in no_token.stderr
    unreachable = subprocess.run(
        [sys.executable, "-m", "mirror", "status", "--url", "http://127.0.0.1:9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unreachable.returncode == 3 and "cannot reach the mirror" in unreachable.stderr


def test_sync_bandwidth_cap(hub: HubEmulator, tmp_path: Path) -> None:
    data = os.urandom(3_000_000)
    hub.add_repo("model", "org/m", {"w.safetensors": data})
    server = start_mirror(
        hub.url,
        tmp_path / "cache",
        admin={"token": ADMIN},
        sync={"enabled": False, "bandwidth_limit": 1_000_000},
        cache={"chunk_size": 256 * 1024},
    )
    try:
        call(server.url, "POST", "/admin/allowlist", entry("org/m"))
        started = time.monotonic()
        job = wait_job(server.url, call(server.url, "POST", "/admin/sync", {})[1]["id"])
        elapsed = time.monotonic() - started
        assert job["state"] == "succeeded"
        # 3 MB at 1 MB/s with one second of burst: at least ~2 s, where uncapped it takes milliseconds.
        assert elapsed >= 1.8
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/sync/a%20b"),
        ("GET", "/admin/sync/%ff"),
        ("GET", "/admin/sync/abc%00"),
        ("GET", "/admin/sync/" + "a" * 300),
        ("DELETE", "/admin/allowlist/%ff"),
        ("DELETE", "/admin/allowlist/abc%00"),
        ("DELETE", "/admin/repos/model/org/a%00b"),
    ],
)
def test_odd_ids_in_admin_paths_are_400(admin_mirror: MirrorThread, method: str, path: str) -> None:
    status, _, headers = call(admin_mirror.url, method, path)
    assert status == 400 and headers["X-Error-Message"]


def test_admin_input_is_bounded(admin_mirror: MirrorThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mirror.audit")
    base = admin_mirror.url
    # The attack: one 10 MB POST of 1.2 M copies of one revision.
    status, _, headers = call(base, "POST", "/admin/allowlist", entry("org/m", revisions=["main"] * 1_200_000))
    assert status == 413 and "larger than" in headers["X-Error-Message"]
    assert call(base, "GET", "/admin/allowlist")[1] == []

    status, created, _ = call(base, "POST", "/admin/allowlist", entry("org/m", revisions=["main", "v1", "main"] * 500))
    assert status == 201 and created["revisions"] == ["main", "v1"], "duplicates are dropped, order kept"
    status, _, headers = call(base, "POST", "/admin/allowlist", entry("org/m"))
    assert status == 400 and created["id"] in headers["X-Error-Message"], "one entry per pattern"

    too_many = [
        ({"revisions": [f"v{i}" for i in range(33)]}, "revisions"),
        ({"include": [f"*.{i}" for i in range(65)]}, "include"),
        ({"exclude": ["x" * 257]}, "exclude"),
        ({"include": ["a\nb"]}, "include"),
    ]
    for extra, complaint in too_many:
        status, _, headers = call(base, "POST", "/admin/allowlist", entry("org/other", **extra))
        assert status == 400 and complaint in headers["X-Error-Message"], extra
    for path in ("/admin/sync", "/admin/allowlist"):
        nested = urllib.request.Request(
            f"{base}{path}", data=b"[" * 60_000, method="POST", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(nested, timeout=30)
        assert refused.value.code == 400 and "nested" in refused.value.headers["X-Error-Message"]

    # The largest entry the caps allow still makes one short audit line.
    big = entry(
        "org/big",
        revisions=[f"r{i}-" + "x" * 200 for i in range(32)],
        include=[f"{i}-" + "y" * 250 for i in range(64)],
        exclude=[f"{i}-" + "z" * 250 for i in range(64)],
    )
    assert call(base, "POST", "/admin/allowlist", big)[0] == 201
    audit = [r for r in caplog.records if r.name == "mirror.audit"]
    assert len(audit) == 2
    assert all(len(r.getMessage()) < 2200 and len(json.dumps(r.audit)) < 2500 for r in audit)


def test_stored_duplicates_are_dropped_on_load(admin_mirror: MirrorThread) -> None:
    stored = {**entry("org/m", revisions=["main"] * 10_000, include=["*.json"] * 100), "id": "0123456789ab"}
    admin_mirror.call(admin_mirror.storage.put_bytes(keys.ALLOWLIST, json.dumps({"entries": [stored]}).encode()))
    _, entries, _ = call(admin_mirror.url, "GET", "/admin/allowlist")
    assert [(e["revisions"], e["include"]) for e in entries] == [(["main"], ["*.json"])]


def test_sync_job_targets_are_capped(
    hub: HubEmulator, admin_mirror: MirrorThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "MAX_JOB_TARGETS", 3)
    for name in ("a", "b"):
        hub.add_repo("model", f"qw/{name}", {"config.json": b"{}"})
    call(admin_mirror.url, "POST", "/admin/allowlist", entry("qw/*", revisions=["main", "other"]))
    job = wait_job(admin_mirror.url, call(admin_mirror.url, "POST", "/admin/sync", {})[1]["id"])
    assert [(t["repo"], t["revision"]) for t in job["targets"]] == [
        ("qw/a", "main"),
        ("qw/a", "other"),
        ("qw/b", "main"),
    ]
    assert any("stopped at 3" in e for e in job["errors"])
