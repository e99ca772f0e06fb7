"""Keep-alive sequences: every kind of response followed by others on one connection.

A response that writes more (or fewer) bytes than its headers announce shifts every later response
on the connection by one: a client that reuses connections across files (aria2c, wget, hfd.sh,
requests sessions) would then store one file's bytes under another's name. Each body is checked by
its hash, and the connection must be the same one throughout.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import aiohttp
import pytest

from testbed.hubemu import HubEmulator, git_blob_sha1, sha256_hex
from testbed.mirror_server import MirrorThread
from tests.support.mirrors import start_mirror

EMPTY = b""
CONFIG = b'{"model_type": "tiny", "hidden_size": 8}'
README = b"# a model\n" * 40
WEIGHTS = os.urandom(700_000)  # LFS (over the emulator's threshold)
FILES = {"empty.txt": EMPTY, "config.json": CONFIG, "README.md": README, "w.safetensors": WEIGHTS}


@dataclass
class Step:
    method: str
    path: str
    status: int
    body: bytes | None = None  # expected body (None: not checked, but read in full)
    headers: dict[str, str] = field(default_factory=dict)
    data: bytes | None = None


def steps() -> list[Step]:
    base = "/org/m/resolve/main"
    weights_etag = f'"{sha256_hex(WEIGHTS)}"'
    config_etag = f'"{git_blob_sha1(CONFIG)}"'
    form = urlencode([("paths", "config.json"), ("paths", "w.safetensors"), ("expand", "false")]).encode()
    return [
        Step("GET", f"{base}/empty.txt", 200, EMPTY),
        Step("GET", f"{base}/config.json", 200, CONFIG),
        Step("GET", f"{base}/README.md", 200, README),
        Step("HEAD", f"{base}/empty.txt", 200, b""),
        Step("GET", f"{base}/w.safetensors", 200, WEIGHTS),
        Step("GET", f"{base}/empty.txt", 200, EMPTY),
        Step("HEAD", f"{base}/w.safetensors", 200, b""),
        Step("GET", f"{base}/w.safetensors", 206, WEIGHTS[1000:2000], {"Range": "bytes=1000-1999"}),
        Step("GET", f"{base}/w.safetensors", 206, WEIGHTS[-10:], {"Range": "bytes=-10"}),
        Step("GET", f"{base}/config.json", 206, CONFIG[5:], {"Range": "bytes=5-"}),
        Step("GET", f"{base}/empty.txt", 200, EMPTY, {"Range": "bytes=0-"}),  # nothing to satisfy: 416 or 200
        Step("GET", f"{base}/config.json", 416, None, {"Range": "bytes=99999-"}),
        Step("GET", f"{base}/config.json", 304, b"", {"If-None-Match": config_etag}),
        Step("GET", f"{base}/w.safetensors", 304, b"", {"If-None-Match": weights_etag}),
        Step("GET", f"{base}/w.safetensors", 412, None, {"If-Match": '"0000"'}),
        Step("GET", f"{base}/w.safetensors", 200, WEIGHTS, {"If-Match": weights_etag}),
        Step("GET", f"{base}/config.json", 200, CONFIG, {"If-Range": '"stale"', "Range": "bytes=3-"}),
        Step("GET", f"{base}/missing.bin", 404),
        Step("HEAD", f"{base}/missing.bin", 404, b""),
        Step("GET", "/org/nope/resolve/main/config.json", 401),
        Step("GET", f"{base}/../etc/passwd", 400),
        Step("POST", f"{base}/config.json", 405, None, {"Content-Type": "text/plain"}, b"x"),
        Step("DELETE", f"{base}/config.json", 405),
        Step("GET", "/api/models/org/m", 200),
        Step("GET", "/api/models/org/m/revision/main", 200),
        Step("GET", "/api/models/org/m/tree/main?recursive=true", 200),
        Step("GET", "/api/models/org/m/tree/main/nope", 404),
        Step(
            "POST",
            "/api/models/org/m/paths-info/main",
            200,
            None,
            {"Content-Type": "application/x-www-form-urlencoded"},
            form,
        ),
        Step("GET", "/api/models/org/m/refs", 200),
        Step("GET", "/api/models/org/m/commits/main", 200),
        Step("GET", "/api/models/org/nope", 401),
        Step("GET", "/no/such/route/at/all", 404),
        Step("GET", "/healthz", 200),
        Step("GET", "/metrics", 200),
        Step("GET", f"{base}/empty.txt", 200, EMPTY),
        Step("GET", f"{base}/config.json", 200, CONFIG),
    ]


def _check(step: Step, status: int, body: bytes, where: str) -> None:
    if step.status == 200 and step.path.endswith("empty.txt") and "Range" in step.headers:
        assert status in (200, 416), where  # a range of an empty file: whole (empty) body or 416
    else:
        assert status == step.status, f"{where}: {body[:200]!r}"
    if step.body is not None and status < 300:
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(step.body).hexdigest(), where
    if status >= 400 and step.method != "HEAD" and status != 405:
        json.loads(body)  # every error body is the Hub's JSON, never a fragment of another answer


def _run_on_one_connection(url: str, sequence: list[Step]) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.connect()
    sock = conn.sock
    try:
        for index, step in enumerate(sequence):
            conn.putrequest(step.method, step.path, skip_accept_encoding=True)
            for name, value in step.headers.items():
                conn.putheader(name, value)
            if step.data is not None:
                conn.putheader("Content-Length", str(len(step.data)))
            conn.endheaders(step.data)
            resp = conn.getresponse()
            body = resp.read()
            _check(step, resp.status, body, f"step {index} {step.method} {step.path}")
            assert not resp.will_close, f"step {index}: the mirror closed a healthy keep-alive connection"
            assert conn.sock is sock, f"step {index}: the connection was replaced"
    finally:
        conn.close()


@pytest.fixture
def repo(hub: HubEmulator) -> Iterator[None]:
    hub.add_repo("model", "org/m", FILES)
    yield


def test_every_kind_of_response_on_one_connection_cold_then_warm(repo: None, mirror: MirrorThread) -> None:
    _run_on_one_connection(mirror.url, steps())  # cold: fills, misses and first answers
    mirror.settle()
    _run_on_one_connection(mirror.url, steps())  # warm: sendfile from the cache


def test_curl_stores_each_file_under_its_own_name(repo: None, mirror: MirrorThread, tmp_path: Path) -> None:
    """The attack report's reproduction: curl with several URLs reuses one connection."""
    import subprocess

    base = f"{mirror.url}/org/m/resolve/main"
    for _ in range(2):  # cold, then cached
        names = ["empty.txt", "config.json", "README.md", "w.safetensors", "empty.txt", "README.md"]
        cmd = ["curl", "-sS", "--fail"]
        for i, name in enumerate(names):
            cmd += ["-o", str(tmp_path / f"{i}-{name}"), f"{base}/{name}"]
        subprocess.run(cmd, check=True, timeout=60)
        for i, name in enumerate(names):
            assert (tmp_path / f"{i}-{name}").read_bytes() == FILES[name], name
        mirror.settle()


async def test_shuffled_sequences_through_a_pooled_client(repo: None, mirror: MirrorThread) -> None:
    """150 requests in random order through one pooled connection: every body is its own file's."""
    rng = random.Random(1234)
    sequence = [
        s for s in steps() if s.method in ("GET", "HEAD") and s.path.startswith("/org/m/resolve") and ".." not in s.path
    ]
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        for index in range(150):
            step = rng.choice(sequence)
            async with session.request(step.method, mirror.url + step.path, headers=step.headers) as resp:
                body = await resp.read()
                _check(step, resp.status, body, f"request {index} {step.method} {step.path} {step.headers}")


def test_keepalive_on_s3_backend(hub: HubEmulator, tmp_path: Path, s3_settings: dict[str, object]) -> None:
    hub.add_repo("model", "org/m", FILES)
    server = start_mirror(hub.url, tmp_path / "c", storage=s3_settings)
    try:
        _run_on_one_connection(server.url, steps())
        server.settle()
        _run_on_one_connection(server.url, steps())
    finally:
        server.stop()
