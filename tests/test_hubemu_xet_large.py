"""A synthetic LFS file past the Hub's 50 GB plain-download limit (`testbed.hubemu.Synthetic`): its layout and
hashes, every emulator route a client uses for it, and the real hf_xet client downloading it until stopped.

huggingface_hub refuses a plain HTTP download above 50 * 1000**3 bytes, so only the Xet path can fetch this file.
The file is a seeded sequence of a few distinct xorbs; nothing holds it whole. Its sha256 (the LFS oid, which the
commit id depends on) takes ~30 s: the module's Synthetic starts it at once when a selected test needs the repo,
so that it runs while the unit tests do.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from mirror.xet import format as mirror_fmt
from testbed.hubemu import HubEmulator, Synthetic
from testbed.hubemu.xet import format as fmt
from testbed.hubemu.xet.synthetic import SyntheticLayout
from tests.support.client import PRELUDE
from tests.support.http import send, send_url
from tests.support.mirrors import start_mirror

SIZE = 50_100_000_001  # past huggingface_hub's MAX_HTTP_DOWNLOAD_SIZE (50 * 1000**3): Xet only
SEED = 20261201
REPO = "org/huge"
PATH = "huge.safetensors"
MiB = 1 << 20


@pytest.fixture(scope="module")
def huge(request: pytest.FixtureRequest) -> Synthetic:
    synthetic = Synthetic(SIZE, SEED)
    selected = [item for item in request.session.items if getattr(item, "module", None) is request.module]
    if any("huge_hub" in getattr(item, "fixturenames", ()) for item in selected):
        synthetic.prepare()  # the ~30 s sha256 overlaps the tests that do not need it
    return synthetic


@pytest.fixture(scope="module")
def huge_hub(huge: Synthetic) -> Iterator[HubEmulator]:
    with HubEmulator() as emu:
        emu.add_repo("model", REPO, {PATH: huge, "config.json": b"{}"}, lfs=[PATH])  # waits for the sha256
        yield emu


def decoded(xorb_body: bytes, offsets: tuple[int, ...], start: int, end: int) -> list[bytes]:
    """The chunks [start, end) of a serialised xorb, decoded as a client does."""
    return fmt.decode_chunks(xorb_body[offsets[start] : offsets[end]])


def rebuild_from_layout(layout: SyntheticLayout, start: int, end: int) -> bytes:
    """Bytes [start, end) rebuilt from the layout's terms and its serialised xorbs, not from its source bytes."""
    offset, terms = layout.terms(start, end - 1)
    out = bytearray()
    for term in terms:
        data = b"".join(decoded(term.xorb.body, term.xorb.offsets, term.start, term.end))
        assert len(data) == term.unpacked_length
        out += data
    return bytes(out[offset : offset + end - start])


# -- the layout --------------------------------------------------------------------------------------------------


def test_small_synthetic_is_what_a_real_upload_would_be() -> None:
    """On a file small enough to hold: the real chunker cuts exactly the layout's chunks, the mirror's independent
    hashing gives the same Xet hash, and the sha256 is the sha256 of the bytes."""
    size = 20 * MiB + 12_345
    small = Synthetic(size, 3)
    content = small.read(0, size)
    assert len(content) == size and small.read(size - 10, size + 99) == content[-10:]
    assert b"".join(small.pieces(1000, 5 * MiB)) == content[1000 : 5 * MiB]
    assert small.sha256 == hashlib.sha256(content).hexdigest()

    layout = small.xet
    offset, terms = layout.terms(0, size - 1)
    assert offset == 0 and sum(t.unpacked_length for t in terms) == size
    boundaries, pos = [], 0
    for term in terms:
        starts = term.xorb.chunk_starts
        for index in range(term.start, term.end):
            pos += starts[index + 1] - starts[index]
            boundaries.append(pos)
    assert boundaries == fmt.chunk_ends(content)  # content-defined chunking finds the same cuts
    chunks = [content[s:e] for s, e in zip([0, *boundaries], boundaries, strict=False)]
    assert mirror_fmt.hash_to_str(mirror_fmt.file_hash_of_chunks(chunks)) == layout.hash
    assert len({t.xorb.hash for t in terms}) < len(terms)  # xorbs repeat: the file is deduplicated
    assert rebuild_from_layout(layout, 0, size) == content


def test_synthetic_must_be_lfs() -> None:
    emu = HubEmulator()  # never started: the repo is refused before anything is hashed
    with pytest.raises(ValueError, match="LFS"):
        emu.add_repo("model", "org/bad", {"notes.txt": Synthetic(10, 1)}, lfs=[])


def test_large_layout_tiles_the_file_and_hashes_are_real(huge: Synthetic) -> None:
    layout = huge.xet
    # Each distinct xorb, as served: its chunks decode to its bytes, within the spec's limits, and hash (by the
    # mirror's independent code) to the name it is served under.
    entries_of: dict[str, list[tuple[bytes, int]]] = {}
    for xorb in layout.xorbs:
        chunks = fmt.decode_chunks(xorb.body)
        assert b"".join(chunks) == xorb.source
        assert len(chunks) <= fmt.XORB_MAX_CHUNKS and len(xorb.body) <= fmt.XORB_MAX_BYTES
        assert all(0 < len(c) <= fmt.MAX_CHUNK for c in chunks)
        entries_of[xorb.hash] = [(fmt.chunk_hash(c), len(c)) for c in chunks]
        assert mirror_fmt.hash_to_str(mirror_fmt.xorb_hash(entries_of[xorb.hash])) == xorb.hash
    schemes = {fmt.ChunkHeader.unpack(x.body[:8]).scheme for x in layout.xorbs if len(x.body) > 1024}
    assert schemes == {fmt.Scheme.NONE, fmt.Scheme.LZ4, fmt.Scheme.BG4_LZ4}

    # The terms of the whole file tile it exactly, and its chunks are ones the chunker could cut.
    offset, terms = layout.terms(0, SIZE - 1)
    assert offset == 0 and sum(t.unpacked_length for t in terms) == SIZE
    entries: list[tuple[bytes, int]] = []
    for term in terms:
        own = entries_of[term.xorb.hash][term.start : term.end]
        assert term.unpacked_length == sum(size for _, size in own) > 0
        entries.extend(own)
    sizes = [size for _, size in entries]
    assert all(fmt.MIN_CHUNK <= s <= fmt.MAX_CHUNK for s in sizes[:-1]) and 0 < sizes[-1] <= fmt.MAX_CHUNK
    assert len(entries) == layout.chunk_count() > 700_000
    # The emulator hashes each distinct node of the repeating tree once; the plain construction must agree.
    assert fmt.hash_hex(fmt.file_hash(entries)) == layout.hash


def test_large_ranges_decode_to_the_generator(huge: Synthetic) -> None:
    layout = huge.xet
    rng = random.Random(7)
    boundary = layout.spans[len(layout.spans) // 2].start
    ranges = [
        (0, 100),
        (boundary - 70_000, boundary + 70_000),  # across a term boundary
        (SIZE - 300_000, SIZE),  # the file's end, with its short last chunk
        (SIZE - 1, SIZE),
    ]
    for _ in range(6):
        start = rng.randrange(SIZE)
        ranges.append((start, min(SIZE, start + rng.randrange(1, 6 * MiB))))
    for start, end in ranges:
        expected = huge.read(start, end)
        assert len(expected) == end - start
        assert rebuild_from_layout(layout, start, end) == expected, (start, end)


# -- the routes --------------------------------------------------------------------------------------------------


def _rebuild(answer: dict, length: int) -> bytes:
    """What a client does with a reconstruction: fetch each needed signed range once, decode, cut, concatenate."""
    bodies: dict[str, tuple[int, list[bytes]]] = {}
    out = bytearray()
    for term in answer["terms"]:
        start, end = term["range"]["start"], term["range"]["end"]
        info = next(
            i for i in answer["fetch_info"][term["hash"]] if i["range"]["start"] <= start and end <= i["range"]["end"]
        )
        if info["url"] not in bodies:
            first, last = info["url_range"]["start"], info["url_range"]["end"]
            status, _, body = send_url(info["url"], {"Range": f"bytes={first}-{last}"})
            assert status == 206 and len(body) == last - first + 1
            bodies[info["url"]] = (info["range"]["start"], fmt.decode_chunks(body))
        base, chunks = bodies[info["url"]]
        data = b"".join(chunks[start - base : end - base])
        assert len(data) == term["unpacked_length"]
        out += data
    skip = answer["offset_into_first_range"]
    return bytes(out[skip : skip + length])


def test_routes_serve_the_large_file(huge_hub: HubEmulator, huge: Synthetic) -> None:
    emu = huge_hub
    status, headers, _ = send_url(f"{emu.url}/{REPO}/resolve/main/{PATH}", method="HEAD")
    assert status == 302
    assert headers["X-Linked-Size"] == str(SIZE) and headers["X-Linked-Etag"] == f'"{huge.sha256}"'
    assert headers["X-Xet-Hash"] == huge.xet.hash and f"/v1/reconstructions/{huge.xet.hash}" in headers["Link"]

    # The CDN target serves any range of it (a client may not download it whole, but a Range is cheap).
    location = headers["Location"]
    status, cdn_headers, _ = send_url(location, method="HEAD")
    assert status == 200 and cdn_headers["Content-Length"] == str(SIZE)
    first = SIZE - 3 * MiB
    status, cdn_headers, body = send_url(location, {"Range": f"bytes={first}-"})
    assert status == 206 and cdn_headers["Content-Range"] == f"bytes {first}-{SIZE - 1}/{SIZE}"
    assert body == huge.read(first, SIZE)
    emu.faults.corrupt(PATH, times=1, offset=SIZE - 10, origin="cdn")  # faults use absolute offsets here too
    damaged = send_url(location, {"Range": f"bytes={SIZE - 100}-{SIZE - 1}"})[2]
    assert damaged[90] == body[-10] ^ 0xFF and damaged[:90] + damaged[91:] == body[-100:-10] + body[-9:]

    # The commit-pinned route serves LFS content too, through the same range reader.
    commit = headers["X-Repo-Commit"]
    status, _, tail = send_url(f"{emu.url}/api/resolve-cache/models/{REPO}/{commit}/{PATH}", {"Range": "bytes=-1000"})
    assert status == 206 and tail == body[-1000:]

    tree = json.loads(send_url(f"{emu.url}/api/models/{REPO}/tree/main")[2])
    entry = next(e for e in tree if e["path"] == PATH)
    assert entry["size"] == SIZE and entry["lfs"]["oid"] == huge.sha256 and entry["lfs"]["size"] == SIZE
    assert entry["xetHash"] == huge.xet.hash
    body = json.dumps({"paths": [PATH]}).encode()
    answer = send(emu.url, "POST", f"/api/models/{REPO}/paths-info/main", {"Content-Type": "application/json"}, body)
    assert answer[0] == 200 and json.loads(answer[2])[0]["xetHash"] == huge.xet.hash

    token = json.loads(send_url(f"{emu.url}/api/models/{REPO}/xet-read-token/main")[2])["accessToken"]
    auth = {"Authorization": f"Bearer {token}"}
    url = f"{emu.cdn_url}/v1/reconstructions/{huge.xet.hash}"
    # Near the end: the last terms, the short last chunk in its own xorb, a start inside a chunk.
    first, last = SIZE - 7_654_321, SIZE + 1000  # a Range past the end is cut to the file
    status, _, body = send_url(url, {**auth, "Range": f"bytes={first}-{last}"})
    answer = json.loads(body)
    assert status == 200 and answer["offset_into_first_range"] > 0 and len(answer["terms"]) >= 2
    assert _rebuild(answer, SIZE - first) == huge.read(first, SIZE)
    middle = 25_000_000_000
    answer = json.loads(send_url(url, {**auth, "Range": f"bytes={middle}-{middle + 9 * MiB - 1}"})[2])
    assert _rebuild(answer, 9 * MiB) == huge.read(middle, middle + 9 * MiB)

    # The whole file in one answer: terms that add up, and one merged fetch range per run of a xorb's chunks.
    answer = json.loads(send_url(url, auth)[2])
    assert answer["offset_into_first_range"] == 0 and sum(t["unpacked_length"] for t in answer["terms"]) == SIZE
    for entries in answer["fetch_info"].values():
        spans = sorted((e["range"]["start"], e["range"]["end"]) for e in entries)
        assert all(a[1] < b[0] for a, b in pairwise(spans))
    assert send_url(url, {**auth, "Range": f"bytes={SIZE}-{SIZE + 5}"})[0] == 416


# -- the real hf_xet client ----------------------------------------------------------------------------------

STOP_AFTER = 256 * MiB  # what the client must have written before it is stopped
WRITE_CAP = 1 << 30  # RLIMIT_FSIZE: past it a write fails (EFBIG), whatever happens to the test
CLIENT = f"""
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({WRITE_CAP}, {WRITE_CAP}))
{PRELUDE}
hf_hub_download("{REPO}", "{PATH}", token="hf_good")
"""


def _partial(home: Path) -> Path | None:
    for path in home.glob("hub/*/blobs/*.incomplete"):
        return path
    return None


def _written(home: Path) -> int:
    path = _partial(home)
    try:
        return path.stat().st_size if path is not None else 0
    except FileNotFoundError:
        return 0


def download_until_stopped(endpoint: str, huge: Synthetic, tmp_path: Path) -> None:
    """Run hf_hub_download of the huge file against `endpoint` until the client wrote STOP_AFTER
    bytes, then kill it; check that it did not end by itself and wrote the file's start exactly."""
    free = shutil.disk_usage(tmp_path).free
    if free < 5 * 10**9:
        pytest.skip(f"needs 5 GB free under {tmp_path} for the client's partial download, has {free}")
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        {
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(home),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_ETAG_TIMEOUT": "10",
            "HF_XET_CHUNK_CACHE_SIZE_BYTES": "0",  # no second copy of what it fetches
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )
    log = tmp_path / "client.log"
    started = time.monotonic()
    try:
        with log.open("wb") as stderr:
            # Its own process group, so the kill reaches hf_xet's threads and anything it started.
            proc = subprocess.Popen(
                [sys.executable, "-c", CLIENT],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
            try:
                while _written(home) < STOP_AFTER and proc.poll() is None and time.monotonic() - started < 60:
                    time.sleep(0.02)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        output = log.read_text(errors="replace")
        written = _written(home)
        assert proc.returncode == -signal.SIGKILL, f"the client ended by itself ({proc.returncode}):\n{output[-4000:]}"
        assert written >= STOP_AFTER, f"the client wrote {written} bytes in 60 s:\n{output[-4000:]}"
        assert "Traceback" not in output, output[-4000:]
        # What it wrote is the file's start, byte for byte.
        partial = _partial(home)
        assert partial is not None
        with partial.open("rb") as handle:
            pos = 0
            while piece := handle.read(16 * MiB):
                assert piece == huge.read(pos, pos + len(piece)), f"bytes at {pos} differ from the generator"
                pos += len(piece)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_real_hf_xet_takes_the_xet_path(huge_hub: HubEmulator, huge: Synthetic, tmp_path: Path) -> None:
    emu = huge_hub
    emu.clear_requests()
    download_until_stopped(emu.url, huge, tmp_path)

    requests = emu.requests
    hub = {(r.method, r.path.split("?")[0]) for r in requests if r.origin == "hub"}
    assert ("HEAD", f"/{REPO}/resolve/main/{PATH}") in hub
    assert all(path.startswith(f"/api/models/{REPO}/xet-read-token/") for method, path in hub if method == "GET")
    reconstructions = [r for r in requests if r.origin == "cdn" and r.path.startswith("/v1/reconstructions/")]
    xorbs = [r for r in requests if r.origin == "cdn" and r.path.startswith("/xorbs/default/")]
    assert reconstructions and all(r.path == f"/v1/reconstructions/{huge.xet.hash}" for r in reconstructions)
    assert all(r.headers["authorization"].startswith("Bearer xet_") for r in reconstructions)
    assert xorbs and all(r.method == "GET" and "authorization" not in r.headers for r in xorbs)
    assert not any(r.path.startswith("/xet-bridge-us/") for r in requests)  # never the plain download
    spans = [r.headers["range"].removeprefix("bytes=").partition("-") for r in xorbs]
    assert sum(int(last) - int(first) + 1 for first, _, last in spans) > 0


def test_hf_xet_through_the_mirror_streams_a_file_over_50_gb(
    huge_hub: HubEmulator, huge: Synthetic, tmp_path: Path
) -> None:
    """The mirror as the client's CAS (`hub.xet: serve`) for a file it has never seen: the client
    takes the Xet path through the mirror and gets verified bytes while the mirror's fill runs,
    which it must, since over 50 GB neither the client nor the mirror could hold the file first."""
    emu = huge_hub
    emu.clear_requests()
    mirror = start_mirror(emu.url, tmp_path / "cache", upstream={"xet": True}, hub={"xet": "serve"})
    try:
        download_until_stopped(mirror.url, huge, tmp_path)
        assert mirror.fills_in_flight() == 1  # still filling: what the client got was streamed
        assert mirror.metric("hub_mirror_hash_mismatches_total") == 0
        # hf_xet fetches a xorb range once for every term of a segment that uses it: fewer bytes than it wrote.
        assert mirror.metric("hub_mirror_bytes_served_total", source="fill") > 0
        asked = {path.split("?")[0].split("/")[2] for _, path in mirror.requests if path.startswith("/xet/")}
        assert asked == {"v1", "chunks"} or asked == {"v1", "v2", "chunks"}
    finally:
        mirror.stop()
    # The client only ever talked to the mirror; the mirror fetched xorbs, never the plain file.
    requests = emu.requests
    assert not any(r.path.startswith("/xet-bridge-us/") for r in requests)
    assert not any(r.headers.get("user-agent", "").startswith("hf_xet") for r in requests)
    assert any(r.path.startswith("/xorbs/default/") for r in requests)
    # Stopping the mirror cancelled its fill and discarded what it had staged.
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*") if "staging" in p.parts)
