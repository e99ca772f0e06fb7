"""Storage that fails mid-write: a full disk, an object store answering 5xx, a store that hangs.

On both backends: no client hangs, no fill stays in flight, nothing half-written is published or
left behind in staging, and once the store is back the same blob fills from the start.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from mirror.cache import keys
from mirror.config import load_config
from mirror.storage.configured import build_storage
from testbed.hubemu import HubEmulator, sha256_hex
from testbed.mirror_server import MirrorThread
from tests.support.storage_faults import FaultyStorage, StorageFaults

MIB = 1024 * 1024
BIG = os.urandom(12 * MIB + 321)
SMALL = b'{"hidden_size": 8}'


def fetch(url: str, method: str = "GET", timeout: float = 60) -> tuple[str, int, bytes]:
    """("ok", status, body), or ("cut", status, the bytes that arrived) when the body broke off."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, parts.path)
        resp = conn.getresponse()
        try:
            return "ok", resp.status, resp.read()
        except http.client.IncompleteRead as exc:
            return "cut", resp.status, exc.partial
        except (ConnectionError, OSError):
            return "cut", resp.status, b""
    finally:
        conn.close()


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "local":
        return {"backend": "local"}
    return dict(request.getfixturevalue("s3_settings"))


@pytest.fixture
def faulty(hub: HubEmulator, tmp_path: Path, backend: dict[str, Any]) -> Iterator[tuple[MirrorThread, StorageFaults]]:
    hub.add_repo("model", "org/m", {"w.safetensors": BIG, "config.json": SMALL})
    overrides = {
        "upstream": {"url": hub.url, "resume_attempts": 2},
        "cache": {"dir": str(tmp_path / "cache"), "storage_timeout": 2},
        "storage": backend,
    }
    config = load_config(None, overrides, environ={})
    store = FaultyStorage(build_storage(config))
    server = MirrorThread(config, storage=store).start()
    try:
        yield server, store.faults
    finally:
        store.faults.clear()
        server.stop()


def in_flight(server: MirrorThread) -> int:
    return server.fills_in_flight()


def wait_no_fill(server: MirrorThread, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while in_flight(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_flight(server) == 0, "a fill is still in flight after its storage failed"


def published(server: MirrorThread, data: bytes) -> bool:
    return server.call(server.storage.stat(keys.blob_key(sha256_hex(data)))) is not None


def leftovers(server: MirrorThread) -> list[str]:
    """What a failed fill may have left: local staging files, or open S3 multipart uploads."""
    config = server.config
    if config.storage.backend == "local":
        staging = Path(config.cache.dir) / "staging"
        return [p.name for p in staging.iterdir()] if staging.exists() else []
    storage: Any = server.storage
    inner = storage.inner
    uploads = inner.client.list_multipart_uploads(Bucket=inner.bucket, Prefix=inner.prefix)
    return [u["Key"] for u in uploads.get("Uploads", [])]


def assert_recovers(server: MirrorThread, faults: StorageFaults) -> None:
    faults.clear()
    outcome, status, body = fetch(f"{server.url}/org/m/resolve/main/w.safetensors")
    assert (outcome, status) == ("ok", 200)
    assert hashlib.sha256(body).hexdigest() == sha256_hex(BIG)
    server.settle()
    assert published(server, BIG)


def test_disk_full_mid_fill_ends_the_fill_for_every_client(faulty: tuple[MirrorThread, StorageFaults]) -> None:
    """The attack: upstream faster than the store, which fails (disk full) partway through."""
    server, faults = faulty
    faults.slow(0.1)
    faults.fail_after(3 * MIB)
    started = time.monotonic()
    outcome, status, body = fetch(f"{server.url}/org/m/resolve/main/w.safetensors", timeout=30)
    assert time.monotonic() - started < 20, "the client waited on a fill whose storage had failed"
    assert outcome == "cut" or status >= 500
    assert len(body) < len(BIG)
    assert faults.injected >= 1
    wait_no_fill(server)
    assert not published(server, BIG)
    assert leftovers(server) == []
    assert_recovers(server, faults)


def test_object_store_errors_when_the_fill_starts(faulty: tuple[MirrorThread, StorageFaults]) -> None:
    server, faults = faulty
    faults.fail("open_writer", message="503 Service Unavailable")
    outcome, status, _ = fetch(f"{server.url}/org/m/resolve/main/w.safetensors", timeout=30)
    assert (outcome, status) == ("ok", 503)
    wait_no_fill(server)
    assert_recovers(server, faults)


def test_a_hanging_store_fails_the_fill_after_the_storage_timeout(faulty: tuple[MirrorThread, StorageFaults]) -> None:
    server, faults = faulty
    faults.hang("write", key_contains="blobs/")
    started = time.monotonic()
    outcome, status, body = fetch(f"{server.url}/org/m/resolve/main/w.safetensors", timeout=60)
    assert time.monotonic() - started < 30
    assert outcome == "cut" or status >= 500
    assert len(body) < len(BIG)
    wait_no_fill(server)
    assert not published(server, BIG)
    assert_recovers(server, faults)


def test_a_failed_publish_keeps_nothing_and_refills(faulty: tuple[MirrorThread, StorageFaults]) -> None:
    """The client already has every verified byte; the blob just is not kept."""
    server, faults = faulty
    faults.fail("commit", key_contains="blobs/")
    outcome, status, body = fetch(f"{server.url}/org/m/resolve/main/w.safetensors")
    # Verified bytes: all of them, or (the publish failed before the last one went out) a cut
    # body that the client resumes; never a complete wrong one.
    assert status == 200 and (body == BIG if outcome == "ok" else BIG.startswith(body))
    wait_no_fill(server)
    assert not published(server, BIG)
    assert leftovers(server) == []
    assert_recovers(server, faults)


def test_a_hanging_publish_and_discard_end_within_bounds(faulty: tuple[MirrorThread, StorageFaults]) -> None:
    server, faults = faulty
    faults.hang("commit", "abort", key_contains="blobs/")
    outcome, status, body = fetch(f"{server.url}/org/m/resolve/main/w.safetensors")
    assert status == 200 and (body == BIG if outcome == "ok" else BIG.startswith(body))
    wait_no_fill(server, timeout=30)  # storage_timeout 2 s: publish 10 s, discard 2 s
    assert not published(server, BIG)
    assert_recovers(server, faults)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a real full disk here")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_real_full_disk(hub: HubEmulator, tmp_path: Path) -> None:
    """A 6 MiB tmpfs as the cache and a 12 MiB file: ENOSPC from the kernel, not a simulation."""
    hub.add_repo("model", "org/m", {"w.safetensors": BIG, "config.json": SMALL})
    with tmpfs(tmp_path / "small-disk", "6m") as disk:
        overrides = {"upstream": {"url": hub.url}, "cache": {"dir": str(disk / "cache")}}
        server = MirrorThread(load_config(None, overrides, environ={})).start()
        try:
            assert fetch(f"{server.url}/org/m/resolve/main/config.json")[:2] == ("ok", 200)
            server.settle()
            outcome, status, body = fetch(f"{server.url}/org/m/resolve/main/w.safetensors", timeout=30)
            assert outcome == "cut" or status >= 500
            assert len(body) < len(BIG)
            wait_no_fill(server)
            assert leftovers(server) == [], "the staging bytes of the failed fill stay on the full disk"
            # What is cached is still served, from the same full disk.
            assert fetch(f"{server.url}/org/m/resolve/main/config.json") == ("ok", 200, SMALL)
        finally:
            server.stop()


@pytest.mark.parametrize("fault", ["fail", "hang"])
def test_a_failing_lease_store_never_holds_a_fill_up(
    hub: HubEmulator, tmp_path: Path, backend: dict[str, Any], fault: str
) -> None:
    """Replicas coordinate fills with lease objects; leases only save upstream traffic, so a lease
    store that errors or hangs means filling here without one, within a bounded wait."""
    hub.add_repo("model", "org/m", {"w.safetensors": BIG, "config.json": SMALL})
    overrides = {
        "upstream": {"url": hub.url},
        "cache": {"dir": str(tmp_path / "cache"), "storage_timeout": 2},
        "storage": backend,
        "server": {"advertise_url": "http://127.0.0.1:9"},  # a replica set of one: leases are taken
    }
    config = load_config(None, overrides, environ={})
    store = FaultyStorage(build_storage(config))
    server = MirrorThread(config, storage=store).start()
    try:
        getattr(store.faults, fault)("create_exclusive", "put_bytes", "get_bytes", key_contains="leases/")
        started = time.monotonic()
        outcome, status, body = fetch(f"{server.url}/org/m/resolve/main/w.safetensors", timeout=60)
        assert (outcome, status, body == BIG) == ("ok", 200, True)
        assert time.monotonic() - started < 15, "a hanging lease store held the request up"
        assert store.faults.injected >= 1
        wait_no_fill(server)
        store.faults.clear()
        server.settle()
        assert published(server, BIG)
    finally:
        store.faults.clear()
        server.stop()


def test_failing_metadata_writes_never_fail_answers_the_cache_has(
    hub: HubEmulator, tmp_path: Path, backend: dict[str, Any]
) -> None:
    """After the branch's TTL, its refreshed commit cannot be written: cached files are still served."""
    hub.add_repo("model", "org/m", {"w.safetensors": BIG, "config.json": SMALL})
    overrides = {
        "upstream": {"url": hub.url},
        "cache": {"dir": str(tmp_path / "cache"), "revision_ttl": 0.2, "refs_ttl": 0.2},
        "storage": backend,
    }
    config = load_config(None, overrides, environ={})
    store = FaultyStorage(build_storage(config))
    server = MirrorThread(config, storage=store).start()
    try:
        for name, data in (("w.safetensors", BIG), ("config.json", SMALL)):
            assert fetch(f"{server.url}/org/m/resolve/main/{name}") == ("ok", 200, data)
        server.settle()
        store.faults.fail("put_bytes", "create_exclusive", message="disk full", key_contains="repos/")
        for _ in range(3):
            time.sleep(0.3)  # past the TTLs: every answer by branch needs a refresh, and its write fails
            assert fetch(f"{server.url}/org/m/resolve/main/w.safetensors") == ("ok", 200, BIG)
            assert fetch(f"{server.url}/org/m/resolve/main/config.json", "HEAD")[:2] == ("ok", 200)
            outcome, status, body = fetch(f"{server.url}/api/models/org/m/revision/main")
            assert (outcome, status) == ("ok", 200) and b'"org/m"' in body
            assert fetch(f"{server.url}/api/models/org/m/refs")[:2] == ("ok", 200)
        assert store.faults.injected >= 3
    finally:
        store.faults.clear()
        server.stop()
