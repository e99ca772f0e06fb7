"""Request load at fixed concurrency for a bounded time: wrk when installed, else an aiohttp loop.

The aiohttp loop runs as `python -m bench.load URL --connections 64 --seconds 5 [--method HEAD]` in its own
process and prints one JSON line: {"rps": .., "p50_ms": .., "p99_ms": .., "errors": ..}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    tool: str


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_load(url: str, *, connections: int, seconds: float, method: str = "GET") -> Load:
    # wrk waits for a body after a HEAD answer that carries Content-Length, so HEAD goes to the aiohttp loop.
    if shutil.which("wrk") and method == "GET":
        return _wrk(url, connections, seconds, method)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.load",
            url,
            "--connections",
            str(connections),
            "--seconds",
            str(seconds),
            "--method",
            method,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return Load(data["rps"], data["p50_ms"], data["p99_ms"], data["errors"], "aiohttp")


def _wrk(url: str, connections: int, seconds: float, method: str) -> Load:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "method.lua"
        script.write_text(f'wrk.method = "{method}"\n')
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script), url],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return Load(rps, p50, p99, errors, "wrk")


async def _aiohttp_load(url: str, connections: int, seconds: float, method: str) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                async with session.request(method, url) as resp:
                    await resp.read()
                    if resp.status >= 400:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=connections)
    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return {"rps": len(latencies) / elapsed, "p50_ms": pick(0.5), "p99_ms": pick(0.99), "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--method", default="GET")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_aiohttp_load(args.url, args.connections, args.seconds, args.method))))


if __name__ == "__main__":
    main()
