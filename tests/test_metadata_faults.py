"""Metadata while storage or upstream misbehaves.

A failed write of a metadata record never fails a read the cache can answer (disk full), and a
hanging upstream never makes a client wait long for metadata the mirror already has: the last known
answer is served after `cache.stale_wait` while one refresh runs in the background.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror.cache.records import Records
from mirror.config import ConfigError, load_config
from mirror.errors import StorageError
from mirror.metrics import Metrics
from mirror.storage import LocalStorage
from mirror.storage.base import StorageUnavailable
from testbed.hubemu import HubEmulator
from testbed.mirror_server import MirrorThread
from tests.support.client import run_client
from tests.support.mirrors import start_mirror
from tests.support.storage_faults import FaultyStorage

CONFIG = b'{"model_type": "tiny"}'
WEIGHTS = os.urandom(60_000)  # LFS: served through the CDN redirect upstream
ALICE = "hf_alice_has_access_0123456789"
SHORT_TTLS = {"revision_ttl": 0.5, "refs_ttl": 0.5, "access_ttl": 0.5}
# A client request waits cache.stale_wait (1 s) in all for refreshes, however many stale answers it
# meets (visibility, access decision, branch); far below the 40 s hang and the 30 s read timeout.
FAST = 2.5


def fetch(
    url: str, method: str = "GET", token: str | None = None, timeout: float = 10
) -> tuple[int, dict[str, str], bytes, float]:
    """(status, headers, body, seconds taken); a client timeout raises, so a hang fails the test."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.monotonic()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers, method=method), timeout=timeout) as r:
            return r.status, dict(r.headers), r.read(), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read(), time.monotonic() - started




@pytest.fixture
def stale_mirror(hub: HubEmulator, tmp_path: Path) -> Iterator[MirrorThread]:
    server = start_mirror(hub.url, tmp_path / "c", cache=SHORT_TTLS, upstream={"read_timeout": 30})
    try:
        yield server
    finally:
        server.stop()


def warm(mirror: MirrorThread, repo: str) -> None:
    """Cache both files, the revision and the refs of a repo, as clients would."""
    for name, data in (("config.json", CONFIG), ("w.safetensors", WEIGHTS)):
        status, _, body, _ = fetch(f"{mirror.url}/{repo}/resolve/main/{name}")
        assert (status, body) == (200, data)
    for path in ("revision/main", "refs"):
        assert fetch(f"{mirror.url}/api/models/{repo}/{path}")[0] == 200
    mirror.settle()


def test_full_disk_does_not_block_cached_files(
    hub: HubEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = hub.add_repo("model", "org/m", {"config.json": CONFIG, "w.safetensors": WEIGHTS})
    store = FaultyStorage(LocalStorage(tmp_path / "c"))
    mirror = start_mirror(hub.url, tmp_path / "c", store=store, cache=SHORT_TTLS)
    try:
        warm(mirror, "org/m")

        store.faults.fail("put_bytes", message="disk full")  # every metadata record write fails from here
        caplog.set_level(logging.WARNING, logger="mirror.cache.records")

        for _ in range(3):
            time.sleep(0.6)  # past every TTL: each round re-asks upstream and re-writes the records
            for name, data in (("config.json", CONFIG), ("w.safetensors", WEIGHTS)):
                status, headers, _, _ = fetch(f"{mirror.url}/org/m/resolve/main/{name}", "HEAD")
                assert status == 200 and headers["X-Repo-Commit"] == repo.head()
                status, _, body, _ = fetch(f"{mirror.url}/org/m/resolve/main/{name}")
                assert (status, body) == (200, data)
            status, _, body, _ = fetch(f"{mirror.url}/api/models/org/m/revision/main")
            assert status == 200 and repo.head().encode() in body
            assert fetch(f"{mirror.url}/api/models/org/m/refs")[0] == 200

        # A repo first seen while the disk is full: visibility, info, branch, entry and tree records
        # all fail to write, and every answer is still given.
        new = hub.add_repo("model", "org/new", {"a.txt": b"new", "sub/b.txt": b"b"})
        status, _, body, _ = fetch(f"{mirror.url}/api/models/org/new")
        assert status == 200 and new.head().encode() in body
        status, headers, _, _ = fetch(f"{mirror.url}/org/new/resolve/main/a.txt", "HEAD")
        assert status == 200 and headers["Content-Length"] == "3"
        status, _, body, _ = fetch(f"{mirror.url}/api/models/org/new/tree/main?recursive=true")
        assert status == 200 and b"sub/b.txt" in body

        # Kept in memory: asked again, nothing goes upstream for the commit's records.
        def commit_records_asked() -> int:
            return hub.count(path_contains="org/new/resolve") + hub.count(path_contains="org/new/tree")

        before = commit_records_asked()
        assert fetch(f"{mirror.url}/org/new/resolve/main/a.txt", "HEAD")[0] == 200
        assert fetch(f"{mirror.url}/api/models/org/new/tree/main?recursive=true")[0] == 200
        assert commit_records_asked() == before

        assert mirror.metric("hub_mirror_metadata_write_failures_total") >= 10
        warnings = [r for r in caplog.records if "metadata record" in r.getMessage()]
        assert len(warnings) == 1, "one warning per window, not one per failed write"
    finally:
        # Room again before shutdown: the sync scheduler writes its lease as it stops.
        store.faults.clear()
        mirror.stop()


async def test_records_keep_unsaved_values_and_count_failures(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    await storage.start()
    metrics = Metrics()
    records = Records(storage, metrics=metrics)
    await records.put("repos/x/refs/a.json", {"commit": "1"})

    async def disk_full(key: str, data: bytes) -> None:
        raise StorageUnavailable("disk full")

    storage.put_bytes = disk_full  # type: ignore[method-assign]
    with pytest.raises(StorageError):
        await records.put("repos/x/refs/a.json", {"commit": "2"})  # the strict form still raises
    assert not await records.put_best_effort("repos/x/refs/a.json", {"commit": "3"})
    assert await records.get("repos/x/refs/a.json") == {"commit": "3"}
    assert metrics.registry.get_sample_value("hub_mirror_metadata_write_failures_total") == 1
    del storage.put_bytes  # the disk has room again: the stored value replaces the unsaved one
    assert await records.put_best_effort("repos/x/refs/a.json", {"commit": "4"})
    assert await records.get("repos/x/refs/a.json") == {"commit": "4"}
    assert await storage.get_bytes("repos/x/refs/a.json") == b'{"commit":"4"}'
    await storage.close()


def test_hanging_upstream_serves_cached_files_at_once(hub: HubEmulator, stale_mirror: MirrorThread) -> None:
    mirror = stale_mirror
    repo = hub.add_repo("model", "org/m", {"config.json": CONFIG, "w.safetensors": WEIGHTS})
    warm(mirror, "org/m")
    hub.faults.delay(40)  # every upstream request, on both origins, hangs before its headers

    for _ in range(3):
        time.sleep(0.6)  # past every TTL again
        for name, data in (("config.json", CONFIG), ("w.safetensors", WEIGHTS)):
            status, headers, _, took = fetch(f"{mirror.url}/org/m/resolve/main/{name}", "HEAD")
            assert status == 200 and headers["X-Repo-Commit"] == repo.head() and took < FAST
            status, _, body, took = fetch(f"{mirror.url}/org/m/resolve/main/{name}")
            assert (status, body) == (200, data) and took < FAST
        status, _, body, took = fetch(f"{mirror.url}/api/models/org/m/revision/main")
        assert status == 200 and repo.head().encode() in body and took < FAST
        status, _, _, took = fetch(f"{mirror.url}/api/models/org/m/refs")
        assert status == 200 and took < FAST


def test_hf_client_is_not_held_up_by_a_hanging_upstream(
    hub: HubEmulator, stale_mirror: MirrorThread, tmp_path: Path
) -> None:
    mirror = stale_mirror
    hub.add_repo("model", "org/m", {"config.json": CONFIG, "w.safetensors": WEIGHTS})
    warm(mirror, "org/m")
    hub.faults.delay(40)
    script = """
    import time
    started = time.monotonic()
    out["config"] = open(hf_hub_download("org/m", "config.json"), "rb").read().decode()
    out["weights"] = len(open(hf_hub_download("org/m", "w.safetensors"), "rb").read())
    out["seconds"] = time.monotonic() - started
    """
    for attempt in range(2):
        time.sleep(0.6)
        out = run_client(mirror.url, script, tmp_path / f"client{attempt}", timeout=60)
        assert out["config"] == CONFIG.decode() and out["weights"] == len(WEIGHTS)
        assert out["seconds"] < 2 * FAST


def test_refresh_lands_in_the_background(hub: HubEmulator, stale_mirror: MirrorThread) -> None:
    mirror = stale_mirror
    repo = hub.add_repo("model", "org/m", {"config.json": CONFIG, "w.safetensors": WEIGHTS})
    warm(mirror, "org/m")
    old = repo.head()
    new = repo.commit({"config.json": b'{"v": 2}'})
    hub.faults.delay(3, path_contains="/revision/main", times=1)
    time.sleep(0.6)
    url = f"{mirror.url}/org/m/resolve/main/config.json"
    for _ in range(3):
        status, headers, body, took = fetch(url)
        assert (status, headers["X-Repo-Commit"], body) == (200, old, CONFIG) and took < 2.5
    assert hub.count(path_contains="/revision/main") == 2, "one refresh, not one per request"
    time.sleep(3.5)  # the refresh answers after 3 s and updates the branch for everyone
    status, headers, body, _ = fetch(url)
    assert (status, headers["X-Repo-Commit"], body) == (200, new, b'{"v": 2}')


def test_known_access_decisions_hold_while_upstream_hangs(hub: HubEmulator, tmp_path: Path) -> None:
    # A short read timeout, so the one request that must ask upstream (a new token) ends soon.
    mirror = start_mirror(hub.url, tmp_path / "c", cache=SHORT_TTLS, upstream={"read_timeout": 2})
    try:
        hub.add_repo("model", "org/gated", {"config.json": CONFIG}, gated="manual", tokens=(ALICE,))
        url = f"{mirror.url}/org/gated/resolve/main/config.json"
        assert fetch(url, token=ALICE)[0] == 200
        assert fetch(url, token="hf_mallory")[0] == 403
        hub.faults.delay(40)
        for _ in range(2):
            time.sleep(0.6)
            status, _, body, took = fetch(url, token=ALICE)
            assert (status, body) == (200, CONFIG) and took < FAST
            status, _, _, took = fetch(url, token="hf_mallory")
            assert status == 403 and took < FAST, "a known denial stays in force too"
            assert fetch(url)[0] == 401
        status, _, body, _ = fetch(url, token="hf_never_seen_before")
        assert 500 <= status < 600 and body != CONFIG, "a token never checked still needs upstream"
    finally:
        mirror.stop()


def test_stale_wait_is_validated() -> None:
    assert load_config(None, {"cache": {"stale_wait": 0}}, environ={}).cache.stale_wait == 0
    with pytest.raises(ConfigError, match=r"cache\.stale_wait must be >= 0"):
        load_config(None, {"cache": {"stale_wait": -1}}, environ={})
