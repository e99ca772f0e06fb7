"""Xet's data formats: content-defined chunking, the keyed-blake3 hashes, and xorb serialisation.

Written from the Xet protocol spec (huggingface/xet-core `spec/chunking.md`, `spec/hashing.md`, `spec/xorb.md`,
`spec/api.md`, the same text as huggingface.co/docs/xet), checked against xet-core's `merklehash` reference
vectors in tests/test_hubemu_xet.py. Hashes are handled as their raw 32 bytes; `hash_hex` gives the string the
API uses (each 8-byte word printed as a little-endian u64, not the bytes in order).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import blake3
import lz4.frame

from .gear import GEAR_TABLE

TARGET_CHUNK = 64 * 1024
MIN_CHUNK = 8 * 1024
MAX_CHUNK = 128 * 1024
MASK = 0xFFFF_0000_0000_0000  # 16 one-bits: a boundary every 64 KiB on average
_U64 = (1 << 64) - 1
WINDOW = 64  # `(h << 1) + T[b]` in 64 bits forgets a byte after 64 more: h depends on the last 64 bytes only

XORB_MAX_BYTES = 64 * 1024 * 1024
XORB_MAX_CHUNKS = 8192
HEADER_SIZE = 8
CHUNK_VERSION = 0

# fmt: off
DATA_KEY = bytes((
    102, 151, 245, 119, 91, 149, 80, 222, 49, 53, 203, 172, 165, 151, 24, 28,
    157, 228, 33, 16, 155, 235, 43, 88, 180, 208, 176, 75, 147, 173, 242, 41,
))
INTERNAL_NODE_KEY = bytes((
    1, 126, 197, 199, 165, 71, 41, 150, 253, 148, 102, 102, 180, 138, 2, 230,
    93, 221, 83, 111, 55, 199, 109, 210, 248, 99, 82, 230, 74, 83, 113, 63,
))
# fmt: on
ZERO_KEY = bytes(32)  # the file hash's salt: a keyed hash of the Merkle root with an all-zero key
ZERO_HASH = bytes(32)
MEAN_BRANCHING = 4  # xet-core AGGREGATED_HASHES_MEAN_TREE_BRANCHING_FACTOR


# -- chunking ------------------------------------------------------------------------------------


def _cut(start: int, size: int, first_candidate_at_or_after: int | None) -> int:
    """Where the chunk starting at `start` ends (exclusive), given the first mask match at or after the
    earliest admissible position (start + MIN_CHUNK - 1), or None when there is none."""
    forced = start + MAX_CHUNK  # a chunk of MAX_CHUNK bytes ends here whatever the hash says
    if first_candidate_at_or_after is not None and first_candidate_at_or_after + 1 <= forced:
        return min(first_candidate_at_or_after + 1, size)
    return min(forced, size)


def chunk_ends_reference(data: bytes | memoryview) -> list[int]:
    """The spec's byte-at-a-time gear chunker, with its min-size skip-ahead. Slow; the oracle for `chunk_ends`."""
    size = len(data)
    table = GEAR_TABLE
    ends: list[int] = []
    start = 0
    while start < size:
        first = start + MIN_CHUNK - 1  # the first position where a boundary may be taken
        last = min(start + MAX_CHUNK - 1, size - 1)
        end = min(start + MAX_CHUNK, size)
        h = 0
        # The hash at `first` depends only on the WINDOW bytes before it, so start hashing there.
        for i in range(max(start, first - WINDOW + 1), last + 1):
            h = ((h << 1) + table[data[i]]) & _U64
            if i >= first and not h & MASK:
                end = i + 1
                break
        ends.append(end)
        start = end
    return ends


def _mask_matches_numpy(data: bytes | memoryview, block: int = 1 << 22) -> list[int]:
    """Every position whose 64-byte windowed gear hash passes the mask, vectorised.

    The windowed hash H_64(i) = sum_k T[b(i-k)] << k (k < 64) is built by doubling:
    H_2w(i) = H_w(i) + (H_w(i - w) << w). Blocks overlap by WINDOW - 1 bytes so no window is cut.
    """
    import numpy as np

    table = np.array(GEAR_TABLE, dtype=np.uint64)
    view = np.frombuffer(data, dtype=np.uint8)
    found: list[int] = []
    for base in range(0, len(view), block):
        lead = min(base, WINDOW - 1)
        h = table[view[base - lead : base + block]]
        width = 1
        while width < WINDOW:
            h[width:] += h[:-width] << np.uint64(width)  # the shifted copy is made before the add
            width *= 2
        hits = np.flatnonzero((h & np.uint64(MASK)) == 0)
        found.extend(int(i) + base - lead for i in hits[hits >= lead])
    return found


def chunk_ends(data: bytes | memoryview) -> list[int]:
    """The exclusive end offset of each chunk of `data`, exactly as `chunk_ends_reference` cuts them.

    A boundary test only happens MIN_CHUNK - 1 bytes into a chunk, by which point the gear state is the
    windowed hash whatever came before, so the boundaries follow from the mask matches of the windowed hash.
    numpy makes that fast enough for multi-MiB fixtures; without it the reference loop runs.
    """
    try:
        matches = _mask_matches_numpy(data)
    except ImportError:
        return chunk_ends_reference(data)
    size = len(data)
    ends: list[int] = []
    start = 0
    while start < size:
        k = bisect.bisect_left(matches, start + MIN_CHUNK - 1)
        end = _cut(start, size, matches[k] if k < len(matches) else None)
        ends.append(end)
        start = end
    return ends


# -- hashing -------------------------------------------------------------------------------------


def keyed(key: bytes, data: bytes | memoryview) -> bytes:
    return blake3.blake3(data, key=key).digest()


def chunk_hash(data: bytes | memoryview) -> bytes:
    return keyed(DATA_KEY, data)


def hash_hex(raw: bytes) -> str:
    """The API's string form of a hash: each 8-byte word as a little-endian u64 in hex (spec/api.md)."""
    return "".join(raw[i : i + 8][::-1].hex() for i in range(0, 32, 8))


def hash_from_hex(text: str) -> bytes:
    raw = bytes.fromhex(text)
    if len(raw) != 32:
        raise ValueError("a Xet hash has 64 hex digits")
    return b"".join(raw[i : i + 8][::-1] for i in range(0, 32, 8))


def _next_cut(level: Sequence[tuple[bytes, int]], start: int) -> int:
    """How many entries from `start` form the next node: 2 to 2*MEAN_BRANCHING+1, cut after the first
    entry (from the third on) whose hash's last word is a multiple of MEAN_BRANCHING."""
    left = len(level) - start
    if left <= 2:
        return left
    end = min(2 * MEAN_BRANCHING + 1, left)
    for i in range(2, end):
        last_word = int.from_bytes(level[start + i][0][24:32], "little")
        if last_word % MEAN_BRANCHING == 0:
            return i + 1
    return end


def _node(entries: Sequence[tuple[bytes, int]]) -> tuple[bytes, int]:
    text = "".join(f"{hash_hex(h)} : {size}\n" for h, size in entries)
    return keyed(INTERNAL_NODE_KEY, text.encode()), sum(size for _, size in entries)


Entry = tuple[bytes, int]
NodeMemo = dict[tuple[Entry, ...], Entry]


def merkle_root(entries: Sequence[Entry], memo: NodeMemo | None = None) -> bytes:
    """The root of Xet's aggregated hash tree over (chunk hash, chunk length) pairs: the xorb hash.

    A node's hash depends only on its children, so with a `memo` a node whose children were seen before is
    not hashed again: a file that repeats a few xorbs many times (a synthetic one) then costs little more
    than one pass over its entries. The result is the same either way.
    """
    if not entries:
        return ZERO_HASH
    level = list(entries)
    while len(level) > 1:
        parents = []
        start = 0
        while start < len(level):
            n = _next_cut(level, start)
            if memo is None:
                parents.append(_node(level[start : start + n]))
            else:
                children = tuple(level[start : start + n])
                node = memo.get(children)
                if node is None:
                    node = memo[children] = _node(children)
                parents.append(node)
            start += n
        level = parents
    return level[0][0]


def xorb_hash(entries: Sequence[Entry]) -> bytes:
    return merkle_root(entries)


def file_hash(entries: Sequence[Entry], memo: NodeMemo | None = None) -> bytes:
    """The Merkle root, keyed-hashed once more with the zero salt; an empty file's hash is all zeros."""
    return ZERO_HASH if not entries else keyed(ZERO_KEY, merkle_root(entries, memo))


# -- chunk serialisation -------------------------------------------------------------------------


class Scheme(IntEnum):
    NONE = 0
    LZ4 = 1  # an LZ4 *frame* (xet-core compresses with lz4_flex's FrameEncoder)
    BG4_LZ4 = 2  # byte-grouping by position mod 4, then an LZ4 frame


@dataclass(frozen=True)
class ChunkHeader:
    version: int
    compressed_length: int
    scheme: int
    uncompressed_length: int

    def pack(self) -> bytes:
        return (
            bytes([self.version])
            + self.compressed_length.to_bytes(3, "little")
            + bytes([self.scheme])
            + self.uncompressed_length.to_bytes(3, "little")
        )

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> ChunkHeader:
        if len(raw) < HEADER_SIZE:
            raise ValueError("truncated chunk header")
        return cls(raw[0], int.from_bytes(raw[1:4], "little"), raw[4], int.from_bytes(raw[5:8], "little"))


def bg4_split(data: bytes | memoryview) -> bytes:
    """Group byte i into group i % 4, groups in order; a tail of 1-3 bytes lands in the first groups."""
    raw = bytes(data)
    return b"".join(raw[i::4] for i in range(4))


def bg4_join(grouped: bytes | memoryview) -> bytes:
    n = len(grouped)
    out = bytearray(n)
    pos = 0
    for i in range(4):
        length = n // 4 + (1 if i < n % 4 else 0)
        out[i::4] = grouped[pos : pos + length]
        pos += length
    return bytes(out)


def compress(data: bytes | memoryview, scheme: Scheme) -> bytes:
    if scheme == Scheme.NONE:
        return bytes(data)
    payload = bg4_split(data) if scheme == Scheme.BG4_LZ4 else bytes(data)
    return lz4.frame.compress(payload)


def decompress(payload: bytes | memoryview, scheme: int, uncompressed_length: int) -> bytes:
    if scheme == Scheme.NONE:
        data = bytes(payload)
    elif scheme in (Scheme.LZ4, Scheme.BG4_LZ4):
        data = lz4.frame.decompress(bytes(payload))
        if scheme == Scheme.BG4_LZ4:
            data = bg4_join(data)
    else:
        raise ValueError(f"unknown compression scheme {scheme}")
    if len(data) != uncompressed_length:
        raise ValueError(f"chunk decompressed to {len(data)} bytes, header says {uncompressed_length}")
    return data


def encode_chunk(data: bytes | memoryview, schemes: Sequence[Scheme] = (Scheme.LZ4, Scheme.BG4_LZ4)) -> bytes:
    """Header + payload, with whichever of `schemes` makes the chunk smallest; stored as-is when none helps
    (spec/xorb.md: brute force is one of the allowed strategies)."""
    best, best_scheme = bytes(data), Scheme.NONE
    for scheme in schemes:
        payload = compress(data, scheme)
        if len(payload) < len(best):
            best, best_scheme = payload, scheme
    return ChunkHeader(CHUNK_VERSION, len(best), best_scheme, len(data)).pack() + best


def decode_chunks(buf: bytes | memoryview) -> list[bytes]:
    """Every chunk of a serialised xorb (or of a byte range of one that starts and ends on chunks)."""
    view = memoryview(buf)
    chunks: list[bytes] = []
    pos = 0
    while pos < len(view):
        header = ChunkHeader.unpack(view[pos : pos + HEADER_SIZE])
        if header.version != CHUNK_VERSION:
            raise ValueError(f"unknown chunk version {header.version}")
        start = pos + HEADER_SIZE
        end = start + header.compressed_length
        if end > len(view):
            raise ValueError("truncated chunk data")
        chunks.append(decompress(view[start:end], header.scheme, header.uncompressed_length))
        pos = end
    return chunks


def group_xorbs(lengths: Sequence[int]) -> list[tuple[int, int]]:
    """Split consecutive chunks into xorbs as [first, end) chunk index ranges: at most XORB_MAX_CHUNKS chunks
    and at most XORB_MAX_BYTES serialised (counted uncompressed plus headers, an upper bound)."""
    groups: list[tuple[int, int]] = []
    first, used = 0, 0
    for i, length in enumerate(lengths):
        cost = HEADER_SIZE + length
        if i > first and (i - first >= XORB_MAX_CHUNKS or used + cost > XORB_MAX_BYTES):
            groups.append((first, i))
            first, used = i, 0
        used += cost
    if first < len(lengths):
        groups.append((first, len(lengths)))
    return groups
