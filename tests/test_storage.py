"""Runs the storage conformance suite (tests/support/storage_suite.py) against every backend, plus checks
that only make sense for one backend.

To add a backend: append its name to BACKENDS and give it a branch in `make_store` (an isolated,
empty store per test) and in `break_store` (make the running store fail, e.g. stop its server).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from mirror.errors import StorageError
from mirror.storage.base import Storage, StorageUnavailable, WindowPassed
from mirror.storage.local import LocalStorage
from mirror.storage.s3 import MIN_PART_SIZE, S3Storage
from testbed.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server
from tests.support.storage_suite import *  # noqa: F403
from tests.support.storage_suite import MIB, read_all, split, write_chunks

BACKENDS = ["local", "s3"]
BUCKET = "conformance"
T = TypeVar("T")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS for the session; each test gets its own prefix in one bucket."""
    server = S3Server(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.close()


def s3_store(server: S3Server, bucket: str = BUCKET, prefix: str | None = None, **kw: object) -> S3Storage:
    return S3Storage(
        bucket,
        endpoint=server.endpoint,
        prefix=f"t-{uuid.uuid4().hex}" if prefix is None else prefix,
        region=REGION,
        # The smallest part S3 allows, so multipart uploads start within a few MiB.
        part_size=MIN_PART_SIZE,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        **kw,  # type: ignore[arg-type]
    )


def make_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest, *, breakable: bool = False) -> Storage:
    if backend == "local":
        return LocalStorage(tmp_path / "store")
    if backend == "s3":
        if breakable:
            # A server of its own, so that killing it leaves the shared one alone.
            server = S3Server(tmp_path / "seaweedfs").start()
            request.addfinalizer(server.close)
            server.create_bucket(BUCKET)
            store = s3_store(server, connect_timeout=1)
            store.test_server = server  # type: ignore[attr-defined]
            return store
        return s3_store(request.getfixturevalue("s3_server"))
    # New backends go here, each returning a store no other test can see.
    raise AssertionError(f"no test setup for storage backend {backend!r}")


def break_store(backend: str, store: Storage) -> None:
    if backend == "local":
        assert isinstance(store, LocalStorage)
        # Tests run as root, where chmod does not stop writes; a file where the folder should be does.
        shutil.rmtree(store.objects)
        store.objects.write_bytes(b"")
        return
    if backend == "s3":
        # The object store dies: every call meets a refused connection.
        store.test_server.kill()  # type: ignore[attr-defined]
        return
    raise AssertionError(f"no way to break storage backend {backend!r}")


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    backend = make_store(request.param, tmp_path, request)
    await backend.start()
    yield backend
    await backend.close()


@pytest.fixture(params=BACKENDS)
async def broken_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    backend = make_store(request.param, tmp_path, request, breakable=True)
    await backend.start()
    break_store(request.param, backend)
    yield backend
    await backend.close()


# --- local backend only ---------------------------------------------------------------------------


async def test_local_start_removes_staging_leftovers(tmp_path: Path) -> None:
    before = LocalStorage(tmp_path)
    await before.start()
    await before.put_bytes("blobs/kept", b"published before the crash")
    # A fill interrupted by a crash: bytes in staging, never committed nor aborted.
    crashed = await before.open_writer("blobs/half")
    await crashed.write(b"partial bytes")
    (before.staging / "0123abcd.part").write_bytes(b"older leftover")
    assert len(list(before.staging.iterdir())) == 2

    after = LocalStorage(tmp_path)
    await after.start()
    try:
        assert list(after.staging.iterdir()) == []
        assert await after.stat("blobs/half") is None
        assert [key async for key in after.list("")] == ["blobs/kept"]
        assert await after.get_bytes("blobs/kept") == b"published before the crash"
    finally:
        # Only releases the file descriptor the simulated crash left open.
        await crashed.abort()
        await after.close()


async def test_local_failed_publish_leaves_nothing_in_staging(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path)
    await local.start()
    break_store("local", local)
    with pytest.raises(StorageUnavailable, match="local storage"):
        await local.put_bytes("blobs/x", b"x" * 4096)
    assert list(local.staging.iterdir()) == []


async def test_local_unusable_staging_is_typed(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path)
    await local.start()
    local.staging.rmdir()
    local.staging.write_bytes(b"")
    with pytest.raises(StorageUnavailable):
        await local.open_writer("blobs/x")
    with pytest.raises(StorageUnavailable):
        await local.check_writable()


async def test_local_path_points_at_the_published_bytes(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path)
    await local.start()
    await local.put_bytes("blobs/sha256/ab/abcd", b"served with sendfile")
    path = local.local_path("blobs/sha256/ab/abcd")
    assert path is not None and path.read_bytes() == b"served with sendfile"
    assert path.is_relative_to(local.objects)


# --- s3 backend only ------------------------------------------------------------------------------


async def eventually(attempt: Callable[[], Awaitable[T]], timeout: float = 20) -> T:
    """The first result of `attempt` that is not StorageUnavailable, retried until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await attempt()
        except StorageUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def _uploads(server: S3Server, bucket: str = BUCKET, prefix: str = "") -> list[str]:
    page = server.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return [upload["Key"] for upload in page.get("Uploads", [])]


async def test_s3_keys_live_under_the_prefix_and_replicas_share_them(s3_server: S3Server) -> None:
    first, second = s3_store(s3_server, prefix="shared/a"), s3_store(s3_server, prefix="/shared/a/")
    other = s3_store(s3_server, prefix="shared/b")
    for store in (first, second, other):
        await store.start()
    try:
        await first.put_bytes("blobs/x", b"from the first replica")
        raw = s3_server.client().get_object(Bucket=BUCKET, Key="shared/a/blobs/x")["Body"].read()
        assert raw == b"from the first replica"
        assert await second.get_bytes("blobs/x") == b"from the first replica"
        assert [key async for key in second.list("")] == ["blobs/x"]
        assert await second.usage("blobs/") == (1, len(b"from the first replica"))
        assert await other.get_bytes("blobs/x") is None
        assert [key async for key in other.list("")] == []
        assert first.local_path("blobs/x") is None
    finally:
        for store in (first, second, other):
            await store.delete("blobs/x")
            await store.close()


async def test_s3_multipart_writer_keeps_a_bounded_window(s3_server: S3Server) -> None:
    store = s3_store(s3_server)
    await store.start()
    data = os.urandom(3 * MIN_PART_SIZE + 12345)
    chunk = 1024 * 1024
    writer = await store.open_writer("blobs/big")
    try:
        for pos in range(0, len(data), chunk):
            await writer.write(data[pos : pos + chunk])
            written = writer.written
            # Followers close behind the writer always get their bytes ...
            back = max(0, written - MIN_PART_SIZE)
            assert await writer.read_written(back, written - back) == data[back:written]
        # ... one far behind gets a typed error saying where the window starts.
        with pytest.raises(WindowPassed) as passed:
            await writer.read_written(0, 100)
        assert isinstance(passed.value, StorageError) and 0 < passed.value.window_start <= len(data) - MIN_PART_SIZE
        assert await writer.read_written(passed.value.window_start, 10) == data[passed.value.window_start :][:10]
        assert _uploads(s3_server, prefix=store.prefix) == [store.prefix + "blobs/big"]
        assert await store.stat("blobs/big") is None
        info = await writer.commit()
    finally:
        await writer.abort()
    assert info.size == len(data)
    assert await read_all(store, "blobs/big") == data
    assert await read_all(store, "blobs/big", MIN_PART_SIZE - 3, MIN_PART_SIZE + 3) == data[MIN_PART_SIZE - 3 :][:6]
    # A multipart ETag ("<md5>-<parts>") shows the parts went up as the bytes arrived.
    head = s3_server.client().head_object(Bucket=BUCKET, Key=store.prefix + "blobs/big")
    assert head["ETag"].strip('"').endswith("-4")
    assert _uploads(s3_server, prefix=store.prefix) == []
    await store.close()


async def test_s3_abort_discards_the_multipart_upload(s3_server: S3Server) -> None:
    store = s3_store(s3_server)
    await store.start()
    writer = await write_chunks(store, "blobs/gone", [os.urandom(MIN_PART_SIZE + 1), b"tail"])
    assert _uploads(s3_server, prefix=store.prefix) == [store.prefix + "blobs/gone"]
    await writer.abort()
    assert _uploads(s3_server, prefix=store.prefix) == []
    assert await store.stat("blobs/gone") is None
    await store.close()


async def test_s3_large_concurrent_writers_never_mix(s3_server: S3Server) -> None:
    store = s3_store(s3_server)
    await store.start()
    first, second = os.urandom(2 * MIN_PART_SIZE + 7), os.urandom(2 * MIN_PART_SIZE + MIB + 99)
    w1, w2 = await store.open_writer("blobs/race"), await store.open_writer("blobs/race")
    # Alternate chunks, so both uploads run at once with parts of the same numbers.
    first_chunks = split(first, MIB)
    for c1, c2 in zip(first_chunks, split(second, MIB), strict=False):
        await w1.write(c1)
        await w2.write(c2)
    await w2.write(second[len(first_chunks) * MIB :])
    await asyncio.gather(w1.commit(), w2.commit())
    assert await read_all(store, "blobs/race") in (first, second)
    assert _uploads(s3_server, prefix=store.prefix) == []
    await store.close()


async def test_s3_start_aborts_only_stale_uploads(s3_server: S3Server) -> None:
    crashed = s3_store(s3_server)
    await crashed.start()
    # A fill that died mid-way: parts uploaded, never completed nor aborted.
    await write_chunks(crashed, "blobs/half", [os.urandom(MIN_PART_SIZE + 1)])
    assert _uploads(s3_server, prefix=crashed.prefix) == [crashed.prefix + "blobs/half"]
    # Another replica starting now must not abort what may be a fill still running elsewhere ...
    replica = s3_store(s3_server, prefix=crashed.prefix)
    await replica.start()
    assert _uploads(s3_server, prefix=crashed.prefix) == [crashed.prefix + "blobs/half"]
    # ... but one that finds it older than stale_upload_age cleans it up.
    later = s3_store(s3_server, prefix=crashed.prefix, stale_upload_age=0)
    await later.start()
    assert _uploads(s3_server, prefix=crashed.prefix) == []
    assert [key async for key in later.list("")] == []
    for store in (crashed, replica, later):
        await store.close()


async def test_s3_clean_staging_aborts_uploads_older_than_asked(s3_server: S3Server) -> None:
    """gc's sweep of S3 staging: unfinished uploads past the grace it is given, not younger ones."""
    store = s3_store(s3_server)
    await store.start()
    await write_chunks(store, "blobs/half", [os.urandom(MIN_PART_SIZE + 1)])
    assert await store.clean_staging(older_than=3600) == (0, 0)
    assert _uploads(s3_server, prefix=store.prefix) == [store.prefix + "blobs/half"]
    assert (await store.clean_staging(older_than=0))[0] == 1
    assert _uploads(s3_server, prefix=store.prefix) == []
    await store.close()


async def test_local_staging_leftovers_go_only_once_older_than_asked(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path, owner=False)
    await local.start()
    live = await local.open_writer("blobs/live")
    await live.write(b"still being filled")
    dead = local.staging / "dead.part"
    dead.write_bytes(b"x" * 10)
    os.utime(dead, (time.time() - 7200, time.time() - 7200))
    assert await local.clean_staging(older_than=3600) == (1, 10)
    assert not dead.exists()
    await live.write(b"!")
    assert (await live.commit()).size == len(b"still being filled!")
    # Not the owner: starting does not sweep staging (a mirror may be filling into it).
    other = await local.open_writer("blobs/other")
    await LocalStorage(tmp_path, owner=False).start()
    await other.write(b"ok")
    assert (await other.commit()).size == 2


async def test_s3_wrong_credentials_and_missing_bucket_are_typed(s3_server: S3Server) -> None:
    wrong = S3Storage(
        BUCKET, endpoint=s3_server.endpoint, region=REGION, access_key=ACCESS_KEY, secret_key="not-the-secret"
    )
    with pytest.raises(StorageUnavailable, match="SignatureDoesNotMatch"):
        await wrong.put_bytes("x", b"x")
    with pytest.raises(StorageUnavailable, match="SignatureDoesNotMatch"):
        await wrong.check_writable()
    await wrong.close()
    missing = s3_store(s3_server, bucket="no-such-bucket")
    await missing.start()  # starts anyway; readiness reports the problem
    with pytest.raises(StorageUnavailable, match="NoSuchBucket") as error:
        await missing.check_writable()
    assert "no-such-bucket" in error.value.message and s3_server.endpoint in error.value.message
    await missing.close()


async def test_s3_recovers_when_the_store_comes_back(tmp_path: Path) -> None:
    server = S3Server(tmp_path / "seaweedfs").start()
    try:
        server.create_bucket(BUCKET)
        store = s3_store(server, connect_timeout=1)
        await store.start()
        await store.put_bytes("meta/a", b"before")
        server.kill()
        with pytest.raises(StorageUnavailable, match="cannot read meta/a"):
            await store.get_bytes("meta/a")
        with pytest.raises(StorageUnavailable):
            await read_all(store, "meta/a")
        server.start()
        # The same store object, no restart: completed objects survived the crash. The gateway
        # answers before its volume server has re-registered; until then reads fail, typed.
        assert await eventually(lambda: store.get_bytes("meta/a")) == b"before"
        await store.check_writable()
        await store.close()
    finally:
        server.close()


def test_s3_parts_grow_so_any_object_fits() -> None:
    store = S3Storage("any-bucket", endpoint="http://127.0.0.1:9", part_size=MIN_PART_SIZE)
    assert store.part_size_of(1) == store.part_size_of(1000) == MIN_PART_SIZE
    assert store.part_size_of(1001) == 2 * MIN_PART_SIZE
    # 10,000 parts (the S3 limit) hold far more than the largest file the Hub accepts.
    assert sum(store.part_size_of(n) for n in range(1, 10_001)) > 1024**4
