"""Entry point of the benchmark harness (issue 7): `python -m bench [--quick] [--only 1,2,...]`.

Starts everything itself on 127.0.0.1 (the upstream emulator, the mirror as a real process, nginx, olah,
SeaweedFS), runs each scenario several times, prints one table of medians and ratios, and writes it with the
command, the machine's facts and a plot into docs/benchmarks.md and docs/benchmarks.png.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import lifecycle, scenarios, xet
from bench.common import MIB, Results, Row, fmt_ratio, fmt_value
from bench.refs import Nginx, ensure_olah
from testbed.hubemu import HubEmulator

DOCS = Path(__file__).resolve().parent.parent / "docs"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

SCENARIOS: dict[str, tuple[str, Callable[[scenarios.Ctx], None]]] = {
    "1": ("warm 1 and 16 clients (+ peak RSS warm)", scenarios.warm),
    "2": ("cold fill, unthrottled and 100 MB/s", scenarios.cold),
    "3": ("coalescing, 16 cold clients", scenarios.coalescing),
    "5": ("peak RSS during a large cold fill", scenarios.cold_rss),
    "4": ("metadata at 64 connections", scenarios.metadata),
    "6": ("S3 backend", scenarios.s3),
    "7": ("snapshot_download of 200 files", scenarios.snapshot),
    "8": ("eviction bookkeeping: warm HEAD/GET, eviction on vs off", lifecycle.eviction_overhead),
    "9": ("gc and verify of 100,000 blobs: time and peak RSS", lifecycle.gc_verify_memory),
    "10": ("hf_xet through the mirror as its CAS vs HTTP vs the upstream's CAS; 5 % revision", xet.xet_paths),
}


def machine_facts() -> str:
    mem = "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"nproc {os.cpu_count()}, memory {mem}, CPU {cpu}, {platform.platform()}, Python {platform.python_version()}"


def table(results: Results) -> str:
    lines = [
        "| scenario | measurement | median | ratio | runs | note |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in results.rows:
        lines.append(
            f"| {r.scenario} | {r.subject} | {fmt_value(r.value, r.unit)} | {fmt_ratio(r)} | {r.runs} | {r.note} |"
        )
    return "\n".join(lines)


def targets(results: Results) -> str:
    lines = ["| target (issue 7) | measured | verdict |", "|---|---|---|"]
    for t in results.targets:
        verdict = "not measured" if t.met is None else ("**met**" if t.met else "**missed**")
        lines.append(f"| {t.text} | {t.measured} | {verdict} |")
    return "\n".join(lines)


def plot(results: Results, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install '.[bench]'): no plot", file=sys.stderr)
        return False
    rows: list[Row] = [r for r in results.rows if r.unit == "MB/s" and r.value == r.value]
    if not rows:
        return False
    colours = {"mirror": "tab:blue", "nginx": "tab:green", "olah": "tab:orange", "direct": "tab:gray"}

    def colour(r: Row) -> str:
        for key, c in colours.items():
            if key in r.subject:
                return c
        return "tab:purple"

    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.5))
    labels = [f"{r.scenario}: {r.subject}" for r in rows]
    ax.barh(range(len(rows)), [r.value for r in rows], color=[colour(r) for r in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("MB/s (median)")
    ax.set_title("hub-mirror throughput by scenario (blue: mirror, green: nginx, orange: olah, grey: direct)")
    for i, r in enumerate(rows):
        ax.text(r.value, i, f" {r.value:,.0f}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_docs(results: Results, command: str, settings: scenarios.Settings, elapsed: float, plotted: bool) -> None:
    path = DOCS / "benchmarks.md"
    block = "\n\n".join(
        [
            BEGIN,
            f"Command: `{command}` ({'quick' if settings.quick else 'full'} mode: {settings.size // MIB} MiB file, "
            f"{settings.runs} run(s) per measurement, {settings.rss_size // MIB} MiB cold fill for peak RSS; "
            f"took {elapsed / 60:.1f} min). Generated {time.strftime('%Y-%m-%d %H:%M %Z')}.",
            f"Machine: {machine_facts()}.",
            table(results),
            targets(results),
            *(["Notes from the run:\n\n" + "\n".join(f"- {n}" for n in results.notes)] if results.notes else []),
            *(["![throughput by scenario](benchmarks.png)"] if plotted else []),
            END,
        ]
    )
    if path.exists() and BEGIN in path.read_text():
        text = path.read_text()
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        path.write_text(head + block + tail)
    else:
        path.write_text(f"# Benchmarks\n\n{block}\n")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="256 MiB file, 1 run each, 1 GiB RSS fill")
    parser.add_argument("--runs", type=int, help="runs per measurement (default 3, quick 1)")
    parser.add_argument("--size-mib", type=int, help="file size for scenarios 1-3 and 6 (default 1024, quick 256)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenario numbers")
    parser.add_argument("--no-olah", action="store_true", help="skip the olah reference")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md and the plot")
    args = parser.parse_args()
    quick = args.quick
    settings = scenarios.Settings(
        quick=quick,
        size=(args.size_mib or (256 if quick else 1024)) * MIB,
        rss_size=(1024 if quick else 4096) * MIB,
        runs=args.runs or (1 if quick else 3),
        load_seconds=3 if quick else 4,
    )
    command = "python -m bench " + " ".join(sys.argv[1:])
    print(f"{command}\n{machine_facts()}", flush=True)
    results = Results()
    started = time.monotonic()
    olah_cli = None if args.no_olah else ensure_olah()
    if olah_cli is None and not args.no_olah:
        results.notes.append("olah could not be installed into its own venv: olah rows are missing")
    data = os.urandom(settings.size)
    with HubEmulator() as hub, tempfile.TemporaryDirectory(prefix="hub-mirror-bench-") as tmp:
        root = Path(tmp)
        hub.add_repo("model", scenarios.BIG_REPO, {scenarios.BIG_FILE: data})
        nginx = None
        if Nginx.available():
            nginx = Nginx(root / "nginx")
            (root / "nginx" / "www").mkdir(parents=True)
            (root / "nginx" / "www" / scenarios.BIG_FILE).write_bytes(data)
            nginx.start()
        else:
            results.notes.append("nginx is not installed (apt-get install -y nginx): nginx rows are missing")
        ctx = scenarios.Ctx(settings, hub, root, data, results, olah_cli, nginx)
        try:
            for key in args.only.split(","):
                title, func = SCENARIOS[key.strip()]
                print(f"== scenario {key}: {title}", flush=True)
                t0 = time.monotonic()
                try:
                    func(ctx)
                except Exception as error:  # one broken scenario must not lose the others' numbers
                    traceback.print_exc()
                    results.notes.append(f"scenario {key} ({title}) failed: {type(error).__name__}: {error}")
                print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)
        finally:
            if nginx is not None:
                nginx.stop()
    elapsed = time.monotonic() - started
    print()
    print(table(results))
    print()
    print(targets(results))
    for note in results.notes:
        print(f"note: {note}")
    if not args.no_docs:
        DOCS.mkdir(exist_ok=True)
        plotted = plot(results, DOCS / "benchmarks.png")
        write_docs(results, command, settings, elapsed, plotted)
        print(f"wrote {DOCS / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
