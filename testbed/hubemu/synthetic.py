"""Synthetic LFS files: content of any size (past the Hub's 50 GB plain-download limit) generated from a seed.

`Synthetic(size, seed)` stands in for a file's bytes in `HubEmulator.add_repo` / `Repo.commit` (LFS files only).
Its bytes are a seeded sequence of a few distinct Xet xorbs (see xet/synthetic.py), so only those are ever held
in memory; every route reads them through `pieces` / `read`. The hashes are the real ones: the Xet hash over its
chunks and the LFS oid, a sha256 over every byte (about 30 s for 50 GB), computed once in a background thread.
A test starts that early with `prepare()`: adding the file to a repo waits for the sha256, because the LFS
pointer, hence the git tree and the commit id, contain it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .xet.synthetic import SyntheticLayout


class Synthetic:
    def __init__(self, size: int, seed: int) -> None:
        if size < 0:
            raise ValueError("a synthetic file's size must be >= 0")
        self.size = size
        self.seed = seed
        self._layout_lock = threading.Lock()
        self._thread_lock = threading.Lock()
        self._layout: SyntheticLayout | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._sha256: str | None = None
        self._failure: BaseException | None = None

    def __repr__(self) -> str:
        return f"Synthetic(size={self.size}, seed={self.seed})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Synthetic) and (self.size, self.seed) == (other.size, other.seed)

    def __hash__(self) -> int:
        return hash((Synthetic, self.size, self.seed))

    @property
    def xet(self) -> SyntheticLayout:
        """The Xet layout (distinct xorbs, terms), built on first use (about 1.5 s: it chunks ~50 MB)."""
        with self._layout_lock:
            if self._layout is None:
                from .xet.synthetic import SyntheticLayout  # the CAS's libraries load only when needed

                self._layout = SyntheticLayout(self.size, self.seed)
            return self._layout

    def pieces(self, start: int, end: int) -> Iterator[memoryview]:
        """Bytes [start, end) (clipped to the file) as read-only views, without copying."""
        return self.xet.pieces(start, end)

    def read(self, start: int, end: int) -> bytes:
        """Bytes [start, end) (clipped to the file)."""
        return b"".join(self.pieces(start, end))

    # -- the slow hashes, once, off the caller's thread ------------------------------------------

    def prepare(self) -> Synthetic:
        """Start computing everything a repo needs (layout, Xet hash, serialised xorbs, sha256) in a background
        thread, if not started yet; returns at once. `sha256` waits for it."""
        with self._thread_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._compute, name=f"synthetic-{self.seed}", daemon=True)
                self._thread.start()
        return self

    def _compute(self) -> None:
        try:
            layout = self.xet
            _ = layout.hash
            layout.serialise()  # so the first reconstruction does not compress xorbs on the event loop
            digest = hashlib.sha256()
            # hashlib releases the GIL for large updates: the pieces are whole terms (megabytes) of shared views.
            for piece in layout.pieces(0, self.size):
                digest.update(piece)
            self._sha256 = digest.hexdigest()
        except BaseException as error:  # surfaced to whoever waits on sha256
            self._failure = error
        finally:
            self._ready.set()

    @property
    def ready(self) -> bool:
        """Whether the sha256 is known (waiting for it would not block)."""
        return self._ready.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for `prepare`'s work (starting it if needed); False if `timeout` passed first."""
        self.prepare()
        return self._ready.wait(timeout)

    @property
    def sha256(self) -> str:
        """The LFS oid: the sha256 of all the bytes. Blocks until computed (see `prepare`)."""
        self.wait()
        if self._failure is not None:
            raise RuntimeError(f"computing the sha256 of {self!r} failed") from self._failure
        assert self._sha256 is not None
        return self._sha256
