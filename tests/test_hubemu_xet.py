"""The emulator's Xet CAS: its data formats, its routes and refusals, and the real hf_xet client downloading from it."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest

from testbed.hubemu import HubEmulator
from testbed.hubemu.xet import format as fmt
from tests.support.client import run_client
from tests.support.http import send_url

RNG = random.Random(20261201)
RANDOM = RNG.randbytes(700_000)  # incompressible: chunks stored uncompressed
FLOATS = struct.pack("<160000f", *(1000.0 + i * 0.25 for i in range(160_000)))  # byte-grouping wins here
TEXT = b"".join(b"row %d,%d,hello xet\n" % (i, i * 7) for i in range(30_000))  # plain LZ4 wins here
FILES = {
    "weights.safetensors": RANDOM,
    "model.bin": FLOATS,
    "data/train.parquet": TEXT,
    "config.json": b'{"model_type": "xet"}',
}


@pytest.fixture
def emu(hub: HubEmulator) -> HubEmulator:
    hub.add_repo("model", "org/xet", FILES)
    hub.add_repo("model", "org/gated", {"w.safetensors": RANDOM[:50_000]}, gated="auto", tokens=("hf_gated",))
    return hub


def token_for(emu: HubEmulator, repo: str = "org/xet", hf_token: str | None = None) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {hf_token}"} if hf_token else {}
    status, _, body = send_url(f"{emu.url}/api/models/{repo}/xet-read-token/main", headers)
    assert status == 200
    return json.loads(body)


def reconstruct(emu: HubEmulator, file_hash: str, token: str, range_: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"}
    if range_:
        headers["Range"] = range_
    status, _, body = send_url(f"{emu.cdn_url}/v1/reconstructions/{file_hash}", headers)
    return status, body


def rebuild(emu: HubEmulator, answer: dict, expected_length: int) -> bytes:
    """What a client does with a reconstruction: fetch each term's signed range, decode, cut, concatenate."""
    out = bytearray()
    for term in answer["terms"]:
        info = next(i for i in answer["fetch_info"][term["hash"]] if i["range"] == term["range"])
        first, last = info["url_range"]["start"], info["url_range"]["end"]
        status, headers, body = send_url(info["url"], {"Range": f"bytes={first}-{last}"})
        assert status == 206 and "authorization" not in {k.lower() for k in headers}
        data = b"".join(fmt.decode_chunks(body))
        assert len(data) == term["unpacked_length"]
        out += data
    start = answer["offset_into_first_range"]
    return bytes(out[start : start + expected_length])


def xet_hash_of(emu: HubEmulator, path: str, repo: str = "org/xet") -> str:
    blob = emu.get_repo("model", repo).resolve("main").files[path]  # type: ignore[union-attr]
    assert blob.xet_hash is not None
    return blob.xet_hash


# -- formats ---------------------------------------------------------------------------------------


def test_chunk_header_round_trip_and_codecs() -> None:
    header = fmt.ChunkHeader(0, 0x0123AB, 2, 0x01FFFF)
    packed = header.pack()
    assert packed == bytes([0, 0xAB, 0x23, 0x01, 2, 0xFF, 0xFF, 0x01]) and fmt.ChunkHeader.unpack(packed) == header
    for n in range(10):
        data = bytes(range(n))
        assert fmt.bg4_join(fmt.bg4_split(data)) == data
    # The spec's example: [A1 A2 A3 A4 B1 ...] groups into [A1 B1 ... A2 B2 ...]; a tail goes to the first groups.
    assert fmt.bg4_split(b"ABCDabcdXY") == b"AaXBbYCcDd"
    for scheme, sample in ((fmt.Scheme.NONE, TEXT), (fmt.Scheme.LZ4, TEXT), (fmt.Scheme.BG4_LZ4, FLOATS)):
        encoded = fmt.encode_chunk(sample[:65533], schemes=(scheme,))
        assert fmt.ChunkHeader.unpack(encoded).scheme == scheme
        assert fmt.decode_chunks(encoded + encoded) == [sample[:65533]] * 2
    auto = fmt.encode_chunk(RANDOM[:4096])
    assert fmt.ChunkHeader.unpack(auto).scheme == fmt.Scheme.NONE  # compression that does not help is skipped
    with pytest.raises(ValueError):
        fmt.decode_chunks(auto[:-1])


def test_hashes_match_xet_core_reference_vectors() -> None:
    # spec/api.md: the string form prints each 8-byte word as a little-endian u64 (its worked example
    # drops the byte 0x10 from the third word; this is the example's rule applied in full).
    assert fmt.hash_hex(bytes(range(32))) == "07060504030201000f0e0d0c0b0a09081716151413121110" + "1f1e1d1c1b1a1918"
    assert fmt.hash_from_hex(fmt.hash_hex(bytes(range(32)))) == bytes(range(32))
    h = fmt.hash_from_hex
    a = h("cfc5d07f6f03c29bbf424132963fe08d19a37d5757aaf520bf08119f05cd56d6")
    b = h("c3e67584b5c4fc2a89837ec39e40f2c8a6bb0b2987ac94cd4b31e5fbdd210a72")
    c = h("0d2beb91b9196929a5ddec9f6e306924ddf4a24268e3e59fd8464738d525af37")
    d = h("adf8773496a9b7319b2e50dc98093f344053b17d8ad37100b9c07d9805988784")
    # (entries, xorb hash, file hash with the zero salt) from xet-core merklehash/src/aggregated_hashes.rs.
    vectors = [
        ([], "0" * 64, "0" * 64),
        ([(bytes(32), 0)], "0" * 64, "638a6bc391964a85939d48f008e8bdbae6a7975e7ca2d87a3ce2492f4e4d8a4c"),
        ([(a, 100)], fmt.hash_hex(a), "8e16257caa3fe079d484d872a8975264b2ff683b0d6db9028cc7c0f968a45661"),
        (
            [(a, 100), (b, 200), (c, 300)],
            "71ec1275fca074724e2dd666921b3277c7cee603e4d025bcab2d4050015be2bc",
            "54e55dccc6653c612bdb5576c5d3cb34bb31bc4e100248abccf4c908b3ef7715",
        ),
        (
            [(a, 100)] * 4,
            "89f2ada89ff8c96763c6b25010e6dd76a4c05b1466207633ea559acf2093211b",
            "2cdba690d0e09563596e0cda626d43eb4c96ef1e994fe72d9b2f5a83cfcd36dd",
        ),
        (
            [(a, 100), (b, 200), (a, 100), (b, 200), (c, 300), (d, 400)],
            "52c826f99507aa05d0b45e9837fa1709e0485425cfbcb1e80db3905cf98b3ee9",
            "91d21684db364c8883ab8209fa5eb2e781cf07f37e1fa43e731c30839afe422f",
        ),
    ]
    for entries, xorb, file in vectors:
        assert (fmt.hash_hex(fmt.xorb_hash(entries)), fmt.hash_hex(fmt.file_hash(entries))) == (xorb, file)


def test_chunker_is_the_spec_algorithm() -> None:
    data = RANDOM + bytes(300_000) + TEXT[:200_000]
    ends = fmt.chunk_ends(data)
    assert ends == fmt.chunk_ends_reference(data)  # the vectorised path cuts where the byte loop does
    sizes = [e - s for s, e in zip([0, *ends], ends, strict=False)]
    assert ends[-1] == len(data) and all(fmt.MIN_CHUNK <= s <= fmt.MAX_CHUNK for s in sizes[:-1])
    assert fmt.MAX_CHUNK in sizes  # the zero run never matches the mask: forced cuts
    assert fmt.chunk_ends(b"tiny") == [4] and fmt.chunk_ends(b"") == []
    assert fmt.group_xorbs([fmt.MAX_CHUNK] * 1000) == [(0, 511), (511, 1000)]  # 64 MiB, headers included


# -- routes ----------------------------------------------------------------------------------------


def test_token_route_and_hash_agreement(emu: HubEmulator) -> None:
    status, headers, body = send_url(f"{emu.url}/api/models/org/xet/xet-read-token/main")
    info = json.loads(body)
    assert status == 200 and set(info) == {"accessToken", "exp", "casUrl"} and info["casUrl"] == emu.cdn_url
    assert (headers["X-Xet-Access-Token"], headers["X-Xet-Token-Expiration"]) == (info["accessToken"], str(info["exp"]))
    assert send_url(f"{emu.url}/api/models/org/gated/xet-read-token/main")[0] == 401
    assert send_url(f"{emu.url}/api/models/org/gated/xet-read-token/main", {"Authorization": "Bearer hf_x"})[0] == 403
    assert token_for(emu, "org/gated", "hf_gated")["casUrl"] == emu.cdn_url

    expected = xet_hash_of(emu, "weights.safetensors")
    status, headers, _ = send_url(f"{emu.url}/org/xet/resolve/main/weights.safetensors", method="HEAD")
    assert status == 302 and headers["X-Xet-Hash"] == expected and f"/v1/reconstructions/{expected}" in headers["Link"]
    tree = json.loads(send_url(f"{emu.url}/api/models/org/xet/tree/main?recursive=true")[2])
    assert {e["path"]: e.get("xetHash") for e in tree if e["type"] == "file"}["weights.safetensors"] == expected


def test_reconstruction_shape_and_xorb_bytes(emu: HubEmulator) -> None:
    token = str(token_for(emu)["accessToken"])
    for path, data in FILES.items():
        if path == "config.json":
            continue
        status, body = reconstruct(emu, xet_hash_of(emu, path), token)
        answer = json.loads(body)
        assert status == 200 and set(answer) == {"offset_into_first_range", "terms", "fetch_info"}
        assert all(set(t) == {"hash", "unpacked_length", "range"} for t in answer["terms"])
        assert all(set(i) == {"range", "url", "url_range"} for v in answer["fetch_info"].values() for i in v)
        assert rebuild(emu, answer, len(data)) == data
    # Byte-grouping and LZ4 both occur in the served xorbs (the floats and the text).
    schemes = set()
    for path in ("model.bin", "data/train.parquet"):
        answer = json.loads(reconstruct(emu, xet_hash_of(emu, path), token)[1])
        for info in answer["fetch_info"].values():
            url, first = info[0]["url"], info[0]["url_range"]["start"]
            body = send_url(url, {"Range": f"bytes={first}-{info[0]['url_range']['end']}"})[2]
            schemes.add(fmt.ChunkHeader.unpack(body[:8]).scheme)
    assert {fmt.Scheme.LZ4, fmt.Scheme.BG4_LZ4} <= schemes

    # A Range (inclusive end) starts mid-chunk: the offset says where to start keeping bytes.
    status, body = reconstruct(emu, xet_hash_of(emu, "weights.safetensors"), token, "bytes=100000-300000")
    answer = json.loads(body)
    assert status == 200 and answer["offset_into_first_range"] > 0
    assert rebuild(emu, answer, 200_001) == RANDOM[100_000:300_001]


def test_cas_refusals(emu: HubEmulator) -> None:
    weights = xet_hash_of(emu, "weights.safetensors")
    token = str(token_for(emu)["accessToken"])
    assert reconstruct(emu, weights, token)[0] == 200
    assert send_url(f"{emu.cdn_url}/v1/reconstructions/{weights}")[0] == 401  # no token
    assert reconstruct(emu, weights, "hf_good")[0] == 401  # the Hub token is no CAS token
    assert reconstruct(emu, "ab" * 32, token)[0] == 404
    assert reconstruct(emu, "XYZ", token)[0] == 400
    assert reconstruct(emu, weights, token, f"bytes={len(RANDOM)}-{len(RANDOM) + 5}")[0] == 416
    assert send_url(f"{emu.cdn_url}/v2/reconstructions/{weights}", {"Authorization": f"Bearer {token}"})[0] == 404
    other = str(token_for(emu, "org/gated", "hf_gated")["accessToken"])
    assert reconstruct(emu, weights, other)[0] == 403  # a token reaches only its own repo's files
    assert send_url(f"{emu.cdn_url}/v1/telemetry", method="POST")[0] == 200

    info = next(iter(json.loads(reconstruct(emu, weights, token)[1])["fetch_info"].values()))[0]
    signed = f"bytes={info['url_range']['start']}-{info['url_range']['end']}"
    assert send_url(info["url"], {"Range": signed})[0] == 206
    assert send_url(info["url"], {"Range": "bytes=0-10"})[0] == 403  # not the signed range
    assert send_url(info["url"])[0] == 403
    assert send_url(info["url"].replace("Signature=", "Signature=0"), {"Range": signed})[0] == 403
    emu.faults.expire_signed_urls()
    assert send_url(info["url"], {"Range": signed})[0] == 403
    emu.faults.expire_cas_tokens()
    assert reconstruct(emu, weights, token)[0] == 401
    assert reconstruct(emu, weights, str(token_for(emu)["accessToken"]))[0] == 200  # a new token works


def test_xorb_faults_use_the_cdn_body_plan(emu: HubEmulator) -> None:
    weights = xet_hash_of(emu, "weights.safetensors")
    answer = json.loads(reconstruct(emu, weights, str(token_for(emu)["accessToken"]))[1])
    info = next(iter(answer["fetch_info"].values()))[0]
    signed = {"Range": f"bytes={info['url_range']['start']}-{info['url_range']['end']}"}
    emu.faults.corrupt("weights.safetensors", times=1, offset=100, origin="cdn")  # matched by the file's name
    body = send_url(info["url"], signed)[2]
    assert b"".join(fmt.decode_chunks(body)) != RANDOM[: len(b"".join(fmt.decode_chunks(body)))]
    assert (
        b"".join(fmt.decode_chunks(send_url(info["url"], signed)[2])) == RANDOM[: answer["terms"][0]["unpacked_length"]]
    )


# -- the real hf_xet client ------------------------------------------------------------------------

XET_SCRIPT = """
import hashlib
from pathlib import Path
p = hf_hub_download("org/xet", "weights.safetensors", token="hf_good")
out["weights"] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
snap = Path(snapshot_download("org/xet", token="hf_good"))
out["snapshot"] = {str(f.relative_to(snap)): hashlib.sha256(f.read_bytes()).hexdigest()
                   for f in snap.rglob("*") if f.is_file()}
"""


def sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_real_hf_xet_downloads_from_the_cas(emu: HubEmulator, tmp_path: Path) -> None:
    # hf_xet's Rust runtime runs in a subprocess with its own HF_HOME, bounded by a timeout.
    out = run_client(emu.url, XET_SCRIPT, tmp_path / "home", timeout=60)
    assert out["weights"] == sha(RANDOM)
    assert out["snapshot"] == {path: sha(data) for path, data in FILES.items()}
    reconstructions = [r for r in emu.requests if r.origin == "cdn" and "/v1/reconstructions/" in r.path]
    xorbs = [r for r in emu.requests if r.origin == "cdn" and r.path.startswith("/xorbs/default/")]
    assert {r.path.rsplit("/", 1)[1] for r in reconstructions} == {
        xet_hash_of(emu, p) for p in FILES if p != "config.json"
    }
    assert all(r.headers["authorization"].startswith("Bearer xet_") for r in reconstructions)
    assert xorbs and all("authorization" not in r.headers for r in xorbs)
    assert not any(r.path.startswith("/xet-bridge-us/") for r in emu.requests)  # no plain LFS download


def test_real_hf_xet_retries_a_dropped_xorb_body(emu: HubEmulator, tmp_path: Path) -> None:
    emu.faults.drop_after(1000, path_contains="weights.safetensors", origin="cdn")
    script = """
import hashlib
from pathlib import Path
p = hf_hub_download("org/xet", "weights.safetensors", token="hf_good")
out["weights"] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
"""
    out = run_client(emu.url, script, tmp_path / "home", timeout=60)
    assert out["weights"] == sha(RANDOM)
    assert emu.count(origin="cdn", path_contains="/xorbs/default/") >= 2
