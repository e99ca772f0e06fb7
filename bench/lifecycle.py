"""Scenarios of the cache-lifecycle issue: what eviction bookkeeping costs the hot path, and what
gc and verify cost on a cache of 100,000 blobs (time and peak memory)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Row, Target, curl, median, peak_rss_mib
from bench.load import run_load
from bench.scenarios import Ctx, mirror
from mirror.cache import keys
from mirror.repo import RepoRef

EVICT_REPO = "bench/evict"
EVICT_FILE = "small.bin"
GC_BLOBS = 100_000


def eviction_overhead(ctx: Ctx) -> None:
    """Warm HEAD and GET req/s on one cache, eviction off vs on (a limit it never reaches), in
    alternating runs so drift hits both alike."""
    s, res = ctx.settings, ctx.results
    ctx.hub.add_repo("model", EVICT_REPO, {EVICT_FILE: os.urandom(64 * 1024)})
    cache = ctx.root / "evict-mirror"
    url = f"/{EVICT_REPO}/resolve/main/{EVICT_FILE}"
    modes = {"off": {}, "on": {"HUB_MIRROR_CACHE_MAX_BYTES": "1Ti"}}
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(s.runs):
        for mode, env in modes.items():
            with mirror(ctx, cache, env=env) as m:
                for method in ("HEAD", "GET"):
                    curl(m.url + url, method=method)  # cached, and the page cache warm
                    load = run_load(m.url + url, connections=s.connections, seconds=s.load_seconds, method=method)
                    rates.setdefault((method, mode), []).append(load.rps)
    for method in ("HEAD", "GET"):
        off, on = median(rates[(method, "off")]), median(rates[(method, "on")])
        res.add(Row("8 eviction", f"warm {method} 64 KiB, eviction off req/s", off, "req/s", runs=s.runs))
        res.add(Row("8 eviction", f"warm {method} 64 KiB, eviction on req/s", on, "req/s", "eviction off",
                    on / off if off else None, s.runs))  # fmt: skip
        measured = f"{on / off:.3f} x ({on:,.0f} vs {off:,.0f} req/s)"
        res.targets.append(Target(f"warm {method} with eviction on ≥ 0.95 x off", measured, on >= 0.95 * off))


def _populate(cache: Path, blobs: int) -> None:
    """A local cache of `blobs` tiny blobs, half of them named by file entries of one repo."""
    objects = cache / "objects"
    repo = RepoRef("model", "bench/gc")
    commit = "c" * 40
    for i in range(blobs):
        data = b"%d" % i
        etag = hashlib.sha256(data).hexdigest()
        path = objects / keys.blob_key(etag)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if i % 2 == 0:
            entry = objects / keys.entry_key(repo, commit, f"f{i}.bin")
            entry.parent.mkdir(parents=True, exist_ok=True)
            entry.write_text(json.dumps({"path": f"f{i}.bin", "etag": etag, "size": len(data)}))


def _measured(args: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS MiB, first output line) of one hub-mirror command in its own process.

    The peak is the process's VmHWM, read while it runs (it only grows): getrusage's ru_maxrss of a
    child would count the bench process's own pages from before the exec.
    """
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirror", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    peak = 0.0
    while proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            peak = max(peak, peak_rss_mib(proc.pid))
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"hub-mirror {' '.join(args)} failed: {out}")
    lines = out.strip().splitlines()
    return elapsed, peak, lines[0] if lines else ""


def gc_verify_memory(ctx: Ctx) -> None:
    """`hub-mirror gc` (dry run) and `hub-mirror verify` on 100,000 blobs: bounded memory, streamed listings."""
    res = ctx.results
    cache = ctx.root / "gc-cache"
    started = time.perf_counter()
    _populate(cache, GC_BLOBS)
    ctx.results.notes.append(f"8 gc/verify: {GC_BLOBS:,} blobs written in {time.perf_counter() - started:.0f} s")
    idle = _measured(["gc", "--help"])
    for name, args in (("gc (dry run)", ["gc", "--cache-dir", str(cache)]),
                       ("verify", ["verify", "--cache-dir", str(cache)])):  # fmt: skip
        seconds, rss, line = _measured(args)
        res.add(Row("9 gc/verify", f"{name} of {GC_BLOBS:,} blobs: time", seconds, "s", note=line[:80]))
        res.add(Row("9 gc/verify", f"{name} of {GC_BLOBS:,} blobs: peak RSS", rss, "MiB",
                    note=f"`hub-mirror gc --help` (imports only) peaks at {idle[1]:.0f} MiB"))  # fmt: skip
