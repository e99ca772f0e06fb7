"""The scenarios of issue 7. Each appends median rows (and target verdicts) to `Results`."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    MB,
    MIB,
    Fetch,
    Results,
    Row,
    Target,
    curl,
    curl_parallel,
    median,
    peak_rss_mib,
    sha256_rate_mb_per_s,
)
from bench.load import run_load
from bench.refs import Nginx, Olah
from testbed.hubemu import HubEmulator
from testbed.mirror_server import MirrorProcess

BIG_REPO = "bench/big"
BIG_FILE = "w.safetensors"
META_REPO = "bench/meta"
SNAP_REPO = "bench/snap"


@dataclass
class Settings:
    quick: bool
    size: int  # bytes of the warm/cold file
    rss_size: int  # bytes of the cold fill whose peak RSS is measured
    runs: int
    clients: int = 16
    connections: int = 64
    load_seconds: float = 4
    meta_files: int = 2000
    snap_files: int = 200
    snap_file_size: int = 100 * 1024


@dataclass
class Ctx:
    settings: Settings
    hub: HubEmulator
    root: Path
    data: bytes
    results: Results
    olah_cli: Path | None
    nginx: Nginx | None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def mb(self) -> float:
        return len(self.data) / MB


@contextlib.contextmanager
def mirror(ctx: Ctx, cache: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[MirrorProcess]:
    proc = MirrorProcess(
        "--upstream", ctx.hub.url, "--cache-dir", str(cache), "--log-level", "WARNING", *extra, env=env
    )
    try:
        yield proc.wait_ready(60)
    finally:
        proc.stop()


@contextlib.contextmanager
def olah(ctx: Ctx, root: Path) -> Iterator[Olah | None]:
    if ctx.olah_cli is None:
        yield None
        return
    server = Olah(ctx.olah_cli, ctx.hub.url, ctx.hub.cdn_url, root).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def file_url(base: str, repo: str = BIG_REPO, name: str = BIG_FILE) -> str:
    return f"{base}/{repo}/resolve/main/{name}"


def ratio(a: float, b: float) -> float | None:
    return a / b if b and b == b and a == a else None


def checked(fetch: Fetch, size: int) -> Fetch:
    if fetch.nbytes != size:
        raise RuntimeError(f"got {fetch.nbytes} bytes, expected {size}")
    return fetch


# -- 1 and 5 (warm part): warm single stream and 16 concurrent streams ---------------------------------------------


def warm(ctx: Ctx) -> None:
    s, size, res = ctx.settings, len(ctx.data), ctx.results
    single: dict[str, list[float]] = {}
    multi: dict[str, list[float]] = {}

    def measure(name: str, url: str) -> None:
        checked(curl(url), size)  # fill (cold for caches) / page cache warm-up, not counted
        single[name] = [checked(curl(url), size).mb_per_s for _ in range(s.runs)]
        multi[name] = [curl_parallel(url, s.clients, size).aggregate_mb_per_s for _ in range(s.runs)]

    cache = ctx.root / "warm-mirror"
    with mirror(ctx, cache) as m:
        checked(curl(file_url(m.url)), size)  # the fill, in a process whose peak RSS is not the one reported
    with mirror(ctx, cache) as m:
        measure("mirror", file_url(m.url))
        rss_warm = peak_rss_mib(m.proc.pid)
    if ctx.nginx is not None:
        measure("nginx", f"{ctx.nginx.url}/{BIG_FILE}")
    with olah(ctx, ctx.root / "warm-olah") as o:
        if o is not None:
            measure("olah", file_url(o.url))
            ctx.extra["olah_rss_warm"] = peak_rss_mib(o.proc.pid) if o.proc else float("nan")
    for label, table in (("warm 1 client", single), (f"warm {s.clients} clients", multi)):
        ref = median(table.get("nginx", []))
        for name, values in table.items():
            res.add(
                Row("1 warm", f"{label}: {name}", median(values), "MB/s", "nginx", ratio(median(values), ref), s.runs)
            )
        if "olah" in table:
            res.add(Row("1 warm", f"{label}: mirror vs olah", median(table["mirror"]) / median(table["olah"]), "x"))
    mirror_single = median(single["mirror"])
    nginx_single = median(single.get("nginx", []))
    olah_single = median(single.get("olah", []))
    res.targets.append(
        Target(
            "warm single stream ≥ 0.8 x nginx",
            f"{mirror_single:,.0f} MB/s = {mirror_single / nginx_single:.2f} x nginx ({nginx_single:,.0f})",
            mirror_single >= 0.8 * nginx_single if nginx_single == nginx_single else None,
        )
    )
    if olah_single == olah_single:
        res.targets.append(
            Target(
                "warm single stream ≥ 3 x olah",
                f"{mirror_single / olah_single:.2f} x olah ({olah_single:,.0f} MB/s)",
                mirror_single >= 3 * olah_single,
            )
        )
    res.add(Row("5 memory", f"mirror peak RSS, {s.clients} warm streams", rss_warm, "MiB"))
    if "olah_rss_warm" in ctx.extra:
        res.add(Row("5 memory", f"olah peak RSS, {s.clients} warm streams", ctx.extra["olah_rss_warm"], "MiB"))
    ctx.extra["rss_warm"] = rss_warm


# -- 2: cold fill, unthrottled and throttled ---------------------------------------------------------------------


def cold(ctx: Ctx) -> None:
    s, size, res = ctx.settings, len(ctx.data), ctx.results
    hashes = [sha256_rate_mb_per_s(ctx.data) for _ in range(s.runs)]
    hash_rate = median(hashes)
    res.add(Row("2 cold", "sha256 single core", hash_rate, "MB/s", runs=s.runs))
    for throttle in (None, 100e6):
        tag = "unthrottled" if throttle is None else f"throttled {throttle / MB:.0f} MB/s"
        ctx.hub.faults.clear()
        if throttle is not None:
            ctx.hub.faults.throttle(throttle, path_contains=BIG_FILE)
        rates: dict[str, list[float]] = {"direct": [], "mirror": [], "olah": []}
        ttfb: dict[str, list[float]] = {"direct": [], "mirror": [], "olah": []}
        try:
            for run in range(s.runs):
                fetch = checked(curl(file_url(ctx.hub.url)), size)
                rates["direct"].append(fetch.mb_per_s)
                ttfb["direct"].append(fetch.ttfb_s * 1000)
                cache = ctx.root / f"cold-{run}"
                with mirror(ctx, cache) as m:
                    fetch = checked(curl(file_url(m.url)), size)
                shutil.rmtree(cache, ignore_errors=True)
                rates["mirror"].append(fetch.mb_per_s)
                ttfb["mirror"].append(fetch.ttfb_s * 1000)
                with olah(ctx, ctx.root / f"cold-olah-{run}") as o:
                    if o is not None:
                        fetch = checked(curl(file_url(o.url)), size)
                        rates["olah"].append(fetch.mb_per_s)
                        ttfb["olah"].append(fetch.ttfb_s * 1000)
        finally:
            ctx.hub.faults.clear()
        direct = median(rates["direct"])
        for name in ("direct", "mirror", "olah"):
            if rates[name]:
                rate = median(rates[name])
                res.add(Row("2 cold", f"{tag}: {name}", rate, "MB/s", "direct", ratio(rate, direct), s.runs))
                res.add(
                    Row(
                        "2 cold",
                        f"{tag}: {name} TTFB",
                        median(ttfb[name]),
                        "ms",
                        runs=s.runs,
                        note=f"+{median(ttfb[name]) - median(ttfb['direct']):.1f} ms vs direct",
                    )
                )
        rate = median(rates["mirror"])
        extra_ttfb = median(ttfb["mirror"]) - median(ttfb["direct"])
        if throttle is None:
            res.add(Row("2 cold", f"{tag}: mirror / sha256 rate", rate / hash_rate, "x"))
            res.targets.append(
                Target(
                    "cold unthrottled ≥ 0.5 x sha256 rate",
                    f"{rate:,.0f} MB/s = {rate / hash_rate:.2f} x sha256 ({hash_rate:,.0f})",
                    rate >= 0.5 * hash_rate,
                )
            )
            if rates["olah"]:
                res.add(Row("2 cold", f"{tag}: mirror vs olah", rate / median(rates["olah"]), "x"))
        else:
            res.targets.append(
                Target(
                    "cold throttled ≥ 0.9 x direct",
                    f"{rate:,.0f} MB/s = {rate / direct:.2f} x direct ({direct:,.0f})",
                    rate >= 0.9 * direct,
                )
            )
            res.targets.append(
                Target("cold throttled TTFB within 50 ms of direct", f"+{extra_ttfb:.1f} ms", extra_ttfb <= 50)
            )


# -- 3: coalescing -----------------------------------------------------------------------------------------------


def cdn_bytes_requested(hub: HubEmulator, size: int) -> int:
    """Bytes of the file asked of the emulator's CDN (Range lengths, or the whole file): an upper bound on sent."""
    total = 0
    for record in hub.requests:
        if record.origin != "cdn" or record.method != "GET":
            continue
        spec = record.headers.get("range", "")
        if spec.startswith("bytes=") and "," not in spec:
            first, _, last = spec[6:].partition("-")
            start = int(first) if first else max(0, size - int(last))
            end = int(last) if first and last else size - 1
            total += max(0, min(end, size - 1) - start + 1)
        else:
            total += size
    return total


def coalescing(ctx: Ctx) -> None:
    s, size, res = ctx.settings, len(ctx.data), ctx.results
    ratios: dict[str, list[float]] = {"mirror": [], "olah": []}
    rates: dict[str, list[float]] = {"mirror": [], "olah": []}
    for run in range(s.runs):
        cache = ctx.root / f"coalesce-{run}"
        ctx.hub.clear_requests()
        with mirror(ctx, cache) as m:
            par = curl_parallel(file_url(m.url), s.clients, size)
            upstream = m.metric("hub_mirror_upstream_bytes_total")
        shutil.rmtree(cache, ignore_errors=True)
        ratios["mirror"].append(upstream / size)
        rates["mirror"].append(par.aggregate_mb_per_s)
        ctx.hub.clear_requests()
        with olah(ctx, ctx.root / f"coalesce-olah-{run}") as o:
            if o is not None:
                par = curl_parallel(file_url(o.url), s.clients, size)
                ratios["olah"].append(cdn_bytes_requested(ctx.hub, size) / size)
                rates["olah"].append(par.aggregate_mb_per_s)
    for name in ("mirror", "olah"):
        if ratios[name]:
            how = "/metrics upstream bytes" if name == "mirror" else "CDN Range bytes requested"
            res.add(
                Row(
                    "3 coalesce",
                    f"{s.clients} cold clients: {name} upstream / size",
                    median(ratios[name]),
                    "x",
                    runs=s.runs,
                    note=how,
                )
            )
            res.add(
                Row(
                    "3 coalesce",
                    f"{s.clients} cold clients: {name} aggregate",
                    median(rates[name]),
                    "MB/s",
                    runs=s.runs,
                )
            )
    value = median(ratios["mirror"])
    res.targets.append(Target("coalescing: upstream bytes ≤ 1.05 x size", f"{value:.2f} x size", value <= 1.05))


# -- 5 (cold part): peak RSS during a large cold fill -------------------------------------------------------------


def cold_rss(ctx: Ctx) -> None:
    s, res = ctx.settings, ctx.results
    big = ctx.data if s.rss_size == len(ctx.data) else os.urandom(s.rss_size)
    ctx.hub.add_repo("model", "bench/huge", {BIG_FILE: big})
    del big
    cache = ctx.root / "rss-cold"
    try:
        with mirror(ctx, cache) as m:
            fetch = checked(curl(file_url(m.url, "bench/huge")), s.rss_size)
            rss = peak_rss_mib(m.proc.pid)
    finally:
        ctx.hub.remove_repo("model", "bench/huge")
        shutil.rmtree(cache, ignore_errors=True)
    gib = s.rss_size / (1 << 30)
    res.add(Row("5 memory", f"mirror peak RSS, {gib:g} GiB cold fill", rss, "MiB", note=f"{fetch.mb_per_s:,.0f} MB/s"))
    worst = max(rss, ctx.extra.get("rss_warm", 0))
    res.targets.append(
        Target(
            f"peak RSS ≤ 200 MB (16 warm streams; {gib:g} GiB cold fill)",
            f"warm {ctx.extra.get('rss_warm', float('nan')):.0f} MiB, cold {rss:.0f} MiB",
            worst * MIB / MB <= 200,
        )
    )


# -- 4: metadata at 64 connections --------------------------------------------------------------------------------


def metadata(ctx: Ctx) -> None:
    s, res = ctx.settings, ctx.results
    files = {f"d{i % 20:02d}/f{i:05d}.txt": f"file {i}\n".encode() for i in range(s.meta_files)}
    ctx.hub.add_repo("model", META_REPO, files)
    endpoints = {
        "model_info": ("GET", f"/api/models/{META_REPO}"),
        "tree recursive": ("GET", f"/api/models/{META_REPO}/tree/main?recursive=true"),
        "HEAD resolve": ("HEAD", f"/{META_REPO}/resolve/main/d07/f00007.txt"),
    }
    loads: dict[tuple[str, str], list[tuple[float, float, float, int]]] = {}

    def measure(name: str, base: str) -> None:
        for endpoint, (method, path) in endpoints.items():
            curl(base + path, method=method)  # cache it
            runs = []
            for _ in range(s.runs):
                load = run_load(base + path, connections=s.connections, seconds=s.load_seconds, method=method)
                runs.append((load.rps, load.p50_ms, load.p99_ms, load.errors))
            loads[(name, endpoint)] = runs

    with mirror(ctx, ctx.root / "meta-mirror") as m:
        measure("mirror", m.url)
        if ctx.nginx is not None:
            body = subprocess.run(
                ["curl", "-sSf", m.url + endpoints["tree recursive"][1]], capture_output=True, check=True
            ).stdout
            (ctx.nginx.www / "tree.json").write_bytes(body)
    with olah(ctx, ctx.root / "meta-olah") as o:
        if o is not None:
            measure("olah", o.url)
    if ctx.nginx is not None:
        runs = []
        for _ in range(s.runs):
            load = run_load(f"{ctx.nginx.url}/tree.json", connections=s.connections, seconds=s.load_seconds)
            runs.append((load.rps, load.p50_ms, load.p99_ms, load.errors))
        loads[("nginx", "static tree.json")] = runs
    worst_p99 = 0.0
    for (name, endpoint), runs in loads.items():
        rps, p50, p99 = (median([r[i] for r in runs]) for i in range(3))
        errors = sum(r[3] for r in runs)
        note = f"p50 {p50:.1f} ms, p99 {p99:.1f} ms" + (f", {errors} errors" if errors else "")
        res.add(Row("4 metadata", f"{endpoint}: {name} req/s", rps, "req/s", runs=s.runs, note=note))
        res.add(Row("4 metadata", f"{endpoint}: {name} p99", p99, "ms", runs=s.runs))
        if name == "mirror":
            worst_p99 = max(worst_p99, p99)
    res.targets.append(
        Target(
            f"cached metadata p99 ≤ 20 ms at {s.connections} connections",
            f"worst mirror p99 {worst_p99:.1f} ms",
            worst_p99 <= 20,
        )
    )


# -- 6: S3 backend --------------------------------------------------------------------------------------------------

_BOTO_GET = """
import sys, time, boto3
from botocore.config import Config
endpoint, bucket, key, access, secret = sys.argv[1:6]
client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=access,
                      aws_secret_access_key=secret, config=Config(s3={"addressing_style": "path"}))
start = time.perf_counter()
body = client.get_object(Bucket=bucket, Key=key)["Body"]
n = 0
while chunk := body.read(1 << 20):
    n += len(chunk)
print(n, time.perf_counter() - start)
"""


# The store's own write rate: boto3's managed multipart upload (8 MiB parts, 10 threads) of the same size.
_BOTO_PUT = """
import io, os, sys, time, boto3
from botocore.config import Config
endpoint, bucket, key, access, secret, size = sys.argv[1:7]
client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=access,
                      aws_secret_access_key=secret, config=Config(s3={"addressing_style": "path"},
                      request_checksum_calculation="when_required"))
data = io.BytesIO(os.urandom(int(size)))
start = time.perf_counter()
client.upload_fileobj(data, bucket, key)
print(time.perf_counter() - start)
"""


def boto3_seconds(script: str, server_endpoint: str, bucket: str, key: str, *extra: str) -> list[str]:
    from testbed.s3server import ACCESS_KEY, SECRET_KEY

    return subprocess.run(
        [sys.executable, "-c", script, server_endpoint, bucket, key, ACCESS_KEY, SECRET_KEY, *extra],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout.split()


def s3(ctx: Ctx) -> None:
    from testbed.s3server import ACCESS_KEY, SECRET_KEY, S3Server

    s, size, res = ctx.settings, len(ctx.data), ctx.results
    server = S3Server(ctx.root / "s3").start()
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    rates: dict[str, list[float]] = {"direct": [], "cold": [], "warm": [], "boto3": [], "put": []}
    try:
        bucket = server.create_bucket("bench")
        for run in range(s.runs):
            rates["direct"].append(checked(curl(file_url(ctx.hub.url)), size).mb_per_s)
            flags = (
                "--storage",
                "s3",
                "--s3-endpoint",
                server.endpoint,
                "--s3-bucket",
                bucket,
                "--s3-prefix",
                f"r{run}",
            )
            with mirror(ctx, ctx.root / f"s3-{run}", *flags, env=env) as m:
                rates["cold"].append(checked(curl(file_url(m.url)), size).mb_per_s)
                rates["warm"].append(checked(curl(file_url(m.url)), size).mb_per_s)
            objects = server.client().list_objects_v2(Bucket=bucket, Prefix=f"r{run}/")["Contents"]
            key = max(objects, key=lambda o: o["Size"])["Key"]
            out = boto3_seconds(_BOTO_GET, server.endpoint, bucket, key)
            if int(out[0]) != size:
                raise RuntimeError(f"boto3 GET read {out[0]} bytes")
            rates["boto3"].append(size / MB / float(out[1]))
            out = boto3_seconds(_BOTO_PUT, server.endpoint, bucket, f"put-{run}", str(size))
            rates["put"].append(size / MB / float(out[0]))
            shutil.rmtree(ctx.root / f"s3-{run}", ignore_errors=True)
    finally:
        server.close()
    direct, boto, put = median(rates["direct"]), median(rates["boto3"]), median(rates["put"])
    cold = median(rates["cold"])
    res.add(Row("6 s3", "direct from emulator", direct, "MB/s", runs=s.runs))
    res.add(Row("6 s3", "boto3 GET from SeaweedFS", boto, "MB/s", runs=s.runs))
    res.add(Row("6 s3", "boto3 multipart PUT to SeaweedFS", put, "MB/s", runs=s.runs, note="the store's write rate"))
    res.add(
        Row(
            "6 s3",
            "mirror cold fill into S3",
            cold,
            "MB/s",
            "boto3 PUT",
            ratio(cold, put),
            s.runs,
            note=f"{cold / boto:.2f} x boto3 GET, {cold / direct:.2f} x direct",
        )
    )
    res.add(
        Row(
            "6 s3",
            "mirror warm from S3",
            median(rates["warm"]),
            "MB/s",
            "boto3 GET",
            ratio(median(rates["warm"]), boto),
            s.runs,
        )
    )


# -- 7: snapshot_download ------------------------------------------------------------------------------------------

_SNAPSHOT = """
import sys, time
from huggingface_hub import snapshot_download
start = time.perf_counter()
path = snapshot_download(sys.argv[1])
print(time.perf_counter() - start)
"""


def snapshot_seconds(endpoint: str, home: Path, repo: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_XET="1",  # the emulator advertises Xet but serves plain HTTP only; same for every path
    )
    out = subprocess.run([sys.executable, "-c", _SNAPSHOT, repo], env=env, capture_output=True, text=True, timeout=600)
    shutil.rmtree(home, ignore_errors=True)
    if out.returncode != 0:
        raise RuntimeError(f"snapshot_download via {endpoint} failed: {out.stderr.strip().splitlines()[-1:]}")
    return float(out.stdout.split()[-1])


def snapshot(ctx: Ctx) -> None:
    s, res = ctx.settings, ctx.results
    files = {f"shard-{i:03d}.bin": os.urandom(s.snap_file_size) for i in range(s.snap_files)}
    ctx.hub.add_repo("model", SNAP_REPO, files)
    times: dict[str, list[float]] = {k: [] for k in ("direct", "mirror cold", "mirror warm", "olah cold", "olah warm")}
    failures: list[str] = []
    home = ctx.root / "hf-home"
    for run in range(s.runs):
        times["direct"].append(snapshot_seconds(ctx.hub.url, home, SNAP_REPO))
        cache = ctx.root / f"snap-{run}"
        with mirror(ctx, cache) as m:
            times["mirror cold"].append(snapshot_seconds(m.url, home, SNAP_REPO))
            times["mirror warm"].append(snapshot_seconds(m.url, home, SNAP_REPO))
        shutil.rmtree(cache, ignore_errors=True)
        with olah(ctx, ctx.root / f"snap-olah-{run}") as o:
            if o is not None:
                try:
                    times["olah cold"].append(snapshot_seconds(o.url, home, SNAP_REPO))
                    times["olah warm"].append(snapshot_seconds(o.url, home, SNAP_REPO))
                except RuntimeError as error:
                    failures.append(str(error))
    direct = median(times["direct"])
    label = f"{s.snap_files} files x {s.snap_file_size // 1024} KiB"
    for name, values in times.items():
        if values:
            v = median(values) * 1000
            res.add(Row("7 snapshot", f"{label}: {name}", v, "ms", "direct", ratio(v, direct * 1000), len(values)))
    for kind in ("cold", "warm"):
        if times[f"olah {kind}"]:
            res.add(
                Row(
                    "7 snapshot",
                    f"{kind}: olah time / mirror time",
                    median(times[f"olah {kind}"]) / median(times[f"mirror {kind}"]),
                    "x",
                )
            )
    res.notes.extend(failures[:1])
