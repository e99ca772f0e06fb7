"""Running the cache for months: last reads, eviction under a size limit, gc, usage, interrupted purges.

Eviction and gc are driven one pass at a time through the running mirror's own parts (the
background loop only decides when), on local storage and on the real S3 server.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirror.cache import keys
from mirror.cache.blobs.access import AccessLog
from mirror.cli import main
from mirror.hub.appkeys import ACCESS, ALLOWLIST, MAINTENANCE, PURGE
from mirror.lifecycle.evict import EvictionReport
from mirror.lifecycle.gc import GarbageCollector
from mirror.policy.allowlist import AllowEntry
from mirror.repo import RepoRef
from mirror.storage import LocalStorage
from testbed.hubemu import HubEmulator, sha256_hex
from testbed.mirror_server import MirrorThread
from tests.support.http import fetch
from tests.support.mirrors import start_mirror

MIB = 1024 * 1024
FILES = {f"w{i}.safetensors": os.urandom(MIB + i) for i in range(4)}
ADMIN = "admin-secret-token"


def admin(mirror: MirrorThread, path: str) -> Any:
    status, body = fetch(mirror.url + path, {"Authorization": f"Bearer {ADMIN}"})
    assert status == 200, body
    return json.loads(body)


@pytest.fixture(params=["local", "s3"])
def storage_settings(request: pytest.FixtureRequest) -> dict[str, object]:
    if request.param == "local":
        return {}
    return dict(request.getfixturevalue("s3_settings"))


def lifecycle_mirror(hub: HubEmulator, tmp_path: Path, storage: dict[str, object], **cache: object) -> MirrorThread:
    settings = {
        "max_bytes": 3 * MIB + MIB // 2,  # room for three of the four files
        "evict_high": 0.9,
        "evict_low": 0.6,
        "access_flush_interval": 0.05,
        "evict_min_idle": 0.1,
        "evict_interval": 3600,  # passes are driven by the tests
        **cache,
    }
    sections: dict[str, dict[str, object]] = {"cache": settings, "admin": {"token": ADMIN}}
    if storage:
        sections["storage"] = storage
    return start_mirror(hub.url, tmp_path / "cache", **sections)


@pytest.fixture
def filled(hub: HubEmulator, tmp_path: Path, storage_settings: dict[str, object]) -> Iterator[MirrorThread]:
    hub.add_repo("model", "org/m", FILES)
    mirror = lifecycle_mirror(hub, tmp_path, storage_settings)
    try:
        for name, data in FILES.items():
            assert fetch(f"{mirror.url}/org/m/resolve/main/{name}") == (200, data)
            time.sleep(0.02)  # distinct read times, oldest first
        mirror.settle()
        yield mirror
    finally:
        mirror.stop()


def stored(mirror: MirrorThread, data: bytes) -> bool:
    return mirror.call(mirror.storage.stat(keys.blob_key(sha256_hex(data)))) is not None


def evict(mirror: MirrorThread) -> EvictionReport:
    time.sleep(0.2)  # past evict_min_idle
    evictor = mirror.part(MAINTENANCE).evictor
    assert evictor is not None
    return mirror.call(evictor.run_once())


def test_eviction_removes_the_least_recently_read_until_under_the_low_watermark(
    filled: MirrorThread, hub: HubEmulator
) -> None:
    mirror = filled
    names = list(FILES)
    # w0 was filled first but is read again now: w1 becomes the least recently read.
    assert fetch(f"{mirror.url}/org/m/resolve/main/{names[0]}") == (200, FILES[names[0]])
    mirror.call(mirror.part(ACCESS).flush())
    report = evict(mirror)
    assert report.total == sum(map(len, FILES.values()))
    assert report.remaining <= 0.6 * report.limit
    kept = {name for name, data in FILES.items() if stored(mirror, data)}
    assert names[1] not in kept and names[0] in kept and names[3] in kept
    assert report.evicted == len(FILES) - len(kept)
    assert mirror.metric("hub_mirror_evicted_blobs_total") == report.evicted
    # An evicted file is an ordinary miss: refilled from upstream, byte-exact.
    before = hub.count(method="GET", origin="cdn", path_contains=names[1])
    assert fetch(f"{mirror.url}/org/m/resolve/main/{names[1]}") == (200, FILES[names[1]])
    assert hub.count(method="GET", origin="cdn", path_contains=names[1]) == before + 1
    mirror.settle()
    assert stored(mirror, FILES[names[1]])


def test_under_the_high_watermark_nothing_is_evicted(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo("model", "org/m", FILES)
    mirror = lifecycle_mirror(hub, tmp_path, {}, max_bytes=100 * MIB)
    try:
        for name, data in FILES.items():
            assert fetch(f"{mirror.url}/org/m/resolve/main/{name}") == (200, data)
        mirror.settle()
        report = evict(mirror)
        assert report.evicted == 0 and all(stored(mirror, data) for data in FILES.values())
        assert mirror.metric("hub_mirror_eviction_runs_total", outcome="under_limit") == 1
    finally:
        mirror.stop()


def pin_repo(mirror: MirrorThread, repo_id: str) -> None:
    """Allow-list the repo's main branch and pin it at the commit it resolves to (what a sync does)."""
    status, body = fetch(f"{mirror.url}/api/models/{repo_id}/revision/main")
    assert status == 200
    commit = json.loads(body)["sha"]
    entry = AllowEntry.from_request({"repo_type": "model", "pattern": repo_id, "revisions": ["main"]})
    mirror.call(mirror.part(ALLOWLIST).add(entry))
    record = {"revision": "main", "commit": commit, "at": time.time()}
    mirror.call(mirror.storage.put_bytes(keys.pin_key(RepoRef("model", repo_id), "main"), json.dumps(record).encode()))


def test_pinned_blobs_are_never_evicted_and_an_overflow_is_reported(filled: MirrorThread) -> None:
    mirror = filled
    pin_repo(mirror, "org/m")  # all four files pinned: more than the limit
    report = evict(mirror)
    assert report.evicted == 0 and report.pinned_over_limit
    assert all(stored(mirror, data) for data in FILES.values())
    assert mirror.metric("hub_mirror_pinned_over_limit") == 1
    usage = admin(mirror, "/admin/usage")
    assert usage["pinned_over_limit"] is True and usage["pinned_bytes"] == sum(map(len, FILES.values()))
    repos = admin(mirror, "/admin/repos")
    assert [(r["repo"], r["pinned"], r["blobs"]) for r in repos] == [("org/m", True, 4)]


def test_usage_per_repo_counts_shared_blobs_once_per_repo(filled: MirrorThread, hub: HubEmulator) -> None:
    mirror = filled
    hub.add_repo("model", "org/copy", {"same.safetensors": FILES["w2.safetensors"]})
    assert fetch(f"{mirror.url}/org/copy/resolve/main/same.safetensors")[0] == 200
    mirror.call(mirror.part(ACCESS).flush())
    repos = {r["repo"]: r for r in admin(mirror, "/admin/repos")}
    assert repos["org/m"]["blobs"] == 4 and repos["org/m"]["bytes"] == sum(map(len, FILES.values()))
    assert repos["org/copy"]["blobs"] == 1 and repos["org/copy"]["bytes"] == len(FILES["w2.safetensors"])
    assert repos["org/copy"]["last_access"] >= repos["org/m"]["last_access"] - 5
    assert not repos["org/m"]["pinned"]
    usage = admin(mirror, "/admin/usage")
    assert usage["blobs"] == 4 and usage["bytes"] == sum(map(len, FILES.values()))


def test_a_blob_being_read_is_never_evicted_under_its_reader(hub: HubEmulator, tmp_path: Path) -> None:
    big = os.urandom(8 * MIB)
    hub.add_repo("model", "org/big", {"w.bin": big, "x.bin": os.urandom(2 * MIB)})
    mirror = lifecycle_mirror(hub, tmp_path, {}, max_bytes=4 * MIB)
    try:
        url = f"{mirror.url}/org/big/resolve/main/w.bin"
        assert fetch(url) == (200, big)
        mirror.settle()
        with urllib.request.urlopen(url, timeout=60) as slow:
            head = slow.read(MIB)  # the read is in progress
            report = evict(mirror)
            assert stored(mirror, big), "evicted under a reader"
            assert report.kept_recent >= len(big)
            rest = slow.read()
        assert head + rest == big
        # Once the read ended (and the blob is idle), it may go.
        time.sleep(0.2)
        assert evict(mirror).evicted >= 1 and not stored(mirror, big)
    finally:
        mirror.stop()


def test_concurrent_readers_never_get_a_truncated_or_mixed_body(hub: HubEmulator, tmp_path: Path) -> None:
    files = {f"f{i}.bin": os.urandom(MIB // 2 + i) for i in range(6)}
    hub.add_repo("model", "org/many", files)
    # Aggressive on purpose: anything not being read right now may go.
    mirror = lifecycle_mirror(hub, tmp_path, {}, max_bytes=MIB, access_flush_interval=0.005, evict_min_idle=0.01)
    bad: list[str] = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        names = list(files)
        i = seed
        while not stop.is_set():
            name = names[i % len(names)]
            i += 1
            status, body = fetch(f"{mirror.url}/org/many/resolve/main/{name}")
            if status != 200 or body != files[name]:
                bad.append(f"{name}: {status}, {len(body)} bytes")

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
    try:
        for thread in threads:
            thread.start()
        evictor = mirror.part(MAINTENANCE).evictor
        assert evictor is not None
        evicted = 0
        for _ in range(30):  # bounded: passes racing the readers
            time.sleep(0.05)
            evicted += mirror.call(evictor.run_once()).evicted
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        mirror.stop()
    assert not bad
    assert evicted > 0, "the test must make eviction race the readers"


def test_access_records_are_shared_between_replicas(tmp_path: Path) -> None:
    async def scenario() -> None:
        storage = LocalStorage(tmp_path / "shared")
        await storage.start()
        one, two = AccessLog(storage, clock=lambda: 100.0), AccessLog(storage, clock=lambda: 200.0)
        blob_a, blob_b = keys.blob_key("a" * 64), keys.blob_key("ab" + "c" * 62)  # one shard
        (await one.begin_read(blob_a))()
        (await two.begin_read(blob_b))()
        await one.flush()
        await two.flush()  # merged into the shard the first one wrote, not over it
        reads = await AccessLog(storage).last_reads()
        assert reads == {blob_a: 100.0, blob_b: 200.0}
        # A blob in use counts as read at every flush, so other replicas never see it idle.
        end = await one.begin_read(blob_b)
        assert await one.remove(blob_b) is False
        one.clock = lambda: 300.0
        await one.flush()
        assert (await two.last_reads())[blob_b] == 300.0
        end()
        end()  # idempotent
        assert not one.in_use(blob_b)

    asyncio.run(scenario())


def test_a_failed_flush_keeps_the_reads_for_the_next(tmp_path: Path) -> None:
    async def scenario() -> None:
        storage = LocalStorage(tmp_path / "c")
        await storage.start()
        log = AccessLog(storage, clock=lambda: 50.0)
        blob = keys.blob_key("d" * 64)
        (await log.begin_read(blob))()
        real_put = storage.put_bytes

        async def failing(key: str, data: bytes) -> None:
            from mirror.storage import StorageUnavailable

            raise StorageUnavailable("disk full")

        storage.put_bytes = failing  # type: ignore[method-assign]
        with pytest.raises(Exception, match="disk full"):
            await log.flush()
        storage.put_bytes = real_put  # type: ignore[method-assign]
        await log.flush()
        assert await AccessLog(storage).last_reads() == {blob: 50.0}

    asyncio.run(scenario())


# -- gc ------------------------------------------------------------------------------------------


def gc_cli(cache: Path, *flags: str) -> int:
    return main(["gc", "--cache-dir", str(cache), *flags])


def test_gc_removes_what_a_purge_left_unreferenced(
    hub: HubEmulator, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Blobs read within evict_min_idle are kept by gc too: make a second count as long ago.
    monkeypatch.setenv("HUB_MIRROR_CACHE_EVICT_MIN_IDLE", "1")
    monkeypatch.setenv("HUB_MIRROR_CACHE_ACCESS_FLUSH_INTERVAL", "0.5")
    hub.add_repo("model", "org/a", {"a.bin": b"A" * 5000, "shared.bin": b"S" * 7000}, lfs=["a.bin", "shared.bin"])
    hub.add_repo("model", "org/b", {"shared.bin": b"S" * 7000}, lfs=["shared.bin"])
    mirror = lifecycle_mirror(hub, tmp_path, {}, max_bytes=0)
    try:
        for path in ("org/a/resolve/main/a.bin", "org/a/resolve/main/shared.bin", "org/b/resolve/main/shared.bin"):
            assert fetch(f"{mirror.url}/{path}")[0] == 200
        mirror.settle()
        mirror.call(mirror.part(PURGE).repo(RepoRef("model", "org/a")))
    finally:
        mirror.stop()
    cache = tmp_path / "cache"
    a_blob = cache / "objects" / keys.blob_key(sha256_hex(b"A" * 5000))
    shared = cache / "objects" / keys.blob_key(sha256_hex(b"S" * 7000))
    # Dry run: reported, nothing removed; young blobs are left alone by default (gc_grace).
    assert gc_cli(cache) == 0
    assert "would remove nothing" in capsys.readouterr().out and a_blob.exists()
    time.sleep(1.1)
    assert gc_cli(cache, "--grace", "1s") == 0
    assert "would remove 1 blob" in capsys.readouterr().out and a_blob.exists()
    assert gc_cli(cache, "--grace", "1s", "--apply") == 0
    out = capsys.readouterr().out
    # Leftovers of the mirror's own stop (a staging file, the blob's access shard) may go in the same pass.
    assert "removed 1 blob" in out and int(re.search(r"\((\d+) bytes\)", out).group(1)) >= 5000, out
    assert not a_blob.exists() and shared.exists(), "a blob another repo names must stay"


def test_gc_finishes_an_interrupted_purge_and_cleans_leftovers(tmp_path: Path) -> None:
    async def scenario() -> None:
        storage = LocalStorage(tmp_path / "c")
        await storage.start()
        repo = RepoRef("model", "org/half")
        # A purge that stopped half way: its tombstone and some records are still there.
        await storage.put_bytes(keys.purge_key(repo), json.dumps({"repo_type": "model", "repo_id": "org/half",
                                                                  "at": time.time() - 10}).encode())  # fmt: skip
        await storage.put_bytes(keys.ref_key(repo, "main"), b'{"revision": "main", "commit": "' + b"c" * 40 + b'"}')
        # An expired fill lease, a fresh one, and a staging leftover.
        await storage.put_bytes(keys.fill_lease_key("blobs/sha256/aa/x"), json.dumps({"expires": 1.0}).encode())
        fresh = keys.fill_lease_key("blobs/sha256/bb/y")
        await storage.put_bytes(fresh, json.dumps({"expires": time.time() + 30}).encode())
        leftover = storage.staging / "dead.part"
        leftover.write_bytes(b"z" * 100)
        os.utime(leftover, (time.time() - 100, time.time() - 100))
        gc = GarbageCollector(storage, AccessLog(storage), grace=5, min_idle=0)
        report = await gc.run(apply=True)
        assert report.counts["purge"] == 1 and report.counts["lease"] == 1 and report.counts["staging"] == 1
        assert [k async for k in storage.list("repos/")] == []
        assert [k async for k in storage.list(keys.PURGES)] == []
        assert [k async for k in storage.list(keys.FILL_LEASES)] == [fresh]
        assert not leftover.exists()

    asyncio.run(scenario())


def test_gc_killed_at_any_point_leaves_a_cache_that_serves_correctly(
    hub: HubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL between deletes: every blob left is whole, and the mirror serves every file right."""
    monkeypatch.setenv("HUB_MIRROR_CACHE_EVICT_MIN_IDLE", "1")
    monkeypatch.setenv("HUB_MIRROR_CACHE_ACCESS_FLUSH_INTERVAL", "0.5")
    import signal
    import subprocess
    import sys

    files = {f"f{i}.bin": os.urandom(20_000 + i) for i in range(40)}
    hub.add_repo("model", "org/keep", files)
    hub.add_repo("model", "org/gone", {f"g{i}.bin": os.urandom(20_000 + i) for i in range(40)})  # LFS: over 10 kB
    mirror = lifecycle_mirror(hub, tmp_path, {}, max_bytes=0)
    try:
        for repo_id, names in (("org/keep", list(files)), ("org/gone", [f"g{i}.bin" for i in range(40)])):
            for name in names:
                assert fetch(f"{mirror.url}/{repo_id}/resolve/main/{name}")[0] == 200
        mirror.settle()
        mirror.call(mirror.part(PURGE).repo(RepoRef("model", "org/gone")))
    finally:
        mirror.stop()
    cache = tmp_path / "cache"
    time.sleep(1.1)
    for delay in (0.3, 0.6, 0.9):
        proc = subprocess.Popen(
            [sys.executable, "-m", "mirror", "gc", "--apply", "--grace", "1s", "--cache-dir", str(cache)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    for path in (cache / "objects" / "blobs").rglob("*"):
        if path.is_file():
            assert sha256_hex(path.read_bytes()) == path.name, f"{path} is not whole"
    mirror = lifecycle_mirror(hub, tmp_path, {}, max_bytes=0)
    try:
        for name, data in files.items():
            assert fetch(f"{mirror.url}/org/keep/resolve/main/{name}") == (200, data)
    finally:
        mirror.stop()
    assert gc_cli(cache, "--grace", "1s", "--apply") == 0
    assert not any(p.is_file() and not any(sha256_hex(d) == p.name for d in files.values())
                   for p in (cache / "objects" / "blobs").rglob("*"))  # fmt: skip


def test_a_reader_arriving_during_a_removal_waits_and_then_finds_the_blob_gone(tmp_path: Path) -> None:
    async def scenario() -> None:
        storage = LocalStorage(tmp_path / "c")
        await storage.start()
        blob = keys.blob_key("e" * 64)
        await storage.put_bytes(blob, b"x")
        deleting, finish = asyncio.Event(), asyncio.Event()
        real_delete = storage.delete

        async def slow_delete(key: str) -> bool:
            deleting.set()
            await finish.wait()
            return await real_delete(key)

        storage.delete = slow_delete  # type: ignore[method-assign]
        log = AccessLog(storage)
        removal = asyncio.create_task(log.remove(blob))
        await deleting.wait()
        reader = asyncio.create_task(log.begin_read(blob))
        await asyncio.sleep(0.05)
        assert not reader.done(), "a reader must not start while the blob is being removed"
        assert await log.remove(blob) is False  # one removal at a time
        finish.set()
        assert await removal is True
        end = await reader
        assert await storage.stat(blob) is None  # the reader sees a miss, never half a blob
        assert await log.remove(blob) is False  # in use now
        end()

    asyncio.run(scenario())


def test_eviction_killed_mid_pass_leaves_a_cache_that_serves_correctly(hub: HubEmulator, tmp_path: Path) -> None:
    """The background eviction of a real `hub-mirror serve`, SIGKILLed while it deletes."""
    from testbed.mirror_server import MirrorProcess

    files = {f"e{i}.bin": os.urandom(50_000 + i) for i in range(60)}
    hub.add_repo("model", "org/evict", files)
    cache = tmp_path / "cache"
    args = ("--upstream", hub.url, "--cache-dir", str(cache))
    proc = MirrorProcess(*args).wait_ready()
    try:
        for name in files:
            assert fetch(f"{proc.url}/org/evict/resolve/main/{name}")[0] == 200
        proc.settle()
    finally:
        proc.stop()
    limit = {"HUB_MIRROR_CACHE_MAX_BYTES": "100000", "HUB_MIRROR_CACHE_EVICT_INTERVAL": "0.3",
             "HUB_MIRROR_CACHE_EVICT_MIN_IDLE": "0.2", "HUB_MIRROR_CACHE_ACCESS_FLUSH_INTERVAL": "0.1"}  # fmt: skip
    blobs = cache / "objects" / "blobs"

    def count() -> int:
        return sum(1 for p in blobs.rglob("*") if p.is_file())

    before = count()
    proc = MirrorProcess(*args, env=limit).wait_ready()
    deadline = time.monotonic() + 10
    while count() == before and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()  # as soon as the pass has deleted something: in its middle, or just after it
    assert count() < len(files), "eviction never ran"
    for path in blobs.rglob("*"):
        if path.is_file():
            assert sha256_hex(path.read_bytes()) == path.name, f"{path} is not whole"
    proc = MirrorProcess(*args).wait_ready()
    try:
        for name, data in files.items():
            assert fetch(f"{proc.url}/org/evict/resolve/main/{name}") == (200, data)
    finally:
        proc.stop()


def test_one_replica_leads_maintenance_and_another_takes_over_when_it_leaves(tmp_path: Path) -> None:
    from mirror.cache.leases import Leases
    from mirror.config import CacheConfig
    from mirror.lifecycle.maintenance import Maintenance

    class Scrub:
        def __init__(self) -> None:
            self.running = 0

        async def run_forever(self) -> None:
            self.running += 1
            try:
                await asyncio.Event().wait()
            finally:
                self.running -= 1

    async def scenario() -> None:
        storage = LocalStorage(tmp_path / "shared")
        await storage.start()
        config = CacheConfig(evict_interval=0.05, gc_interval=0)
        scrubs = [Scrub(), Scrub()]
        replicas = [
            Maintenance(Leases(storage, "", 2.0), config, evictor=None, gc=None, scrub=scrub) for scrub in scrubs
        ]
        for replica in replicas:
            replica.start()
        deadline = time.monotonic() + 10
        while not any(r.leader for r in replicas) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # several ticks: the lease holds
        assert [r.leader for r in replicas].count(True) == 1
        first = next(i for i, r in enumerate(replicas) if r.leader)
        assert scrubs[first].running == 1 and scrubs[1 - first].running == 0
        await replicas[first].close()  # hands the lease over at once
        assert scrubs[first].running == 0
        other = replicas[1 - first]
        deadline = time.monotonic() + 10
        while not other.leader and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert other.leader and scrubs[1 - first].running == 1
        await other.close()

    asyncio.run(scenario())


def test_a_repos_blobs_are_its_own_entries_not_those_of_a_repo_named_under_it(tmp_path: Path) -> None:
    """repos/models/org/entries/... also lists the records of a repo "org/entries"."""
    from mirror.lifecycle.inventory import repo_blobs

    async def scenario() -> None:
        storage = LocalStorage(tmp_path / "c")
        await storage.start()
        commit = "c" * 40
        for repo_id, etag in (("org", "a" * 64), ("org/entries", "b" * 64)):
            record = {"path": "f.bin", "etag": etag, "size": 3}
            key = keys.entry_key(RepoRef("model", repo_id), commit, "f.bin")
            await storage.put_bytes(key, json.dumps(record).encode())
        damaged = {"path": "g.bin", "etag": "not-hex" + "0" * 57, "size": 3}
        await storage.put_bytes(keys.entry_key(RepoRef("model", "org"), commit, "g.bin"), json.dumps(damaged).encode())
        found = [blob async for blob in repo_blobs(storage, RepoRef("model", "org"))]
        assert found == [(keys.blob_key("a" * 64), 3)]
        found = [blob async for blob in repo_blobs(storage, RepoRef("model", "org/entries"))]
        assert found == [(keys.blob_key("b" * 64), 3)]

    asyncio.run(scenario())
