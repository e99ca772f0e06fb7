"""`hub-mirror serve` as a real process: flags, YAML file, environment, bad input, probes, shutdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror import __version__
from mirror.cache import keys
from tests.hubemu import HubEmulator, sha256_hex
from tests.mirror_server import MirrorProcess, free_port

DATA = os.urandom(200_000)  # LFS (over the emulator's threshold), so it is stored under its sha256
FILE = "org/cli/resolve/main/w.safetensors"
REPO_ROOT = Path(__file__).resolve().parent.parent
# A config error must be reported before anything slow (storage, sockets) starts.
FAST_EXIT_S = 10


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # MirrorProcess passes os.environ on: a HUB_MIRROR_* variable from the developer's shell would
    # silently take part in the precedence under test.
    for name in list(os.environ):
        if name.startswith("HUB_MIRROR_"):
            monkeypatch.delenv(name)


@pytest.fixture
def cli_hub(hub: HubEmulator) -> HubEmulator:
    hub.add_repo("model", "org/cli", {"w.safetensors": DATA})
    return hub


@pytest.fixture
def processes() -> Iterator[list[MirrorProcess]]:
    """Every MirrorProcess a test appends is stopped afterwards, even when the test fails."""
    started: list[MirrorProcess] = []
    yield started
    for proc in started:
        if proc.proc.poll() is None:
            proc.kill()


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def blob_path(cache: Path, timeout: float = 10) -> Path:
    """Where the mirror publishes DATA, waiting for it: the download ends a moment before the publish."""
    path = cache / "objects" / keys.blob_key(sha256_hex(DATA))
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return path


def write_config(path: Path, upstream: str, cache: Path) -> Path:
    path.write_text(f"upstream:\n  url: {upstream}\n  connect_timeout: 2\ncache:\n  dir: {cache}\n")
    return path


def dead_upstream() -> str:
    # Nothing listens there, so serving a file proves the other upstream setting won.
    return f"http://127.0.0.1:{free_port()}"


def console_script() -> str:
    script = Path(sys.executable).parent / "hub-mirror"
    if not script.exists():
        pytest.fail(f"{script} is missing: install the project into this venv (pip install -e '.[test]')")
    return str(script)


def run_cli(*args: str, cwd: Path = REPO_ROOT) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=False, cwd=cwd)
    return proc, time.monotonic() - start


def test_serve_with_flags(cli_hub: HubEmulator, processes: list[MirrorProcess], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    server = MirrorProcess("--upstream", cli_hub.url, "--cache-dir", str(cache))
    processes.append(server)
    server.wait_ready()
    assert fetch(f"{server.url}/{FILE}") == (200, DATA)
    assert blob_path(cache).read_bytes() == DATA
    assert cli_hub.count(method="GET", origin="cdn") == 1
    output = server.stop()
    assert f"upstream {cli_hub.url}" in output and f"storage local {cache}" in output


def test_flag_beats_config_file(cli_hub: HubEmulator, processes: list[MirrorProcess], tmp_path: Path) -> None:
    file_cache, flag_cache = tmp_path / "file-cache", tmp_path / "flag-cache"
    config = write_config(tmp_path / "mirror.yaml", cli_hub.url, file_cache)
    server = MirrorProcess("--config", str(config), "--cache-dir", str(flag_cache))
    processes.append(server)
    server.wait_ready()
    # The upstream comes from the file (no flag for it), the cache dir from the flag.
    assert fetch(f"{server.url}/{FILE}") == (200, DATA)
    assert blob_path(flag_cache).read_bytes() == DATA
    assert not file_cache.exists()
    server.stop()


def test_upstream_flag_beats_config_file(cli_hub: HubEmulator, processes: list[MirrorProcess], tmp_path: Path) -> None:
    config = write_config(tmp_path / "mirror.yaml", dead_upstream(), tmp_path / "cache")
    server = MirrorProcess("--config", str(config), "--upstream", cli_hub.url)
    processes.append(server)
    server.wait_ready()
    assert fetch(f"{server.url}/{FILE}") == (200, DATA)
    assert blob_path(tmp_path / "cache").exists(), "the cache dir still comes from the file"
    server.stop()


def test_environment_beats_config_file(cli_hub: HubEmulator, processes: list[MirrorProcess], tmp_path: Path) -> None:
    config = write_config(tmp_path / "mirror.yaml", dead_upstream(), tmp_path / "cache")
    server = MirrorProcess("--config", str(config), env={"HUB_MIRROR_UPSTREAM_URL": cli_hub.url})
    processes.append(server)
    server.wait_ready()
    assert fetch(f"{server.url}/{FILE}") == (200, DATA)
    assert f"upstream {cli_hub.url}" in server.stop()


def test_example_config_file_is_accepted(cli_hub: HubEmulator, processes: list[MirrorProcess], tmp_path: Path) -> None:
    # The shipped example is what operators copy; it must load as it is (flags point it at the emulator).
    example = REPO_ROOT / "config" / "mirror.example.yaml"
    server = MirrorProcess("--config", str(example), "--upstream", cli_hub.url, "--cache-dir", str(tmp_path / "c"))
    processes.append(server)
    server.wait_ready()
    assert fetch(f"{server.url}/{FILE}") == (200, DATA)
    server.stop()


def test_probes_and_clean_sigint_shutdown(processes: list[MirrorProcess], tmp_path: Path) -> None:
    # No upstream is reachable: liveness and readiness depend on the mirror's own storage only.
    server = MirrorProcess("--upstream", dead_upstream(), "--cache-dir", str(tmp_path / "cache"))
    processes.append(server)
    server.wait_ready()
    status, body = fetch(f"{server.url}/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, body = fetch(f"{server.url}/readyz")
    ready = json.loads(body)
    assert status == 200 and ready["status"] == "ready" and ready["storage"] == "ok"
    assert ready["upstream"] in ("reachable", "unreachable")
    start = time.monotonic()
    output = server.stop()  # SIGINT, SIGKILL only after 15 s
    assert time.monotonic() - start < 10, "SIGINT stopped it promptly"
    # Seen: 0 (aiohttp's run_app turns SIGINT into a graceful exit and main() returns). -2, death by the
    # signal itself, would be as clean for a supervisor.
    assert server.proc.returncode in (0, -2), output
    assert "Traceback" not in output
    assert not list((tmp_path / "cache" / "staging").glob("*")), "no staging leftovers"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "missing.yaml"], "cannot read config file missing.yaml"),
        (["--upstream", "ftp://x"], "upstream.url must be an http(s) URL, got 'ftp://x'"),
    ],
)
def test_bad_configuration_exits_2_quickly(args: list[str], message: str, tmp_path: Path) -> None:
    # Run from an empty directory, so missing.yaml is certainly missing.
    proc, elapsed = run_cli(console_script(), "serve", "--port", str(free_port()), *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("hub-mirror: configuration error: ")
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert elapsed < FAST_EXIT_S


def test_version() -> None:
    proc, _ = run_cli(sys.executable, "-m", "mirror", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"hub-mirror {__version__}"
