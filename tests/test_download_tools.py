"""Plain HTTP download tools through the mirror: curl (single stream, resume) and aria2c (multi-connection).

These tools know nothing about the Hub: they rely only on the mirror answering 200/206 itself with a
true Content-Length and honest byte ranges, on cache hits and on misses alike.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mirror.config import load_config
from testbed.hubemu import HubEmulator, git_blob_sha1, sha256_hex
from testbed.mirror_server import MirrorThread

BIG = os.urandom(3 * 1024 * 1024 + 4321)  # LFS by size and by suffix; several aria2c 1 MiB pieces
CONFIG = b'{"model_type": "tiny", "hidden_size": 8}'
TOOL_TIMEOUT = 60
INSTALL_HINT = {"curl": "apt-get install curl", "aria2c": "apt-get install aria2"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        # Not a skip: CI installs these, so a missing tool means the environment is broken.
        pytest.fail(f"{name} is not on PATH; install it ({INSTALL_HINT[name]}), CI installs it too")
    return path


def tool_env() -> dict[str, str]:
    # A proxy configured on the machine would swallow requests to 127.0.0.1.
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    # A little longer than the tools' own timeouts, so their error message is what a hang reports.
    timeout = TOOL_TIMEOUT + 15
    proc = subprocess.run(list(args), env=tool_env(), capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{args[0]} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return run_tool(tool("curl"), "--max-time", str(TOOL_TIMEOUT), *args)


def aria2c(*args: str) -> subprocess.CompletedProcess[str]:
    # --no-conf: a developer's ~/.aria2/aria2.conf must not change what is tested.
    return run_tool(
        tool("aria2c"),
        "--no-conf=true",
        "--console-log-level=warn",
        "--summary-interval=0",
        "--file-allocation=none",
        f"--timeout={TOOL_TIMEOUT}",
        "--max-tries=1",  # a mirror failure must show, not be retried away
        *args,
    )


def parse_headers(text: str) -> dict[str, str]:
    """The last header block curl wrote (with -D or -I), names lower-cased."""
    headers: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("HTTP/"):
            headers = {":status": line.split()[1]}
        elif ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return headers


def file_gets(mirror: MirrorThread, name: str) -> int:
    return sum(1 for method, path in mirror.requests if method == "GET" and path.endswith(f"/{name}"))


def cdn_gets(hub: HubEmulator) -> int:
    return hub.count(method="GET", origin="cdn")


def cdn_range_starts(hub: HubEmulator) -> list[int]:
    """First byte of every ranged upstream body request, i.e. where the mirror's fill resumed."""
    ranged = [r.headers["range"] for r in hub.requests if r.origin == "cdn" and "range" in r.headers]
    return [int(value.removeprefix("bytes=").split("-")[0]) for value in ranged]


def test_curl_downloads_lfs_and_plain_files(hub: HubEmulator, mirror: MirrorThread, tmp_path: Path) -> None:
    repo = hub.add_repo("model", "org/curl", {"w.safetensors": BIG, "config.json": CONFIG})
    base = f"{mirror.url}/org/curl/resolve/main"
    curl("-fsS", "-o", str(tmp_path / "w"), f"{base}/w.safetensors")
    curl("-fsS", "-o", str(tmp_path / "c"), f"{base}/config.json")
    assert (tmp_path / "w").read_bytes() == BIG
    assert (tmp_path / "c").read_bytes() == CONFIG

    lfs = parse_headers(curl("-fsS", "-I", f"{base}/w.safetensors").stdout)
    assert lfs[":status"] == "200"
    assert lfs["etag"] == f'"{sha256_hex(BIG)}"'
    assert lfs["x-repo-commit"] == repo.head()
    assert lfs["content-length"] == str(len(BIG))
    assert lfs["x-cache"] == "HIT", "the GET above filled the cache"
    plain = parse_headers(curl("-fsS", "-I", f"{base}/config.json").stdout)
    assert plain["etag"] == f'"{git_blob_sha1(CONFIG)}"'
    assert plain["x-repo-commit"] == repo.head()
    assert plain["content-length"] == str(len(CONFIG))


def test_curl_resume_of_a_cached_file(hub: HubEmulator, mirror: MirrorThread, tmp_path: Path) -> None:
    hub.add_repo("model", "org/warm", {"w.safetensors": BIG})
    url = f"{mirror.url}/org/warm/resolve/main/w.safetensors"
    curl("-fsS", "-o", str(tmp_path / "full"), url)
    prefix = 1_234_567
    target = tmp_path / "partial"
    target.write_bytes(BIG[:prefix])
    mirror.requests.clear()
    proc = curl("-fsS", "-C", "-", "-D", str(tmp_path / "h"), "-w", "%{http_code}", "-o", str(target), url)
    assert proc.stdout == "206"
    assert target.read_bytes() == BIG
    headers = parse_headers((tmp_path / "h").read_text())
    assert headers["content-range"] == f"bytes {prefix}-{len(BIG) - 1}/{len(BIG)}"
    assert headers["content-length"] == str(len(BIG) - prefix)
    assert headers["x-cache"] == "HIT"
    assert mirror.requests == [("GET", "/org/warm/resolve/main/w.safetensors")]
    assert cdn_gets(hub) == 1, "the resume was served from the cache"


def test_curl_resume_of_a_file_not_yet_cached(hub: HubEmulator, mirror: MirrorThread, tmp_path: Path) -> None:
    hub.add_repo("model", "org/cold", {"w.safetensors": BIG})
    # Slow enough (about 1.5 s in all) that the ranged answer is streamed while the fill still runs.
    hub.faults.throttle(2 * 1024 * 1024)
    url = f"{mirror.url}/org/cold/resolve/main/w.safetensors"
    prefix = 2_000_000
    target = tmp_path / "partial"
    target.write_bytes(BIG[:prefix])
    proc = curl("-fsS", "-C", "-", "-D", str(tmp_path / "h"), "-w", "%{http_code}", "-o", str(target), url)
    assert proc.stdout == "206"
    assert target.read_bytes() == BIG
    headers = parse_headers((tmp_path / "h").read_text())
    assert headers["content-range"] == f"bytes {prefix}-{len(BIG) - 1}/{len(BIG)}"
    assert headers["x-cache"] == "MISS", "served from the in-progress fill, not from a finished blob"
    # The fill fetches the whole blob (it must hash all of it) even though the client wanted the tail.
    assert cdn_gets(hub) == 1
    assert cdn_range_starts(hub) == []
    assert mirror.fills_started() == 1
    again = parse_headers(curl("-fsS", "-I", url).stdout)
    assert again["x-cache"] == "HIT", "the fill behind the ranged answer was published"


def test_aria2c_multi_connection_download_shares_one_fill(
    hub: HubEmulator, mirror: MirrorThread, tmp_path: Path
) -> None:
    hub.add_repo("model", "org/aria", {"w.safetensors": BIG})
    # Keep the fill running while aria2c opens its extra ranged connections, so they all join it.
    hub.faults.throttle(2 * 1024 * 1024)
    url = f"{mirror.url}/org/aria/resolve/main/w.safetensors"
    aria2c("-x4", "-s4", "-k1M", "--allow-overwrite=true", "-d", str(tmp_path), "-o", "w.safetensors", url)
    assert (tmp_path / "w.safetensors").read_bytes() == BIG
    assert not (tmp_path / "w.safetensors.aria2").exists(), "aria2c considers the download complete"
    assert file_gets(mirror, "w.safetensors") > 1, "aria2c used several connections"
    assert mirror.fills_started() == 1
    assert cdn_gets(hub) == 1


def test_aria2c_continues_a_partial_file_without_control_file(
    hub: HubEmulator, mirror: MirrorThread, tmp_path: Path
) -> None:
    hub.add_repo("model", "org/aria-c", {"w.safetensors": BIG})
    url = f"{mirror.url}/org/aria-c/resolve/main/w.safetensors"
    prefix = 1_500_000
    (tmp_path / "w.safetensors").write_bytes(BIG[:prefix])
    log = tmp_path / "aria2.log"
    # No --allow-overwrite: with it, a missing .aria2 file makes aria2c restart from zero.
    aria2c("-c", "--log-level=debug", f"--log={log}", "-d", str(tmp_path), "-o", "w.safetensors", url)
    assert (tmp_path / "w.safetensors").read_bytes() == BIG
    # The final bytes alone cannot tell a resume from a restart; the request log can.
    # aria2c resumes at the 16 KiB block boundary at or below the partial file's end (its first,
    # unranged GET only probes the size and is abandoned).
    starts = [int(s) for s in re.findall(r"^Range: bytes=(\d+)-", log.read_text(errors="replace"), re.MULTILINE)]
    assert starts, "aria2c sent a ranged request"
    assert prefix - 16 * 1024 < min(starts) <= prefix, f"aria2c resumed near byte {prefix}, not from zero: {starts}"


def test_upstream_drop_mid_file_is_invisible_to_curl(hub: HubEmulator, mirror: MirrorThread, tmp_path: Path) -> None:
    hub.add_repo("model", "org/drop", {"w.safetensors": BIG})
    hub.faults.drop_after(1_000_000, path_contains="w.safetensors", times=2)
    url = f"{mirror.url}/org/drop/resolve/main/w.safetensors"
    proc = curl("-fsS", "-w", "%{http_code}", "-o", str(tmp_path / "w"), url)
    assert proc.stdout == "200"
    assert (tmp_path / "w").read_bytes() == BIG
    starts = cdn_range_starts(hub)
    assert len(starts) == 2 and 0 < starts[0] < starts[1], f"both drops were resumed upstream with Range: {starts}"
    assert parse_headers(curl("-fsS", "-I", url).stdout)["x-cache"] == "HIT"


def test_upstream_dropping_every_connection_still_completes(hub: HubEmulator, tmp_path: Path) -> None:
    data = BIG[:1_000_000]
    hub.add_repo("model", "org/flaky", {"w.safetensors": data})
    # Every CDN body dies after 300 kB: only resuming from what was received can ever finish.
    hub.faults.drop_after(300_000, path_contains="w.safetensors", times=None, origin="cdn")
    # Few attempts without progress, so a mirror that restarts from zero fails fast instead of after backoff.
    # (Not start_mirror: its first parameter is named `upstream`, so it cannot take an upstream section.)
    overrides = {"upstream": {"url": hub.url, "resume_attempts": 2}, "cache": {"dir": str(tmp_path / "cache")}}
    mirror = MirrorThread(load_config(None, overrides, environ={})).start()
    try:
        url = f"{mirror.url}/org/flaky/resolve/main/w.safetensors"
        proc = curl("-fsS", "-w", "%{http_code}", "-o", str(tmp_path / "w"), url)
    finally:
        mirror.stop()
    assert proc.stdout == "200"
    assert (tmp_path / "w").read_bytes() == data
    starts = cdn_range_starts(hub)
    assert len(starts) >= 3, starts
    assert all(0 < a < b for a, b in itertools.pairwise(starts)), f"each resume moved forward: {starts}"
