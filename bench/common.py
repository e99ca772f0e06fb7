"""Shared pieces of the benchmark harness: clients (curl), process measurements, results."""

from __future__ import annotations

import hashlib
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

MB = 1e6
MIB = 1 << 20


@dataclass(frozen=True)
class Fetch:
    ttfb_s: float
    total_s: float
    nbytes: int

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / MB / self.total_s


def curl(url: str, *, method: str = "GET", timeout: float = 600) -> Fetch:
    """One download read by curl to /dev/null, in its own process (no GIL shared with any server)."""
    args = ["curl", "-sSfL", "-o", "/dev/null", "-w", "%{time_starttransfer} %{time_total} %{size_download}"]
    if method == "HEAD":
        args.append("-I")
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True, timeout=timeout).stdout.split()
    return Fetch(float(out[0]), float(out[1]), int(out[2]))


@dataclass(frozen=True)
class Parallel:
    """`clients` concurrent downloads: aggregate MB/s over the whole wall time, and per-client figures."""

    clients: int
    wall_s: float
    fetches: list[Fetch]

    @property
    def aggregate_mb_per_s(self) -> float:
        return sum(f.nbytes for f in self.fetches) / MB / self.wall_s

    @property
    def median_client_mb_per_s(self) -> float:
        return statistics.median(f.mb_per_s for f in self.fetches)


def curl_parallel(url: str, clients: int, expect: int, timeout: float = 600) -> Parallel:
    """`clients` curl processes started together on the same URL; every one must get `expect` bytes."""
    fmt = "%{time_starttransfer} %{time_total} %{size_download}"
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["curl", "-sSfL", "-o", "/dev/null", "-w", fmt, url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(clients)
    ]
    fetches = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"curl failed ({proc.returncode}): {err.strip()}")
            ttfb, total, size = out.split()
            fetches.append(Fetch(float(ttfb), float(total), int(size)))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    wall = time.perf_counter() - start
    short = [f.nbytes for f in fetches if f.nbytes != expect]
    if short:
        raise RuntimeError(f"{len(short)} of {clients} clients got the wrong size: {short[:3]} != {expect}")
    return Parallel(clients, wall, fetches)


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the process's peak resident set since it started."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sha256_rate_mb_per_s(data: bytes) -> float:
    start = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    return len(data) / MB / (time.perf_counter() - start)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Row:
    """One line of the final table: a median of several runs and its ratio against a reference."""

    scenario: str
    subject: str
    value: float
    unit: str
    ref: str = ""
    ratio: float | None = None
    runs: int = 1
    note: str = ""


@dataclass
class Target:
    text: str
    measured: str
    met: bool | None  # None: not measured


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(
            f"  {row.scenario:<10} {row.subject:<44} {fmt_value(row.value, row.unit):>14} {fmt_ratio(row)}", flush=True
        )
        return row


def fmt_value(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "n/a"
    if unit in ("ms",):
        return f"{value:.1f} {unit}"
    if unit in ("x", "ratio"):
        return f"{value:.2f}"
    return f"{value:,.0f} {unit}"


def fmt_ratio(row: Row) -> str:
    if row.ratio is None or row.ratio != row.ratio:
        return ""
    return f"{row.ratio:.2f} x {row.ref}"
