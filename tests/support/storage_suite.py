"""Conformance suite that every storage backend must pass.

The tests take a `store` fixture (a started, empty backend) or `broken_store` (a started backend
whose underlying store has failed) and use only the `Storage` interface, so a new backend is
covered by adding one branch to the fixtures in tests/test_storage.py. This module is not
collected on its own (its name does not match test_*.py); test_storage.py star-imports it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import tracemalloc

import pytest

from mirror.errors import StorageError
from mirror.storage.base import BlobWriter, ObjectNotFound, Storage, StorageUnavailable

# The tests need the fixtures of tests/test_storage.py; collected here (e.g. when this file is named
# on the command line) they would only error.
__test__ = False

MIB = 1024 * 1024
# Larger than LocalStorage's 1 MiB read chunk and not a multiple of it, so ranged reads cross
# chunk boundaries and end in a short chunk.
MULTI = os.urandom(3 * MIB + 123)
INVALID_KEYS = ["../x", "/abs", "a//b", "a/./b", "", "a/../b", "a/", "a b", "a\\b", ".."]


async def read_all(store: Storage, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.read_range(key, start, end)])


async def list_keys(store: Storage, prefix: str) -> list[str]:
    return [key async for key in store.list(prefix)]


async def write_chunks(store: Storage, key: str, chunks: list[bytes]) -> BlobWriter:
    """Write `chunks` into a new writer, yielding to the loop between chunks so writers interleave."""
    writer = await store.open_writer(key)
    for chunk in chunks:
        await writer.write(chunk)
        await asyncio.sleep(0)
    return writer


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# --- put / get / stat / delete ------------------------------------------------------------------


async def test_put_get_round_trip_and_replace(store: Storage) -> None:
    await store.put_bytes("meta/a.json", b'{"v": 1, "long": "xxxxxxxx"}')
    assert await store.get_bytes("meta/a.json") == b'{"v": 1, "long": "xxxxxxxx"}'
    # A shorter replacement must not keep a tail of the previous object.
    await store.put_bytes("meta/a.json", b'{"v": 2}')
    assert await store.get_bytes("meta/a.json") == b'{"v": 2}'
    info = await store.stat("meta/a.json")
    assert info is not None and info.size == len(b'{"v": 2}')


async def test_missing_key_reads_as_none(store: Storage) -> None:
    assert await store.get_bytes("meta/missing.json") is None
    assert await store.stat("meta/missing.json") is None
    assert await list_keys(store, "") == []


async def test_stat_reports_key_size_and_mtime(store: Storage) -> None:
    await store.put_bytes("blobs/sha256/ab/abc.def-g_h", MULTI)
    info = await store.stat("blobs/sha256/ab/abc.def-g_h")
    assert info is not None
    assert (info.key, info.size) == ("blobs/sha256/ab/abc.def-g_h", len(MULTI))
    assert info.mtime > 0


async def test_empty_object(store: Storage) -> None:
    await store.put_bytes("empty", b"")
    info = await store.stat("empty")
    assert info is not None and info.size == 0
    assert await store.get_bytes("empty") == b""
    assert await read_all(store, "empty") == b""


async def test_delete_reports_whether_the_key_existed(store: Storage) -> None:
    await store.put_bytes("a/b", b"x")
    assert await store.delete("a/b") is True
    assert await store.stat("a/b") is None
    assert await store.get_bytes("a/b") is None
    assert await store.delete("a/b") is False
    assert await store.delete("never/written") is False


async def test_prefix_of_other_keys_is_not_an_object(store: Storage) -> None:
    await store.put_bytes("a/b/c", b"x")
    assert await store.stat("a/b") is None
    assert await store.get_bytes("a/b") is None
    assert await store.delete("a/b") is False


# --- ranged reads ---------------------------------------------------------------------------------


async def test_read_range_full_and_slices(store: Storage) -> None:
    await store.put_bytes("obj", MULTI)
    size = len(MULTI)
    assert await read_all(store, "obj") == MULTI
    assert await read_all(store, "obj", 0, size) == MULTI
    assert await read_all(store, "obj", 10, 20) == MULTI[10:20]
    assert await read_all(store, "obj", size - 5) == MULTI[-5:]
    # Slices that start, end or lie entirely across 1 MiB chunk boundaries.
    assert await read_all(store, "obj", MIB - 5, 2 * MIB + 7) == MULTI[MIB - 5 : 2 * MIB + 7]
    assert await read_all(store, "obj", MIB, 3 * MIB) == MULTI[MIB : 3 * MIB]
    assert await read_all(store, "obj", 1) == MULTI[1:]
    assert await read_all(store, "obj", 7, 7) == b""


async def test_read_range_past_the_end(store: Storage) -> None:
    await store.put_bytes("obj", b"0123456789")
    assert await read_all(store, "obj", 5, 100) == b"56789"
    assert await read_all(store, "obj", 10) == b""
    assert await read_all(store, "obj", 50, 60) == b""


async def test_read_range_of_missing_key_raises_object_not_found(store: Storage) -> None:
    with pytest.raises(ObjectNotFound):
        await read_all(store, "blobs/missing")
    await store.put_bytes("blobs/gone", b"x")
    await store.delete("blobs/gone")
    with pytest.raises(ObjectNotFound):
        await read_all(store, "blobs/gone", 0, 1)


# --- writers --------------------------------------------------------------------------------------


async def test_writer_follows_what_was_written_and_publishes_on_commit(store: Storage) -> None:
    chunks = [b"alpha-", b"beta-", os.urandom(MIB + 17), b"-omega"]
    data = b"".join(chunks)
    writer = await store.open_writer("blobs/new")
    try:
        seen = 0
        for chunk in chunks:
            await writer.write(chunk)
            seen += len(chunk)
            assert writer.written == seen
            assert await writer.read_written(0, seen) == data[:seen]
            # Readers ask for a whole chunk past what is there; they get only what exists.
            assert await writer.read_written(seen - 3, 100) == data[seen - 3 : seen]
            assert await writer.read_written(seen, 10) == b""
            assert await writer.read_written(seen + 10, 10) == b""
            # Not visible to anyone reading the key until commit.
            assert await store.stat("blobs/new") is None
            assert await store.get_bytes("blobs/new") is None
            assert await list_keys(store, "blobs/") == []
            with pytest.raises(ObjectNotFound):
                await read_all(store, "blobs/new")
        assert await writer.read_written(MIB, 1000) == data[MIB : MIB + 1000]
        info = await writer.commit()
    finally:
        await writer.abort()
    assert (info.key, info.size) == ("blobs/new", len(data))
    assert await read_all(store, "blobs/new") == data
    stat = await store.stat("blobs/new")
    assert stat is not None and stat.size == len(data)


async def test_writer_commit_of_nothing_publishes_an_empty_object(store: Storage) -> None:
    writer = await store.open_writer("empty")
    info = await writer.commit()
    assert info.size == 0
    assert await store.get_bytes("empty") == b""


async def test_abort_discards_and_is_safe_to_repeat(store: Storage) -> None:
    writer = await write_chunks(store, "blobs/aborted", [b"a" * 1000, b"b" * 1000])
    await writer.abort()
    await writer.abort()
    assert await store.stat("blobs/aborted") is None
    assert await store.get_bytes("blobs/aborted") is None
    assert await list_keys(store, "") == []


async def test_abort_after_commit_keeps_the_object(store: Storage) -> None:
    writer = await write_chunks(store, "blobs/kept", [b"payload"])
    await writer.commit()
    await writer.abort()
    await writer.abort()
    assert await store.get_bytes("blobs/kept") == b"payload"


async def test_replacing_writer_leaves_old_object_visible_until_commit(store: Storage) -> None:
    await store.put_bytes("k", b"old")
    writer = await write_chunks(store, "k", [b"new-", b"content"])
    assert await store.get_bytes("k") == b"old"
    await writer.abort()
    assert await store.get_bytes("k") == b"old"
    writer = await write_chunks(store, "k", [b"new-", b"content"])
    await writer.commit()
    assert await store.get_bytes("k") == b"new-content"


async def test_concurrent_writers_with_identical_content(store: Storage) -> None:
    data = os.urandom(2 * MIB + 5)

    async def fill() -> int:
        writer = await write_chunks(store, "blobs/same", split(data, 256 * 1024))
        return (await writer.commit()).size

    sizes = await asyncio.gather(*(fill() for _ in range(8)))
    assert sizes == [len(data)] * 8
    assert await read_all(store, "blobs/same") == data
    assert await list_keys(store, "") == ["blobs/same"]


async def test_concurrent_writers_with_different_content_never_mix(store: Storage) -> None:
    first, second = os.urandom(2 * MIB), os.urandom(2 * MIB + 1000)
    w1 = await store.open_writer("blobs/race")
    w2 = await store.open_writer("blobs/race")
    # Strictly alternate chunks so that a backend sharing one staging object per key would mix.
    for c1, c2 in zip(split(first, 64 * 1024), split(second, 64 * 1024), strict=False):
        await w1.write(c1)
        await w2.write(c2)
    await w2.write(second[len(first) :])
    assert await w1.read_written(0, len(first)) == first
    assert await w2.read_written(0, len(second)) == second
    await asyncio.gather(w1.commit(), w2.commit())
    assert await read_all(store, "blobs/race") in (first, second)
    assert await list_keys(store, "") == ["blobs/race"]


async def test_reader_of_published_object_survives_replacement(store: Storage) -> None:
    old, new = os.urandom(3 * MIB), os.urandom(3 * MIB)
    await store.put_bytes("blobs/swap", old)
    chunks = store.read_range("blobs/swap")
    received = [await anext(chunks)]
    replacement = await write_chunks(store, "blobs/swap", split(new, MIB))
    await replacement.commit()
    received += [chunk async for chunk in chunks]
    assert b"".join(received) in (old, new)
    assert await read_all(store, "blobs/swap") == new


async def test_readers_racing_a_replacement_see_whole_copies(store: Storage) -> None:
    old, new = os.urandom(2 * MIB), os.urandom(2 * MIB)
    await store.put_bytes("blobs/swap", old)
    replacement = await write_chunks(store, "blobs/swap", split(new, MIB))
    bodies = await asyncio.gather(*(read_all(store, "blobs/swap") for _ in range(4)), replacement.commit())
    assert all(body in (old, new) for body in bodies[:4])


async def test_large_object_streams_without_buffering(store: Storage) -> None:
    # 64 MiB in 1 MiB chunks; traced peak well below the object size shows neither the writer nor
    # read_range kept the whole object in memory. A writer may hold a few parts: S3 holds the one
    # being filled and two uploading (5 MiB each here), each read once more by the HTTP client.
    expected, actual = hashlib.sha256(), hashlib.sha256()
    tracemalloc.start()
    try:
        writer = await store.open_writer("blobs/large")
        try:
            for _ in range(64):
                chunk = os.urandom(MIB)
                expected.update(chunk)
                await writer.write(chunk)
            info = await writer.commit()
        finally:
            await writer.abort()
        async for chunk in store.read_range("blobs/large"):
            actual.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == 64 * MIB
    assert actual.hexdigest() == expected.hexdigest()
    assert peak < 24 * MIB, f"peak traced memory {peak} bytes while streaming a 64 MiB object"


# --- listing --------------------------------------------------------------------------------------


async def test_list_returns_exactly_the_keys_under_a_prefix(store: Storage) -> None:
    keys = ["a/b/1", "a/b/c/2", "a/b/c/d/3", "a/bc/4", "a/b.json", "ab/5", "x/y"]
    for key in keys:
        await store.put_bytes(key, key.encode())
    under_ab = await list_keys(store, "a/b/")
    assert len(under_ab) == len(set(under_ab))
    assert set(under_ab) == {"a/b/1", "a/b/c/2", "a/b/c/d/3"}
    assert set(await list_keys(store, "a/")) == {"a/b/1", "a/b/c/2", "a/b/c/d/3", "a/bc/4", "a/b.json"}
    assert set(await list_keys(store, "a/bc/")) == {"a/bc/4"}
    assert set(await list_keys(store, "")) == set(keys)
    assert await list_keys(store, "nothing/") == []
    await store.delete("a/b/c/d/3")
    assert set(await list_keys(store, "a/b/c/")) == {"a/b/c/2"}


async def test_list_info_gives_sizes_and_times_in_listing_order(store: Storage) -> None:
    before = time.time() - 5
    sizes = {"blobs/sha256/ab/x": 3, "blobs/sha256/ab/y": 0, "blobs/sha256/cd/z": 1000, "blobs/t.json": 7, "other/o": 1}
    for key, size in sizes.items():
        await store.put_bytes(key, b"q" * size)
    infos = [info async for info in store.list_info("blobs/")]
    assert [info.key for info in infos] == [key async for key in store.list("blobs/")]
    assert {info.key: info.size for info in infos} == {k: v for k, v in sizes.items() if k.startswith("blobs/")}
    assert all(before <= info.mtime <= time.time() + 5 for info in infos)
    assert [info async for info in store.list_info("nothing/")] == []


async def test_clean_staging_spares_writers_still_running(store: Storage) -> None:
    writer = await write_chunks(store, "blobs/pending", [b"y" * 100])
    try:
        await store.clean_staging(older_than=3600)
        await writer.write(b"z" * 10)
        info = await writer.commit()
        assert info.size == 110 and await store.get_bytes("blobs/pending") == b"y" * 100 + b"z" * 10
    finally:
        await writer.abort()


async def test_list_skips_objects_still_being_written(store: Storage) -> None:
    await store.put_bytes("blobs/done", b"x")
    writer = await write_chunks(store, "blobs/pending", [b"y" * 100])
    try:
        assert await list_keys(store, "blobs/") == ["blobs/done"]
    finally:
        await writer.abort()


async def test_list_rejects_an_invalid_prefix(store: Storage) -> None:
    await store.put_bytes("a/b", b"x")
    writer = await write_chunks(store, "pending", [b"y"])
    try:
        with pytest.raises(ValueError):
            await list_keys(store, "../")
    finally:
        await writer.abort()


# --- keys and health ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", INVALID_KEYS)
async def test_invalid_keys_are_rejected(store: Storage, key: str) -> None:
    with pytest.raises(ValueError):
        await store.put_bytes(key, b"x")
    with pytest.raises(ValueError):
        await store.get_bytes(key)
    with pytest.raises(ValueError):
        await store.stat(key)
    with pytest.raises(ValueError):
        await store.delete(key)
    with pytest.raises(ValueError):
        await store.open_writer(key)
    with pytest.raises(ValueError):
        await read_all(store, key)
    assert await list_keys(store, "") == []


async def test_create_exclusive_creates_once_and_never_replaces(store: Storage) -> None:
    assert await store.create_exclusive("leases/a.json", b"first")
    assert not await store.create_exclusive("leases/a.json", b"second")
    assert await store.get_bytes("leases/a.json") == b"first"
    assert await store.delete("leases/a.json")
    assert await store.create_exclusive("leases/a.json", b"third")
    assert await store.get_bytes("leases/a.json") == b"third"
    assert await list_keys(store, "") == ["leases/a.json"], "nothing else left behind"


async def test_create_exclusive_has_one_winner_among_racers(store: Storage) -> None:
    won = await asyncio.gather(*(store.create_exclusive("leases/race.json", b"racer %d" % i) for i in range(8)))
    assert sum(won) == 1
    assert await store.get_bytes("leases/race.json") == b"racer %d" % won.index(True)


async def test_check_writable_passes_and_leaves_nothing_behind(store: Storage) -> None:
    await store.put_bytes("existing", b"x")
    await store.check_writable()
    await store.check_writable()
    assert await list_keys(store, "") == ["existing"]


async def test_backend_failures_are_typed(broken_store: Storage) -> None:
    with pytest.raises(StorageUnavailable) as put_error:
        await broken_store.put_bytes("meta/a.json", b"{}")
    # Typed, with a message for the log, and no HTTP status: storage knows nothing of HTTP.
    assert isinstance(put_error.value, StorageError) and put_error.value.message
    assert not hasattr(put_error.value, "status")
    with pytest.raises(StorageUnavailable):
        await broken_store.check_writable()
    with pytest.raises(StorageUnavailable):
        await broken_store.create_exclusive("leases/a.json", b"{}")
    with pytest.raises(StorageUnavailable):
        # Depending on the backend the failure shows at open, write or commit; it must be typed.
        writer = await broken_store.open_writer("blobs/x")
        try:
            await writer.write(b"x" * 1000)
            await writer.commit()
        finally:
            await writer.abort()


__all__ = sorted(name for name in dict(globals()) if name.startswith("test_"))
