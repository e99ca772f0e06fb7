"""Scrubbing: stored blobs re-hashed against their address; corrupt ones quarantined and refilled.

End to end through a running mirror and `hub-mirror verify` on its local cache, the background
Scrubber's passes, pacing and cancellation, the S3 backend (SeaweedFS), and the rule that only a
fully computed digest condemns a blob: read errors, short reads and hangs never do.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mirror.cache import keys
from mirror.cli import main
from mirror.lifecycle.scrub import CORRUPT, ERROR, MISSING, OK, Scrubber
from mirror.metrics import Metrics
from mirror.storage import Storage
from mirror.storage.base import StorageUnavailable
from mirror.storage.local import LocalStorage
from mirror.storage.s3 import MIN_PART_SIZE, S3Storage
from testbed.hubemu import HubEmulator
from testbed.hubemu.repos import git_blob_sha1, sha256_hex
from testbed.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server
from tests.conftest import SHARED_BUCKET
from tests.support.mirrors import start_mirror
from tests.support.storage_faults import FaultyStorage

WEIGHTS = os.urandom(300_000)  # LFS: sha256
CONFIG = b'{"model_type": "tiny", "hidden_size": 8}'  # under the LFS threshold: git blob sha1
DATASET = os.urandom(50_000)


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read()


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def blob(data: bytes, lfs: bool = True) -> tuple[str, bytes]:
    return keys.blob_key(sha256_hex(data) if lfs else git_blob_sha1(data)), data


async def put(storage: Storage, *blobs: tuple[str, bytes]) -> None:
    for key, data in blobs:
        await storage.put_bytes(key, data)


# -- hub-mirror verify on a running mirror's local cache ------------------------------------------


def test_verify_quarantines_a_corrupt_blob_that_then_refills(
    hub: HubEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.add_repo("model", "org/m", {"w.safetensors": WEIGHTS, "config.json": CONFIG})
    hub.add_repo("dataset", "org/d", {"data.bin": DATASET})
    cache = tmp_path / "cache"
    mirror = start_mirror(hub.url, cache)
    try:
        weights_url = f"{mirror.url}/org/m/resolve/main/w.safetensors"
        assert fetch(weights_url) == WEIGHTS
        assert fetch(f"{mirror.url}/org/m/resolve/main/config.json") == CONFIG
        assert fetch(f"{mirror.url}/datasets/org/d/resolve/main/data.bin") == DATASET
        mirror.settle()
        weights = sha256_hex(WEIGHTS)
        stored = cache / "objects" / keys.blob_key(weights)
        assert stored.read_bytes() == WEIGHTS
        verify = ["verify", "--cache-dir", str(cache)]
        assert main(verify) == 0
        assert "3 blobs checked" in capsys.readouterr().out

        flip_byte(stored, 123_456)
        # --dry-run names it and leaves it alone.
        assert main([*verify, "--dry-run"]) == 1
        out = capsys.readouterr().out
        assert f"corrupt: {keys.blob_key(weights)} (reported only" in out and "1 corrupt" in out
        assert stored.exists() and not (cache / "objects" / keys.quarantine_key(weights)).exists()
        # Another repo's blobs are intact: only they are checked.
        assert main([*verify, "datasets/org/d"]) == 0
        assert "1 blobs checked" in capsys.readouterr().out

        # Next to the running mirror: recorded, removed, exit 1.
        assert main(verify) == 1
        out = capsys.readouterr().out
        assert f"corrupt: {keys.blob_key(weights)} (quarantined)" in out
        assert "3 blobs checked" in out and "1 corrupt (1 quarantined)" in out
        assert not stored.exists()
        record = json.loads((cache / "objects" / keys.quarantine_key(weights)).read_bytes())
        assert record["expected"] == weights and record["found"] == hashlib.sha256(stored_bytes(WEIGHTS)).hexdigest()
        assert record["size"] == len(WEIGHTS) and record["reason"] == "hash mismatch"
        assert record["by"].startswith("hub-mirror verify") and record["when"] > time.time() - 60

        # A quarantined blob is an ordinary miss: refilled from upstream, verified, correct.
        hub.clear_requests()
        assert fetch(weights_url) == WEIGHTS
        assert hub.count("GET", origin="cdn") >= 1
        mirror.settle()
        assert stored.read_bytes() == WEIGHTS
        assert main(verify) == 0
        capsys.readouterr()
    finally:
        mirror.stop()


def stored_bytes(data: bytes) -> bytes:
    """`data` with the byte flip_byte flips."""
    flipped = bytearray(data)
    flipped[123_456] ^= 0x01
    return bytes(flipped)


def test_verify_of_named_repos_checks_git_blobs_too(
    hub: HubEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.add_repo("model", "org/m", {"w.safetensors": WEIGHTS, "config.json": CONFIG})
    hub.add_repo("model", "org/other", {"c.json": b'{"other": true}'})
    cache = tmp_path / "cache"
    mirror = start_mirror(hub.url, cache)
    try:
        config_url = f"{mirror.url}/org/m/resolve/main/config.json"
        assert fetch(config_url) == CONFIG
        assert fetch(f"{mirror.url}/org/other/resolve/main/c.json") == b'{"other": true}'
        mirror.settle()
        config_etag = git_blob_sha1(CONFIG)
        stored = cache / "objects" / keys.blob_key(config_etag)
        stored.write_bytes(CONFIG.replace(b"tiny", b"huge"))  # same size, other bytes

        assert main(["verify", "--cache-dir", str(cache), "org/other"]) == 0
        assert stored.exists()
        # Only config.json of org/m has an entry (its weights were never asked for).
        assert main(["verify", "--cache-dir", str(cache), "org/m"]) == 1
        out = capsys.readouterr().out
        assert "1 blobs checked" in out
        assert f"corrupt: {keys.blob_key(config_etag)} (quarantined)" in out
        assert not stored.exists()
        assert json.loads((cache / "objects" / keys.quarantine_key(config_etag)).read_bytes())["algorithm"] == (
            "git-blob-sha1"
        )
        hub.clear_requests()
        assert fetch(config_url) == CONFIG
        assert hub.count("GET", path_contains="config.json") >= 1
    finally:
        mirror.stop()


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("org//m", "Invalid repo id"),
        ("datasets/../etc", "Invalid repo id"),
        ("a/b/c", "Invalid repo id"),
        ("org/never-cached", "no cached files of model org/never-cached"),
    ],
)
def test_verify_rejects_bad_repo_arguments(
    arg: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["verify", "--cache-dir", str(tmp_path), arg]) == 2
    assert message in capsys.readouterr().err


# -- the background scrub --------------------------------------------------------------------------


class Recorder:
    """A throttle that records what it is asked for, and can hold the scrub at a consume."""

    def __init__(self) -> None:
        self.consumed: list[int] = []
        self.hold = False
        self.held = asyncio.Event()

    async def consume(self, amount: int) -> None:
        self.consumed.append(amount)
        if self.hold:
            self.held.set()
            await asyncio.Event().wait()


async def test_background_scrub_quarantines_paces_and_stops_cleanly(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    await storage.start()
    good = [blob(os.urandom(1_500_000)), blob(b"small", lfs=False), blob(os.urandom(10))]
    bad_key, _ = blob(os.urandom(200_000))
    await put(storage, *good, (bad_key, os.urandom(200_000)))
    await storage.put_bytes("blobs/sha256/not-a-blob", b"x")  # not a blob key: skipped, untouched
    metrics, throttle, pauses = Metrics(), Recorder(), []
    passed = asyncio.Event()

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        passed.set()
        await asyncio.Event().wait()

    scrubber = Scrubber(storage, metrics, rate=1e9, throttle=throttle, pause=123.0, sleep=sleep, source="replica-a")
    task = asyncio.ensure_future(scrubber.run_forever())
    await asyncio.wait_for(passed.wait(), 30)
    assert pauses == [123.0]

    total = sum(len(data) for _, data in good) + 200_000
    assert sample(metrics, "hub_mirror_scrub_blobs_total", outcome="ok") == 3
    assert sample(metrics, "hub_mirror_scrub_blobs_total", outcome="corrupt") == 1
    assert sample(metrics, "hub_mirror_quarantined_blobs_total") == 1
    assert sample(metrics, "hub_mirror_scrub_bytes_total") == total
    assert sample(metrics, "hub_mirror_scrub_last_pass_timestamp_seconds") > time.time() - 60
    # Every byte hashed was first asked of the token bucket, a chunk at a time.
    assert sum(throttle.consumed) == total and len(throttle.consumed) >= 5
    assert max(throttle.consumed) <= 1024 * 1024
    assert await storage.stat(bad_key) is None
    record = json.loads(await storage.get_bytes(keys.quarantine_key(keys.etag_of_blob(bad_key) or "")) or b"")
    assert record["by"] == "replica-a"
    assert [await storage.get_bytes(key) for key, _ in good] == [data for _, data in good]
    assert await storage.get_bytes("blobs/sha256/not-a-blob") == b"x"

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await storage.close()

    # Cancelled mid-blob (held at the bucket): it stops there and condemns nothing.
    other = LocalStorage(tmp_path / "other")
    await other.start()
    bad_key2, _ = blob(os.urandom(3_000_000))
    await put(other, (bad_key2, os.urandom(3_000_000)))
    throttle.hold = True
    task = asyncio.ensure_future(Scrubber(other, metrics, throttle=throttle, sleep=sleep).run_forever())
    await asyncio.wait_for(throttle.held.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await other.stat(bad_key2) is not None
    assert await other.get_bytes(keys.quarantine_key(keys.etag_of_blob(bad_key2) or "")) is None
    assert sample(metrics, "hub_mirror_quarantined_blobs_total") == 1
    await other.close()


async def test_the_rate_is_a_ceiling(tmp_path: Path) -> None:
    """With the real token bucket: 500 kB at 250 kB/s take at least a second (one second of burst).

    Only a lower bound is asserted, which a loaded machine cannot break.
    """
    storage = LocalStorage(tmp_path / "store")
    await storage.start()
    await put(storage, *(blob(os.urandom(100_000)) for _ in range(5)))
    started = time.monotonic()
    report = await Scrubber(storage, rate=250_000).verify(storage.list(keys.BLOBS))
    assert report.ok == 5 and report.bytes == 500_000
    assert time.monotonic() - started >= 0.95
    await storage.close()


async def test_scrub_is_off_without_a_rate(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    await storage.start()
    await asyncio.wait_for(Scrubber(storage).run_forever(), 5)  # returns: nothing to run
    await storage.close()


async def test_a_listing_is_consumed_lazily_and_its_failure_reported(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    await storage.start()
    pulled = 0

    async def listing() -> AsyncIterator[str]:
        nonlocal pulled
        for n in range(10**9):  # never materialised
            if n == 50:
                raise StorageUnavailable("injected fault: cannot list")
            pulled += 1
            yield keys.blob_key(f"{n:064x}")

    report = await Scrubber(storage).verify(listing(), concurrency=3)
    assert pulled == 50 and report.missing == 50 and report.checked == 50
    assert report.aborted is not None and "cannot list" in report.aborted and not report.clean


# -- S3 --------------------------------------------------------------------------------------------


async def test_scrub_on_s3_quarantines_wrong_bytes(shared_s3: S3Server) -> None:
    storage = S3Storage(
        SHARED_BUCKET,
        endpoint=shared_s3.endpoint,
        prefix=f"t-{uuid.uuid4().hex[:12]}",
        region=REGION,
        part_size=MIN_PART_SIZE,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
    )
    await storage.start()
    try:
        good = blob(os.urandom(2_500_000))
        bad_key, _ = blob(os.urandom(100_000))
        await put(storage, good, (bad_key, b"not these bytes"))
        metrics, removed = Metrics(), []

        async def remove(key: str) -> bool:  # the server's waits for the blob's readers first
            removed.append(key)
            return await storage.delete(key)

        report = await Scrubber(storage, metrics, remove=remove).verify(storage.list(keys.BLOBS), concurrency=2)
        assert (report.ok, report.corrupt, report.quarantined, report.errors) == (1, 1, 1, 0)
        assert removed == [bad_key]
        assert report.corrupt_keys == [bad_key]
        assert await storage.stat(bad_key) is None and await storage.stat(good[0]) is not None
        record = json.loads(await storage.get_bytes(keys.quarantine_key(keys.etag_of_blob(bad_key) or "")) or b"")
        assert record["found"] == hashlib.sha256(b"not these bytes").hexdigest() and record["size"] == 15
        assert sample(metrics, "hub_mirror_quarantined_blobs_total") == 1
    finally:
        await storage.close()


# -- only a complete digest condemns ---------------------------------------------------------------


class BrokenReads(FaultyStorage):
    """Reads of blobs that fail after the first chunk, end short without an error, or hang."""

    def __init__(self, inner: Storage, mode: str) -> None:
        super().__init__(inner)
        self.mode = mode

    async def read_range(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:  # type: ignore[override]
        first = True
        async for chunk in self.inner.read_range(key, start, end):
            if not first:
                if self.mode == "fail":
                    raise StorageUnavailable(f"injected fault: cannot read {key}: I/O error")
                if self.mode == "short":
                    return
                await asyncio.Event().wait()  # "hang"
            first = False
            yield chunk


@pytest.mark.parametrize("mode", ["fail", "short", "hang"])
async def test_read_errors_never_quarantine(mode: str, tmp_path: Path) -> None:
    inner = LocalStorage(tmp_path / "store")
    await inner.start()
    key, _ = blob(os.urandom(2_500_000))
    await put(inner, (key, os.urandom(2_500_000)))  # corrupt: but the scrub never sees all of it
    metrics = Metrics()
    scrubber = Scrubber(BrokenReads(inner, mode), metrics, step_timeout=0.5)
    assert await scrubber.check(key) == ERROR
    assert await inner.stat(key) is not None
    assert await inner.get_bytes(keys.quarantine_key(keys.etag_of_blob(key) or "")) is None
    assert sample(metrics, "hub_mirror_quarantined_blobs_total") == 0
    assert sample(metrics, "hub_mirror_scrub_blobs_total", outcome="error") == 1
    # The store answers again: now it is condemned.
    assert await Scrubber(inner, metrics).check(key) == CORRUPT
    assert await inner.stat(key) is None


async def test_a_blob_replaced_while_read_is_checked_again(tmp_path: Path) -> None:
    """Another scrub quarantined it and a fill brought it back meanwhile: the new bytes are judged."""
    inner = LocalStorage(tmp_path / "store")
    await inner.start()
    key, data = blob(os.urandom(300_000))
    await put(inner, (key, os.urandom(300_000)))

    class Refilled(FaultyStorage):
        async def read_range(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:  # type: ignore[override]
            async for chunk in self.inner.read_range(key, start, end):
                yield chunk
            if not refilled:
                refilled.append(True)
                await self.inner.delete(key)
                await asyncio.sleep(0.01)  # a new mtime, whatever the file system's resolution
                await self.inner.put_bytes(key, data)

    refilled: list[bool] = []
    assert await Scrubber(Refilled(inner)).check(key) == OK
    assert await inner.get_bytes(key) == data
    assert await inner.get_bytes(keys.quarantine_key(keys.etag_of_blob(key) or "")) is None
    assert await Scrubber(inner).check(keys.blob_key("ab" * 32)) == MISSING
