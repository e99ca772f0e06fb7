"""`hub-mirror gc [--apply]`: what garbage collection would remove, and (with --apply) removing it.

A dry run by default: it reads and reports, and removes nothing. It opens the configured storage
directly, so it works on a stopped mirror's cache and next to running replicas (blobs read within
cache.evict_min_idle, or younger than cache.gc_grace, are left alone; a running mirror's own
background gc does the same under the maintenance lease).

Exit status: 0 done, 1 something could not be removed (listed), 2 bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from tqdm import tqdm

from mirror.cache.blobs.access import AccessLog
from mirror.config import Config
from mirror.durations import parse_duration
from mirror.errors import StorageError
from mirror.lifecycle.gc import GarbageCollector, GcReport
from mirror.lifecycle.offline import add_storage_args, load_or_exit, opened_storage


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "gc",
        help="remove unreferenced blobs, staging leftovers, expired leases, interrupted purges (dry run by default)",
        description=(
            "Garbage-collect the cache: blobs no file entry names, what unfinished writers left behind,"
            " fill leases long expired, purges that were interrupted, and access records of blobs no"
            " longer stored. Without --apply it only reports what it would remove."
        ),
    )
    parser.add_argument("--apply", action="store_true", help="remove what the dry run reports")
    parser.add_argument(
        "--grace",
        type=_duration,
        help="leave alone anything younger than this (e.g. 6h; default cache.gc_grace, 24h)",
    )
    add_storage_args(parser)
    parser.set_defaults(run=run)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    config = load_or_exit(args, "gc")
    if config is None:
        return 2
    try:
        report = asyncio.run(_collect(config, apply=args.apply, grace=args.grace))
    except StorageError as exc:
        print(f"hub-mirror gc: storage failed: {exc.message}", file=sys.stderr)
        return 1
    for error in report.errors[:20]:
        print(f"error: {error}", file=sys.stderr)
    if len(report.errors) > 20:
        print(f"... and {len(report.errors) - 20} more errors", file=sys.stderr)
    print(report.summary())
    if not args.apply:
        print("dry run: nothing was removed (run with --apply to remove it)")
    return 1 if report.errors else 0


async def _collect(config: Config, *, apply: bool, grace: float | None) -> GcReport:
    async with opened_storage(config) as storage:
        access = AccessLog(storage, config.cache.access_flush_interval)
        gc = GarbageCollector(
            storage, access, config.cache.gc_grace if grace is None else grace, config.cache.evict_min_idle
        )
        with tqdm(desc="blobs checked", unit=" blobs", file=sys.stderr, disable=None) as progress:
            return await gc.run(apply=apply, progress=progress)
