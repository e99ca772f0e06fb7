"""Writing a new bundle, file by file, as a directory or an uncompressed tar."""

from __future__ import annotations

import abc
import shutil
import tarfile
import time
from pathlib import Path
from typing import IO

from mirror.lifecycle.bundles.errors import BundleError


class _BundleWriter(abc.ABC):
    """Files written into a new bundle, one at a time, each streamed."""

    @abc.abstractmethod
    def begin(self, name: str, size: int) -> None: ...

    @abc.abstractmethod
    def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def end(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def discard(self) -> None: ...

    def add_bytes(self, name: str, data: bytes) -> None:
        self.begin(name, len(data))
        self.write(data)
        self.end()


class _DirWriter(_BundleWriter):
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self._file: IO[bytes] | None = None

    def begin(self, name: str, size: int) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("xb")

    def write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)

    def end(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None

    def close(self) -> None:
        pass

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        shutil.rmtree(self.root, ignore_errors=True)


class _TarWriter(_BundleWriter):
    """An uncompressed tar written member by member: tarfile wants a whole file object per member,
    the bytes here come from storage a chunk at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out = path.open("xb")
        self._left = 0

    def begin(self, name: str, size: int) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, int(time.time())
        self._out.write(info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))
        self._left = size

    def write(self, data: bytes) -> None:
        if len(data) > self._left:
            raise BundleError(f"{self.path}: a member grew while it was being written")
        self._out.write(data)
        self._left -= len(data)

    def end(self) -> None:
        if self._left:
            raise BundleError(f"{self.path}: a member shrank while it was being written")
        self._out.write(b"\0" * (-self._out.tell() % tarfile.BLOCKSIZE))

    def close(self) -> None:
        # Two zero blocks end the archive; tar pads the whole to a multiple of its record size.
        self._out.write(b"\0" * (2 * tarfile.BLOCKSIZE))
        self._out.write(b"\0" * (-self._out.tell() % tarfile.RECORDSIZE))
        self._out.close()

    def discard(self) -> None:
        self._out.close()
        self.path.unlink(missing_ok=True)
