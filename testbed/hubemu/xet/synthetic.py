"""The Xet layout of a synthetic file (`testbed.hubemu.Synthetic`): a few distinct xorbs, repeated by a seeded
sequence of terms until the file's size, so a file of any size costs only the distinct xorbs' memory.

Each distinct xorb holds random bytes cut by the spec's chunker and trimmed to the end of its last whole chunk:
a chunk boundary depends only on the bytes since the chunk's start, so the file, any sequence of such xorbs
(or runs of their chunks), chunks exactly into their chunks. The last term may stop inside a xorb: its whole
chunks, then the prefix of the next chunk as the file's last chunk, alone in a small xorb of its own, as the
chunker would cut it at the end of the file. The hashes are the real ones over those chunks.
"""

from __future__ import annotations

import bisect
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

from . import format as fmt
from .layout import Term, Xorb

XORB_TARGET = 4 * 1024 * 1024  # random bytes drawn per distinct xorb, before it is trimmed to a chunk boundary
DISTINCT_XORBS = 12
WORD = 64  # the word length of the compressible xorbs' vocabulary
_HIGH_BYTES = bytes(b"\x3e\x3f\xbe\xbf"[i % 4] for i in range(256))  # a float32's sign and exponent byte


def _xorb_bytes(rng: random.Random, kind: int, length: int) -> bytes:
    """Random bytes of three kinds, so that every compression scheme occurs: incompressible (stored as-is),
    float-like (every fourth byte from a small set: byte grouping wins) and words from a small vocabulary
    (plain LZ4 wins)."""
    if kind == 0:
        return rng.randbytes(length)
    if kind == 1:
        raw = bytearray(rng.randbytes(length))
        raw[3::4] = raw[3::4].translate(_HIGH_BYTES)
        return bytes(raw)
    words = [rng.randbytes(WORD) for _ in range(256)]
    return b"".join(rng.choices(words, k=length // WORD + 1))[:length]


@dataclass(frozen=True)
class _Span:
    """One term of the file: chunks [first, end) of xorb `xorb`, starting at file offset `start`."""

    start: int
    xorb: int
    first: int
    end: int


class SyntheticLayout:
    """The distinct xorbs and the term sequence of a synthetic file; reads and reconstructions come from them."""

    def __init__(self, size: int, seed: int) -> None:
        if size < 0:
            raise ValueError("a synthetic file's size must be >= 0")
        self.size = size
        rng = random.Random(seed)
        count = max(2, min(DISTINCT_XORBS, size // XORB_TARGET + 2))
        self.sources: list[bytes] = []
        self.chunk_starts: list[tuple[int, ...]] = []
        self.entries: list[list[fmt.Entry]] = []
        for index in range(count):
            drawn = _xorb_bytes(rng, index % 3, XORB_TARGET)
            # The last chunk ends only because the drawn bytes do: drop it, keep chunks the chunker ends itself.
            ends = fmt.chunk_ends(drawn)[:-1]
            self._add_xorb(drawn[: ends[-1]], (0, *ends))
        self.xorbs = [self._xorb(i) for i in range(count)]
        self.spans: list[_Span] = []
        self._tile(rng, count)
        self.starts = [span.start for span in self.spans]
        self._views = [memoryview(source) for source in self.sources]
        self._lock = threading.Lock()
        self._hash: str | None = None

    def _add_xorb(self, source: bytes, chunk_starts: tuple[int, ...]) -> None:
        view = memoryview(source)
        entries = [(fmt.chunk_hash(view[s:e]), e - s) for s, e in pairwise(chunk_starts)]
        self.sources.append(source)
        self.chunk_starts.append(chunk_starts)
        self.entries.append(entries)

    def _xorb(self, index: int) -> Xorb:
        digest = fmt.hash_hex(fmt.xorb_hash(self.entries[index]))
        return Xorb(digest, self.sources[index], self.chunk_starts[index])

    def _tile(self, rng: random.Random, count: int) -> None:
        # Each xorb appears whole or as one of its two halves (cut at a seeded chunk), so terms also start
        # inside xorbs and a xorb gets several fetch_info ranges, while a reconstruction lists at most three.
        shapes = []
        for index in range(count):
            n = len(self.chunk_starts[index]) - 1
            cut = rng.randrange(1, n)
            shapes.append(((0, n), (0, n), (0, n), (0, cut), (cut, n)))
        pos = 0
        while pos < self.size:
            index = rng.randrange(count)
            first, end = rng.choice(shapes[index])
            starts = self.chunk_starts[index]
            length = starts[end] - starts[first]
            if pos + length <= self.size:
                self.spans.append(_Span(pos, index, first, end))
                pos += length
                continue
            # The last term: the whole chunks that fit, then a prefix of the next chunk as the file's last chunk.
            whole = bisect.bisect_right(starts, starts[first] + self.size - pos) - 1
            if whole > first:
                self.spans.append(_Span(pos, index, first, whole))
                pos += starts[whole] - starts[first]
            if pos < self.size:
                tail = self.sources[index][starts[whole] : starts[whole] + self.size - pos]
                self._add_xorb(tail, (0, len(tail)))
                self.xorbs.append(self._xorb(len(self.sources) - 1))
                self.spans.append(_Span(pos, len(self.sources) - 1, 0, 1))
                pos = self.size

    # -- bytes -----------------------------------------------------------------------------------

    def _span_end(self, index: int) -> int:
        return self.spans[index + 1].start if index + 1 < len(self.spans) else self.size

    def pieces(self, start: int, end: int) -> Iterator[memoryview]:
        """Bytes [start, end) of the file as views of the distinct xorbs' bytes, one per term touched."""
        start, end = max(0, start), min(end, self.size)
        index = bisect.bisect_right(self.starts, start) - 1
        while start < end:
            span = self.spans[index]
            shift = self.chunk_starts[span.xorb][span.first] - span.start  # file offset -> offset in the xorb
            stop = min(end, self._span_end(index))
            yield self._views[span.xorb][start + shift : stop + shift]
            start = stop
            index += 1

    # -- Xet -------------------------------------------------------------------------------------

    @property
    def hash(self) -> str:
        """The file's Xet hash, computed once (about a second for 50 GB: its tree repeats, see merkle_root)."""
        with self._lock:
            if self._hash is None:
                entries: list[fmt.Entry] = []
                for span in self.spans:
                    entries.extend(self.entries[span.xorb][span.first : span.end])
                self._hash = fmt.hash_hex(fmt.file_hash(entries, memo={}))
            return self._hash

    def chunk_count(self) -> int:
        return sum(span.end - span.first for span in self.spans)

    def serialise(self) -> None:
        """Serialise every xorb now (compression costs), rather than in the first request that needs one."""
        for xorb in self.xorbs:
            _ = xorb.offsets

    def terms(self, first_byte: int, last_byte: int) -> tuple[int, list[Term]]:
        """offset_into_first_range and the terms covering bytes [first_byte, last_byte] (inclusive)."""
        first_span = bisect.bisect_right(self.starts, first_byte) - 1
        last_span = bisect.bisect_right(self.starts, last_byte) - 1
        terms: list[Term] = []
        offset = 0
        for index in range(first_span, last_span + 1):
            span = self.spans[index]
            starts = self.chunk_starts[span.xorb]
            shift = starts[span.first] - span.start
            first, end = span.first, span.end
            if index == first_span:
                first = bisect.bisect_right(starts, first_byte + shift) - 1
                offset = first_byte + shift - starts[first]
            if index == last_span:
                end = bisect.bisect_right(starts, last_byte + shift)
            terms.append(Term(self.xorbs[span.xorb], first, end, starts[end] - starts[first]))
        return offset, terms
