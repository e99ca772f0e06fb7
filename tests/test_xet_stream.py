"""A cold file's chunks reach Xet clients while its fill runs, each term only once its bytes are verified.

The fill verifies a term's bytes before the file is complete when they were decoded from a xorb
range that hashes to the xorb's hash (the whole xorb, intact) or read from a verified cached blob
(cache/blobs/xetplan.py); anything else waits for the file's sha256. The emulator's xorbs are made
small here so that one file spans several, and one xorb's fetch is held back so the fill is still
running while the others are served.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from mirror.cache import keys
from mirror.cache.blobs.xetplan import ChunkMap, PlannedTerm
from mirror.cache.metadata.entries import FileEntry
from mirror.config import load_config
from mirror.hub import xetchunks, xetserve
from mirror.hub.appkeys import CONFIG, XET_SECRET
from mirror.repo import RepoRef
from mirror.storage.configured import build_storage
from mirror.xet import tokens
from mirror.xet.format import decode_range
from testbed.hubemu import HubEmulator, Synthetic
from testbed.hubemu.xet import format as emu_format
from testbed.mirror_server import MirrorProcess, MirrorThread, free_port
from tests.support.http import send
from tests.support.mirrors import start_mirror
from tests.support.storage_faults import FaultyStorage

SIZE = 4 * 1024 * 1024
HELD = 4.0  # seconds the emulator holds back the last xorb's bytes


@pytest.fixture
def small_xorbs(monkeypatch: pytest.MonkeyPatch) -> None:
    # ~64 chunks of ~64 KiB: 4 xorbs of 16 chunks, so one file's fill has several xorbs to verify.
    monkeypatch.setattr(emu_format, "XORB_MAX_CHUNKS", 16)


@pytest.fixture
def serving(hub: HubEmulator, tmp_path: Path, small_xorbs: None) -> Iterator[MirrorThread]:
    server = start_mirror(hub.url, tmp_path / "cache", upstream={"xet": True}, hub={"xet": "serve"})
    yield server
    server.stop()


def cas_session(mirror: MirrorThread, repo: str, path: str) -> tuple[str, dict[str, str]]:
    """The file's Xet hash and the CAS token header, as hf_xet gets them from the mirror."""
    status, headers, _ = send(mirror.url, "HEAD", f"/{repo}/resolve/main/{path}")
    assert status == 200, headers
    token = json.loads(send(mirror.url, "GET", f"/api/models/{repo}/xet-read-token/main")[2])["accessToken"]
    return headers["X-Xet-Hash"], {"Authorization": f"Bearer {token}"}


def chunk_urls(reconstruction: dict[str, Any]) -> list[str]:
    """One URL per term, in term order (the path and query on the mirror)."""
    urls = []
    for term in reconstruction["terms"]:
        for fetch in reconstruction["fetch_info"][term["hash"]]:
            if fetch["range"] == term["range"]:
                parts = urlsplit(fetch["url"])
                urls.append(f"{parts.path}?{parts.query}")
    assert len(urls) == len(reconstruction["terms"])
    return urls


def term_bytes(data: bytes, reconstruction: dict[str, Any], index: int) -> bytes:
    offset = sum(t["unpacked_length"] for t in reconstruction["terms"][:index])
    return data[offset : offset + reconstruction["terms"][index]["unpacked_length"]]


def get_chunks(mirror: MirrorThread, path: str) -> tuple[int, bytes]:
    """GET a chunk URL: the status and the decoded chunks (status 0 when the answer was cut)."""
    try:
        status, _, body = send(mirror.url, "GET", path)
    except (ConnectionError, http.client.HTTPException):
        return 0, b""
    return status, b"".join(decode_range(body)) if status == 200 else body


def add_file(hub: HubEmulator, data: bytes) -> list[str]:
    """A repo with `data` at w.bin; the hashes of its xorbs in file order."""
    repo = hub.add_repo("model", "org/m", {"w.bin": data}, lfs=["w.bin"])
    layout = repo.commits[repo.head()].files["w.bin"].xet
    assert layout is not None
    xorbs = [term.xorb.hash for term in layout.terms(0, len(data) - 1)[1]]
    assert len(set(xorbs)) >= 3, "the file should span several xorbs"
    return xorbs


def test_chunks_flow_while_the_fill_runs(hub: HubEmulator, serving: MirrorThread) -> None:
    data = os.urandom(SIZE)
    xorbs = add_file(hub, data)
    hub.faults.delay(HELD, path_contains=xorbs[-1], origin="cdn", times=1)
    xet_hash, auth = cas_session(serving, "org/m", "w.bin")
    started = time.monotonic()
    status, _, body = send(serving.url, "GET", f"/xet/v1/reconstructions/{xet_hash}", auth)
    assert status == 200
    reconstruction = json.loads(body)
    urls = chunk_urls(reconstruction)
    # The first term arrives, whole and right, while the last xorb is still held back upstream.
    status, chunks = get_chunks(serving, urls[0])
    assert status == 200 and chunks == term_bytes(data, reconstruction, 0)
    assert time.monotonic() - started < HELD and serving.fills_in_flight() == 1
    # The last term waits for its xorb, then comes verified too.
    status, chunks = get_chunks(serving, urls[-1])
    assert status == 200 and chunks == term_bytes(data, reconstruction, len(urls) - 1)
    serving.settle()
    # Once published, the same URLs read the cached blob.
    assert serving.call(serving.storage.stat(keys.blob_key(hashlib.sha256(data).hexdigest()))) is not None
    for index, url in enumerate(urls):
        assert get_chunks(serving, url) == (200, term_bytes(data, reconstruction, index))


def test_a_corrupt_xorb_is_never_served(hub: HubEmulator, serving: MirrorThread) -> None:
    data = os.urandom(SIZE)
    xorbs = add_file(hub, data)
    # Random chunks are stored raw: a flipped byte decodes, and only the xorb's hash can tell.
    hub.faults.corrupt(path_contains=xorbs[1], origin="cdn", offset=1000, times=None)
    hub.faults.delay(HELD, path_contains=xorbs[-1], origin="cdn", times=1)
    xet_hash, auth = cas_session(serving, "org/m", "w.bin")
    reconstruction = json.loads(send(serving.url, "GET", f"/xet/v1/reconstructions/{xet_hash}", auth)[2])
    urls = chunk_urls(reconstruction)
    status, chunks = get_chunks(serving, urls[0])
    assert status == 200 and chunks == term_bytes(data, reconstruction, 0)
    index = next(i for i, t in enumerate(reconstruction["terms"]) if t["hash"] == xorbs[1])
    status, answer = get_chunks(serving, urls[index])
    assert status != 200 and answer != term_bytes(data, reconstruction, index)
    serving.settle()
    assert serving.call(serving.storage.stat(keys.blob_key(hashlib.sha256(data).hexdigest()))) is None
    assert serving.metric("hub_mirror_hash_mismatches_total") >= 1


def test_a_partial_xorb_waits_for_the_whole_file(
    hub: HubEmulator, serving: MirrorThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new revision reuses part of the old file's xorbs: on a mirror that never saw the old file,
    those ranges do not start at their xorb's first chunk, so no hash covers them before the file's."""
    old = os.urandom(SIZE)
    repo = hub.add_repo("model", "org/m", {"w.bin": old}, lfs=["w.bin"])
    # Change a few chunks in the middle of the old file's third xorb: the new file takes up that
    # xorb again a few chunks after the change, not at its first chunk.
    old_layout = repo.commits[repo.head()].files["w.bin"].xet
    assert old_layout is not None
    third = old_layout.terms(0, SIZE - 1)[1][2].xorb
    first, last = third.chunk_starts[0], third.chunk_starts[-1]
    cut = first + (last - first) // 3
    new = old[:cut] + os.urandom(100_000) + old[cut + 100_000 :]
    sha = repo.commit({"w.bin": new})
    layout = repo.commits[sha].files["w.bin"].xet
    assert layout is not None
    terms = layout.terms(0, SIZE - 1)[1]
    partial = next(i for i, t in enumerate(terms) if t.start > 0)
    hub.faults.delay(HELD, path_contains=terms[-1].xorb.hash, origin="cdn", times=1)
    monkeypatch.setattr(xetchunks, "COLD_WAIT", 1.0)
    status, headers, _ = send(serving.url, "HEAD", f"/org/m/resolve/{sha}/w.bin")
    token = json.loads(send(serving.url, "GET", f"/api/models/org/m/xet-read-token/{sha}")[2])["accessToken"]
    auth = {"Authorization": f"Bearer {token}"}
    reconstruction = json.loads(send(serving.url, "GET", f"/xet/v1/reconstructions/{headers['X-Xet-Hash']}", auth)[2])
    urls = chunk_urls(reconstruction)
    assert [t["range"]["start"] for t in reconstruction["terms"]] == [t.start for t in terms]
    # While the fill runs, the partial range is not served: 503 and Retry-After, never unverified bytes.
    status, answer_headers, _ = send(serving.url, "GET", urls[partial])
    assert status == 503 and answer_headers["Retry-After"]
    serving.settle()
    assert serving.metric("hub_mirror_xet_xorb_checks_total", result="unverified") >= 1
    assert serving.metric("hub_mirror_xet_xorb_checks_total", result="verified") >= 1
    assert get_chunks(serving, urls[partial]) == (200, term_bytes(new, reconstruction, partial))


def test_hf_xet_downloads_a_cold_file_while_it_is_filled(
    hub: HubEmulator, serving: MirrorThread, tmp_path: Path
) -> None:
    data = os.urandom(SIZE)
    xorbs = add_file(hub, data)
    hub.faults.delay(HELD, path_contains=xorbs[-1], origin="cdn", times=1)
    env = {**os.environ, "HF_ENDPOINT": serving.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    code = (
        "import hashlib, pathlib\n"
        "from huggingface_hub import hf_hub_download\n"
        "p = hf_hub_download('org/m', 'w.bin')\n"
        "print(hashlib.sha256(pathlib.Path(p).read_bytes()).hexdigest())\n"
    )
    client = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Chunks of the file are answered while its fill still waits for the last xorb.
        deadline = time.monotonic() + HELD
        served_early = False
        while time.monotonic() < deadline and not served_early:
            served_early = serving.metric("hub_mirror_requests_total", route="xet_chunks") > 0
            served_early = served_early and serving.fills_in_flight() == 1
            time.sleep(0.05)
        out, err = client.communicate(timeout=90)
    finally:
        client.kill()
    assert client.returncode == 0, err.decode()[-2000:]
    assert out.decode().split()[-1] == hashlib.sha256(data).hexdigest()
    assert served_early
    assert any(path.startswith("/xet/chunks/") for _, path in serving.requests)


def test_the_chunk_map_tiles_and_merges() -> None:
    chunks = ChunkMap()
    assert chunks.add(0, 10) and chunks.add(10, 5) and chunks.add(15, 7)
    assert not chunks.add(10, 5)  # a resumed range starts with chunks the fill had
    with pytest.raises(ValueError):
        chunks.add(30, 1)
    assert chunks.lengths(0, 22) == [10, 5, 7]
    assert chunks.lengths(10, 15) == [5]
    assert chunks.lengths(5, 15) is None and chunks.lengths(0, 12) is None and chunks.lengths(0, 23) is None
    chunks.verify(10, 15)
    assert chunks.verified(10, 15) and not chunks.verified(0, 15)
    chunks.verify(0, 10)
    chunks.verify(20, 22)
    assert chunks.verified(0, 15) and chunks.verified(3, 12) and not chunks.verified(0, 22)
    chunks.verify(15, 20)
    assert chunks.verified(0, 22)


def test_another_replica_serves_the_chunks_once_published(
    hub: HubEmulator, serving: MirrorThread, tmp_path: Path
) -> None:
    """Replicas on one storage: the chunk URLs of a reconstruction answered by one can reach another,
    which has no fill of the file; it serves them from storage once the filling replica published."""
    data = os.urandom(SIZE)
    xorbs = add_file(hub, data)
    hub.faults.delay(HELD, path_contains=xorbs[-1], origin="cdn", times=1)
    other = start_mirror(hub.url, tmp_path / "cache", upstream={"xet": True}, hub={"xet": "serve"})
    try:
        xet_hash, auth = cas_session(serving, "org/m", "w.bin")
        reconstruction = json.loads(send(serving.url, "GET", f"/xet/v1/reconstructions/{xet_hash}", auth)[2])
        urls = chunk_urls(reconstruction)
        for index in (0, len(urls) - 1):
            assert get_chunks(other, urls[index]) == (200, term_bytes(data, reconstruction, index))
        assert other.fills_started() == 0
    finally:
        other.stop()


def leased_replicas(hub: HubEmulator, cache: Path) -> list[MirrorThread]:
    """Two replicas serving Xet on one cache, with fill leases (server.advertise_url)."""
    mirrors = []
    for _ in range(2):
        port = free_port()
        server = {"advertise_url": f"http://127.0.0.1:{port}"}
        mirrors.append(start_mirror(hub.url, cache, port, upstream={"xet": True}, hub={"xet": "serve"}, server=server))
    return mirrors


def test_replicas_with_fill_leases_stream_a_cold_file_from_the_one_filling_it(
    hub: HubEmulator, tmp_path: Path, small_xorbs: None
) -> None:
    """With fill leases (server.advertise_url), a replica that gets a reconstruction or a chunk URL of
    a file another replica is filling relays that replica's answer: one fill, chunks while it runs."""
    data = os.urandom(SIZE)
    xorbs = add_file(hub, data)
    hub.faults.delay(HELD, path_contains=xorbs[-1], origin="cdn", times=1)
    mirrors = leased_replicas(hub, tmp_path / "cache")
    filling, other = mirrors
    try:
        xet_hash, auth = cas_session(filling, "org/m", "w.bin")
        started = time.monotonic()
        assert send(filling.url, "GET", f"/xet/v1/reconstructions/{xet_hash}", auth)[0] == 200
        status, _, body = send(other.url, "GET", f"/xet/v1/reconstructions/{xet_hash}", auth)
        assert status == 200
        reconstruction = json.loads(body)
        # Its URLs name the replica the client called, which relays them to the one filling.
        assert all(f["url"].startswith(other.url) for fs in reconstruction["fetch_info"].values() for f in fs)
        urls = chunk_urls(reconstruction)
        assert get_chunks(other, urls[0]) == (200, term_bytes(data, reconstruction, 0))
        assert time.monotonic() - started < HELD and filling.fills_in_flight() == 1
        assert get_chunks(other, urls[-1]) == (200, term_bytes(data, reconstruction, len(urls) - 1))
        assert other.fills_started() == 0 and filling.fills_started() == 1
        fetched = [r.path.split("?")[0].rsplit("/", 1)[-1] for r in hub.requests if r.path.startswith("/xorbs/")]
        assert sorted(fetched) == sorted(set(xorbs))  # each xorb once: one fill
    finally:
        for mirror in mirrors:
            mirror.stop()


def test_relayed_head_requests_carry_no_body_on_a_kept_alive_connection(
    hub: HubEmulator, tmp_path: Path, small_xorbs: None
) -> None:
    """HEAD of a reconstruction and of a chunk URL, on a replica that relays them to the one filling
    the file: headers only, so the GET after each on the same connection is answered right."""
    data = os.urandom(SIZE)
    xorbs = add_file(hub, data)
    hub.faults.delay(HELD, path_contains=xorbs[-1], origin="cdn", times=1)
    mirrors = leased_replicas(hub, tmp_path / "cache")
    filling, other = mirrors
    conn = connect(other.url)
    try:
        xet_hash, auth = cas_session(filling, "org/m", "w.bin")
        path = f"/xet/v1/reconstructions/{xet_hash}"
        assert send(filling.url, "GET", path, auth)[0] == 200
        assert ask_on(conn, "HEAD", path, auth) == (200, b"")
        status, body = ask_on(conn, "GET", path, auth)
        assert status == 200
        reconstruction = json.loads(body)
        first = chunk_urls(reconstruction)[0]
        assert ask_on(conn, "HEAD", first) == (200, b"")
        status, body = ask_on(conn, "GET", first)
        assert status == 200 and b"".join(decode_range(body)) == term_bytes(data, reconstruction, 0)
        assert other.fills_started() == 0 and filling.fills_in_flight() == 1  # relayed while it fills
    finally:
        conn.close()
        for mirror in mirrors:
            mirror.stop()


def test_touching_ranges_of_a_xorb_are_merged_into_runs_of_terms() -> None:
    """hf_xet joins consecutive terms of a xorb into one fetch: fetch_info must hold one range for it."""

    def term(xorb: str, start: int, end: int) -> PlannedTerm:
        return PlannedTerm(xorb, start, end, 0, end - start)

    terms = [term("a", 0, 5), term("b", 0, 3), term("a", 5, 9), term("a", 0, 9), term("a", 12, 14), term("c", 2, 6),
             term("c", 4, 8)]  # fmt: skip
    groups = xetserve._merged(terms, [i for i, t in enumerate(terms) if t.xorb == "a"])
    assert groups == [[3, 0, 2], [4]]  # [0, 9) from three terms, [12, 14) apart
    assert xetserve._tiling(terms, groups[0]) == [3]  # the whole range is one term
    assert xetserve._tiling(terms, [0, 2]) == [0, 2]
    # Ranges that overlap without meeting at a term boundary cannot be tiled by whole terms.
    assert xetserve._merged(terms, [5, 6]) == [[5, 6]] and xetserve._tiling(terms, [5, 6]) is None


def test_hf_xet_downloads_a_file_that_repeats_xorbs_through_the_mirror(
    hub: HubEmulator, serving: MirrorThread, tmp_path: Path
) -> None:
    """A file whose terms take the same xorbs again, whole or by halves (the emulator's synthetic
    file): the mirror's fetch_info holds one range per run of touching ranges, and hf_xet rebuilds
    the whole file from the mirror, cold and then warm."""
    synthetic = Synthetic(80 * 1024 * 1024, seed=5)
    hub.add_repo("model", "org/m", {"w.bin": synthetic}, lfs=["w.bin"])
    data = synthetic.read(0, synthetic.size)
    xet_hash, auth = cas_session(serving, "org/m", "w.bin")
    reconstruction = json.loads(send(serving.url, "GET", f"/xet/v1/reconstructions/{xet_hash}", auth)[2])
    assert len({t["hash"] for t in reconstruction["terms"]}) < len(reconstruction["terms"])  # xorbs repeat
    for ranges in reconstruction["fetch_info"].values():
        spans = sorted((r["range"]["start"], r["range"]["end"]) for r in ranges)
        assert all(a[1] < b[0] for a, b in itertools.pairwise(spans)), spans  # merged: none touch
    for run in ("cold", "warm"):
        env = {**os.environ, "HF_ENDPOINT": serving.url, "HF_HOME": str(tmp_path / run)}
        code = (
            "import hashlib, pathlib\nfrom huggingface_hub import hf_hub_download\n"
            "print(hashlib.sha256(pathlib.Path(hf_hub_download('org/m', 'w.bin')).read_bytes()).hexdigest())\n"
        )
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split()[-1] == hashlib.sha256(data).hexdigest()
        serving.settle()
    # Merging left fewer ranges to fetch than the terms name (a xorb's halves go with the whole).
    named = {(t["hash"], t["range"]["start"], t["range"]["end"]) for t in reconstruction["terms"]}
    assert sum(len(ranges) for ranges in reconstruction["fetch_info"].values()) < len(named)


def test_chunks_stream_while_filling_into_s3(
    hub: HubEmulator, tmp_path: Path, small_xorbs: None, s3_settings: dict[str, object]
) -> None:
    """On S3 a fill's bytes leave the writer's in-memory window (two 5 MiB parts) as parts go up: a
    term asked for after that, while the fill has long to run, is fetched again over HTTP and sent
    block by block once each block matches the fill's (the fill's catch-up), never unchecked."""
    data = os.urandom(48 * 1024 * 1024)
    add_file(hub, data)
    hub.faults.throttle(2 * 1024 * 1024, path_contains="/xorbs/", origin="cdn")  # ~8 s with 3 ranges at once
    mirror = start_mirror(hub.url, tmp_path / "work", upstream={"xet": True}, hub={"xet": "serve"}, storage=s3_settings)
    try:
        xet_hash, auth = cas_session(mirror, "org/m", "w.bin")
        reconstruction = json.loads(send(mirror.url, "GET", f"/xet/v1/reconstructions/{xet_hash}", auth)[2])
        urls = chunk_urls(reconstruction)
        deadline = time.monotonic() + 30
        while mirror.metric("hub_mirror_xet_fill_bytes_total", source="upstream") < 16 * 1024 * 1024:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert get_chunks(mirror, urls[0]) == (200, term_bytes(data, reconstruction, 0))
        assert mirror.fills_in_flight() == 1
        assert mirror.metric("hub_mirror_fill_catch_up_bytes_total") > 0
        mirror.settle()
        for index in (0, len(urls) // 2, len(urls) - 1):
            assert get_chunks(mirror, urls[index]) == (200, term_bytes(data, reconstruction, index))
    finally:
        mirror.stop()


def test_a_long_run_of_terms_is_split_across_urls() -> None:
    """A xorb taken a chunk at a time by hundreds of terms (another xorb's chunks between them) merges
    into one range of hundreds of terms; no URL may name more than MAX_RUN of them (request lines
    are bounded), so the range is listed in pieces that still hold every term."""
    terms = []
    for i in range(600):
        terms.append(PlannedTerm("a" * 64, i, i + 1, 2 * i * 10, 10))
        terms.append(PlannedTerm("b" * 64, i, i + 1, (2 * i + 1) * 10, 10))
    app = web.Application()
    app[CONFIG] = load_config(None, {"server": {"public_url": "http://mirror"}}, environ={})
    request = make_mocked_request("GET", "/xet/v1/reconstructions/x", app=app)
    entry = FileEntry(RepoRef("model", "org/m"), "c" * 40, "w.bin", "e" * 64, 12_000, "f" * 64)
    answer = xetserve._reconstruction_json(request, b"k" * 32, entry, terms, (0, 12_000))
    for entries in answer["fetch_info"].values():
        assert all(len(urlsplit(e["url"]).path.rsplit("/", 1)[1].split("+")) <= xetchunks.MAX_RUN for e in entries)
        spans = sorted((e["range"]["start"], e["range"]["end"]) for e in entries)
        assert spans[0][0] == 0 and spans[-1][1] == 600 and all(a[1] == b[0] for a, b in itertools.pairwise(spans))


def connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)


def ask_on(
    conn: http.client.HTTPConnection, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One request on a kept-alive connection: a body longer or shorter than announced (or one
    sent after a HEAD) shows up as a wrong answer to the next request on it."""
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    assert resp.getheader("Connection", "").lower() != "close", (path, resp.status)
    if method == "GET" and resp.getheader("Content-Length") is not None:
        assert len(body) == int(resp.getheader("Content-Length"))
    return resp.status, body


def test_every_kind_of_cas_answer_on_one_keep_alive_connection(
    hub: HubEmulator, serving: MirrorThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole, partial, empty and refused answers of the CAS routes, in turn on one connection, while
    a fill runs and after: each answer is exactly its own bytes (a stray byte would shift the rest)."""
    data = os.urandom(SIZE)
    xorbs = add_file(hub, data)
    hub.faults.delay(2 * HELD, path_contains=xorbs[-1], origin="cdn", times=1)  # past the 503 below
    monkeypatch.setattr(xetchunks, "COLD_WAIT", 1.0)
    xet_hash, auth = cas_session(serving, "org/m", "w.bin")
    conn = connect(serving.url)

    def ask(method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        return ask_on(conn, method, path, headers)

    try:
        status, body = ask("GET", f"/xet/v1/reconstructions/{xet_hash}", auth)
        assert status == 200
        reconstruction = json.loads(body)
        urls = chunk_urls(reconstruction)
        first = term_bytes(data, reconstruction, 0)
        status, body = ask("GET", urls[0])
        assert status == 200 and b"".join(decode_range(body)) == first
        status, body = ask("GET", urls[0], {"Range": "bytes=0-99"})
        assert status == 206 and len(body) == 100
        assert ask("HEAD", urls[0]) == (200, b"")
        assert ask("GET", urls[0].replace("sig=", "sig=0"))[0] == 403
        secret = serving.call(serving.part(XET_SECRET).get())
        path, expires = f"/xet/chunks/{hashlib.sha256(data).hexdigest()}/999", int(time.time()) + 60
        assert ask("GET", f"{path}?expires={expires}&sig={tokens.sign_path(secret, path, expires)}")[0] == 404
        assert ask("GET", urls[-1])[0] == 503  # its xorb is still held back upstream
        assert ask("GET", f"/xet/v2/reconstructions/{xet_hash}", auth)[0] == 404
        assert ask("GET", f"/xet/v1/reconstructions/{xet_hash}", {"Authorization": "Bearer forged"})[0] == 401
        serving.settle()
        status, body = ask("GET", urls[-1])
        assert status == 200 and b"".join(decode_range(body)) == term_bytes(data, reconstruction, len(urls) - 1)
        status, body = ask("GET", urls[0])
        assert status == 200 and b"".join(decode_range(body)) == first
    finally:
        conn.close()


def test_a_disk_that_fills_mid_fill_ends_every_chunk_request(
    hub: HubEmulator, tmp_path: Path, small_xorbs: None
) -> None:
    """Storage failing partway through a cold file's fill: the chunk requests waiting on it get a 503
    at once (not after their wait), nothing is kept, and the next request fills the file anew."""
    data = os.urandom(SIZE)
    add_file(hub, data)
    overrides = {
        "upstream": {"url": hub.url, "xet": True, "resume_attempts": 2, "probe_interval": 0},
        "cache": {"dir": str(tmp_path / "cache"), "storage_timeout": 2},
        "hub": {"xet": "serve"},
    }
    config = load_config(None, overrides, environ={})
    store = FaultyStorage(build_storage(config))
    store.faults.slow(0.05)
    store.faults.fail_after(2 * 1024 * 1024)
    mirror = MirrorThread(config, storage=store).start()
    try:
        xet_hash, auth = cas_session(mirror, "org/m", "w.bin")
        reconstruction = json.loads(send(mirror.url, "GET", f"/xet/v1/reconstructions/{xet_hash}", auth)[2])
        urls = chunk_urls(reconstruction)
        started = time.monotonic()
        status, _ = get_chunks(mirror, urls[-1])
        assert status == 503 and time.monotonic() - started < 15
        mirror.settle()
        assert not list((tmp_path / "cache" / "staging").glob("*"))
        assert mirror.call(mirror.storage.stat(keys.blob_key(hashlib.sha256(data).hexdigest()))) is None
        store.faults.clear()
        reconstruction = json.loads(send(mirror.url, "GET", f"/xet/v1/reconstructions/{xet_hash}", auth)[2])
        urls = chunk_urls(reconstruction)
        for index in (0, len(urls) - 1):
            assert get_chunks(mirror, urls[index]) == (200, term_bytes(data, reconstruction, index))
    finally:
        store.faults.clear()
        mirror.stop()


def test_a_blob_is_never_visible_before_its_terms(hub: HubEmulator, tmp_path: Path, small_xorbs: None) -> None:
    """Readers that find a blob in storage read its split record next: the fill records the terms
    before it publishes the blob, so a reconstruction asked in between is answered, never a 404."""
    data = os.urandom(SIZE)
    add_file(hub, data)
    overrides = {
        "upstream": {"url": hub.url, "xet": True, "probe_interval": 0},
        "cache": {"dir": str(tmp_path / "cache"), "storage_timeout": 20},
        "hub": {"xet": "serve"},
    }
    config = load_config(None, overrides, environ={})
    store = FaultyStorage(build_storage(config))
    store.faults.hang("put_bytes", key_contains="xet/files/")
    mirror = MirrorThread(config, storage=store).start()
    blob = keys.blob_key(hashlib.sha256(data).hexdigest())
    try:
        xet_hash, auth = cas_session(mirror, "org/m", "w.bin")
        assert send(mirror.url, "GET", f"/xet/v1/reconstructions/{xet_hash}", auth)[0] == 200
        deadline = time.monotonic() + 20
        while mirror.metric("hub_mirror_xet_fill_bytes_total", source="upstream") < len(data):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # every byte is in: the fill now records the terms (held here), then publishes
        assert mirror.call(mirror.storage.stat(blob)) is None
        assert send(mirror.url, "GET", f"/xet/v1/reconstructions/{xet_hash}", auth)[0] == 200
        store.faults.clear()
        mirror.settle()
        assert mirror.call(mirror.storage.stat(blob)) is not None
        reconstruction = json.loads(send(mirror.url, "GET", f"/xet/v1/reconstructions/{xet_hash}", auth)[2])
        urls = chunk_urls(reconstruction)
        assert get_chunks(mirror, urls[-1]) == (200, term_bytes(data, reconstruction, len(urls) - 1))
    finally:
        store.faults.clear()
        mirror.stop()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_signal_mid_xet_fill_leaves_a_sound_cache(
    hub: HubEmulator, tmp_path: Path, small_xorbs: None, sig: signal.Signals
) -> None:
    """A signal while a cold file's chunks stream to a Xet client: after a restart nothing partial is
    visible (no staging, no blob or the verified one), and the file is served right again, by chunks."""
    data = os.urandom(3 * SIZE)
    add_file(hub, data)
    hub.faults.throttle(1024 * 1024, path_contains="/xorbs/", origin="cdn")  # the fill runs for seconds
    cache = tmp_path / "cache"
    env = {"HUB_MIRROR_UPSTREAM_XET": "true", "HUB_MIRROR_HUB_XET": "serve"}
    args = ("--upstream", hub.url, "--cache-dir", str(cache))
    mirror = MirrorProcess(*args, env=env).wait_ready()
    try:
        xet_hash, auth = cas_session(mirror, "org/m", "w.bin")  # type: ignore[arg-type]
        reconstruction = json.loads(send(mirror.url, "GET", f"/xet/v1/reconstructions/{xet_hash}", auth)[2])
        assert get_chunks(mirror, chunk_urls(reconstruction)[0])[0] == 200  # type: ignore[arg-type]
        assert mirror.metric("hub_mirror_fills_in_flight") == 1  # chunks went out; the fill goes on
        mirror.proc.send_signal(sig)
        mirror.proc.wait(30)
    finally:
        if mirror.proc.poll() is None:
            mirror.kill()
        hub.faults.clear()
    restarted = time.time()
    mirror = MirrorProcess(*args, env=env).wait_ready()
    try:
        staging = cache / "staging"
        assert not [p for p in staging.glob("*") if p.stat().st_mtime < restarted]
        blob = cache / "objects" / keys.blob_key(hashlib.sha256(data).hexdigest())
        assert not blob.exists() or blob.read_bytes() == data
        xet_hash, auth = cas_session(mirror, "org/m", "w.bin")  # type: ignore[arg-type]
        reconstruction = json.loads(send(mirror.url, "GET", f"/xet/v1/reconstructions/{xet_hash}", auth)[2])
        urls = chunk_urls(reconstruction)
        rebuilt = b"".join(get_chunks(mirror, url)[1] for url in urls)  # type: ignore[arg-type]
        assert rebuilt == data
    finally:
        mirror.stop()
