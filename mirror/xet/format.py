"""Reading Xet data: xorb byte ranges, chunk decompression and the Xet hashes (pure functions, no I/O).

The mirror fetches files from the upstream's Xet CAS as xorb byte ranges (reconstruction terms point at chunk
ranges of xorbs, `fetch_info` gives the bytes) and must check what it fetched before it serves or stores it.
Everything here follows the public Xet protocol specification in huggingface/xet-core:

- ``spec/xorb.md``, "Chunk Format" / "Chunk Header Structure": a chunk is an 8-byte header (version u8 = 0,
  compressed size u24 little-endian, compression type u8, uncompressed size u24 little-endian) followed by
  exactly ``compressed size`` bytes; a raw chunk is at most 128 KiB.
- ``spec/xorb.md``, "Chunk Compression Schemes" and "Byte Grouping LZ4 Compression": 0 none, 1 LZ4,
  2 byte grouping (4 groups) then LZ4. The LZ4 format is the LZ4 *frame* format: xet-core's
  ``cas_object/src/compression_scheme.rs`` compresses with ``lz4_flex::frame::FrameEncoder`` and reads with
  ``FrameDecoder``; the regrouping is ``cas_object/src/byte_grouping/bg4.rs``.
- The header checks mirror xet-core's ``cas_object/src/cas_chunk_format.rs`` (``CASChunkHeader::validate``):
  version above 0, an unknown scheme, an uncompressed length above ``MAXIMUM_CHUNK_SIZE`` (128 KiB) or a
  compressed length above twice that are refused, and so is a decompressed size that differs from the header.
- ``spec/hashing.md``, "Chunk Hashes", "Xorb Hashes", "File Hashes": blake3 keyed with DATA_KEY over a chunk's
  raw bytes; internal nodes hash the lines ``"{hash} : {size}\\n"`` keyed with INTERNAL_NODE_KEY; the file hash
  is the root re-hashed with an all-zero key. The tree's shape (variable branching, mean 4) is not in the spec
  text: it comes from ``merklehash/src/aggregated_hashes.rs`` (``next_cut``), whose ``test_correctness``
  vectors the tests replay, and the hash-modulo rule from ``merklehash/src/data_hash.rs`` (``Rem`` uses the
  fourth 64-bit word read little-endian).
- ``spec/api.md``, "Converting Hashes to Strings": each 8-byte word printed as a little-endian u64 in hex.

Written from the specification, independently of the test emulator's CAS (``testbed/hubemu/xet``), so that the
tests can check each against the other.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import blake3
import lz4.frame

HEADER_SIZE = 8
CHUNK_VERSION = 0
# spec/xorb.md: "a raw uncompressed chunk can be 128KiB at most" (xet-core MAXIMUM_CHUNK_SIZE).
MAX_CHUNK_SIZE = 128 * 1024
# xet-core's reader allows a compressed payload up to twice the chunk maximum (a scheme can expand data).
MAX_COMPRESSED_SIZE = 2 * MAX_CHUNK_SIZE
HASH_SIZE = 32

# spec/hashing.md, DATA_KEY, INTERNAL_NODE_KEY and the file-hash key (32 zero bytes).
DATA_KEY = bytes(
    [102, 151, 245, 119, 91, 149, 80, 222, 49, 53, 203, 172, 165, 151, 24, 28,
     157, 228, 33, 16, 155, 235, 43, 88, 180, 208, 176, 75, 147, 173, 242, 41]
)  # fmt: skip
INTERNAL_NODE_KEY = bytes(
    [1, 126, 197, 199, 165, 71, 41, 150, 253, 148, 102, 102, 180, 138, 2, 230,
     93, 221, 83, 111, 55, 199, 109, 210, 248, 99, 82, 230, 74, 83, 113, 63]
)  # fmt: skip
FILE_HASH_KEY = bytes(HASH_SIZE)
ZERO_HASH = bytes(HASH_SIZE)

# merklehash AGGREGATED_HASHES_MEAN_TREE_BRANCHING_FACTOR: a node closes after the child whose hash is 0 mod 4
# (from its third child on), or at 2 * 4 + 1 = 9 children.
_BRANCHING = 4
_MAX_CHILDREN = 2 * _BRANCHING + 1

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


class XetFormatError(ValueError):
    """Xet data (a xorb range, a chunk, a hash string) that does not follow the format."""


class Scheme(enum.IntEnum):
    """Chunk compression schemes (spec/xorb.md, "Chunk Compression Schemes")."""

    NONE = 0
    LZ4 = 1
    BG4_LZ4 = 2


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    """The 8-byte header in front of every chunk of a xorb."""

    version: int
    compressed_length: int
    scheme: Scheme
    uncompressed_length: int


@dataclass(frozen=True, slots=True)
class RawChunk:
    """One chunk as found in a xorb range: where its header starts, the header, and its still-compressed bytes."""

    offset: int
    header: ChunkHeader
    data: bytes

    @property
    def end(self) -> int:
        """Byte offset just past this chunk in the range (where the next header starts)."""
        return self.offset + HEADER_SIZE + len(self.data)


def stored_chunk_header(length: int) -> bytes:
    """The header of a chunk of `length` raw bytes stored as they are (scheme none): both lengths the same."""
    if not 0 <= length <= MAX_CHUNK_SIZE:
        raise XetFormatError(f"a chunk holds 0 to {MAX_CHUNK_SIZE} bytes, not {length}")
    size = length.to_bytes(3, "little")
    return bytes((CHUNK_VERSION,)) + size + bytes((Scheme.NONE,)) + size


def parse_chunk_header(buf: bytes | bytearray | memoryview, offset: int = 0) -> ChunkHeader:
    """The chunk header at `offset` of `buf`, checked; XetFormatError if it is truncated or invalid."""
    raw = bytes(buf[offset : offset + HEADER_SIZE])
    if len(raw) < HEADER_SIZE:
        raise XetFormatError(f"truncated chunk header at byte {offset}: {len(raw)} of {HEADER_SIZE} bytes")
    version = raw[0]
    compressed = int.from_bytes(raw[1:4], "little")
    scheme_byte = raw[4]
    uncompressed = int.from_bytes(raw[5:8], "little")
    if version != CHUNK_VERSION:
        raise XetFormatError(f"chunk at byte {offset}: unknown chunk header version {version} (only 0 exists)")
    try:
        scheme = Scheme(scheme_byte)
    except ValueError:
        raise XetFormatError(f"chunk at byte {offset}: unknown compression scheme {scheme_byte}") from None
    if uncompressed > MAX_CHUNK_SIZE:
        raise XetFormatError(
            f"chunk at byte {offset}: uncompressed length {uncompressed} is over the {MAX_CHUNK_SIZE}-byte maximum"
        )
    if compressed > MAX_COMPRESSED_SIZE:
        raise XetFormatError(
            f"chunk at byte {offset}: compressed length {compressed} is over the {MAX_COMPRESSED_SIZE}-byte maximum"
        )
    # Stored as-is, the two lengths are the same number; refusing here spares reading a payload we would refuse.
    if scheme is Scheme.NONE and compressed != uncompressed:
        raise XetFormatError(
            f"chunk at byte {offset}: length mismatch, stored as-is yet {compressed} stored, {uncompressed} raw bytes"
        )
    return ChunkHeader(version, compressed, scheme, uncompressed)


def iter_chunks(xorb_range: bytes | bytearray | memoryview) -> Iterator[RawChunk]:
    """The chunks of a xorb byte range in order, each checked as it is reached (lazy: a later error surfaces later).

    The range must hold whole chunks only: a truncated header or payload at the end raises XetFormatError.
    """
    view = memoryview(xorb_range).cast("B")
    offset = 0
    while offset < len(view):
        header = parse_chunk_header(view, offset)
        start = offset + HEADER_SIZE
        end = start + header.compressed_length
        if end > len(view):
            raise XetFormatError(
                f"chunk at byte {offset}: truncated data, {len(view) - start} of {header.compressed_length} bytes"
            )
        yield RawChunk(offset, header, bytes(view[start:end]))
        offset = end


def parse_chunks(xorb_range: bytes | bytearray | memoryview) -> list[RawChunk]:
    """All chunks of a xorb byte range, every header checked before any is returned."""
    return list(iter_chunks(xorb_range))


def bg4_regroup(grouped: bytes | bytearray | memoryview) -> bytes:
    """Undo byte grouping: the inverse of splitting data into 4 groups by byte position modulo 4.

    Group i holds bytes i, i + 4, i + 8, ... so it is ceil((n - i) / 4) long; the first `n % 4` groups carry one
    byte more (spec/xorb.md, "Byte Grouping LZ4 Compression"). Strided slice assignment puts them back.
    """
    n = len(grouped)
    out = bytearray(n)
    start = 0
    for i in range(4):
        size = len(range(i, n, 4))
        out[i::4] = grouped[start : start + size]
        start += size
    return bytes(out)


def _lz4_frames(data: bytes, limit: int) -> bytes:
    """Decompress one or more back-to-back LZ4 frames, never producing more than `limit` + 1 bytes.

    xet-core reads chunk payloads with lz4_flex's FrameDecoder, which goes on into a following frame; its
    writers emit a single frame. The bound keeps a hostile payload from expanding far past the chunk maximum.
    """
    out = bytearray()
    rest = data
    while rest:
        decoder = lz4.frame.LZ4FrameDecompressor()
        try:
            out += decoder.decompress(rest, max_length=limit - len(out) + 1)
        except (RuntimeError, ValueError, OverflowError) as exc:
            raise XetFormatError(f"corrupt LZ4 frame: {exc}") from None
        if len(out) > limit:
            raise XetFormatError(f"LZ4 data decompresses to more than the {limit} bytes the header declares")
        if not decoder.eof:
            raise XetFormatError("truncated LZ4 frame")
        rest = decoder.unused_data
    return bytes(out)


def decode_chunk(chunk: RawChunk) -> bytes:
    """The raw (uncompressed) bytes of a chunk; XetFormatError if they do not decode to the declared length."""
    header = chunk.header
    if len(chunk.data) != header.compressed_length:
        raise XetFormatError(
            f"chunk at byte {chunk.offset}: {len(chunk.data)} data bytes, header says {header.compressed_length}"
        )
    if header.scheme is Scheme.NONE:
        raw = chunk.data
    else:
        try:
            raw = _lz4_frames(chunk.data, header.uncompressed_length)
        except XetFormatError as exc:
            raise XetFormatError(f"chunk at byte {chunk.offset}: {exc}") from None
        if header.scheme is Scheme.BG4_LZ4:
            raw = bg4_regroup(raw)
    if len(raw) != header.uncompressed_length:
        raise XetFormatError(
            f"chunk at byte {chunk.offset}: decodes to {len(raw)} bytes, header says {header.uncompressed_length}"
        )
    return raw


def decode_range(xorb_range: bytes | bytearray | memoryview) -> list[bytes]:
    """The raw bytes of every chunk of a xorb byte range, in order."""
    return [decode_chunk(chunk) for chunk in iter_chunks(xorb_range)]


def chunk_offsets(xorb_range: bytes | bytearray | memoryview) -> list[int]:
    """Where each chunk of the range starts, plus the range's length: chunk k spans offsets[k]:offsets[k + 1]."""
    offsets = [0]
    for chunk in iter_chunks(xorb_range):
        offsets.append(chunk.end)
    return offsets


def slice_range(xorb_range: bytes | bytearray | memoryview, first_chunk: int, start: int, end: int) -> bytes:
    """The bytes of chunks [start, end) of a xorb, cut from a cached range that begins at chunk `first_chunk`.

    A fetch_info entry covers chunk indices [first_chunk, first_chunk + n) of its xorb; another term of the same
    xorb may need a sub-range of it. Indices are xorb chunk indices, end exclusive (spec/xorb.md, "Chunk
    Addressing"). The whole cached range is checked, so a damaged cache entry is not served in pieces.
    """
    offsets = chunk_offsets(xorb_range)
    count = len(offsets) - 1
    if not first_chunk <= start < end <= first_chunk + count:
        raise XetFormatError(
            f"chunks [{start}, {end}) are not inside the cached range of chunks [{first_chunk}, {first_chunk + count})"
        )
    return bytes(memoryview(xorb_range).cast("B")[offsets[start - first_chunk] : offsets[end - first_chunk]])


# Hashes ---------------------------------------------------------------------------------------------------------


def hash_to_str(digest: bytes) -> str:
    """The string form of a hash used by the CAS API and X-Xet-Hash: each 8-byte word as a little-endian u64."""
    if len(digest) != HASH_SIZE:
        raise XetFormatError(f"a Xet hash is {HASH_SIZE} bytes, not {len(digest)}")
    return "".join(digest[i : i + 8][::-1].hex() for i in range(0, HASH_SIZE, 8))


def hash_from_str(text: str) -> bytes:
    """The raw 32 bytes of a hash string (the inverse of hash_to_str); XetFormatError if it is not 64 hex digits."""
    if len(text) != 2 * HASH_SIZE or not _HEX_DIGITS.issuperset(text):
        raise XetFormatError(f"not a Xet hash (64 hex digits): {text[:80]!r}")
    raw = bytes.fromhex(text)
    return b"".join(raw[i : i + 8][::-1] for i in range(0, HASH_SIZE, 8))


def chunk_hash(data: bytes | bytearray | memoryview) -> bytes:
    """The chunk hash: blake3 keyed with DATA_KEY over the chunk's raw bytes."""
    return blake3.blake3(data, key=DATA_KEY).digest()


def _node_hash(children: Sequence[tuple[bytes, int]]) -> tuple[bytes, int]:
    """An internal node: keyed blake3 over one "{hash} : {size}" line per child, and the children's total size."""
    text = "".join(f"{hash_to_str(digest)} : {size}\n" for digest, size in children)
    return blake3.blake3(text.encode("ascii"), key=INTERNAL_NODE_KEY).digest(), sum(size for _, size in children)


def _closes_node(digest: bytes) -> bool:
    """Whether a child whose hash is `digest` ends its node (merklehash: the 4th u64 word, little-endian, % 4 == 0)."""
    return int.from_bytes(digest[24:32], "little") % _BRANCHING == 0


class MerkleHasher:
    """The Xet aggregated (Merkle) hash of a sequence of chunks, built as chunks arrive, in bounded memory.

    A node's children are cut from its level left to right: a node closes after its third or later child whose
    hash is 0 mod 4, or at 9 children, and the level's last node takes what is left. Since a cut depends only on
    the children seen so far, each level keeps at most 8 pending children, so a 50 GB file needs no list of its
    ~800k chunk hashes. Levels are reduced until one node remains; that node is the xorb hash, and the file hash
    is that root re-hashed with the all-zero key. No chunks give the all-zero hash (as merklehash does).
    """

    def __init__(self) -> None:
        # _pending[k]: children of level k waiting for their node to close; _pushed[k]: how many level k has had.
        self._pending: list[list[tuple[bytes, int]]] = [[]]
        self._pushed: list[int] = [0]
        self._size = 0

    @property
    def total_size(self) -> int:
        """The sum of the chunk sizes added so far (the file's length when hashing a file)."""
        return self._size

    def add_chunk(self, data: bytes | bytearray | memoryview) -> None:
        """Add a chunk by its raw bytes."""
        self.add(chunk_hash(data), len(data))

    def add(self, digest: bytes, size: int) -> None:
        """Add a chunk by its hash and raw size."""
        if len(digest) != HASH_SIZE or size < 0:
            raise XetFormatError(f"bad chunk entry: a {len(digest)}-byte hash, size {size}")
        self._size += size
        self._push(0, (bytes(digest), size))

    def _push(self, level: int, entry: tuple[bytes, int]) -> None:
        if level == len(self._pending):
            self._pending.append([])
            self._pushed.append(0)
        pending = self._pending[level]
        pending.append(entry)
        self._pushed[level] += 1
        if len(pending) == _MAX_CHILDREN or (len(pending) >= 3 and _closes_node(entry[0])):
            self._pending[level] = []
            self._push(level + 1, _node_hash(pending))

    def root(self) -> bytes:
        """The aggregated hash of the chunks added so far (a xorb's hash); adding more afterwards is allowed."""
        if self._pushed[0] == 0:
            return ZERO_HASH
        carry: list[tuple[bytes, int]] = []
        level = 0
        while True:
            # What this level holds at the end: its pending children plus the node closed from the level below.
            pending = self._pending[level] if level < len(self._pending) else []
            pushed = self._pushed[level] if level < len(self._pushed) else 0
            nodes = pending + carry
            if pushed + len(carry) == 1:
                return nodes[0][0]
            # The level's tail has fewer than 9 children and no closing hash from the third on: one last node.
            carry = [_node_hash(nodes)] if nodes else []
            level += 1

    def file_hash(self, salt: bytes = FILE_HASH_KEY) -> bytes:
        """The file hash: the root re-hashed with blake3 keyed by `salt` (all zeros for files; zero if empty)."""
        if self._pushed[0] == 0:
            return ZERO_HASH
        return blake3.blake3(self.root(), key=salt).digest()


def xorb_hash(entries: Iterable[tuple[bytes, int]]) -> bytes:
    """The xorb hash of its chunks, given as (chunk hash, raw size) in xorb order."""
    hasher = MerkleHasher()
    for digest, size in entries:
        hasher.add(digest, size)
    return hasher.root()


def file_hash(entries: Iterable[tuple[bytes, int]], salt: bytes = FILE_HASH_KEY) -> bytes:
    """The file hash of a file's chunks, given as (chunk hash, raw size) in file order."""
    hasher = MerkleHasher()
    for digest, size in entries:
        hasher.add(digest, size)
    return hasher.file_hash(salt)


def file_hash_of_chunks(chunks: Iterable[bytes | bytearray | memoryview]) -> bytes:
    """The file hash of a file from its decoded chunks in order (the chunks of its reconstruction terms)."""
    hasher = MerkleHasher()
    for chunk in chunks:
        hasher.add_chunk(chunk)
    return hasher.file_hash()


def check_file_hash(chunks: Iterable[bytes | bytearray | memoryview], expected: str) -> None:
    """Raise XetFormatError unless the decoded chunks hash to `expected` (the X-Xet-Hash string of the file)."""
    want = hash_from_str(expected)
    got = file_hash_of_chunks(chunks)
    if got != want:
        raise XetFormatError(f"file hash mismatch: the chunks hash to {hash_to_str(got)}, expected {expected.lower()}")
