"""`hub-mirror smoke`: flags, one run or a loop with metrics, JSON on stdout, exit 0 only on pass."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mirror.smoke.options import DEFAULT_QUESTION, DEFAULT_REPO, DEVICES, DTYPES, SmokeOptions, parse_interval
from mirror.smoke.result import SmokeResult
from mirror.smoke.runner import DEFAULT_TIMEOUT_S, run_every, run_once

DEFAULT_METRICS_PORT = 9109


def add_smoke_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    smoke = sub.add_parser(
        "smoke",
        help="check that a model pulled through the mirror is intact, loads and answers (needs the smoke extra)",
        description="Download a model through the mirror in a child process, verify every file against the "
        "mirror's listing, load it with transformers and ask it an image question. See docs/smoke.md.",
    )
    smoke.add_argument("--endpoint", required=True, help="the mirror's URL, e.g. http://mirror:8090")
    smoke.add_argument("--repo", default=DEFAULT_REPO, help=f"model repo (default {DEFAULT_REPO})")
    smoke.add_argument("--revision", default="main", help="branch, tag or commit (default main)")
    smoke.add_argument("--device", choices=DEVICES, default="auto", help="default auto: cuda if available")
    smoke.add_argument("--dtype", choices=DTYPES, help="default bfloat16 on cuda, float32 on cpu")
    smoke.add_argument("--image", help="image file to ask about (default: a generated solid red image)")
    smoke.add_argument("--question", default=DEFAULT_QUESTION, help=f"default {DEFAULT_QUESTION!r}")
    smoke.add_argument(
        "--expect",
        nargs="+",
        metavar="WORD",
        help="pass if the answer contains any of these words (default red; none with --reference)",
    )
    smoke.add_argument(
        "--reference", metavar="DIR", help="compare files, token ids and logits with the same model loaded from DIR"
    )
    smoke.add_argument("--max-new-tokens", type=int, default=16, help="tokens to generate (default 16)")
    smoke.add_argument("--json", metavar="OUT", type=Path, help="also write the result JSON to this file")
    smoke.add_argument("--hf-home", type=Path, help="HF_HOME for the worker (default: a fresh one per run)")
    smoke.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds before a run is failed")
    smoke.add_argument("--every", metavar="INTERVAL", help="repeat every INTERVAL (e.g. 6h) and serve metrics")
    smoke.add_argument(
        "--metrics-port", type=int, default=DEFAULT_METRICS_PORT, help="Prometheus port with --every (default 9109)"
    )
    smoke.add_argument("--metrics-host", default="0.0.0.0", help="Prometheus address with --every")
    # For tests and one-off checks of the loop: stop after N runs.
    smoke.add_argument("--max-runs", type=int, help=argparse.SUPPRESS)
    return smoke


def _options(args: argparse.Namespace) -> SmokeOptions:
    return SmokeOptions(
        endpoint=args.endpoint,
        repo=args.repo,
        revision=args.revision,
        device=args.device,
        dtype=args.dtype,
        image=str(Path(args.image).resolve()) if args.image else None,
        question=args.question,
        expect=args.expect,
        reference=str(Path(args.reference).resolve()) if args.reference else None,
        max_new_tokens=args.max_new_tokens,
    )


def _report(result: SmokeResult, out: Path | None) -> None:
    text = result.to_json()
    print(text, flush=True)
    if out is not None:
        # Written beside and renamed, so a reader (or a scraper of the file) never sees half a result.
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, out)
    verdict = "PASS" if result.passed else f"FAIL at {result.stage}"
    print(f"hub-mirror smoke: {verdict}: {result.reason}", file=sys.stderr, flush=True)


def run_smoke(args: argparse.Namespace) -> int:
    options = _options(args)
    hf_home = args.hf_home.resolve() if args.hf_home else None

    def once() -> SmokeResult:
        return run_once(options, hf_home, args.timeout)

    if not args.every:
        result = once()
        _report(result, args.json)
        return 0 if result.passed else 1
    try:
        interval = parse_interval(args.every)
    except ValueError as exc:
        print(f"hub-mirror smoke: {exc}", file=sys.stderr)
        return 2
    # Imported here: only the loop serves metrics.
    from prometheus_client import CollectorRegistry, start_http_server

    from mirror.smoke.metrics import SmokeMetrics

    registry = CollectorRegistry()
    metrics = SmokeMetrics(registry)
    server, thread = start_http_server(args.metrics_port, args.metrics_host, registry=registry)
    try:

        def on_result(result: SmokeResult) -> None:
            _report(result, args.json)
            metrics.observe(result)

        last = run_every(once, interval, on_result, args.max_runs)
    except KeyboardInterrupt:
        return 130
    finally:
        server.shutdown()
        thread.join(5)
    return 0 if last.passed else 1
