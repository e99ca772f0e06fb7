"""Bad input gets a clear 4xx and leaves the cache as it was."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import socket
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from testbed.hubemu import HubEmulator
from testbed.mirror_server import MirrorThread

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
    "/org/m%0A/resolve/main/w.bin",  # a trailing newline in a repo name
    "/api/models/org/m%0A",
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


def raw_exchange(base: str, request: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send bytes no HTTP client would (raw non-ASCII header values, broken framing); (status, headers, body)."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def http_bytes(method: str, path: str, headers: list[bytes], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: mirror", b"Connection: close", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


FORM = b"Content-Type: application/x-www-form-urlencoded"
JSON_TYPE = b"Content-Type: application/json"
BAD_PATHS_INFO = [
    pytest.param([JSON_TYPE], b"[" * 100_000, 400, "nested", id="deep-json"),
    pytest.param([JSON_TYPE], b'{"paths": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "paths", id="nested-paths"),
    pytest.param([JSON_TYPE], b'["a.txt"]', 400, "object", id="json-not-object"),
    pytest.param([JSON_TYPE], b'{"paths": ["\\ud800"]}', 400, "Unicode", id="json-lone-surrogate"),
    pytest.param([JSON_TYPE], b'{"paths": ["a.txt"], "expand": "yes"}', 400, "expand", id="json-expand-not-bool"),
    pytest.param([JSON_TYPE], b"\xff\xfe{}", 400, "utf-8", id="json-not-utf8"),
    pytest.param([FORM], b"paths=\xff\xfe&expand=true", 400, "utf-8", id="form-not-utf8"),
    pytest.param([FORM], b"paths=%00", 400, "control", id="form-nul-path"),
    pytest.param(
        [b"Content-Type: application/x-www-form-urlencoded; charset=no-such-charset"],
        b"paths=a.txt",
        400,
        "no-such-charset",
        id="form-unknown-charset",
    ),
    pytest.param(
        [b"Content-Type: multipart/form-data; boundary=xx"], b"--xx\r\nbroken", 415, "multipart", id="multipart"
    ),
    pytest.param([b"Content-Type: text/plain"], b"paths=a.txt", 415, "text/plain", id="text-plain"),
    pytest.param([], b"paths=a.txt", 415, "application/x-www-form-urlencoded", id="no-content-type"),
    pytest.param([FORM], b"paths=a&" * 600_000, 413, "larger than", id="too-large"),
]


@pytest.mark.parametrize(("headers", "body", "status", "complaint"), BAD_PATHS_INFO)
def test_paths_info_bad_bodies_are_4xx(
    hub: HubEmulator, mirror: MirrorThread, headers: list[bytes], body: bytes, status: int, complaint: str
) -> None:
    hub.add_repo("model", "org/m", {"a.txt": b"a"})
    request = http_bytes("POST", "/api/models/org/m/paths-info/main", headers, body)
    got, answer_headers, _ = raw_exchange(mirror.url, request)
    assert got == status, answer_headers
    assert complaint in answer_headers["X-Error-Message"]
    assert hub.count(path_contains="paths-info") == 0, "bad input never reaches upstream"


def test_paths_info_form_and_json_still_work(hub: HubEmulator, mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/m", {"a.txt": b"a", "b.txt": b"b"})
    for headers, body in [
        ([b"Content-Type: application/x-www-form-urlencoded; charset=utf-8"], b"paths=a.txt&paths=nope&expand=false"),
        ([JSON_TYPE], b'{"paths": ["a.txt", "nope"], "expand": false}'),
    ]:
        status, _, answer = raw_exchange(
            mirror.url, http_bytes("POST", "/api/models/org/m/paths-info/main", headers, body)
        )
        assert status == 200 and [e["path"] for e in json.loads(answer)] == ["a.txt"]


@pytest.mark.parametrize(
    "value",
    [b"Bearer hf_\xff\xfesecret", b"Bearer hf_\xc3\xa9secret", b"Bearer hf_\tsecret", b"Bearer " + b"a" * 5000],
    ids=["latin1-bytes", "utf8-bytes", "tab", "too-long"],
)
@pytest.mark.parametrize(
    "path", ["/org/m/resolve/main/a.txt", "/api/models/org/m", "/api/models/org/m/revision/main", "/api/whoami-v2"]
)
def test_tokens_that_cannot_be_sent_upstream_are_400(
    hub: HubEmulator, mirror: MirrorThread, value: bytes, path: str
) -> None:
    hub.add_repo("model", "org/m", {"a.txt": b"a"})
    hub.clear_requests()
    status, headers, _ = raw_exchange(mirror.url, http_bytes("GET", path, [b"Authorization: " + value]))
    assert status == 400 and "bearer token" in headers["X-Error-Message"]
    assert "secret" not in headers["X-Error-Message"], "the token is never repeated"
    assert hub.requests == [], "nothing is asked of upstream with a token it could not be sent"


def info_records(mirror: MirrorThread) -> list[Path]:
    return sorted(Path(mirror.config.cache.dir).rglob("info-*.json"))


def test_junk_queries_share_one_cache_key(hub: HubEmulator, mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/m", {"a.txt": b"a"})
    base = "/api/models/org/m/revision/main"
    first = raw_request(mirror.url, "GET", base)
    assert first.status == 200
    for i in range(40):
        junk = [f"junk{i}=1", f"expand=nonsense{i}", "blobs=false", f"securityStatus={'0' if i % 2 else 'no'}"]
        assert raw_request(mirror.url, "GET", f"{base}?{'&'.join(junk[: 1 + i % 4])}").status == 200
    assert hub.count(path_contains="/revision/main") == 1, "junk is not a new question for upstream"
    assert len(info_records(mirror)) == 1

    spellings = ["blobs=true", "blobs=1", "blobs=True&junk=2", "blobs=TRUE&expand=bogus"]
    assert all(raw_request(mirror.url, "GET", f"{base}?{q}").status == 200 for q in spellings)
    asked = [r.path for r in hub.requests if "/revision/main?" in r.path]
    assert asked == ["/api/models/org/m/revision/main?blobs=true"], "one spelling, known parameters only"

    for query in ("expand=sha&expand=siblings", "expand=siblings&expand=sha&expand=sha&expand=nope"):
        assert raw_request(mirror.url, "GET", f"{base}?{query}").status == 200
    assert len(info_records(mirror)) == 3


def test_commits_queries_are_normalised(hub: HubEmulator, mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/m", {"a.txt": b"a"})
    base = "/api/models/org/m/commits/main"
    for query in ("", "?junk=1", "?p=0", "?p=00&other=x", "?expand%5B%5D=nonsense"):
        assert raw_request(mirror.url, "GET", base + query).status == 200
    assert hub.count(path_contains="/commits/") == 1
    for query in ("?p=abc", "?p=-1", "?p=" + "9" * 5000, "?limit=1.5"):
        resp = raw_request(mirror.url, "GET", base + query)
        assert resp.status == 400 and resp.headers["X-Error-Message"], query


def test_tree_cursor_past_the_end_is_400(hub: HubEmulator, mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/m", {"a.txt": b"a"})
    assert raw_request(mirror.url, "GET", "/api/models/org/m/tree/main?cursor=1").status == 200
    resp = raw_request(mirror.url, "GET", "/api/models/org/m/tree/main?cursor=2")
    assert resp.status == 400 and "cursor" in resp.headers["X-Error-Message"]


def test_body_that_does_not_decompress_is_400(hub: HubEmulator, mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/m", {"a.txt": b"a"})
    request = http_bytes("POST", "/api/models/org/m/paths-info/main", [FORM, b"Content-Encoding: gzip"], b"not gzip")
    status, headers, _ = raw_exchange(mirror.url, request)
    assert status == 400 and "could not be read" in headers["X-Error-Message"]


@pytest.mark.parametrize(
    ("encoding", "compress"), [(b"gzip", gzip.compress), (b"x-gzip", gzip.compress), (b"deflate", zlib.compress)]
)
def test_compressed_bodies_are_read_decoded(hub: HubEmulator, mirror: MirrorThread, encoding: bytes, compress) -> None:
    hub.add_repo("model", "org/m", {"a.txt": b"a"})
    body = compress(b"paths=a.txt&expand=false")
    request = http_bytes("POST", "/api/models/org/m/paths-info/main", [FORM, b"Content-Encoding: " + encoding], body)
    status, _, answer = raw_exchange(mirror.url, request)
    assert status == 200 and [entry["path"] for entry in json.loads(answer)] == ["a.txt"]


def test_compressed_bodies_cannot_expand_past_the_limit(hub: HubEmulator, mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/m", {"a.txt": b"a"})
    bomb = gzip.compress(b"paths=" + b"a" * (64 * 1024 * 1024))  # 64 MiB in about 64 KiB
    request = http_bytes("POST", "/api/models/org/m/paths-info/main", [FORM, b"Content-Encoding: gzip"], bomb)
    status, headers, _ = raw_exchange(mirror.url, request)
    assert status == 413 and "larger than" in headers["X-Error-Message"]
    truncated = gzip.compress(b"paths=a.txt")[:-6]
    request = http_bytes("POST", "/api/models/org/m/paths-info/main", [FORM, b"Content-Encoding: gzip"], truncated)
    assert raw_exchange(mirror.url, request)[0] == 400
    request = http_bytes("POST", "/api/models/org/m/paths-info/main", [FORM, b"Content-Encoding: br"], b"x")
    status, headers, _ = raw_exchange(mirror.url, request)
    assert status == 415 and "Content-Encoding" in headers["X-Error-Message"]
