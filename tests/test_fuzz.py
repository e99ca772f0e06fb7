"""Fuzzing every route with hypothesis: odd paths, queries, headers and bodies.

Whatever a client sends, the mirror answers below 500 (the upstream emulator stays healthy, so no
5xx is excused as upstream trouble), logs no traceback, and logs neither the bearer token nor the
admin token it was sent. Requests go out as raw bytes over a socket, so non-ASCII header bytes,
broken escapes and malformed HTTP reach the server as a hostile client would send them.

Bounded and reproducible: fixed example counts, derandomized, no example database; the whole
module runs in well under a minute.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlencode, urlsplit

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mirror.logs import SecretFilter, install_log_filters
from testbed.hubemu import HubEmulator
from testbed.mirror_server import MirrorThread
from tests.support.mirrors import start_mirror

ADMIN = "fuzz-admin-token-31337"
# Not in the shape of a real hf_ token, so the log filter's hf_ pattern cannot hide a leak.
USER = "hf_fuzz_user_token_271828"
SECRETS = (ADMIN, USER)
W_BIN = os.urandom(20_000)
W_OID = hashlib.sha256(W_BIN).hexdigest()

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
# The Hub routes have the most ways in, and the most code behind them.
FUZZ_MORE = settings(FUZZ, max_examples=500)


class Capture(logging.Handler):
    """Every record from every logger and thread, as the root logger sees it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self.guard:
            self.records.append(record)

    def mark(self) -> int:
        with self.guard:
            return len(self.records)

    def since(self, mark: int) -> list[logging.LogRecord]:
        with self.guard:
            return self.records[mark:]


@dataclass
class Env:
    hub: HubEmulator
    mirror: MirrorThread
    capture: Capture

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.mirror.url)
        assert parts.hostname and parts.port
        return parts.hostname, parts.port


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = logging.getLogger()
    level = root.level
    capture = Capture()
    with HubEmulator() as hub:
        hub.add_repo("model", "org/m", {"config.json": b"{}", "sub/a.txt": b"a", "w.bin": W_BIN})
        hub.add_repo("dataset", "org/d", {"data.csv": b"a,b\n"})
        mirror = start_mirror(
            hub.url, tmp_path_factory.mktemp("fuzz") / "cache", admin={"token": ADMIN}, sync={"enabled": False}
        )
        installed = install_log_filters()
        root.addHandler(capture)
        root.setLevel(logging.INFO)
        try:
            yield Env(hub, mirror, capture)
        finally:
            root.removeHandler(capture)
            root.setLevel(level)
            for name in ("aiohttp.server", "aiohttp.web"):
                logging.getLogger(name).removeFilter(installed)
            mirror.stop()


def exchange(env: Env, request: bytes) -> tuple[int, bytes]:
    """Send one request on its own connection: (status, body), status 0 when nothing came back."""
    with socket.create_connection(env.address, timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data:
        return 0, b""
    head, _, answer = data.partition(b"\r\n\r\n")
    return int(head.split(b"\r\n", 1)[0].split()[1]), answer


def build(method: str, target: bytes, headers: list[bytes], body: bytes) -> bytes:
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: mirror", b"Connection: close", *headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# Attributes every LogRecord has; the rest came with `extra=` and is checked for secrets too.
STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def record_text(record: logging.LogRecord) -> str:
    extras = {k: v for k, v in vars(record).items() if k not in STANDARD}
    return "\n".join([logging.Formatter().format(record), record.exc_text or "", json.dumps(extras, default=str)])


def check(env: Env, request: bytes) -> int:
    """One request: an answer below 500, and what it logged holds no traceback and no secret."""
    mark = env.capture.mark()
    status, _ = exchange(env, request)
    assert 100 <= status < 500, f"{status or 'no answer'} for {request[:300]!r}"
    for record in env.capture.since(mark):
        text = record_text(record)
        assert record.exc_info is None and "Traceback" not in text, text
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} logged by {record.name}: {text[:500]}"
    return status


# -- strategies ------------------------------------------------------------------------------------

URL_SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@"
NASTY_SEGMENTS = [
    "org", "m", "d", "main", "config.json", "sub", "a.txt", "w.bin", "refs", "pr", "1", "..", ".", "",
    "%2F", "%2e%2e", "%00", "%ff", "%", "%zz", "a%20b", "abc%00", "refs%2Fpr%2F1", "0" * 40, "x" * 300,
    "%c0%ae%c0%ae", "%ed%a0%80", "..%5C..", "a%0d%0aSet-Cookie:%20x",
]  # fmt: skip
segment = st.one_of(
    st.sampled_from(NASTY_SEGMENTS),
    st.text(max_size=16).map(lambda t: quote(t, safe="")),
    st.binary(max_size=10).map(lambda b: quote(b, safe="")),
    st.text(alphabet=URL_SAFE + "%", max_size=12),
)
# one_of picks its branches about evenly, so repeated branches weigh the draw: valid names come up
# about half the time, and requests also get past parsing into the cache, upstream and storage.
repo = st.one_of(
    st.just("org/m"),
    st.just("org/m"),
    st.sampled_from(["org/d", "org/nope", "gpt2"]),
    segment,
    st.builds("{}/{}".format, segment, segment),
)
revision = st.one_of(
    st.just("main"), st.just("main"), st.sampled_from(["refs/pr/1", "refs%2Fpr%2F1", "v1", "0" * 40]), segment
)
file_path = st.one_of(
    st.sampled_from(["config.json", "sub/a.txt", "w.bin"]),
    st.sampled_from(["sub", "nope", "sub%2Fa.txt"]),
    st.lists(segment, min_size=1, max_size=4).map("/".join),
)
repo_type = st.one_of(
    st.just("models"), st.just("models"), st.sampled_from(["datasets", "spaces", "kernels", "model"]), segment
)
QUERY_KEYS = [
    "expand", "blobs", "securityStatus", "files_metadata", "recursive", "cursor", "p", "limit", "expand[]",
    "include_prs", "junk",
]  # fmt: skip
QUERY_VALUES = ["true", "false", "1", "0", "True", "sha", "siblings", "formatted", "-1", "9" * 30, ""]
query = st.one_of(
    st.just(""),
    st.just(""),
    st.lists(
        st.tuples(
            st.one_of(st.sampled_from(QUERY_KEYS), st.text(max_size=8)),
            st.one_of(st.sampled_from(QUERY_VALUES), st.text(max_size=12)),
        ),
        max_size=6,
    ).map(lambda pairs: urlencode(pairs, quote_via=quote)),
    st.text(alphabet=URL_SAFE + "%?=&[]", max_size=30),
)
method = st.sampled_from(["GET", "GET", "GET", "HEAD", "POST", "DELETE", "PUT", "OPTIONS", "PATCH"])
good_authorization = st.sampled_from([f"Bearer {USER}".encode(), f"Bearer {ADMIN}".encode(), b"Basic Zm9vOmJhcg=="])
# Secrets inside malformed values too: aiohttp's parser errors used to log the raw header line.
bad_authorization = st.one_of(
    st.just(b"Bearer"),
    st.builds(lambda s, junk: b"Bearer " + s.encode() + junk, st.sampled_from(SECRETS), st.binary(max_size=4)),
    st.builds(lambda junk, s: b"Bearer " + junk + s.encode(), st.binary(max_size=4), st.sampled_from(SECRETS)),
    st.binary(max_size=40).map(lambda b: b"Bearer " + b),
)
authorization = st.one_of(st.none(), st.none(), good_authorization, bad_authorization)
content_type = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/x-www-form-urlencoded",
            "application/json",
            "multipart/form-data; boundary=xx",
            "text/plain",
            "application/json; charset=latin-1",
            "application/x-www-form-urlencoded; charset=bogus",
            "application/vnd.git-lfs+json",
            "application/vnd.git-lfs+json; charset=utf-8",
        ]
    ),
    st.text(alphabet=URL_SAFE + "/ ", max_size=30),
)
good_header = st.sampled_from(
    [
        b"Range: bytes=0-1",
        b"Range: bytes=999999-",
        b"Range: bytes=-5",
        b"Range: bytes=abc",
        b"If-None-Match: *",
        b'If-Match: "nope"',
        b"Accept-Encoding: gzip",
    ]
)
extra_header = st.one_of(
    good_header,
    good_header,
    st.builds(
        lambda name, value: name + b": " + value,
        st.sampled_from([b"Range", b"If-Match", b"If-None-Match", b"If-Range", b"Cookie", b"Accept-Encoding"]),
        st.binary(max_size=24).filter(lambda b: b"\r" not in b and b"\n" not in b),
    ),
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["paths", "expand", "repo", "repo_type", "pattern", "revisions", "include", "sync_interval"]
            )
            | st.text(max_size=5),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)
admin_body = st.fixed_dictionaries(
    {"repo_type": st.sampled_from(["model", "dataset", "space", "widget"]), "pattern": st.one_of(repo, segment)},
    optional={
        "revisions": st.lists(revision, max_size=40),
        "sync_interval": st.sampled_from(["6h", "1s", "often", "99999999d"]),
        "include": st.lists(st.text(max_size=8), max_size=4),
        "exclude": json_value,
    },
)
oid = st.one_of(st.just(W_OID), st.sampled_from(["0" * 64, W_OID.upper(), W_OID[:63]]), st.text(max_size=70))
lfs_object = st.one_of(
    st.fixed_dictionaries(
        {
            "oid": oid,
            "size": st.one_of(st.just(len(W_BIN)), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=4)),
        }
    ),
    json_value,
)
lfs_batch_body = st.fixed_dictionaries(
    {
        "operation": st.one_of(st.sampled_from(["download", "download", "upload", "verify"]), json_value),
        "objects": st.one_of(st.lists(lfs_object, max_size=5), json_value),
    },
    optional={
        "transfers": st.one_of(st.just(["basic"]), json_value),
        "hash_algo": st.one_of(st.just("sha256"), json_value),
        "ref": json_value,
    },
)
form_body = st.lists(st.one_of(file_path, st.text(max_size=10)), max_size=8).map(
    lambda paths: urlencode([("paths", p) for p in paths] + [("expand", "true")]).encode()
)
body = st.one_of(
    st.just(b""),
    st.binary(max_size=2000),
    json_value.map(lambda v: json.dumps(v).encode()),
    admin_body.map(lambda v: json.dumps(v).encode()),
    form_body,
    lfs_batch_body.map(lambda v: json.dumps(v).encode()),
    # Past the JSON parser's recursion limit, within the admin API's size limit.
    st.integers(1, 60_000).map(lambda n: b"[" * n),
)


@st.composite
def headers(draw: st.DrawFn) -> list[bytes]:
    out: list[bytes] = []
    auth = draw(authorization)
    if auth is not None:
        out.append(b"Authorization: " + auth)
    ctype = draw(content_type)
    if ctype is not None:
        out.append(b"Content-Type: " + ctype.encode())
    out += draw(st.lists(extra_header, max_size=1))
    return out


def target(path: str, q: str) -> bytes:
    return ("/" + path + (f"?{q}" if q else "")).encode()


HUB_ROUTES = [
    "{repo}/resolve/{rev}/{path}",
    "datasets/{repo}/resolve/{rev}/{path}",
    "api/{type}/{repo}",
    "api/{type}/{repo}/revision/{rev}",
    "api/{type}/{repo}/tree/{rev}",
    "api/{type}/{repo}/tree/{rev}/{path}",
    "api/{type}/{repo}/paths-info/{rev}",
    "api/{type}/{repo}/refs",
    "api/{type}/{repo}/commits/{rev}",
    "api/{type}/{repo}/auth-check",
    "api/{type}/{repo}/treesize/{rev}",
    "api/{type}/{repo}/treesize/{rev}/{path}",
    "api/{type}",
    "v2/{repo}/manifests/{rev}",
    "api/{type}/{repo}/xet-read-token/{rev}",
    "api/whoami-v2",
    "api/agent-harnesses",
    "api/{seg}",
    "{repo}.git/info/refs",
    "{repo}/git-upload-pack",
    "{repo}.git/git-receive-pack",
    "{repo}.git/info/lfs/objects/batch",
    "datasets/{repo}.git/info/lfs/objects/batch",
    "{repo}.git/info/lfs/objects/{seg}",
    "{repo}.git/info/lfs/objects/{oid}",
    "{seg}",
]
ADMIN_ROUTES = [
    "admin/allowlist",
    "admin/allowlist/{seg}",
    "admin/sync",
    "admin/sync/{seg}",
    "admin/repos",
    "admin/repos/{type}/{repo}",
    "admin/{seg}",
]
OPS_ROUTES = ["healthz", "readyz", "metrics", "healthz/{seg}"]


@st.composite
def path_for(draw: st.DrawFn, routes: list[str]) -> tuple[str, str]:
    """(route template, path): the template labels the statistics (`--hypothesis-show-statistics`)."""
    template = draw(st.sampled_from(routes))
    path = template.format(
        repo=draw(repo),
        rev=draw(revision),
        path=draw(file_path),
        type=draw(repo_type),
        seg=draw(segment),
        oid=draw(oid),
    )
    return template, path


# -- the fuzz tests --------------------------------------------------------------------------------


def fuzz_route(env: Env, route: tuple[str, str], method: str, q: str, hdrs: list[bytes], payload: bytes) -> None:
    template, path = route
    status = check(env, build(method, target(path, q), hdrs, payload))
    event(f"{template} -> {status}")


@FUZZ_MORE
@given(route=path_for(HUB_ROUTES), method=method, q=query, hdrs=headers(), payload=body)
def test_hub_routes(env: Env, route: tuple[str, str], method: str, q: str, hdrs: list[bytes], payload: bytes) -> None:
    fuzz_route(env, route, method, q, hdrs, payload)


@st.composite
def valid_route(draw: st.DrawFn) -> tuple[str, str]:
    """A Hub route with names that exist, so only the query, headers and body are odd."""
    template = draw(st.sampled_from([t for t in HUB_ROUTES if "{seg}" not in t]))
    path = template.format(
        repo="org/d" if template.startswith("datasets/") else "org/m",
        rev=draw(st.sampled_from(["main", "main", "refs%2Fpr%2F1"])),
        path=draw(st.sampled_from(["config.json", "sub/a.txt", "w.bin", "sub", "nope"])),
        type="models",
        seg="",
        oid=W_OID,
    )
    return f"valid {template}", path


@FUZZ_MORE
@given(
    route=valid_route(),
    method=st.sampled_from(["GET", "GET", "GET", "HEAD", "POST"]),
    q=query,
    hdrs=headers(),
    payload=st.one_of(st.just(b""), body),
)
def test_hub_routes_that_exist(
    env: Env, route: tuple[str, str], method: str, q: str, hdrs: list[bytes], payload: bytes
) -> None:
    fuzz_route(env, route, method, q, hdrs, payload)


@FUZZ
@given(
    method=st.sampled_from(["POST", "POST", "POST", "GET"]),
    rev=revision,
    ctype=st.one_of(st.just("application/x-www-form-urlencoded"), st.just("application/json"), content_type),
    payload=st.one_of(form_body, body),
    auth=authorization,
)
def test_paths_info_bodies(
    env: Env, method: str, rev: str, ctype: str | None, payload: bytes, auth: bytes | None
) -> None:
    hdrs = [b"Authorization: " + auth] if auth is not None else []
    if ctype is not None:
        hdrs.append(b"Content-Type: " + ctype.encode())
    status = check(env, build(method, target(f"api/models/org/m/paths-info/{rev}", ""), hdrs, payload))
    event(f"{ctype} -> {status}")


@FUZZ
@given(
    repo_path=st.sampled_from(["org/m.git", "org/m", "datasets/org/d.git", "org/nope.git"]),
    ctype=st.one_of(st.just("application/vnd.git-lfs+json"), content_type),
    payload=st.one_of(lfs_batch_body.map(lambda v: json.dumps(v).encode()), body),
    auth=authorization,
)
def test_lfs_batch_bodies(env: Env, repo_path: str, ctype: str | None, payload: bytes, auth: bytes | None) -> None:
    hdrs = [b"Authorization: " + auth] if auth is not None else []
    if ctype is not None:
        hdrs.append(b"Content-Type: " + ctype.encode())
    status = check(env, build("POST", target(f"{repo_path}/info/lfs/objects/batch", ""), hdrs, payload))
    event(f"{ctype} -> {status}")


@FUZZ
@given(
    route=path_for(ADMIN_ROUTES),
    method=method,
    q=query,
    token=st.sampled_from([ADMIN, ADMIN, None, USER, "wrong"]),
    hdrs=headers(),
    payload=body,
)
def test_admin_routes(
    env: Env, route: tuple[str, str], method: str, q: str, token: str | None, hdrs: list[bytes], payload: bytes
) -> None:
    if token is not None:
        # With the admin token most requests get past authorisation and reach validation.
        hdrs = [h for h in hdrs if not h.lower().startswith(b"authorization:")]
        hdrs.append(f"Authorization: Bearer {token}".encode())
    fuzz_route(env, route, method, q, hdrs, payload)


@FUZZ
@given(route=path_for(OPS_ROUTES), method=method, q=query, hdrs=headers())
def test_ops_routes(env: Env, route: tuple[str, str], method: str, q: str, hdrs: list[bytes]) -> None:
    fuzz_route(env, route, method, q, hdrs, b"")


@FUZZ
@given(
    method=st.one_of(method, st.binary(min_size=1, max_size=8).filter(lambda b: b" " not in b and b"\r" not in b)),
    raw_target=st.binary(min_size=1, max_size=60).filter(lambda b: b" " not in b and b"\r" not in b),
    raw_headers=st.lists(st.binary(max_size=40).filter(lambda b: b"\r\n" not in b), max_size=4),
    secret=st.sampled_from(SECRETS),
)
def test_malformed_http(
    env: Env, method: str | bytes, raw_target: bytes, raw_headers: list[bytes], secret: str
) -> None:
    verb = method if isinstance(method, bytes) else method.encode()
    lines = [verb + b" /" + raw_target + b" HTTP/1.1", b"Host: mirror", b"Connection: close"]
    lines += [b"Authorization: Bearer " + secret.encode() + b"\x01", *raw_headers]
    check(env, b"\r\n".join(lines) + b"\r\n\r\n")


def test_readyz_tells_strangers_only_what_they_need(env: Env) -> None:
    for auth, detailed in ((None, False), (USER, False), ("wrong", False), (ADMIN, True)):
        hdrs = [f"Authorization: Bearer {auth}".encode()] if auth else []
        status, answer = exchange(env, build("GET", b"/readyz", hdrs, b""))
        ready = json.loads(answer)
        assert status == 200 and ready["status"] == "ready" and ready["storage"] == "ok"
        assert ("storage_backend" in ready) is detailed and len(ready) == (5 if detailed else 3), auth


def test_parser_errors_are_logged_quietly(env: Env) -> None:
    """The fuzzing above ran with the filter the CLI installs: parser errors are INFO lines."""
    assert any(isinstance(f, SecretFilter) for f in logging.getLogger("aiohttp.server").filters)
    assert check(env, build("GET", b"/healthz", [f"Authorization: Bearer {USER}\x01".encode()], b"")) == 400
    quiet = [r for r in env.capture.records if r.name == "aiohttp.server"]
    assert quiet and all(r.levelno == logging.INFO for r in quiet)
