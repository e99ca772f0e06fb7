"""Metrics, health, readiness and structured logs, checked after real client traffic."""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mirror.logs import SecretFilter, install_log_filters
from testbed.hubemu import HubEmulator
from testbed.mirror_server import MirrorProcess, MirrorThread
from tests.support.client import run_client
from tests.support.mirrors import start_mirror

DATA = os.urandom(2_000_000)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"{url}/metrics") as resp:
        text = resp.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_counters_follow_client_traffic(hub: HubEmulator, mirror: MirrorThread, tmp_path: Path) -> None:
    hub.add_repo("model", "org/m", {"w.safetensors": DATA, "config.json": b"{}"})
    script = 'out["p"] = hf_hub_download("org/m", "w.safetensors")'
    first = run_client(mirror.url, script, tmp_path / "a")
    second = run_client(mirror.url, script, tmp_path / "b")
    assert Path(first["p"]).read_bytes() == Path(second["p"]).read_bytes() == DATA
    m = scrape(mirror.url)
    # Bytes served equal bytes the clients downloaded: one from the fill, one from the cache.
    assert value(m, "hub_mirror_bytes_served_total", source="fill") == len(DATA)
    assert value(m, "hub_mirror_bytes_served_total", source="cache") == len(DATA)
    assert value(m, "hub_mirror_cache_lookups_total", kind="blob", result="miss") == 1
    assert value(m, "hub_mirror_cache_lookups_total", kind="blob", result="hit") == 1
    assert value(m, "hub_mirror_upstream_bytes_total") == len(DATA)
    assert value(m, "hub_mirror_fill_duration_seconds_count", outcome="ok") == 1
    assert value(m, "hub_mirror_requests_total", route="resolve", method="GET", status="2xx") == 2
    assert value(m, "hub_mirror_requests_total", route="resolve", method="HEAD", status="2xx") == 2
    assert value(m, "hub_mirror_upstream_requests_total", kind="body", status="2xx") == 1
    assert value(m, "hub_mirror_build_info", version="0.1.0") == 1
    assert value(m, "hub_mirror_fills_in_flight") == 0
    # Metadata: the first HEAD asked upstream, the second was answered from the cache.
    assert value(m, "hub_mirror_cache_lookups_total", kind="metadata", result="miss") >= 1
    assert value(m, "hub_mirror_cache_lookups_total", kind="metadata", result="hit") >= 1


def test_coalesced_requests_make_one_upstream_fetch(hub: HubEmulator, mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/m", {"w.safetensors": DATA})
    hub.faults.throttle(4 * 1024 * 1024)
    url = f"{mirror.url}/org/m/resolve/main/w.safetensors"
    with ThreadPoolExecutor(8) as pool:
        assert all(r == (200, DATA) for r in pool.map(lambda _: get(url), range(8)))
    m = scrape(mirror.url)
    assert value(m, "hub_mirror_upstream_bytes_total") == len(DATA)
    assert value(m, "hub_mirror_upstream_requests_total", kind="body", status="2xx") == 1
    results = {
        r: value(m, "hub_mirror_cache_lookups_total", kind="blob", result=r) for r in ("hit", "miss", "coalesced")
    }
    assert results["miss"] == 1 and results["coalesced"] >= 1 and sum(results.values()) == 8
    assert value(m, "hub_mirror_bytes_served_total", source="fill") + value(
        m, "hub_mirror_bytes_served_total", source="cache"
    ) == 8 * len(DATA)


def test_hash_mismatch_and_resume_are_counted(hub: HubEmulator, mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/m", {"w.safetensors": DATA})
    hub.faults.drop_after(700_000, path_contains="w.safetensors", times=1)
    assert get(f"{mirror.url}/org/m/resolve/main/w.safetensors") == (200, DATA)
    hub.add_repo("model", "org/bad", {"x.safetensors": os.urandom(100_000)})
    hub.faults.corrupt(path_contains="x.safetensors", offset=10)
    with pytest.raises(http.client.IncompleteRead):  # the last byte is withheld from bad bytes
        get(f"{mirror.url}/org/bad/resolve/main/x.safetensors")
    m = scrape(mirror.url)
    assert value(m, "hub_mirror_fill_resumes_total") == 1
    assert value(m, "hub_mirror_hash_mismatches_total") == 1
    assert value(m, "hub_mirror_fill_duration_seconds_count", outcome="integrity") == 1


def test_cardinality_stays_flat_across_distinct_repos(hub: HubEmulator, mirror: MirrorThread) -> None:
    for i in range(10):
        get(f"{mirror.url}/org/repo{i}/resolve/main/config.json")
        get(f"{mirror.url}/api/models/org/repo{i}")
    scrape(mirror.url)  # the scrape's own series exist from here on
    before = len(scrape(mirror.url))
    for i in range(10, 1000):
        get(f"{mirror.url}/org/repo{i}/resolve/main/config.json")
        get(f"{mirror.url}/api/models/org/repo{i}")
    samples = scrape(mirror.url)
    assert len(samples) == before
    assert not any("repo5" in v for _, labels in samples for _, v in labels)


def test_storage_gauges_and_readiness(hub: HubEmulator, mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/m", {"w.safetensors": DATA})
    assert get(f"{mirror.url}/org/m/resolve/main/w.safetensors")[0] == 200
    mirror.settle()
    # The measurer runs every minute; ask for a scan now rather than waiting.
    count, total = mirror.call(mirror.storage.usage("blobs/"))
    assert (count, total) == (1, len(DATA))

    status, body = get(f"{mirror.url}/readyz")
    assert status == 200 and json.loads(body)["storage"] == "ok"
    cache = Path(mirror.config.cache.dir)
    moved = cache.with_name("moved-away")
    cache.rename(moved)
    try:
        status, body = get(f"{mirror.url}/readyz")
        assert status == 503 and json.loads(body)["status"] == "unready"
        assert get(f"{mirror.url}/healthz")[0] == 200, "alive while unready"
    finally:
        moved.rename(cache)
    status, body = get(f"{mirror.url}/readyz")
    assert status == 200 and json.loads(body)["status"] == "ready"


def test_json_access_log_line_without_token(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo("model", "org/m", {"config.json": b"{}"})
    proc = MirrorProcess("--upstream", hub.url, "--cache-dir", str(tmp_path / "c"), "--log-format", "json")
    try:
        proc.wait_ready()
        secret = "hf_secret_token_never_logged"
        assert get(f"{proc.url}/org/m/resolve/main/config.json", {"Authorization": f"Bearer {secret}"})[0] == 200
        assert get(f"{proc.url}/org/m/resolve/main/config.json")[0] == 200
    finally:
        output = proc.stop()
    assert secret not in output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    access = [
        line["http"] for line in lines if line["logger"] == "mirror.access" and "/resolve/" in line["http"]["path"]
    ]
    assert [a["cache"] for a in access] == ["miss", "hit"]
    assert access[0]["status"] == 200 and access[0]["bytes"] == 2 and access[0]["upstream_calls"] >= 1
    assert access[1]["upstream_calls"] == 0 and access[1]["duration_ms"] > 0


def test_readiness_details_only_for_the_admin(hub: HubEmulator, tmp_path: Path) -> None:
    admin = "readyz-admin-token-1234"
    server = start_mirror(hub.url, tmp_path / "cache", admin={"token": admin})
    cache = Path(server.config.cache.dir)
    moved = cache.with_name("moved-away")
    try:
        status, body = get(f"{server.url}/readyz")
        assert status == 200 and json.loads(body) == {"status": "ready", "storage": "ok", "upstream": "reachable"}
        cache.rename(moved)
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Bearer \u00e9"}):
            status, body = get(f"{server.url}/readyz", headers)
            assert status == 503, headers
            # Whether storage works, not where it is: no backend, path, endpoint, bucket or prefix.
            assert json.loads(body) == {"status": "unready", "storage": "unavailable", "upstream": "reachable"}
        status, body = get(f"{server.url}/readyz", {"Authorization": f"Bearer {admin}"})
        detail = json.loads(body)
        assert status == 503 and detail["storage_backend"] == "local"
        assert detail["storage"].startswith("local storage: cannot")
    finally:
        if moved.exists():
            moved.rename(cache)
        server.stop()


def remove_log_filters(installed: logging.Filter) -> None:
    for name in ("aiohttp.server", "aiohttp.web"):
        logging.getLogger(name).removeFilter(installed)


def test_malformed_requests_log_one_info_line_without_token(
    mirror: MirrorThread, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    """aiohttp logs unparseable requests at ERROR with a traceback and the raw header line."""
    installed = install_log_filters()
    request.addfinalizer(lambda: remove_log_filters(installed))
    caplog.set_level(logging.DEBUG)
    secret = "hf_parser_error_secret_token"
    for bad_line in (f"Authorization: Bearer {secret}\x01", f"Cookie: session={secret}\x7f", "X-Bad\x01: y"):
        raw = f"GET /healthz HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {secret}\r\n{bad_line}\r\n\r\n"
        with socket.create_connection(("127.0.0.1", int(mirror.url.rsplit(":", 1)[1])), timeout=10) as sock:
            sock.sendall(raw.encode("latin-1"))
            assert sock.recv(100).startswith(b"HTTP/1.0 400")
    parser = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(parser) == 3
    for record in parser:
        assert record.levelno == logging.INFO and record.exc_info is None and record.exc_text is None
        assert "rejected a malformed HTTP request" in record.getMessage()
    assert secret not in caplog.text and "Traceback" not in caplog.text


def test_secrets_in_any_record_are_redacted() -> None:
    record = logging.makeLogRecord(
        {
            "name": "mirror.upstream",
            "msg": "upstream said %s for %s",
            "args": ("no", "https://cdn/x?Signature=abc123&Expires=1"),
            "http": {"headers": ["Authorization: Bearer tok-123", "Cookie: a=b"]},
        }
    )
    secret_filter = SecretFilter(secrets=["configured-admin-token", "short"])
    assert secret_filter.filter(record)
    assert record.getMessage() == "upstream said no for https://cdn/x?Signature=[REDACTED]&Expires=1"
    assert record.http == {"headers": ["Authorization: [REDACTED]", "Cookie: [REDACTED]"]}
    other = logging.makeLogRecord(
        {"name": "mirror.x", "msg": "token configured-admin-token and hf_" + "a" * 34 + " short"}
    )
    secret_filter.filter(other)
    assert other.getMessage() == "token [REDACTED] and [REDACTED] short", "too-short secrets are left alone"


def test_serve_logs_parser_errors_without_token_or_traceback(hub: HubEmulator, tmp_path: Path) -> None:
    admin = "serve-admin-token-5678"
    proc = MirrorProcess(
        "--upstream", hub.url, "--cache-dir", str(tmp_path / "c"), "--log-format", "json",
        env={"HUB_MIRROR_ADMIN_TOKEN": admin},
    )  # fmt: skip
    secret = "hf_serve_parser_error_secret"
    try:
        proc.wait_ready()
        for value in (f"Bearer {secret}\x01".encode(), f"Bearer {admin}\x01".encode()):
            conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=10)
            conn.putrequest("GET", "/healthz")
            conn.putheader("Authorization", value)
            conn.endheaders()
            assert conn.getresponse().status == 400
            conn.close()
    finally:
        output = proc.stop()
    assert secret not in output and admin not in output and "Traceback" not in output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    rejected = [line for line in lines if line["logger"] == "aiohttp.server"]
    assert [line["level"] for line in rejected] == ["info", "info"]
    assert all("exception" not in line for line in rejected)


def test_dashboard_and_alerts_use_exported_metrics(hub: HubEmulator, mirror: MirrorThread) -> None:
    """Every hub_mirror_* name in the shipped dashboard and alert rules is one the mirror exports."""
    import re

    import yaml

    root = Path(__file__).resolve().parent.parent
    with urllib.request.urlopen(f"{mirror.url}/metrics") as resp:
        exported = {f.name for f in text_string_to_metric_families(resp.read().decode())}
    exported |= {f"{n}_total" for n in exported} | {f"{n}_{s}" for n in exported for s in ("bucket", "count", "sum")}
    dashboard = json.loads((root / "config" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((root / "config" / "prometheus-alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {name for e in exprs for name in re.findall(r"hub_mirror_[a-z_]+", e)}
    assert used and used <= exported, used - exported


def test_upstream_up_is_measured_without_anyone_calling_readyz(hub: HubEmulator, tmp_path: Path) -> None:
    """An idle mirror probes upstream in the background; the gauge follows it, /readyz never called."""
    hub.faults.down()
    mirror = start_mirror(
        hub.url, tmp_path / "cache", upstream={"probe_interval": 0.3, "breaker_failures": 2, "breaker_cooldown": 0.5}
    )
    try:
        deadline = time.monotonic() + 15
        while value(scrape(mirror.url), "hub_mirror_upstream_up") != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert value(scrape(mirror.url), "hub_mirror_upstream_up") == 0, "a dead upstream still reads as up"
        hub.faults.up()
        deadline = time.monotonic() + 15
        while value(scrape(mirror.url), "hub_mirror_upstream_up") != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert value(scrape(mirror.url), "hub_mirror_upstream_up") == 1
        assert not any(path.startswith("/readyz") for _, path in mirror.requests)
    finally:
        mirror.stop()


def test_clients_closing_connections_are_counted_not_warned(
    hub: HubEmulator, mirror: MirrorThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """aria2c -x4 closes its extra connections mid-body: normal, so no WARNING, but a counter."""
    data = os.urandom(4 * 1024 * 1024)
    hub.add_repo("model", "org/m", {"w.safetensors": data})
    hub.faults.throttle(1024 * 1024)  # the fill runs about 4 s: every client below streams from it
    caplog.set_level(logging.DEBUG, logger="mirror")
    disconnects = 0
    for _ in range(3):
        # A client reading part of a body and hanging up, as segmented downloaders and ^C do.
        conn = http.client.HTTPConnection("127.0.0.1", int(mirror.url.rsplit(":", 1)[1]), timeout=10)
        conn.request("GET", "/org/m/resolve/main/w.safetensors")
        resp = conn.getresponse()
        resp.read(100_000)
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        disconnects += 1
    deadline = time.monotonic() + 10
    while (
        value(scrape(mirror.url), "hub_mirror_client_disconnects_total") < disconnects and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert value(scrape(mirror.url), "hub_mirror_client_disconnects_total") >= disconnects
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("mirror")]
    assert warnings == [], [r.getMessage() for r in warnings]


def test_access_log_shows_the_size_of_every_answer(
    hub: HubEmulator, mirror: MirrorThread, caplog: pytest.LogCaptureFixture
) -> None:
    hub.add_repo("model", "org/m", {"config.json": b"{}"})
    caplog.set_level(logging.INFO, logger="mirror.access")
    sizes = {}
    for path in ("/api/models/org/m", "/metrics", "/api/models/org/m/revision/nope"):
        try:
            with urllib.request.urlopen(mirror.url + path, timeout=30) as resp:
                sizes[path] = len(resp.read())
        except urllib.error.HTTPError as exc:
            sizes[path] = len(exc.read())
    logged = {r.http["path"]: r.http["bytes"] for r in caplog.records if r.name == "mirror.access"}
    for path, size in sizes.items():
        assert size > 0 and logged[path.split("?")[0]] == size, (path, logged)
