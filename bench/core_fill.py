"""Cold fill and warm serving of one large LFS file through the mirror, against references.

Run: .venv/bin/python -m bench.core_fill [--size-mib 1024] [--runs 3]

Needs curl. Prints medians of several runs and ratios against references measured in the same run: a direct
download from the upstream emulator (following its CDN redirect) and the machine's sha256 rate.
Peak RSS is the mirror process's VmHWM. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.hubemu import HubEmulator
from tests.mirror_server import MirrorProcess

CHUNK = 1024 * 1024


def download(url: str) -> tuple[float, float, int]:
    """(seconds to first byte, total seconds, bytes), read by curl to /dev/null.

    curl runs in its own process so the client does not share a GIL with the emulator.
    """
    out = subprocess.run(
        ["curl", "-sSfL", "-o", "/dev/null", "-w", "%{time_starttransfer} %{time_total} %{size_download}", url],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sha256_rate(data: bytes) -> float:
    start = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    return len(data) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * CHUNK
    data = os.urandom(size)
    mb = size / 1e6
    with HubEmulator() as hub, tempfile.TemporaryDirectory() as tmp:
        cold, warm, direct, ttfb_cold, ttfb_direct, rss = [], [], [], [], [], []
        hash_rate = statistics.median(sha256_rate(data) for _ in range(args.runs)) / 1e6
        for run in range(args.runs):
            hub.add_repo("model", f"bench/r{run}", {"w.safetensors": data})
            t, total_s, n = download(f"{hub.url}/bench/r{run}/resolve/main/w.safetensors")
            assert n == size
            direct.append(mb / total_s)
            ttfb_direct.append(t)
            mirror = MirrorProcess("--upstream", hub.url, "--cache-dir", f"{tmp}/c{run}").wait_ready()
            try:
                url = f"{mirror.url}/bench/r{run}/resolve/main/w.safetensors"
                t, total_s, n = download(url)
                assert n == size
                cold.append(mb / total_s)
                ttfb_cold.append(t)
                t, total_s, n = download(url)
                assert n == size
                warm.append(mb / total_s)
                rss.append(peak_rss_mib(mirror.proc.pid))
            finally:
                mirror.stop()
            hub.remove_repo("model", f"bench/r{run}")
    med = statistics.median
    print(f"file {args.size_mib} MiB, {args.runs} runs, medians")
    print(f"{'scenario':<34}{'MB/s':>10}{'ratio':>10}")
    print(f"{'direct from emulator (reference)':<34}{med(direct):>10.0f}{1.0:>10.2f}")
    print(f"{'mirror cold fill':<34}{med(cold):>10.0f}{med(cold) / med(direct):>10.2f}")
    print(f"{'mirror warm (cache hit)':<34}{med(warm):>10.0f}{med(warm) / med(direct):>10.2f}")
    print(f"{'sha256 single core':<34}{hash_rate:>10.0f}{'':>10}")
    print(f"cold fill / sha256 rate: {med(cold) / hash_rate:.2f}")
    print(f"time to first byte: cold {med(ttfb_cold) * 1000:.1f} ms, direct {med(ttfb_direct) * 1000:.1f} ms")
    print(f"mirror peak RSS: {max(rss):.0f} MiB")


if __name__ == "__main__":
    main()
