"""Reading a bundle, a directory or a tar, without trusting it: every entry that is not a regular
file, or that a tar lists twice, is a problem for the verification to report."""

from __future__ import annotations

import abc
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mirror.lifecycle.bundles.errors import BadBundle, BundleError

CHUNK = 1024 * 1024


class _BundleReader(abc.ABC):
    def __init__(self) -> None:
        self.problems: list[str] = []

    @abc.abstractmethod
    def files(self) -> dict[str, int]:
        """Every regular file: name -> size. Other kinds of entry are added to `problems`."""

    @abc.abstractmethod
    def open(self, name: str) -> IO[bytes]: ...

    def close(self) -> None:
        pass

    def read(self, name: str) -> bytes:
        with self.open(name) as handle:
            return handle.read()

    def chunks(self, name: str) -> Iterator[bytes]:
        with self.open(name) as handle:
            while chunk := handle.read(CHUNK):
                yield chunk


class _DirReader(_BundleReader):
    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def files(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for folder, _, names in os.walk(self.root):
            for name in names:
                path = Path(folder) / name
                relative = path.relative_to(self.root).as_posix()
                if path.is_symlink() or not path.is_file():
                    self.problems.append(f"{relative} is not a regular file")
                else:
                    found[relative] = path.stat().st_size
        return found

    def open(self, name: str) -> IO[bytes]:
        return (self.root / name).open("rb")


class _TarReader(_BundleReader):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.tar = tarfile.open(path, "r:")  # noqa: SIM115 (closed by close(), as the reader's lifetime ends)
        self._members: dict[str, tarfile.TarInfo] = {}

    def files(self) -> dict[str, int]:
        for member in self.tar.getmembers():
            if member.isdir():
                continue
            if not member.isreg():
                self.problems.append(f"{member.name} is not a regular file")
            elif member.name in self._members:
                self.problems.append(f"{member.name} appears twice in the tar")
            else:
                self._members[member.name] = member
        return {name: member.size for name, member in self._members.items()}

    def open(self, name: str) -> IO[bytes]:
        handle = self.tar.extractfile(self._members[name])
        assert handle is not None
        return handle

    def close(self) -> None:
        self.tar.close()


def _open_reader(path: Path) -> _BundleReader:
    if path.is_dir():
        return _DirReader(path)
    if not path.is_file():
        raise BundleError(f"{path} does not exist (a bundle is a directory or a .tar file)")
    try:
        return _TarReader(path)
    except (tarfile.TarError, OSError) as exc:
        raise BadBundle(path, [f"not a readable tar file ({exc})"]) from None
