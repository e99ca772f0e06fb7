"""An upstream that hangs, drips, drops or is slow to answer: no client waits without bound.

The hanging upstream is a real socket that accepts connections and never answers (what a stuck
load balancer or a black-holed route looks like); the others are the emulator's faults.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.hubemu import HubEmulator, sha256_hex
from tests.support.client import run_client
from tests.support.mirrors import start_mirror

BIG = os.urandom(2 * 1024 * 1024 + 17)
CONFIG = b'{"model_type": "tiny"}'
FAST_FAIL = {"connect_timeout": 2, "read_timeout": 2, "breaker_failures": 2, "breaker_cooldown": 60}


class HangingServer:
    """Accepts TCP connections and never answers, until closed."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def hanging() -> Iterator[HangingServer]:
    server = HangingServer()
    yield server
    server.close()


def request(url: str, method: str = "GET", timeout: float = 30) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def timed(func, *args, **kwargs):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    result = func(*args, **kwargs)
    return result, time.monotonic() - started


def test_an_upstream_that_never_answers_fails_cold_requests_in_bounded_time(
    hanging: HangingServer, tmp_path: Path
) -> None:
    mirror = start_mirror(hanging.url, tmp_path / "cache", upstream=FAST_FAIL)
    try:
        for attempt in range(2):  # the breaker opens after these two failures
            (status, body, headers), took = timed(request, f"{mirror.url}/org/m/resolve/main/config.json")
            assert status in (502, 503, 504), (attempt, status)
            assert took < 10, f"a cold request waited {took:.1f} s on a silent upstream"
            message = headers.get("X-Error-Message", "") + body.decode(errors="replace")
            assert hanging.url.split("//")[1] not in message, "the upstream's address reached the client"
        (status, _, _), took = timed(request, f"{mirror.url}/api/models/org/other")
        assert status in (502, 503) and took < 1.5, f"the open breaker still made a client wait {took:.1f} s"
        (status, _, _), took = timed(request, f"{mirror.url}/healthz")
        assert status == 200 and took < 1
        (status, body, _), took = timed(request, f"{mirror.url}/readyz")
        assert took < 6 and json.loads(body)["upstream"] == "unreachable"
    finally:
        mirror.stop()


def test_cached_repo_keeps_being_served_while_upstream_never_answers(
    hub: HubEmulator, hanging: HangingServer, tmp_path: Path
) -> None:
    hub.add_repo("model", "org/m", {"config.json": CONFIG, "w.safetensors": BIG})
    warm = start_mirror(hub.url, tmp_path / "cache")
    run_client(warm.url, 'out["p"] = snapshot_download("org/m")', tmp_path / "hf-warm")
    warm.settle()
    warm.stop()
    # The same cache, now in front of an upstream that accepts and never answers.
    mirror = start_mirror(
        hanging.url, tmp_path / "cache", upstream=FAST_FAIL, cache={"revision_ttl": 0.1, "access_ttl": 0.1}
    )
    try:
        for _ in range(3):
            (status, body, headers), took = timed(request, f"{mirror.url}/org/m/resolve/main/w.safetensors")
            assert (status, body == BIG) == (200, True) and took < 8, took
            (status, _, headers), took = timed(request, f"{mirror.url}/org/m/resolve/main/config.json", "HEAD")
            assert status == 200 and took < 8 and headers["X-Cache"] == "HIT"
            (status, body, _), took = timed(request, f"{mirror.url}/api/models/org/m/revision/main")
            assert status == 200 and json.loads(body)["id"] == "org/m" and took < 8
        out, took = timed(
            run_client, mirror.url, 'out["p"] = snapshot_download("org/m")', tmp_path / "hf-cold", timeout=120
        )
        assert (Path(out["p"]) / "w.safetensors").read_bytes() == BIG
        assert took < 60, f"the HF client took {took:.0f} s with a silent upstream"
    finally:
        mirror.stop()


def test_slow_headers_from_the_cdn_are_resumed(hub: HubEmulator, tmp_path: Path) -> None:
    """The body request sits without headers past the read timeout once: the fill asks again."""
    hub.add_repo("model", "org/m", {"w.safetensors": BIG})
    hub.faults.delay(5, path_contains="w.safetensors", origin="cdn", times=1)
    mirror = start_mirror(hub.url, tmp_path / "cache", upstream={"read_timeout": 2})
    try:
        (status, body, _), took = timed(request, f"{mirror.url}/org/m/resolve/main/w.safetensors", timeout=60)
        assert (status, body == BIG) == (200, True)
        assert took < 30
    finally:
        mirror.stop()


def test_a_dripping_upstream_is_slow_but_never_times_out_while_bytes_flow(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo("model", "org/m", {"w.safetensors": BIG})
    hub.faults.throttle(512 * 1024)  # about 4 s for the file, always under the 2 s silence limit
    mirror = start_mirror(hub.url, tmp_path / "cache", upstream={"read_timeout": 2, "resume_attempts": 0})
    try:
        status, body, _ = request(f"{mirror.url}/org/m/resolve/main/w.safetensors", timeout=60)
        assert (status, hashlib.sha256(body).hexdigest()) == (200, sha256_hex(BIG))
    finally:
        mirror.stop()


def test_a_client_resumes_after_drops_and_a_mirror_restart(hub: HubEmulator, tmp_path: Path) -> None:
    """Upstream drops the fill twice; the client's own download is cut by a restart of the mirror,
    and `curl -C -` against the restarted mirror completes exactly the file."""
    hub.add_repo("model", "org/m", {"w.safetensors": BIG})
    hub.faults.drop_after(300_000, path_contains="w.safetensors", times=2)
    hub.faults.throttle(1024 * 1024)
    cache = tmp_path / "cache"
    partial = tmp_path / "w.safetensors"
    mirror = start_mirror(hub.url, cache, server={"shutdown_grace": 0})  # no grace: the client is cut
    url = f"{mirror.url}/org/m/resolve/main/w.safetensors"
    curl = subprocess.Popen(["curl", "-sS", "-o", str(partial), url], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while (not partial.exists() or partial.stat().st_size < 700_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    mirror.stop()  # the client's connection is cut mid-body
    curl.wait(30)
    held = partial.stat().st_size
    assert 0 < held < len(BIG)
    hub.faults.clear()
    restarted = start_mirror(hub.url, cache, port=int(url.split(":")[2].split("/")[0]))
    try:
        done = subprocess.run(
            ["curl", "-sS", "-f", "-C", "-", "-o", str(partial), url], capture_output=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert hashlib.sha256(partial.read_bytes()).hexdigest() == sha256_hex(BIG)
        assert any(r.headers.get("range") for r in hub.requests if r.origin == "cdn"), "upstream drops were resumed"
    finally:
        restarted.stop()
