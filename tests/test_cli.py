"""`hub-mirror serve` as a real process: flags, YAML file, environment, bad input, probes, shutdown."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirror import __version__
from mirror.admin.client import AdminClient, ExitCode
from mirror.cache import keys
from mirror.cli import main
from testbed.hubemu import HubEmulator, sha256_hex
from testbed.mirror_server import MirrorProcess, MirrorThread, free_port
from tests.support.mirrors import start_mirror

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
        (["--log-level", "LOUD"], "log.level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'"),
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


def test_unknown_log_level_from_the_environment_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HUB_MIRROR_LOG_LEVEL", "LOUD")
    proc, elapsed = run_cli(console_script(), "serve", "--port", str(free_port()), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("hub-mirror: configuration error: log.level must be one of"), proc.stderr
    assert elapsed < FAST_EXIT_S


# --- an unusable cache directory is named, not reported as a listen error --------------------------


def assert_cache_dir_refused(proc: subprocess.CompletedProcess[str], elapsed: float, cache: Path, oserror: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"hub-mirror: cannot use the cache directory {cache.resolve()}: "), proc.stderr
    assert oserror in proc.stderr
    assert "cannot listen" not in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert elapsed < FAST_EXIT_S


def test_cache_dir_under_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    cache = tmp_path / "file" / "cache"
    proc, elapsed = run_cli(console_script(), "serve", "--port", str(free_port()), "--cache-dir", str(cache))
    assert_cache_dir_refused(proc, elapsed, cache, "Not a directory")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_cache_dir(tmp_path: Path) -> None:
    cache = tmp_path / "ro"
    cache.mkdir(mode=0o555)
    proc, elapsed = run_cli(console_script(), "serve", "--port", str(free_port()), "--cache-dir", str(cache))
    assert_cache_dir_refused(proc, elapsed, cache, "Permission denied")


def test_storage_start_failure_is_not_a_listen_error(tmp_path: Path) -> None:
    # The directory is writable, so only the storage start itself can fail: a file where it wants
    # its objects directory.
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "objects").write_text("")
    proc, _ = run_cli(console_script(), "serve", "--port", str(free_port()), "--cache-dir", str(cache))
    assert proc.returncode == 1, proc.stderr
    assert f"hub-mirror: cannot start storage (local {cache.resolve()}): " in proc.stderr
    assert str(cache / "objects") in proc.stderr
    assert "cannot listen" not in proc.stderr and "Traceback" not in proc.stderr


def test_port_in_use_is_still_a_listen_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc, _ = run_cli(console_script(), "serve", "--port", str(port), "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 1, proc.stderr
    assert f"hub-mirror: cannot listen on 127.0.0.1:{port}: " in proc.stderr
    assert "Traceback" not in proc.stderr


# --- the admin CLI: one clear line and a documented exit code for every failure -----------------------

ADMIN_TOKEN = "cli-admin-token-0123"
# Every admin subcommand, with the arguments it needs to get as far as calling the mirror.
ADMIN_COMMANDS = [
    ["allow", "list"],
    ["allow", "add", "org/m"],
    ["allow", "remove", "0123456789ab"],
    ["sync"],
    ["status"],
]
ADMIN_IDS = [" ".join(c) for c in ADMIN_COMMANDS]


def admin(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`hub-mirror ARGS` in this process (a subprocess per case would take minutes): code, stdout, stderr."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.startswith("hub-mirror: ") and err.endswith("\n"), err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


class CannedServer:
    """An HTTP server that is not a working mirror: one canned answer to every request."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None, raw: bytes | None = None):
        canned = (status, body, headers or {})

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if raw is not None:  # not HTTP at all
                    self.wfile.write(raw)
                    return
                self.send_response(canned[0])
                for name, value in canned[2].items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(canned[1])))
                self.end_headers()
                self.wfile.write(canned[1])

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                # Its request lines would land in the captured stderr of the CLI under test.
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def admin_mirror(hub: HubEmulator, tmp_path: Path) -> Iterator[MirrorThread]:
    server = start_mirror(hub.url, tmp_path / "cache", admin={"token": ADMIN_TOKEN}, sync={"enabled": False})
    yield server
    server.stop()


@pytest.mark.parametrize("url", ["notaurl", "ftp://mirror", "http://", "http://mirror:port", "mirror:8090"])
@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=ADMIN_IDS)
def test_admin_bad_url_exits_2(capsys: pytest.CaptureFixture[str], command: list[str], url: str) -> None:
    code, out, err = admin(capsys, *command, "--url", url, "--token", ADMIN_TOKEN)
    assert code == ExitCode.USAGE == 2
    assert_one_line_error(err, "--url must be the mirror's http(s) URL", repr(url))
    assert out == ""


def test_admin_url_from_the_environment_and_before_the_subcommand(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUB_MIRROR_URL", "notaurl-from-env")
    assert admin(capsys, "status", "--token", ADMIN_TOKEN)[0] == ExitCode.USAGE
    # --url wins over the environment, given after `allow` as well as after `allow list`.
    dead = dead_upstream()
    code, _, err = admin(capsys, "allow", "--url", dead, "list", "--token", ADMIN_TOKEN)
    assert code == ExitCode.UNREACHABLE and dead in err


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=ADMIN_IDS)
def test_admin_unreachable_mirror_exits_3(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    dead = dead_upstream()
    code, out, err = admin(capsys, *command, "--url", dead, "--token", ADMIN_TOKEN)
    assert code == ExitCode.UNREACHABLE == 3
    assert_one_line_error(err, f"cannot reach the mirror at {dead}")
    assert out == ""


def test_admin_answer_that_is_not_http_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    server = CannedServer(200, b"", raw=b"SSH-2.0-OpenSSH_9.6\r\n")
    try:
        code, _, err = admin(capsys, "status", "--url", server.url, "--token", ADMIN_TOKEN)
    finally:
        server.close()
    assert code == ExitCode.UNREACHABLE
    assert_one_line_error(err, f"cannot reach the mirror at {server.url}")


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=ADMIN_IDS)
def test_admin_wrong_or_missing_token_exits_4(
    capsys: pytest.CaptureFixture[str], admin_mirror: MirrorThread, command: list[str]
) -> None:
    code, out, err = admin(capsys, *command, "--url", admin_mirror.url, "--token", "not-the-admin-token")
    assert code == ExitCode.AUTH == 4
    assert_one_line_error(err, "HTTP 403", "admin API: wrong admin token", "the mirror rejected it")
    assert out == ""
    code, out, err = admin(capsys, *command, "--url", admin_mirror.url)
    assert code == ExitCode.AUTH
    assert_one_line_error(err, "no admin token: set HUB_MIRROR_ADMIN_TOKEN (or pass --token)")


@pytest.mark.parametrize("token", ["with space", "tökén", "line\nbreak"])
def test_admin_unusable_token_exits_4(capsys: pytest.CaptureFixture[str], token: str) -> None:
    # These would fail in the HTTP library with a traceback; the mirror would never accept them anyway.
    code, _, err = admin(capsys, "status", "--url", dead_upstream(), "--token", token)
    assert code == ExitCode.AUTH
    assert_one_line_error(err, "admin token must be printable ASCII")


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["allow", "remove", "0123456789ab"], "HTTP 404: no allow-list entry 0123456789ab"),
        (["allow", "remove", "nothex"], "HTTP 400: "),
        (["allow", "add", "a/b/c"], "HTTP 400: "),
        (["sync", "org/unknown"], "HTTP 400: model org/unknown is not on the allow-list"),
    ],
)
def test_admin_refused_request_exits_1(
    capsys: pytest.CaptureFixture[str], admin_mirror: MirrorThread, command: list[str], message: str
) -> None:
    code, out, err = admin(capsys, *command, "--url", admin_mirror.url, "--token", ADMIN_TOKEN)
    assert code == ExitCode.REFUSED == 1
    assert_one_line_error(err, message)
    assert out == ""


def test_admin_api_disabled_exits_1(capsys: pytest.CaptureFixture[str], mirror: MirrorThread) -> None:
    code, _, err = admin(capsys, "status", "--url", mirror.url, "--token", ADMIN_TOKEN)
    assert code == ExitCode.REFUSED
    assert_one_line_error(err, "HTTP 404: the admin API is disabled")


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=ADMIN_IDS)
def test_admin_server_error_exits_5(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    server = CannedServer(503, b"", {"X-Error-Message": "storage unavailable"})
    try:
        code, out, err = admin(capsys, *command, "--url", server.url, "--token", ADMIN_TOKEN)
    finally:
        server.close()
    assert code == ExitCode.MIRROR_ERROR == 5
    assert_one_line_error(err, "HTTP 503: storage unavailable")
    assert out == ""


@pytest.mark.parametrize(
    ("command", "body", "message"),
    [(c, b"<html>hello</html>", "is not JSON (is --url the mirror?)") for c in ADMIN_COMMANDS]
    # JSON of another shape; `allow remove` reads nothing from a 2xx answer, so it has no such case.
    + [(c, b'{"hello": 1}', "is --url the mirror?") for c in ADMIN_COMMANDS if c[:2] != ["allow", "remove"]],
)
def test_admin_answer_that_is_not_the_admin_api_exits_5(
    capsys: pytest.CaptureFixture[str], command: list[str], body: bytes, message: str
) -> None:
    server = CannedServer(200, body, {"Content-Type": "application/json"})
    try:
        code, _, err = admin(capsys, *command, "--url", server.url, "--token", ADMIN_TOKEN)
    finally:
        server.close()
    assert code == ExitCode.MIRROR_ERROR, err
    assert_one_line_error(err, message)


def test_admin_failed_sync_exits_6_and_status_shows_why(
    capsys: pytest.CaptureFixture[str], hub: HubEmulator, admin_mirror: MirrorThread
) -> None:
    url = ["--url", admin_mirror.url, "--token", ADMIN_TOKEN]
    assert admin(capsys, "allow", "add", "org/absent", *url)[0] == ExitCode.OK
    code, out, err = admin(capsys, "sync", "org/absent", *url)
    assert code == ExitCode.SYNC_FAILED == 6, err
    assert "failed" in out
    reason = next(line for line in err.splitlines() if line.startswith("error: "))[len("error: ") :]
    assert "org/absent" in reason
    code, out, _ = admin(capsys, "status", *url)
    assert code == ExitCode.OK
    job_line = next(line for line in out.splitlines() if "errors=1" in line)
    assert "failed" in job_line
    # The reason itself, right under its job: errors=1 alone leaves the operator guessing.
    assert out.splitlines()[out.splitlines().index(job_line) + 1] == f"    error: {reason}"


def test_status_caps_the_reasons_per_job(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    job = {
        "id": "0123456789ab",
        "created_at": 0,
        "state": "failed",
        "trigger": "api",
        "bytes_done": 0,
        "bytes_total": 0,
        "errors": [f"org/m@main/f{i}: HTTP 404" for i in range(7)],
    }
    usage = {"blobs": 0, "bytes": 0, "max_bytes": 0, "pinned_bytes": 0, "pinned_over_limit": False}
    answers = {"/admin/allowlist": [], "/admin/sync": [job], "/admin/repos": [], "/admin/usage": usage}
    monkeypatch.setattr(AdminClient, "call", lambda self, method, path, body=None: answers[path])
    code, out, _ = admin(capsys, "status", "--token", ADMIN_TOKEN)
    assert code == ExitCode.OK
    assert [line for line in out.splitlines() if line.startswith("    ")] == [
        "    error: org/m@main/f0: HTTP 404",
        "    error: org/m@main/f1: HTTP 404",
        "    error: org/m@main/f2: HTTP 404",
        "    ... 4 more (GET /admin/sync/0123456789ab)",
    ]


def test_admin_bad_url_in_a_real_process_has_no_traceback() -> None:
    # The issue's own reproduction, through the installed console script.
    proc, _ = run_cli(console_script(), "allow", "list", "--url", "notaurl", "--token", ADMIN_TOKEN)
    assert proc.returncode == 2
    assert (
        proc.stderr == "hub-mirror: --url must be the mirror's http(s) URL, like http://127.0.0.1:8090, got 'notaurl'\n"
    )
