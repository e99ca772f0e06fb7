"""Fills from the upstream's Xet CAS (`upstream.xet`): by chunks, verified, reusing chunks already cached.

The emulator's CAS deduplicates a new revision of a file against the last (as the Hub's upload
does), so a revision that changes 5 % of a file must cost the mirror about 5 % of it upstream.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror.cache import keys
from mirror.config import load_config
from mirror.hub.appkeys import ACCESS, RECORDS
from mirror.lifecycle.gc import GarbageCollector
from mirror.repo import RepoRef
from mirror.storage.configured import build_storage
from testbed.hubemu import HubEmulator
from testbed.hubemu.xet import format as emu_format
from testbed.mirror_server import MirrorThread
from tests.support.http import send
from tests.support.mirrors import start_mirror
from tests.support.storage_faults import FaultyStorage

SIZE = 2 * 1024 * 1024
OLD = os.urandom(SIZE)


@pytest.fixture
def xet_mirror(hub: HubEmulator, tmp_path: Path) -> Iterator[MirrorThread]:
    server = start_mirror(hub.url, tmp_path / "cache", upstream={"xet": True})
    yield server
    server.stop()


def get(base: str, path: str) -> tuple[int, bytes]:
    try:
        status, _, body = send(base, "GET", path)
    except (ConnectionError, http.client.HTTPException):
        return 0, b""  # cut: the mirror could not vouch for the last byte
    return status, body


def xet_bytes(mirror: MirrorThread, source: str) -> float:
    return mirror.metric("hub_mirror_xet_fill_bytes_total", source=source)


def cas_requests(hub: HubEmulator) -> tuple[int, int, int]:
    """(reconstructions, xorb GETs, whole-file CDN GETs) the emulator answered."""
    records = hub.requests
    return (
        sum("/v1/reconstructions/" in r.path for r in records),
        sum(r.path.startswith("/xorbs/") for r in records),
        sum(r.origin == "cdn" and r.path.startswith("/xet-bridge-us/") for r in records),
    )


def test_a_cold_fill_comes_by_chunks_and_is_verified(hub: HubEmulator, xet_mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/m", {"w.bin": OLD, "config.json": b"{}"}, lfs=["w.bin"])
    status, body = get(xet_mirror.url, "/org/m/resolve/main/w.bin")
    assert status == 200 and body == OLD
    reconstructions, xorbs, whole = cas_requests(hub)
    assert reconstructions >= 1 and xorbs >= 1 and whole == 0
    assert xet_bytes(xet_mirror, "upstream") == SIZE
    # Plain files still come over HTTP, and the cached blob serves every client after.
    assert get(xet_mirror.url, "/org/m/resolve/main/config.json") == (200, b"{}")
    xet_mirror.settle()
    hub.clear_requests()
    assert get(xet_mirror.url, "/org/m/resolve/main/w.bin") == (200, OLD)
    assert cas_requests(hub) == (0, 0, 0)
    # The entry records the Xet hash the resolve named.
    repo = hub.get_repo("model", "org/m")
    assert repo is not None
    commit = repo.head()
    record = xet_mirror.call(xet_mirror.part(RECORDS).get(keys.entry_key(RepoRef("model", "org/m"), commit, "w.bin")))
    assert record["xet"] == repo.commits[commit].files["w.bin"].xet_hash


def test_a_new_revision_costs_only_its_new_chunks(hub: HubEmulator, xet_mirror: MirrorThread) -> None:
    # Big enough that the chunks around the change (up to 128 KiB each) weigh little against it.
    size = 8 * 1024 * 1024
    old = os.urandom(size)
    repo = hub.add_repo("model", "org/m", {"w.bin": old}, lfs=["w.bin"])
    assert get(xet_mirror.url, "/org/m/resolve/main/w.bin") == (200, old)
    xet_mirror.settle()
    before = xet_mirror.metric("hub_mirror_upstream_bytes_total")
    middle = size // 2
    new = old[:middle] + os.urandom(size // 20) + old[middle + size // 20 :]
    sha = repo.commit({"w.bin": new})
    status, body = get(xet_mirror.url, f"/org/m/resolve/{sha}/w.bin")  # "main" is still the old commit for a while
    assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(new).digest()
    fetched = xet_mirror.metric("hub_mirror_upstream_bytes_total") - before
    # Exactly the xorb bytes of the chunks the old file does not have: 5 % changed, plus the chunks it cuts through.
    old_layout, new_layout = (repo.commits[c].files["w.bin"].xet for c in (repo.commits[sha].parent.sha, sha))
    old_xorbs = {t.xorb.hash for t in old_layout.terms(0, size - 1)[1]}
    new_terms = [t for t in new_layout.terms(0, size - 1)[1] if t.xorb.hash not in old_xorbs]
    assert fetched == sum(t.xorb.offsets[t.end] - t.xorb.offsets[t.start] for t in new_terms)
    assert fetched < 0.12 * size, f"{fetched} upstream bytes for a 5 % change of {size}"
    assert xet_bytes(xet_mirror, "cache") > 0.85 * size
    assert xet_bytes(xet_mirror, "upstream") < 1.12 * size


def test_corrupt_chunks_are_never_served_whole_nor_indexed(hub: HubEmulator, xet_mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/m", {"w.bin": OLD}, lfs=["w.bin"])
    hub.faults.corrupt(path_contains="/xorbs/", origin="cdn", offset=100_000, times=None)
    _, body = get(xet_mirror.url, "/org/m/resolve/main/w.bin")
    assert body != OLD  # random bytes are stored uncompressed: the flip decodes, and the sha256 catches it
    xet_mirror.settle()
    assert xet_mirror.call(xet_mirror.storage.stat(keys.blob_key(hashlib.sha256(OLD).hexdigest()))) is None
    assert [k for k in xet_mirror.call(_keys(xet_mirror, "xet/"))] == []  # nothing indexed from a failed fill
    hub.faults.clear()
    assert get(xet_mirror.url, "/org/m/resolve/main/w.bin") == (200, OLD)
    xet_mirror.settle()
    assert xet_mirror.call(_keys(xet_mirror, "xet/"))


def test_dropped_xorb_bodies_and_expired_urls_are_fetched_again(hub: HubEmulator, xet_mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/m", {"w.bin": OLD}, lfs=["w.bin"])
    hub.faults.drop_after(300_000, path_contains="/xorbs/", origin="cdn", times=2)
    hub.faults.expire_signed_urls()
    assert get(xet_mirror.url, "/org/m/resolve/main/w.bin") == (200, OLD)


def test_without_xet_fills_files_come_over_http(hub: HubEmulator, mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/m", {"w.bin": OLD}, lfs=["w.bin"])
    assert get(mirror.url, "/org/m/resolve/main/w.bin") == (200, OLD)
    reconstructions, xorbs, whole = cas_requests(hub)
    assert (reconstructions, xorbs) == (0, 0) and whole == 1


async def _keys(mirror: MirrorThread, prefix: str) -> list[str]:
    return [key async for key in mirror.storage.list(prefix)]


def test_index_key_fans_out_by_hash() -> None:
    assert keys.xorb_index_key("ab" * 32) == f"xet/xorbs/ab/{'ab' * 32}.json"


def test_gc_forgets_the_xet_records_of_blobs_no_longer_stored(hub: HubEmulator, xet_mirror: MirrorThread) -> None:
    a, b = os.urandom(SIZE), os.urandom(SIZE)
    hub.add_repo("model", "org/m", {"a.bin": a, "b.bin": b}, lfs=["a.bin", "b.bin"])
    for name, data in (("a.bin", a), ("b.bin", b)):
        assert get(xet_mirror.url, f"/org/m/resolve/main/{name}") == (200, data)
    xet_mirror.settle()
    storage = xet_mirror.storage
    gone, kept = hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()

    def index_holders() -> set[str]:
        async def read() -> set[str]:
            holders = set()
            async for key in storage.list(keys.XET_XORBS):
                record = json.loads(await storage.get_bytes(key) or b"{}")
                holders |= {h["etag"] for h in record["holders"]}
            return holders

        return xet_mirror.call(read())

    assert index_holders() == {gone, kept}
    xet_mirror.call(storage.delete(keys.blob_key(gone)))  # evicted
    collector = GarbageCollector(storage, xet_mirror.part(ACCESS), grace=0, min_idle=0)
    report = xet_mirror.call(collector.run(apply=False))
    assert report.counts["xet_record"] >= 2 and index_holders() == {gone, kept}  # a dry run removes nothing
    report = xet_mirror.call(collector.run(apply=True))
    assert report.counts["xet_record"] >= 2 and not report.errors
    assert index_holders() == {kept}
    assert xet_mirror.call(storage.stat(keys.xet_terms_key(gone))) is None
    assert xet_mirror.call(storage.stat(keys.xet_terms_key(kept))) is not None


@pytest.fixture
def small_xorbs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emu_format, "XORB_MAX_CHUNKS", 16)  # ~1 MiB xorbs: a 4 MiB file spans several


def xorb_order(hub: HubEmulator, data: bytes) -> list[str]:
    repo = hub.add_repo("model", "org/m", {"w.bin": data}, lfs=["w.bin"])
    layout = repo.commits[repo.head()].files["w.bin"].xet
    assert layout is not None
    return [term.xorb.hash for term in layout.terms(0, len(data) - 1)[1]]


def test_the_next_xorb_ranges_are_fetched_while_one_is_held_back(
    hub: HubEmulator, xet_mirror: MirrorThread, small_xorbs: None
) -> None:
    data = os.urandom(4 * 1024 * 1024)
    xorbs = xorb_order(hub, data)
    assert len(xorbs) >= 4
    hub.faults.delay(1.0, path_contains=xorbs[0], origin="cdn", times=1)
    started = time.time()
    assert get(xet_mirror.url, "/org/m/resolve/main/w.bin") == (200, data)
    asked = {r.path.split("?")[0].rsplit("/", 1)[-1]: r.time for r in hub.requests if r.path.startswith("/xorbs/")}
    # The two ranges after the held one were asked for while it was held (three at once), no further one.
    assert all(asked[x] - started < 0.9 for x in xorbs[1:3]), [asked[x] - started for x in xorbs]
    assert all(asked[x] - started >= 0.9 for x in xorbs[3:]), [asked[x] - started for x in xorbs]


def test_a_range_fetched_ahead_that_breaks_is_fetched_again(
    hub: HubEmulator, xet_mirror: MirrorThread, small_xorbs: None
) -> None:
    data = os.urandom(4 * 1024 * 1024)
    xorbs = xorb_order(hub, data)
    # Held back, so that the drop of the range fetched ahead happens while the fill is still on the first.
    hub.faults.delay(0.5, path_contains=xorbs[0], origin="cdn", times=1)
    hub.faults.drop_after(100_000, path_contains=xorbs[2], origin="cdn", times=1)
    assert get(xet_mirror.url, "/org/m/resolve/main/w.bin") == (200, data)
    fetched = [r.path.split("?")[0].rsplit("/", 1)[-1] for r in hub.requests if r.path.startswith("/xorbs/")]
    assert fetched.count(xorbs[2]) == 2 and xet_mirror.metric("hub_mirror_hash_mismatches_total") == 0
    xet_mirror.settle()
    assert xet_mirror.call(xet_mirror.storage.stat(keys.blob_key(hashlib.sha256(data).hexdigest()))) is not None


class CountingStorage(FaultyStorage):
    """Counts the reads of chunk-index records (they are not cached in memory)."""

    index_reads = 0

    async def get_bytes(self, key: str) -> bytes | None:
        if key.startswith(keys.XET_XORBS):
            self.index_reads += 1
        return await super().get_bytes(key)


def test_each_term_is_looked_up_in_the_chunk_index_once(hub: HubEmulator, tmp_path: Path, small_xorbs: None) -> None:
    data = os.urandom(4 * 1024 * 1024)
    terms = len(xorb_order(hub, data))
    config = load_config(None, {"upstream": {"url": hub.url, "xet": True}, "cache": {"dir": str(tmp_path)}}, environ={})
    store = CountingStorage(build_storage(config))
    mirror = MirrorThread(config, storage=store).start()
    try:
        assert get(mirror.url, "/org/m/resolve/main/w.bin") == (200, data)
        mirror.settle()
        # One look per term while filling, and one per term when the verified file is indexed.
        assert store.index_reads == 2 * terms, store.index_reads
    finally:
        mirror.stop()
