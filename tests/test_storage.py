"""Runs the storage conformance suite (tests/storage_suite.py) against every backend, plus checks
that only make sense for one backend.

To add a backend: append its name to BACKENDS and give it a branch in `make_store` (an isolated,
empty store per test) and in `break_store` (make the running store fail, e.g. stop its server).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mirror.storage.base import Storage, StorageUnavailable
from mirror.storage.local import LocalStorage
from tests.storage_suite import *  # noqa: F403

BACKENDS = ["local"]


def make_store(backend: str, tmp_path: Path) -> Storage:
    if backend == "local":
        return LocalStorage(tmp_path / "store")
    # New backends go here, each returning a store no other test can see.
    raise AssertionError(f"no test setup for storage backend {backend!r}")


def break_store(backend: str, store: Storage) -> None:
    if backend == "local":
        assert isinstance(store, LocalStorage)
        # Tests run as root, where chmod does not stop writes; a file where the folder should be does.
        shutil.rmtree(store.objects)
        store.objects.write_bytes(b"")
        return
    raise AssertionError(f"no way to break storage backend {backend!r}")


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    backend = make_store(request.param, tmp_path)
    await backend.start()
    yield backend
    await backend.close()


@pytest.fixture(params=BACKENDS)
async def broken_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    backend = make_store(request.param, tmp_path)
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
