"""How one file is stored in Xet: its chunks, the xorbs that hold them, and the terms that rebuild a byte range."""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from functools import cached_property

from . import format as fmt


@dataclass(eq=False)
class Xorb:
    """Consecutive chunks [first, end) of one file, serialised lazily (compression costs; hashes do not)."""

    hash: str
    source: bytes = field(repr=False)
    chunk_starts: tuple[int, ...] = field(repr=False)  # file offsets of this xorb's chunks, plus the end
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _body: bytes | None = field(default=None, repr=False)
    _offsets: tuple[int, ...] = field(default=(), repr=False)

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_starts) - 1

    def _serialise(self) -> None:
        with self._lock:
            if self._body is not None:
                return
            view = memoryview(self.source)
            parts, offsets, pos = [], [0], 0
            for start, end in zip(self.chunk_starts, self.chunk_starts[1:], strict=False):
                part = fmt.encode_chunk(view[start:end])
                parts.append(part)
                pos += len(part)
                offsets.append(pos)
            self._offsets = tuple(offsets)
            self._body = b"".join(parts)

    @property
    def body(self) -> bytes:
        self._serialise()
        assert self._body is not None
        return self._body

    @property
    def offsets(self) -> tuple[int, ...]:
        """Byte offset in `body` where each chunk's header starts, plus the body's length."""
        self._serialise()
        return self._offsets


@dataclass(frozen=True)
class Term:
    xorb: Xorb
    start: int  # chunk index in the xorb, inclusive
    end: int  # exclusive
    unpacked_length: int


class XetFile:
    """A file's Xet layout, computed from its bytes on first use.

    With a `base` (the file this one replaced at its path), chunks the base already holds are
    referenced in the base's xorbs and only the new ones go into new xorbs, as the Hub's upload
    deduplicates: a new revision that changes a few chunks costs a client only those chunks.
    """

    def __init__(self, data: bytes, base: XetFile | None = None) -> None:
        self.data = data
        self.size = len(data)
        self.ends = fmt.chunk_ends(data)
        self.starts = [0, *self.ends[:-1]] if self.ends else []
        view = memoryview(data)
        self.entries = [(fmt.chunk_hash(view[s:e]), e - s) for s, e in zip(self.starts, self.ends, strict=True)]
        self.hash = fmt.hash_hex(fmt.file_hash(self.entries))
        self.base = base

    @cached_property
    def placement(self) -> list[tuple[Xorb, int]]:
        """(xorb, chunk index in it) of each of the file's chunks, in file order."""
        known: dict[bytes, tuple[Xorb, int]] = {}
        if self.base is not None:
            for (digest, _), (xorb, index) in zip(self.base.entries, self.base.placement, strict=True):
                known.setdefault(digest, (xorb, index))
        placed: list[tuple[Xorb, int] | None] = [known.get(digest) for digest, _ in self.entries]
        # Runs of chunks the base does not hold become new xorbs of this file's bytes.
        index = 0
        while index < len(placed):
            if placed[index] is not None:
                index += 1
                continue
            run_end = index
            while run_end < len(placed) and placed[run_end] is None:
                run_end += 1
            sizes = [size for _, size in self.entries[index:run_end]]
            for first, end in fmt.group_xorbs(sizes):
                lo, hi = index + first, index + end
                digest = fmt.hash_hex(fmt.xorb_hash(self.entries[lo:hi]))
                xorb = Xorb(digest, self.data, (*self.starts[lo:hi], self.ends[hi - 1]))
                for offset in range(hi - lo):
                    placed[lo + offset] = (xorb, offset)
            index = run_end
        return [p for p in placed if p is not None]

    def terms(self, first_byte: int, last_byte: int) -> tuple[int, list[Term]]:
        """offset_into_first_range and the terms covering bytes [first_byte, last_byte] (inclusive)."""
        first_chunk = bisect.bisect_right(self.ends, first_byte)
        last_chunk = bisect.bisect_right(self.ends, last_byte)
        terms: list[Term] = []
        placement = self.placement
        chunk = first_chunk
        while chunk <= last_chunk:
            xorb, start = placement[chunk]
            end_chunk = chunk + 1
            # One term per run of chunks that follow each other in the same xorb.
            while end_chunk <= last_chunk and placement[end_chunk] == (xorb, start + end_chunk - chunk):
                end_chunk += 1
            length = self.ends[end_chunk - 1] - self.starts[chunk]
            terms.append(Term(xorb, start, start + end_chunk - chunk, length))
            chunk = end_chunk
        return first_byte - self.starts[first_chunk], terms
