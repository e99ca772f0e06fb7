"""Bad input gets a clear 4xx and leaves the cache as it was."""

from __future__ import annotations

import http.client
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.hubemu import HubEmulator
from tests.mirror_server import MirrorThread

DATA = os.urandom(20_000)


def raw_request(base: str, method: str, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """Send `path` byte for byte: no client-side normalisation of dots or escapes."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for name, value in (headers or {}).items():
        conn.putheader(name, value)
    conn.endheaders()
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


BAD_PATHS = [
    "/org/m/resolve/main/../../../etc/passwd",
    "/org/m/resolve/main/%2e%2e/%2e%2e/etc/passwd",
    "/org/m/resolve/main/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "/org/m/resolve/main/sub/..%2F..%2Fw.bin",
    "/org/m/resolve/main/a%5C..%5Cw.bin",
    "/org/m/resolve/main/w.bin%00.txt",
    "/org/m/resolve/main/a//w.bin",
    "/org/m/resolve/..%2F..%2Fmain/w.bin",
    "/org/m/resolve/%2e%2e/w.bin",
    "/org/m/resolve/main/%ff%fe.bin",
    "/-bad/m/resolve/main/w.bin",
    "/org/a..b/resolve/main/w.bin",
    "/org/a--b/resolve/main/w.bin",
    "/org/" + "x" * 200 + "/resolve/main/w.bin",
    "/org/m/resolve/main/" + "a/" * 600 + "w.bin",
    "/api/models/org/m/tree/main/..%2F..%2Fetc",
    "/api/models/org/m/revision/%2e%2e",
    "/api/models/org/..%2Fm",
]


@pytest.fixture
def warm(hub: HubEmulator, mirror: MirrorThread) -> Path:
    hub.add_repo("model", "org/m", {"w.bin": DATA, "sub/x.txt": b"x"})
    assert raw_request(mirror.url, "GET", "/org/m/resolve/main/w.bin").status == 200
    mirror.settle()
    return Path(mirror.config.cache.dir)


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_paths_get_a_4xx_and_change_nothing(hub: HubEmulator, mirror: MirrorThread, warm: Path, path: str) -> None:
    before = snapshot(warm)
    upstream_before = len(hub.requests)
    resp = raw_request(mirror.url, "GET", path)
    assert 400 <= resp.status < 500, (path, resp.status)
    assert resp.headers.get("X-Error-Message"), "a human reason the HF client can show"
    assert snapshot(warm) == before
    assert len(hub.requests) == upstream_before, "bad input never reaches upstream"
    assert raw_request(mirror.url, "GET", "/org/m/resolve/main/w.bin").status == 200


@pytest.mark.parametrize(
    ("range_header", "status"),
    [("bytes=999999999-", 416), ("bytes=abc", 200), ("bytes=5-1", 200), ("bytes=0-1,5-6", 200), ("lines=1-2", 200)],
)
def test_bad_ranges(mirror: MirrorThread, warm: Path, range_header: str, status: int) -> None:
    before = snapshot(warm)
    resp = raw_request(mirror.url, "GET", "/org/m/resolve/main/w.bin", {"Range": range_header})
    assert resp.status == status
    if status == 416:
        assert resp.headers["Content-Range"] == f"bytes */{len(DATA)}"
    assert snapshot(warm) == before


def test_wrong_methods(mirror: MirrorThread, warm: Path) -> None:
    for method, path in [
        ("POST", "/org/m/resolve/main/w.bin"),
        ("DELETE", "/api/models/org/m"),
        ("GET", "/api/models/org/m/paths-info/main"),
    ]:
        resp = raw_request(mirror.url, method, path)
        assert resp.status == 405 and resp.headers["Allow"] and resp.headers["X-Error-Message"], path


def test_unknown_routes_are_404(mirror: MirrorThread, warm: Path) -> None:
    for path in ("/nothing-here", "/api/unknown", "/api/models/org/m/unknown-op/main"):
        resp = raw_request(mirror.url, "GET", path)
        assert resp.status == 404 and resp.headers.get("X-Error-Message"), path
