"""mirror/xet/format.py: the mirror's reader of Xet data, against the Xet spec, xet-core's reference vectors,
chunks built here with `lz4` directly, every malformed-input class, a fuzzer, and the test emulator's CAS code.
"""

from __future__ import annotations

import contextlib
import inspect
import random
import struct

import blake3
import lz4.block
import lz4.frame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirror.xet.format import (
    DATA_KEY,
    HEADER_SIZE,
    MAX_CHUNK_SIZE,
    MAX_COMPRESSED_SIZE,
    ChunkHeader,
    MerkleHasher,
    Scheme,
    XetFormatError,
    bg4_regroup,
    check_file_hash,
    chunk_hash,
    chunk_offsets,
    decode_chunk,
    decode_range,
    file_hash,
    file_hash_of_chunks,
    hash_from_str,
    hash_to_str,
    iter_chunks,
    parse_chunk_header,
    parse_chunks,
    slice_range,
    stored_chunk_header,
    xorb_hash,
)
from testbed.hubemu.xet import format as emu_fmt
from testbed.hubemu.xet.layout import XetFile

FUZZ = settings(max_examples=200, derandomize=True, database=None, deadline=None)


# Building chunks here, from the spec, with lz4 directly (not with the module under test) -------------------------


def header(compressed: int, scheme: int, uncompressed: int, version: int = 0) -> bytes:
    """spec/xorb.md: version u8, compressed size u24 LE, scheme u8, uncompressed size u24 LE."""
    return bytes([version]) + compressed.to_bytes(3, "little") + bytes([scheme]) + uncompressed.to_bytes(3, "little")


def bg4_split(data: bytes) -> bytes:
    """spec/xorb.md: byte i of every 4 goes to group i; the groups are concatenated in order."""
    return data[0::4] + data[1::4] + data[2::4] + data[3::4]


def build_chunk(data: bytes, scheme: Scheme) -> bytes:
    if scheme is Scheme.NONE:
        payload = data
    elif scheme is Scheme.LZ4:
        payload = lz4.frame.compress(data)
    else:
        payload = lz4.frame.compress(bg4_split(data))
    return header(len(payload), scheme, len(data)) + payload


def sample(n: int, seed: int = 0) -> bytes:
    """Compressible but not trivial: float-like little-endian words with a slowly changing high byte."""
    rng = random.Random(seed)
    return b"".join(struct.pack("<f", rng.uniform(-1, 1)) for _ in range(n // 4 + 1))[:n]


# Hash strings (spec/api.md, "Converting Hashes to Strings") ----------------------------------------------------


def test_hash_string_form_follows_the_api_spec() -> None:
    raw = bytes(range(32))
    # spec/api.md's example lists the reordered bytes; its printed string drops the "10" of the third word.
    reordered = bytes([7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8, 23, 22, 21, 20, 19, 18, 17, 16,
                       31, 30, 29, 28, 27, 26, 25, 24])  # fmt: skip
    assert hash_to_str(raw) == reordered.hex()
    assert hash_from_str(reordered.hex()) == raw
    # merklehash data_hash.rs test_hash_hex_string_endianness.
    vector = bytes([22, 175, 58, 132, 4, 75, 131, 214, 190, 153, 138, 66, 226, 3, 153, 242, 204, 86, 80, 234,
                    249, 153, 80, 99, 159, 80, 65, 138, 236, 231, 149, 78])  # fmt: skip
    assert hash_to_str(vector) == "d6834b04843aaf16f29903e2428a99be635099f9ea5056cc4e95e7ec8a41509f"
    assert hash_from_str("D6834B04843AAF16F29903E2428A99BE635099F9EA5056CC4E95E7EC8A41509F") == vector


@pytest.mark.parametrize("text", ["", "00" * 31, "00" * 33, "g" * 64, " " + "0" * 63, "+" + "0" * 63, "0_" * 32])
def test_hash_from_str_refuses_what_is_not_64_hex_digits(text: str) -> None:
    with pytest.raises(XetFormatError):
        hash_from_str(text)


def test_hash_to_str_refuses_wrong_length() -> None:
    with pytest.raises(XetFormatError):
        hash_to_str(bytes(31))


# Hashes (spec/hashing.md; merklehash aggregated_hashes.rs test_correctness) -------------------------------------

# The leaf hashes of merklehash's reference test: rh(i) for i in 0..8, each with size 100 * i.
LEAVES = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "cfc5d07f6f03c29bbf424132963fe08d19a37d5757aaf520bf08119f05cd56d6",
    "c3e67584b5c4fc2a89837ec39e40f2c8a6bb0b2987ac94cd4b31e5fbdd210a72",
    "0d2beb91b9196929a5ddec9f6e306924ddf4a24268e3e59fd8464738d525af37",
    "adf8773496a9b7319b2e50dc98093f344053b17d8ad37100b9c07d9805988784",
    "4ac202caf347fc1e9c874b1ef6a1c5e619141eb775a6f43f0f0124ccd0060d9e",
    "b3b28636f65c149ea52eb1f94669466f70f033b54cea792824c696ba6ef3c389",
    "0e2c1a002aae913d2c0fc8ddfa4e9e14b7b311b3b0d458726d5d9f6a6318013c",
]
ZERO = "0" * 64

# (leaf indices, xorb hash, file hash with the all-zero salt), copied from test_correctness.
MERKLE_VECTORS = [
    ([], ZERO, ZERO),
    ([0], ZERO, "638a6bc391964a85939d48f008e8bdbae6a7975e7ca2d87a3ce2492f4e4d8a4c"),
    ([1], LEAVES[1], "8e16257caa3fe079d484d872a8975264b2ff683b0d6db9028cc7c0f968a45661"),
    (
        [1, 2, 3],
        "71ec1275fca074724e2dd666921b3277c7cee603e4d025bcab2d4050015be2bc",
        "54e55dccc6653c612bdb5576c5d3cb34bb31bc4e100248abccf4c908b3ef7715",
    ),
    (
        [1] * 4,
        "89f2ada89ff8c96763c6b25010e6dd76a4c05b1466207633ea559acf2093211b",
        "2cdba690d0e09563596e0cda626d43eb4c96ef1e994fe72d9b2f5a83cfcd36dd",
    ),
    (
        [1, 2, 1, 2],
        "90f8313ef12df385d237a067aded02562c35ded12116e32eba401dbc86c38031",
        "284ea045e5a579e99c21ec597c20de1fc0c09e7168162aac00db8f61b3d82dbb",
    ),
    (
        [1, 2, 1, 2, 3, 4],
        "52c826f99507aa05d0b45e9837fa1709e0485425cfbcb1e80db3905cf98b3ee9",
        "91d21684db364c8883ab8209fa5eb2e781cf07f37e1fa43e731c30839afe422f",
    ),
    (
        [0, 1, 0, 1],
        "e1755c85be07fd6b7a8d7becc85e6d8c5f507f2a3d38b316bcb6f97855e72188",
        "207caf24fce045ac6d873b4c6186a5a435d600d103e1ae345e55ddf1f4b7f7ef",
    ),
    (
        [0, 1, 0, 1, 0],
        "f36c6a6374a567efd36ed087aeb680b57e3af4e0b5b8e7be2593df4cb647a2de",
        "ab2f46d31855e1133b3b5b70e78f841394a648710a208923b221c1a8a0572a1f",
    ),
    ([1, 0], "e8660f81494ca836a58e395c1395ef97870ed71e2b113eec1fab6b3361f46dd6", None),
    (
        [3, 4, 5, 3],
        "73b9dc802ab03a0855c66823a18d95c2a785af594535756abf405038b6270cb8",
        "c7d5be75ef5ec12888027ad305141e4109e599494477661177475c84e12de48b",
    ),
    (
        [3, 4, 5, 5, 5],
        "2c1fd1eca47e284512fcb40fcf45a1874939f9b91c774d46aeba5d004d9d263d",
        "0799ba7ee2c3fed173a8e8d832cd13970ddc16070ffbc8aa6dcd77476f66dc73",
    ),
    (
        list(range(8)),
        "f62abe77e3fb9c954fe52b0028027ddc90c064c45951a4fd2211d87e5c0011db",
        "d1b068be5bbdb38992269e8efe61f601881e39f7a7585fd76883cc6ea5c23b44",
    ),
    (
        [i % 8 for i in range(64)],
        "6554007c9b5d0a5e7918f79596a1b68815c1407535585435f5735db761f21b88",
        "a8640ab81d48854e00078e12b1ea8be5d90be0ffb5f73a15b7009981d093ddd8",
    ),
    (
        [1] * 32,
        "0a0123c1617921883b7e13902095fcb86676e77c49120c33b233003b0af0e0a6",
        "53af4711fd1d5e5bdc7f931b6be932314d8d673cb16ad2482f6f5222eaf9e63d",
    ),
    (
        [*range(8), 1, 1, 1, 1],
        "e7fc30b73ec9930593f80fe777b334e9d3bb73e45e6a79fa5784b2603446158b",
        "69e1af2fd6023ce133e0d1b90e32d1d42ef79f5a710f2b0accfc3a735e98de9d",
    ),
    (
        [i for i in range(8) for _ in range(2)],
        "636c65db520ec16e8166f9ec7a0cf9f74b26369077ac60160ec0221c86bc9f77",
        "6a90ad0d6f5246ac61f1de898c6944c03e14004a1368e6fb23387108c4d039e0",
    ),
]

# (leaf indices, salt, file hash) from the same test: the salted variants.
SALTED_VECTORS = [
    (
        [0],
        "f4aa7219b7bc6145df344b930c1cf63680037e13236f4b3b8f439aba1520d443",
        "3e44e4a200e05a69afc979eb2e0507817e4f0ddff128a97e563c0e05fed3bd25",
    ),
    (
        [1],
        "285371a6a3c8c4e561469c97766c46f0b9799bd8ea51a4ad27a082df8c28b7da",
        "6c18994ed5e6a223aeff68a6e386dbba7b3c25de076245dc77892b4ad49ac978",
    ),
    (
        [1, 2, 3],
        "b286606709ef32a1cfede1e603a39f83fef56772d8234c0e35d8920071d80b69",
        "337f1f046e4cfc1057f0f3edbd87cf977fdfaf3c2b0c0031ca2d1d2a34aa2270",
    ),
]


def entries(indices: list[int]) -> list[tuple[bytes, int]]:
    return [(hash_from_str(LEAVES[i]), 100 * i) for i in indices]


@pytest.mark.parametrize(("indices", "want_xorb", "want_file"), MERKLE_VECTORS)
def test_merkle_hashes_match_xet_core_reference_vectors(
    indices: list[int], want_xorb: str, want_file: str | None
) -> None:
    assert hash_to_str(xorb_hash(entries(indices))) == want_xorb
    if want_file is not None:
        assert hash_to_str(file_hash(entries(indices))) == want_file


@pytest.mark.parametrize(("indices", "salt", "want"), SALTED_VECTORS)
def test_salted_file_hash_matches_xet_core_reference_vectors(indices: list[int], salt: str, want: str) -> None:
    assert hash_to_str(file_hash(entries(indices), salt=hash_from_str(salt))) == want


def batch_root(nodes: list[tuple[bytes, int]]) -> bytes:
    """merklehash's aggregated_node_hash written out level by level (whole lists), to check the streaming one."""
    if not nodes:
        return bytes(32)
    while len(nodes) > 1:
        level: list[tuple[bytes, int]] = []
        i = 0
        while i < len(nodes):
            rest = nodes[i:]
            cut = len(rest)
            if len(rest) > 2:
                end = min(9, len(rest))
                cut = next((j + 1 for j in range(2, end) if int.from_bytes(rest[j][0][24:], "little") % 4 == 0), end)
            group = rest[:cut]
            text = "".join(f"{hash_to_str(h)} : {s}\n" for h, s in group)
            key = bytes([1, 126, 197, 199, 165, 71, 41, 150, 253, 148, 102, 102, 180, 138, 2, 230,
                         93, 221, 83, 111, 55, 199, 109, 210, 248, 99, 82, 230, 74, 83, 113, 63])  # fmt: skip
            level.append((blake3.blake3(text.encode(), key=key).digest(), sum(s for _, s in group)))
            i += cut
        nodes = level
    return nodes[0][0]


def test_streaming_merkle_matches_the_batch_rule_at_every_length() -> None:
    rng = random.Random(7)
    pairs = [(rng.randbytes(32), rng.randrange(1, MAX_CHUNK_SIZE)) for _ in range(300)]
    hasher = MerkleHasher()
    assert hasher.root() == bytes(32)
    for n, (digest, size) in enumerate(pairs, start=1):
        hasher.add(digest, size)
        # root() leaves the hasher usable, so checking after every chunk also checks every tail shape.
        assert hasher.root() == batch_root(pairs[:n]), n
    assert hasher.total_size == sum(size for _, size in pairs)


def test_chunk_hash_is_blake3_keyed_with_data_key() -> None:
    assert DATA_KEY[:4] == bytes([102, 151, 245, 119]) and len(DATA_KEY) == 32
    data = sample(1000)
    assert chunk_hash(data) == blake3.blake3(data, key=DATA_KEY).digest()
    assert chunk_hash(data) != blake3.blake3(data).digest()


def test_file_hash_of_chunks_and_check_file_hash() -> None:
    chunks = [sample(n, seed=n) for n in (5000, 70000, 1, 4096, 131072, 12)]
    want = file_hash([(chunk_hash(c), len(c)) for c in chunks])
    assert file_hash_of_chunks(chunks) == want
    check_file_hash(chunks, hash_to_str(want))
    check_file_hash(chunks, hash_to_str(want).upper())
    with pytest.raises(XetFormatError, match="file hash mismatch"):
        check_file_hash(chunks[:-1], hash_to_str(want))
    with pytest.raises(XetFormatError, match="file hash mismatch"):
        check_file_hash([*chunks[:-1], chunks[-1] + b"x"], hash_to_str(want))
    # No chunks: the all-zero hash, as merklehash's file_node_hash returns for an empty list.
    assert file_hash_of_chunks([]) == bytes(32)


# Parsing and decoding (spec/xorb.md) ----------------------------------------------------------------------------


def test_bg4_regroup_inverts_the_spec_example() -> None:
    original = bytes(range(1, 15))  # 14 bytes: groups of 4, 4, 3, 3
    assert bg4_split(original) == bytes([1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 4, 8, 12])
    assert bg4_regroup(bg4_split(original)) == original


@pytest.mark.parametrize("scheme", list(Scheme))
@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 4095, 65536, 65537, 100003, MAX_CHUNK_SIZE])
def test_round_trip_each_scheme(scheme: Scheme, size: int) -> None:
    data = sample(size, seed=size)
    built = build_chunk(data, scheme)
    (chunk,) = parse_chunks(built)
    assert chunk.offset == 0 and chunk.end == len(built)
    assert chunk.header == ChunkHeader(0, len(built) - HEADER_SIZE, scheme, size)
    assert decode_chunk(chunk) == data


def test_a_range_of_mixed_chunks_offsets_and_slices() -> None:
    datas = [sample(n, seed=i) for i, n in enumerate([70000, 3, 131072, 9000, 64, 50001])]
    schemes = [Scheme.LZ4, Scheme.NONE, Scheme.BG4_LZ4, Scheme.NONE, Scheme.LZ4, Scheme.BG4_LZ4]
    parts = [build_chunk(d, s) for d, s in zip(datas, schemes, strict=True)]
    blob = b"".join(parts)
    chunks = list(iter_chunks(blob))
    assert [c.header.scheme for c in chunks] == schemes
    assert decode_range(blob) == datas
    assert decode_range(memoryview(blob)) == datas
    offsets = chunk_offsets(blob)
    assert offsets == [0, *[sum(len(p) for p in parts[: i + 1]) for i in range(len(parts))]]
    assert [c.offset for c in chunks] == offsets[:-1]
    # The cached range holds xorb chunks [10, 16); a term needs [12, 15).
    assert slice_range(blob, 10, 12, 15) == b"".join(parts[2:5])
    assert decode_range(slice_range(blob, 10, 12, 15)) == datas[2:5]
    assert slice_range(blob, 10, 10, 16) == blob
    for start, end in [(9, 12), (12, 17), (13, 13), (14, 12)]:
        with pytest.raises(XetFormatError, match="not inside"):
            slice_range(blob, 10, start, end)
    with pytest.raises(XetFormatError, match="truncated"):
        slice_range(blob[:-1], 10, 10, 11)


def test_empty_range_has_no_chunks() -> None:
    assert decode_range(b"") == []
    assert chunk_offsets(b"") == [0]


def test_concatenated_lz4_frames_decode_as_xet_core_frame_decoder_does() -> None:
    data = sample(20000)
    payload = lz4.frame.compress(data[:7000]) + lz4.frame.compress(data[7000:])
    assert decode_range(header(len(payload), Scheme.LZ4, len(data)) + payload) == [data]


# Refusals: one test per malformed-input class ------------------------------------------------------------------


@pytest.mark.parametrize("keep", range(1, HEADER_SIZE))
def test_truncated_header_is_refused(keep: int) -> None:
    good = build_chunk(sample(100), Scheme.NONE)
    with pytest.raises(XetFormatError, match="truncated chunk header"):
        parse_chunks(good + good[:keep])
    with pytest.raises(XetFormatError, match="truncated chunk header"):
        parse_chunk_header(good[:keep])


@pytest.mark.parametrize("scheme", list(Scheme))
def test_truncated_data_is_refused(scheme: Scheme) -> None:
    good = build_chunk(sample(5000), scheme)
    with pytest.raises(XetFormatError, match="truncated data"):
        parse_chunks(good[:-1])
    with pytest.raises(XetFormatError, match="truncated data"):
        parse_chunks(good[:HEADER_SIZE])


@pytest.mark.parametrize("version", [1, 2, 255])
def test_unknown_version_is_refused(version: int) -> None:
    with pytest.raises(XetFormatError, match=f"unknown chunk header version {version}"):
        parse_chunks(header(4, 0, 4, version=version) + b"abcd")


@pytest.mark.parametrize("scheme", [3, 4, 65, 255])
def test_unknown_scheme_is_refused(scheme: int) -> None:
    with pytest.raises(XetFormatError, match=f"unknown compression scheme {scheme}"):
        parse_chunks(header(4, scheme, 4) + b"abcd")


def test_oversize_lengths_are_refused() -> None:
    with pytest.raises(XetFormatError, match="uncompressed length 131073 is over"):
        parse_chunks(header(100, Scheme.LZ4, MAX_CHUNK_SIZE + 1) + bytes(100))
    with pytest.raises(XetFormatError, match="compressed length 262145 is over"):
        parse_chunks(header(MAX_COMPRESSED_SIZE + 1, Scheme.LZ4, 1000) + bytes(MAX_COMPRESSED_SIZE + 1))
    with pytest.raises(XetFormatError, match="over"):
        parse_chunk_header(b"\x00\xff\xff\xff\x00\xff\xff\xff")


def test_length_mismatch_is_refused() -> None:
    data = sample(5000)
    # Stored as-is, the two lengths must agree.
    with pytest.raises(XetFormatError, match="length mismatch"):
        parse_chunks(header(5000, Scheme.NONE, 4999) + data)
    # LZ4 decoding to fewer or more bytes than the header says.
    for scheme in (Scheme.LZ4, Scheme.BG4_LZ4):
        payload = build_chunk(data, scheme)[HEADER_SIZE:]
        for declared in (4999, 5001, 0):
            (chunk,) = parse_chunks(header(len(payload), scheme, declared) + payload)
            with pytest.raises(XetFormatError, match=r"decodes to|more than"):
                decode_chunk(chunk)


def test_decompression_is_bounded_by_the_declared_length() -> None:
    # 128 KiB of zeros in a small frame, declared as 10 bytes: refused without producing all of it.
    payload = lz4.frame.compress(bytes(MAX_CHUNK_SIZE))
    (chunk,) = parse_chunks(header(len(payload), Scheme.LZ4, 10) + payload)
    with pytest.raises(XetFormatError, match="more than the 10 bytes"):
        decode_chunk(chunk)


def test_corrupt_or_wrong_lz4_payloads_are_refused() -> None:
    data = sample(5000)
    frame = lz4.frame.compress(data)
    block = lz4.block.compress(data, store_size=False)  # the block format, which xorbs do not use
    bad_magic = b"\x00" + frame[1:]
    cut_frame = frame[:-5]  # a header that tells the truth about a truncated frame
    trailing = frame + b"\x01\x02"
    for payload in (block, bad_magic, cut_frame, trailing, b"\x04\x22\x4d\x18"):
        (chunk,) = parse_chunks(header(len(payload), Scheme.LZ4, len(data)) + payload)
        with pytest.raises(XetFormatError):
            decode_chunk(chunk)


# Fuzzing: whatever the bytes, only XetFormatError ---------------------------------------------------------------


def read_everything(blob: bytes) -> None:
    for chunk in iter_chunks(blob):
        decode_chunk(chunk)


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes_raise_only_xet_format_error(blob: bytes) -> None:
    with contextlib.suppress(XetFormatError):
        read_everything(blob)


@FUZZ
@given(
    scheme=st.sampled_from([1, 2]),
    declared=st.integers(0, MAX_CHUNK_SIZE),
    payload=st.one_of(
        st.binary(max_size=2048),
        # Real frames, then damaged: the decoder's error paths, not just its magic-number check.
        st.tuples(st.binary(max_size=3000), st.integers(0, 3000), st.binary(min_size=1, max_size=4)).map(
            lambda t: (lambda f: f[: t[1] % (len(f) + 1)] + t[2] + f[t[1] % (len(f) + 1) + len(t[2]) :])(
                lz4.frame.compress(t[0])
            )
        ),
    ),
)
def test_fuzz_lz4_payloads_raise_only_xet_format_error(scheme: int, declared: int, payload: bytes) -> None:
    with contextlib.suppress(XetFormatError):
        read_everything(header(len(payload), scheme, declared) + payload)


# Cross-checks with the test emulator's CAS (testbed/hubemu/xet), written independently of this module ---------


def mixed_file() -> bytes:
    """Text (plain LZ4 wins), float-like words (byte grouping can win) and random bytes (stored as-is)."""
    text = b"".join(b"row %d,%d,hello xet\n" % (i, i * 7) for i in range(12_000))
    rng = random.Random(3)
    floats = b"".join(struct.pack("<f", 1.0 + rng.random() / 64) for _ in range(100_000))
    return text + floats + rng.randbytes(300_000) + text[:50_000]


@pytest.fixture
def emulator_file(monkeypatch: pytest.MonkeyPatch) -> XetFile:
    # Small xorbs, so that one file spans several and terms cross xorb boundaries.
    monkeypatch.setattr(emu_fmt, "XORB_MAX_CHUNKS", 4)
    return XetFile(mixed_file())


def check_emulator_file(xet_file: XetFile) -> set[Scheme]:
    """Every xorb the file's terms use parses, decodes and hashes here as the emulator made it, and the terms'
    chunks rebuild the file and hash to the emulator's file hash."""
    _, terms = xet_file.terms(0, xet_file.size - 1)
    xorbs = {id(t.xorb): t.xorb for t in terms}
    schemes: set[Scheme] = set()
    decoded_by_xorb: dict[int, list[bytes]] = {}
    for key, xorb in xorbs.items():
        chunks = parse_chunks(xorb.body)
        schemes.update(c.header.scheme for c in chunks)
        assert chunk_offsets(xorb.body) == list(xorb.offsets)
        decoded = [decode_chunk(c) for c in chunks]
        assert hash_to_str(xorb_hash((chunk_hash(c), len(c)) for c in decoded)) == xorb.hash
        decoded_by_xorb[key] = decoded
    file_chunks = [c for t in terms for c in decoded_by_xorb[id(t.xorb)][t.start : t.end]]
    assert b"".join(file_chunks) == xet_file.data
    assert [(chunk_hash(c), len(c)) for c in file_chunks] == xet_file.entries
    assert hash_to_str(file_hash_of_chunks(file_chunks)) == xet_file.hash
    check_file_hash(file_chunks, xet_file.hash)
    return schemes


def test_emulator_xorbs_parse_decode_and_hash_alike(emulator_file: XetFile) -> None:
    _, terms = emulator_file.terms(0, emulator_file.size - 1)
    assert len({id(t.xorb) for t in terms}) > 2
    # Every scheme met in the emulator's own choices.
    assert check_emulator_file(emulator_file) == set(Scheme)


def test_emulator_deduplicated_file_decodes_and_hashes_alike(emulator_file: XetFile) -> None:
    if "base" not in inspect.signature(XetFile).parameters:
        pytest.skip("this emulator does not deduplicate against a base file")
    data = emulator_file.data
    # An edit in the middle: the new revision's terms point into the base's xorbs and its own new ones.
    edited = data[:400_000] + b"an edit" + data[400_100:]
    new = XetFile(edited, base=emulator_file)
    _, terms = new.terms(0, new.size - 1)
    _, base_terms = emulator_file.terms(0, emulator_file.size - 1)
    assert {id(t.xorb) for t in terms} & {id(t.xorb) for t in base_terms}
    check_emulator_file(new)


def test_emulator_terms_are_sliced_from_cached_ranges_alike(emulator_file: XetFile) -> None:
    size = emulator_file.size
    for first, last in [(0, size - 1), (100, 300_000), (size // 2, size // 2), (size - 10, size - 1)]:
        offset, terms = emulator_file.terms(first, last)
        pieces = []
        for term in terms:
            body, offsets = term.xorb.body, term.xorb.offsets
            # What the CAS serves for this term's fetch_info (url_range, end inclusive), and the same bytes cut
            # from the cached whole xorb, as the mirror would for a second term of an already fetched xorb.
            served = body[offsets[term.start] : offsets[term.end]]
            assert slice_range(body, 0, term.start, term.end) == served
            chunks = decode_range(served)
            assert len(chunks) == term.end - term.start
            assert sum(len(c) for c in chunks) == term.unpacked_length
            pieces.extend(chunks)
        assert b"".join(pieces)[offset : offset + last - first + 1] == emulator_file.data[first : last + 1]


@pytest.mark.parametrize("scheme", list(Scheme))
def test_each_scheme_decodes_both_ways_with_the_emulator(scheme: Scheme) -> None:
    for size in (0, 1, 3, 4097, 65_533, MAX_CHUNK_SIZE):
        data = sample(size, seed=size)
        # The emulator's encoder, forced to one scheme (it falls back to none when that does not help).
        encoded = emu_fmt.encode_chunk(data, schemes=(emu_fmt.Scheme(int(scheme)),))
        assert decode_range(encoded) == [data]
        # Chunks built here from the spec, read by the emulator's decoder.
        assert emu_fmt.decode_chunks(build_chunk(data, scheme)) == [data]


def test_hashes_agree_with_the_emulator() -> None:
    rng = random.Random(11)
    for n in [*range(12), 31, 64, 100, 257, 1000]:
        pairs = [(rng.randbytes(32), rng.randrange(0, MAX_CHUNK_SIZE + 1)) for _ in range(n)]
        assert xorb_hash(pairs) == emu_fmt.xorb_hash(pairs)
        assert file_hash(pairs) == emu_fmt.file_hash(pairs)
        for digest, _ in pairs[:3]:
            assert hash_to_str(digest) == emu_fmt.hash_hex(digest)
            assert hash_from_str(emu_fmt.hash_hex(digest)) == digest
    data = sample(70_000)
    assert chunk_hash(data) == emu_fmt.chunk_hash(data)
    assert bg4_regroup(emu_fmt.bg4_split(data[:4099])) == data[:4099]


@pytest.mark.parametrize("length", [0, 1, 65_536, MAX_CHUNK_SIZE])
def test_a_stored_chunk_header_reads_back(length: int) -> None:
    data = bytes(range(256)) * (length // 256) + bytes(length % 256)
    encoded = stored_chunk_header(length) + data
    (chunk,) = parse_chunks(encoded)
    assert chunk.header.scheme is Scheme.NONE and decode_chunk(chunk) == data


def test_a_stored_chunk_header_refuses_lengths_no_chunk_has() -> None:
    for length in (-1, MAX_CHUNK_SIZE + 1):
        with pytest.raises(XetFormatError):
            stored_chunk_header(length)
