"""Filling the cache: single-flight, resume after drops, verification, crashes, upstream down."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mirror.cache import keys
from mirror.cache.blobs.fill import Filler
from mirror.cache.leases import Leases
from mirror.cache.metadata.entries import FileEntry
from mirror.config import load_config
from mirror.repo import RepoRef
from mirror.storage.base import ObjectInfo
from mirror.storage.local import LocalStorage, LocalWriter
from mirror.upstream import Upstream
from testbed.hubemu import HubEmulator, sha256_hex
from testbed.mirror_server import MirrorProcess, MirrorThread
from tests.support.client import run_client
from tests.support.http import fetch
from tests.support.mirrors import start_mirror

BIG = os.urandom(3 * 1024 * 1024 + 123)


def blob_published(mirror: MirrorThread, data: bytes) -> bool:
    mirror.settle()
    return mirror.call(mirror.storage.stat(keys.blob_key(sha256_hex(data)))) is not None


def cdn_gets(hub: HubEmulator) -> int:
    return hub.count(method="GET", origin="cdn")


def test_concurrent_cold_requests_share_one_upstream_fetch(hub: HubEmulator, mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/big", {"w.safetensors": BIG})
    hub.faults.throttle(8 * 1024 * 1024)  # slow enough that all clients join while the fill runs
    url = f"{mirror.url}/org/big/resolve/main/w.safetensors"
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: fetch(url), range(8)))
    assert all(status == 200 and body == BIG for status, body in results)
    assert cdn_gets(hub) == 1
    assert hub.count(method="HEAD", path_contains="w.safetensors") == 1
    assert mirror.fills_started() == 1


def test_upstream_drop_is_resumed_with_range(hub: HubEmulator, mirror: MirrorThread, tmp_path: Path) -> None:
    hub.add_repo("model", "org/big", {"w.safetensors": BIG})
    hub.faults.drop_after(1_000_000, path_contains="w.safetensors", times=2)
    out = run_client(mirror.url, 'out["p"] = hf_hub_download("org/big", "w.safetensors")', tmp_path)
    assert Path(out["p"]).read_bytes() == BIG
    ranged = [r for r in hub.requests if r.origin == "cdn" and "range" in r.headers]
    starts = [int(r.headers["range"].removeprefix("bytes=").rstrip("-")) for r in ranged]
    # Each resume starts where the mirror's verified copy ended (at most where the drop happened).
    assert len(starts) == 2 and 0 < starts[0] <= 1_000_000 and starts[0] < starts[1] <= starts[0] + 1_000_000
    assert blob_published(mirror, BIG)


def test_expired_signed_url_is_re_resolved_on_resume(hub: HubEmulator, mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/big", {"w.safetensors": BIG})
    hub.faults.drop_after(500_000, path_contains="w.safetensors", times=1)
    hub.faults.expire_signed_urls()  # URLs issued before now die; the resume must ask for a new one
    status, body = fetch(f"{mirror.url}/org/big/resolve/main/w.safetensors")
    assert (status, body == BIG) == (200, True)
    assert hub.count(method="GET", origin="hub", path_contains="w.safetensors") == 2


def test_corrupt_upstream_bytes_are_never_published(hub: HubEmulator, mirror: MirrorThread, tmp_path: Path) -> None:
    hub.add_repo("model", "org/big", {"w.safetensors": BIG})
    hub.faults.corrupt(path_contains="w.safetensors", offset=2_000_000)
    url = f"{mirror.url}/org/big/resolve/main/w.safetensors"
    out = run_client(mirror.url, 'out["e"] = err(hf_hub_download, "org/big", "w.safetensors")', tmp_path)
    assert out["e"] is not None, "the client must not end up with a complete corrupt file"
    assert not blob_published(mirror, BIG)
    assert not list((tmp_path / "hub" / "models--org--big" / "blobs").glob("*[!e]")), "no finished client blob"
    # A client holding a prefix of the bad bytes cannot resume onto good ones: its Range is refused
    # (unknown clients) or answered with the whole file (clients that start over); tests/test_poison.py.
    status, _ = fetch(url, {"Range": "bytes=1000-"})
    assert status == 409
    hub.faults.clear()
    status, body = fetch(url)
    assert status == 200 and hashlib.sha256(body).hexdigest() == sha256_hex(BIG)
    assert blob_published(mirror, BIG)


def test_download_completes_before_the_publish(
    hub: HubEmulator, mirror: MirrorThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last byte goes out once the hash matches; clients never wait for the fsync and rename.

    On a slow disk the flush of a large blob can take longer than a client's read timeout. While
    the blob is being published it counts as cached: a second request is a hit, served without
    upstream.
    """
    hub.add_repo("model", "org/big", {"w.safetensors": BIG})
    publish = threading.Event()
    original = LocalWriter.commit
    blob = keys.blob_key(sha256_hex(BIG))

    async def held_commit(self: LocalWriter) -> ObjectInfo:
        if self.key == blob:  # metadata records publish as usual
            await asyncio.to_thread(publish.wait, 30)
        return await original(self)

    monkeypatch.setattr(LocalWriter, "commit", held_commit)
    url = f"{mirror.url}/org/big/resolve/main/w.safetensors"
    assert fetch(url) == (200, BIG)
    assert mirror.fills_in_flight() == 1, "still publishing"
    assert not (Path(mirror.config.cache.dir) / "objects" / blob).exists()
    for method in ("HEAD", "GET"):
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as resp:
            assert resp.headers["X-Cache"] == "HIT", method
            assert resp.read() == (BIG if method == "GET" else b"")
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=-10"}), timeout=30) as resp:
        assert resp.status == 206 and resp.read() == BIG[-10:]
    assert cdn_gets(hub) == 1
    publish.set()
    assert blob_published(mirror, BIG)
    assert fetch(url) == (200, BIG)
    assert cdn_gets(hub) == 1


def test_crash_mid_fill_leaves_nothing_visible(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo("model", "org/big", {"w.safetensors": BIG})
    hub.faults.throttle(512 * 1024)
    cache = tmp_path / "cache"
    first = MirrorProcess("--upstream", hub.url, "--cache-dir", str(cache)).wait_ready()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(fetch, f"{first.url}/org/big/resolve/main/w.safetensors")
        deadline = time.monotonic() + 10
        while not list((cache / "staging").glob("*.part")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list((cache / "staging").glob("*.part")), "a fill was in progress"
        first.kill()  # SIGKILL mid-fill
    assert not (cache / "objects" / keys.blob_key(sha256_hex(BIG))).exists()
    hub.faults.clear()
    leftovers = set((cache / "staging").iterdir())
    second = MirrorProcess("--upstream", hub.url, "--cache-dir", str(cache)).wait_ready()
    try:
        # The new process's own readiness probe writes through staging too: the old files must be gone.
        assert not leftovers & set((cache / "staging").iterdir()), "leftovers removed at start"
        status, body = fetch(f"{second.url}/org/big/resolve/main/w.safetensors")
        assert status == 200 and body == BIG
    finally:
        second.stop()


def test_upstream_down_serves_what_is_cached(hub: HubEmulator, tmp_path: Path) -> None:
    # revision_ttl 0: every branch lookup asks upstream (dead once the cache is warm) before the last known commit.
    mirror = start_mirror(hub.url, tmp_path / "mirror-cache", cache={"revision_ttl": 0})
    try:
        repo = hub.add_repo("model", "org/tiny", {"config.json": b"{}", "w.safetensors": BIG[:50_000]})
        warm = run_client(mirror.url, 'out["p"] = snapshot_download("org/tiny")', tmp_path / "warm")
        hub.faults.down()
        out = run_client(
            mirror.url,
            """
            out["snap"] = sorted(os.listdir(snapshot_download("org/tiny")))
            out["file"] = open(hf_hub_download("org/tiny", "config.json"), "rb").read().decode()
            out["uncached"] = err(hf_hub_download, "org/other", "config.json")
            """,
            tmp_path / "cold-client",
        )
        assert out["snap"] == ["config.json", "w.safetensors"]
        assert out["file"] == "{}"
        assert out["uncached"] == "LocalEntryNotFoundError"
        assert Path(warm["p"]).name == repo.head()
        status, _ = fetch(f"{mirror.url}/org/other/resolve/main/config.json")
        assert 500 <= status < 600
    finally:
        mirror.stop()


def test_slow_upstream_still_answers_within_client_timeouts(
    hub: HubEmulator, mirror: MirrorThread, tmp_path: Path
) -> None:
    data = os.urandom(2_400_000)
    hub.add_repo("model", "org/slow", {"w.safetensors": data})
    hub.faults.throttle(200_000)  # about 12 s for the whole body: longer than the client's 10 s read timeout
    start = time.monotonic()
    out = run_client(
        mirror.url,
        'out["p"] = hf_hub_download("org/slow", "w.safetensors")',
        tmp_path,
        env={"HF_HUB_DOWNLOAD_TIMEOUT": "10"},
    )
    assert time.monotonic() - start > 10
    assert Path(out["p"]).read_bytes() == data


@pytest.mark.parametrize("size", [0, 1, 10_001])
def test_small_and_empty_files(hub: HubEmulator, mirror: MirrorThread, size: int) -> None:
    data = os.urandom(size)
    hub.add_repo("model", "org/s", {"f.bin": data})
    assert fetch(f"{mirror.url}/org/s/resolve/main/f.bin") == (200, data)
    assert fetch(f"{mirror.url}/org/s/resolve/main/f.bin") == (200, data)


def test_a_lease_claimed_after_the_publish_starts_no_fill(tmp_path: Path) -> None:
    """A replica that looked before another one published, then got the lease it released, reads
    the blob from storage: no fill is started for it, and the lease is let go at once."""

    async def scenario() -> None:
        storage = LocalStorage(tmp_path / "c")
        await storage.start()
        config = load_config(None, {"cache": {"dir": str(tmp_path / "c")}}, environ={})
        upstream = Upstream(config.upstream, Upstream.new_session(config.upstream))
        leases = Leases(storage, "http://127.0.0.1:9", 30.0)
        filler = Filler(storage, upstream, config.cache, config.upstream, leases=leases)
        entry = FileEntry(RepoRef("model", "org/m"), "c" * 40, "w.bin", sha256_hex(b"w"), 1)
        await storage.put_bytes(keys.blob_key(entry.etag), b"w")  # published by "another replica"
        try:
            assert await filler.start(entry, None) is None
            assert filler.started == 0
            assert [k async for k in storage.list(keys.FILL_LEASES)] == []
        finally:
            await upstream.session.close()

    asyncio.run(scenario())
