"""What is known of a file while its Xet fill runs: its terms, its chunks, and which bytes are verified.

A cold file's chunks are served to Xet clients while its fill runs (hub/xetserve.py). The fill's
sha256 covers the file only once every byte arrived, so bytes handed out earlier need a check of
their own: a term's bytes count as verified when the xorb range they were decoded from hashes to
the xorb's hash (a range that starts at the xorb's first chunk and whose chunk hashes' Merkle root
is the xorb hash is, by collision resistance, the whole xorb, intact), or when they were read from a
cached blob that was verified when it was published. Bytes of a partial xorb range are verified
only by the file's sha256, when the fill completes.
"""

from __future__ import annotations

import bisect
import itertools
from array import array
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PlannedTerm:
    """A term of the file's whole reconstruction: chunks [start, end) of `xorb` are bytes [offset, offset + length)."""

    xorb: str
    start: int
    end: int
    offset: int
    length: int

    @property
    def last(self) -> int:
        return self.offset + self.length

    @classmethod
    def from_record(cls, item: Any) -> PlannedTerm | None:
        """A term of a stored split record (`lengths` per chunk), or None when the record is damaged."""
        if not isinstance(item, dict):
            return None
        xorb, start, end, offset, lengths = (item.get(k) for k in ("xorb", "start", "end", "offset", "lengths"))
        if not isinstance(xorb, str) or not all(isinstance(v, int) and v >= 0 for v in (start, end, offset)):
            return None
        if not isinstance(lengths, list) or len(lengths) != end - start or not all(isinstance(n, int) for n in lengths):
            return None
        return cls(xorb, start, end, offset, sum(lengths))


class ChunkMap:
    """The file's chunks as the fill produced them (file offsets), and its verified byte intervals.

    Memory: 8 bytes a chunk (~6 MB for a 50 GB file) and a few intervals.
    """

    def __init__(self) -> None:
        self._starts = array("q")
        self.end = 0  # file offset just past the last chunk recorded
        self._verified: list[list[int]] = []  # disjoint, sorted [start, end) intervals

    def add(self, start: int, length: int) -> bool:
        """Record a chunk at file offset `start`; False when it is one recorded already (a resumed range
        starts with chunks the fill had), raises on a gap (the fill would have skipped bytes)."""
        if start < self.end:
            return False
        if start > self.end:
            raise ValueError(f"a chunk at byte {start} leaves a gap after byte {self.end}")
        self._starts.append(start)
        self.end = start + length
        return True

    def lengths(self, first: int, last: int) -> list[int] | None:
        """The lengths of the chunks that tile bytes [first, last) exactly, or None if they do not (yet)."""
        if last > self.end:
            return None
        lo = bisect.bisect_left(self._starts, first)
        if lo == len(self._starts) or self._starts[lo] != first:
            return None
        hi = bisect.bisect_left(self._starts, last, lo)
        if hi < len(self._starts) and self._starts[hi] != last:
            return None
        bounds = [*self._starts[lo:hi], last]
        return [b - a for a, b in itertools.pairwise(bounds)]

    def verify(self, first: int, last: int) -> None:
        """Bytes [first, last) were checked (their xorb's hash, or a verified cached blob)."""
        if first >= last:
            return
        merged: list[list[int]] = []
        placed = False
        for lo, hi in self._verified:
            if hi < first or lo > last:
                if lo > last and not placed:
                    merged.append([first, last])
                    placed = True
                merged.append([lo, hi])
            else:
                first, last = min(lo, first), max(hi, last)
        if not placed:
            merged.append([first, last])
        merged.sort()
        self._verified = merged

    def verified(self, first: int, last: int) -> bool:
        index = bisect.bisect_right(self._verified, [first, float("inf")]) - 1
        return index >= 0 and self._verified[index][0] <= first and last <= self._verified[index][1]
