"""The upstream circuit breaker, the upstream_up gauge it keeps, and error messages without addresses."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mirror.config import ConfigError, load_config
from mirror.upstream import Breaker
from testbed.hubemu import HubEmulator
from testbed.mirror_server import MirrorThread, free_port
from tests.support.mirrors import start_mirror


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fetch(url: str, method: str = "GET", timeout: float = 10) -> tuple[int, dict[str, str], bytes, float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read(), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read(), time.monotonic() - started


def upstream_up(mirror: MirrorThread) -> float | None:
    with urllib.request.urlopen(f"{mirror.url}/metrics") as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith("hub_mirror_upstream_up "):
            return float(line.split()[1])
    return None


def test_breaker_states() -> None:
    clock = Clock()
    breaker = Breaker(failures=3, cooldown=10, clock=clock)
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    breaker.failure()
    breaker.success()  # a success in between: failures must come in a row
    breaker.failure()
    breaker.failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 9.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow(), "one trial after the cooldown"
    assert breaker.state == "half-open" and not breaker.allow(), "only one"
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow(), "a failed trial opens it again"
    clock.now += 10
    assert breaker.allow()
    breaker.abandon()  # the trial was cancelled before it had an outcome: another may try
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_breaker_can_be_turned_off() -> None:
    breaker = Breaker(failures=0, cooldown=10, clock=Clock())
    for _ in range(100):
        breaker.failure()
    assert breaker.state == "closed" and breaker.allow()


def test_breaker_opens_fails_fast_and_closes_again(hub: HubEmulator, tmp_path: Path) -> None:
    mirror = start_mirror(
        hub.url,
        tmp_path / "c",
        cache={"revision_ttl": 0.5},
        upstream={"read_timeout": 1, "breaker_failures": 3, "breaker_cooldown": 2},
    )
    try:
        hub.add_repo("model", "org/m", {"config.json": b"{}"})
        assert fetch(f"{mirror.url}/org/m/resolve/main/config.json")[0] == 200
        assert upstream_up(mirror) == 1, "known from traffic; nobody asked /readyz"
        assert not any(path == "/readyz" for _, path in mirror.requests)

        hub.faults.delay(40)  # upstream hangs: each cold request times out after read_timeout
        for i in range(3):
            status, _, _, took = fetch(f"{mirror.url}/api/models/org/cold{i}")
            assert 500 <= status < 600 and took < 5
        assert upstream_up(mirror) == 0
        asked = len(hub.requests)
        status, headers, _, took = fetch(f"{mirror.url}/api/models/org/cold-again")
        assert 500 <= status < 600 and took < 0.5, "an open breaker answers at once"
        assert "127.0.0.1" not in headers["X-Error-Message"]
        assert len(hub.requests) == asked, "nothing was sent upstream while open"
        # What is cached is still served at once: the branch's refresh fails fast too.
        status, _, body, took = fetch(f"{mirror.url}/org/m/resolve/main/config.json")
        assert (status, body) == (200, b"{}") and took < 0.5

        hub.faults.clear()
        time.sleep(2.1)  # the cooldown: the next request is the trial, and it succeeds
        status, _, _, _ = fetch(f"{mirror.url}/api/models/org/m")
        assert status == 200 and upstream_up(mirror) == 1, "closed again: the gauge is the breaker's state"
        assert fetch(f"{mirror.url}/api/models/org/cold0")[0] == 401, "asked upstream again: no such repo"
    finally:
        mirror.stop()


def test_client_errors_do_not_open_the_breaker(hub: HubEmulator, tmp_path: Path) -> None:
    mirror = start_mirror(hub.url, tmp_path / "c", upstream={"breaker_failures": 2})
    try:
        for i in range(5):
            assert fetch(f"{mirror.url}/api/models/org/missing{i}")[0] in (401, 404)
        assert mirror.metric("hub_mirror_upstream_breaker_opens_total") == 0
        assert upstream_up(mirror) == 1
    finally:
        mirror.stop()


def test_refused_connection_message_has_no_address(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there
    mirror = start_mirror(f"http://127.0.0.1:{port}", tmp_path / "c", upstream={"breaker_failures": 0})
    caplog.set_level(logging.WARNING, logger="mirror.upstream")
    try:
        for i in range(3):
            status, headers, body, _ = fetch(f"{mirror.url}/api/models/org/m{i}")
            message = headers["X-Error-Message"]
            assert status == 502 and message == "upstream unreachable (connection refused)"
            assert json.loads(body) == {"error": message}
            assert "127.0.0.1" not in message and str(port) not in message
        detail = [r for r in caplog.records if r.name == "mirror.upstream" and str(port) in r.getMessage()]
        assert len(detail) == 1, "the address goes to the log, once per window"
    finally:
        mirror.stop()


def test_timeout_message_has_no_address(hub: HubEmulator, tmp_path: Path) -> None:
    mirror = start_mirror(hub.url, tmp_path / "c", upstream={"read_timeout": 0.5})
    try:
        hub.faults.delay(40)
        status, headers, _, _ = fetch(f"{mirror.url}/api/models/org/m")
        assert status == 502 and headers["X-Error-Message"] == "upstream unreachable (timed out)"
    finally:
        mirror.stop()


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"breaker_failures": -1}, r"upstream\.breaker_failures must be >= 0"),
        ({"breaker_cooldown": 0}, r"upstream\.breaker_cooldown must be > 0"),
    ],
)
def test_breaker_config_is_validated(overrides: dict[str, float], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, {"upstream": overrides}, environ={})
    config = load_config(None, {}, environ={})
    assert (config.upstream.breaker_failures, config.upstream.breaker_cooldown) == (5, 15.0)
