"""Local-disk backend: the embedded default that needs nothing else running.

Objects live under <root>/objects/<key>. Writers fill a private file under <root>/staging and
publish it with one rename, so a crash mid-fill leaves nothing visible under the key; whatever a
crash leaves in staging is removed at start.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat as stat_module
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import aiofiles
import aiofiles.os

from mirror.storage.base import (
    BlobWriter,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageUnavailable,
    check_key,
)

READ_CHUNK = 1024 * 1024
T = TypeVar("T")


def _scan(folder: Path) -> list[tuple[Path, os.stat_result | None]]:
    """The entries of one folder by name: files with their stat, subfolders with None. A folder
    removed meanwhile is empty."""
    found: list[tuple[Path, os.stat_result | None]] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return found
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                found.append((Path(entry.path), None))
            elif entry.is_file(follow_symlinks=False):
                found.append((Path(entry.path), entry.stat()))
        except FileNotFoundError:
            continue  # removed while we looked
    return found


async def _walk(folder: Path) -> AsyncIterator[tuple[Path, os.stat_result]]:
    """Every file under `folder` with its stat, in path order, reading one folder at a time."""
    for path, st in await asyncio.to_thread(_scan, folder):
        if st is None:
            async for found in _walk(path):
                yield found
        else:
            yield path, st


def _unavailable(exc: OSError, what: str) -> StorageUnavailable:
    reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return StorageUnavailable(f"local storage: cannot {what}: {reason}")


class LocalWriter(BlobWriter):
    def __init__(self, storage: LocalStorage, key: str, staging_path: Path) -> None:
        self.key = key
        self.written = 0
        self._storage = storage
        self._path = staging_path
        self._fd = os.open(staging_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self._closed = False
        # Reads, writes and the fsync run in worker threads, which go on even when the caller gave
        # up waiting (a hanging disk); the fd is closed only once none is using it, so a number
        # reused by another open() is never read or written through this writer.
        self._fd_users = 0
        self._close_wanted = False

    async def _on_fd(self, func: Callable[..., T], *args: object) -> T:
        if self._close_wanted:
            raise StorageUnavailable(f"local storage: writer of {self.key} is closed")
        self._fd_users += 1
        work = asyncio.ensure_future(asyncio.to_thread(func, self._fd, *args))
        work.add_done_callback(self._release_fd)
        # Shielded: a caller that stops waiting must not release the fd while the thread holds it.
        return await asyncio.shield(work)

    def _release_fd(self, work: asyncio.Future[object]) -> None:
        if not work.cancelled():
            work.exception()  # retrieved here: a caller that stopped waiting never will
        self._fd_users -= 1
        if self._close_wanted and self._fd_users == 0:
            self._close_fd()

    async def write(self, data: bytes) -> None:
        try:
            await self._on_fd(_write_all, data)
        except OSError as exc:
            raise _unavailable(exc, "write") from exc
        self.written += len(data)

    async def read_written(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.written - offset))
        if self._close_wanted:
            raise StorageUnavailable(f"local storage: writer of {self.key} is closed")
        if length == 0:
            return b""
        return await self._on_fd(os.pread, length, offset)

    async def commit(self) -> ObjectInfo:
        final = self._storage.path_of(self.key)
        try:
            await self._on_fd(os.fsync)
            await aiofiles.os.makedirs(final.parent, exist_ok=True)
            # One rename: readers of the key see the old state or the whole new object.
            await aiofiles.os.replace(self._path, final)
        except OSError as exc:
            await self.abort()
            raise _unavailable(exc, f"publish {self.key}") from exc
        self._close_fd()
        st = final.stat()
        return ObjectInfo(self.key, st.st_size, st.st_mtime)

    async def abort(self) -> None:
        self._close_fd()
        self._path.unlink(missing_ok=True)

    def _close_fd(self) -> None:
        self._close_wanted = True
        if not self._closed and self._fd_users == 0:
            self._closed = True
            os.close(self._fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class LocalStorage(Storage):
    name = "local"

    def __init__(self, root: str | Path, *, owner: bool = True) -> None:
        """`owner`: this process is the mirror serving the directory, so what staging holds at
        start is a crashed run's leftovers. Offline commands (gc, export, import) are not: a mirror
        may be filling into the same staging folder while they run."""
        self.root = Path(root).resolve()
        self.owner = owner
        self.objects = self.root / "objects"
        self.staging = self.root / "staging"

    async def start(self) -> None:
        self.objects.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        if not self.owner:
            return
        for leftover in self.staging.iterdir():
            leftover.unlink(missing_ok=True)

    def path_of(self, key: str) -> Path:
        return self.objects / check_key(key)

    def local_path(self, key: str) -> Path | None:
        return self.path_of(key)

    async def stat(self, key: str) -> ObjectInfo | None:
        # In the loop, not a worker thread: a stat of a local path costs microseconds, while the
        # hand-off to a thread and back costs more than that and showed as the largest item in a
        # profile of cached HEAD requests (every resolve stats its blob).
        try:
            st = os.stat(self.path_of(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _unavailable(exc, f"stat {key}") from exc
        if not stat_module.S_ISREG(st.st_mode):
            return None  # a folder of other keys is not an object (as on S3)
        return ObjectInfo(key, st.st_size, st.st_mtime)

    async def read_range(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        try:
            handle = await aiofiles.open(self.path_of(key), "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise _unavailable(exc, f"read {key}") from exc
        try:
            await handle.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                size = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                data = await handle.read(size)
                if not data:
                    break
                if remaining is not None:
                    remaining -= len(data)
                yield data
        finally:
            await handle.close()

    async def get_bytes(self, key: str) -> bytes | None:
        try:
            async with aiofiles.open(self.path_of(key), "rb") as handle:
                return await handle.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            raise _unavailable(exc, f"read {key}") from exc

    async def put_bytes(self, key: str, data: bytes) -> None:
        writer = await self.open_writer(key)
        try:
            await writer.write(data)
        except BaseException:
            await writer.abort()
            raise
        await writer.commit()

    async def create_exclusive(self, key: str, data: bytes) -> bool:
        final = self.path_of(key)
        staging = self.staging / f"{uuid.uuid4().hex}.part"

        def publish() -> bool:
            final.parent.mkdir(parents=True, exist_ok=True)
            staging.write_bytes(data)
            try:
                # link(), unlike rename(), fails if the name exists: the whole file appears, or nothing.
                os.link(staging, final)
            except FileExistsError:
                return False
            finally:
                staging.unlink(missing_ok=True)
            return True

        try:
            return await asyncio.to_thread(publish)
        except OSError as exc:
            raise _unavailable(exc, f"create {key}") from exc

    async def open_writer(self, key: str) -> BlobWriter:
        check_key(key)
        try:
            return LocalWriter(self, key, self.staging / f"{uuid.uuid4().hex}.part")
        except OSError as exc:
            raise _unavailable(exc, f"create {key}") from exc

    async def delete(self, key: str) -> bool:
        try:
            await aiofiles.os.remove(self.path_of(key))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return False
        except OSError as exc:
            raise _unavailable(exc, f"delete {key}") from exc
        return True

    async def list(self, prefix: str) -> AsyncIterator[str]:
        async for info in self.list_info(prefix):
            yield info.key

    async def list_info(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        if prefix.strip("/"):
            check_key(prefix.rstrip("/"))
        elif prefix:
            raise ValueError(f"invalid storage prefix {prefix!r}")
        base = self.objects
        # Walk only the folder the prefix names, then filter by the rest of the prefix. One folder
        # at a time, in key order: memory stays bounded by the largest folder (blobs are fanned out
        # by their first hash byte), not by the whole cache.
        top = base / prefix.rsplit("/", 1)[0] if "/" in prefix else base
        async for path, st in _walk(top):
            key = path.relative_to(base).as_posix()
            if key.startswith(prefix):
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    async def clean_staging(self, older_than: float) -> tuple[int, int]:
        cutoff = time.time() - older_than

        def sweep() -> tuple[int, int]:
            count = total = 0
            for path, st in _scan(self.staging):
                if st is not None and st.st_mtime < cutoff:
                    path.unlink(missing_ok=True)
                    count += 1
                    total += st.st_size
            return count, total

        try:
            return await asyncio.to_thread(sweep)
        except OSError as exc:
            raise _unavailable(exc, "clean staging") from exc

    async def usage(self, prefix: str) -> tuple[int, int]:
        folder = self.objects / check_key(prefix.rstrip("/"))

        def walk() -> tuple[int, int]:
            count = total = 0
            for root, _, files in os.walk(folder):
                for name in files:
                    try:
                        total += os.stat(os.path.join(root, name)).st_size
                        count += 1
                    except FileNotFoundError:
                        pass  # removed while we walked
            return count, total

        return await asyncio.to_thread(walk)

    async def check_writable(self) -> None:
        key = f"health/{uuid.uuid4().hex}"
        try:
            await self.put_bytes(key, b"ok")
            if await self.get_bytes(key) != b"ok":
                raise StorageUnavailable("local storage: read-back mismatch")
            await self.delete(key)
        except StorageUnavailable:
            raise
        except OSError as exc:
            raise _unavailable(exc, "write a probe object") from exc
