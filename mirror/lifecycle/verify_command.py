"""`hub-mirror verify [REPO...]`: re-hash cached blobs now, and quarantine the ones whose bytes differ.

The on-demand form of the background scrub (lifecycle/scrub.py), for after a disk incident or a
restore, or from cron where no replica scrubs. It opens the configured storage directly, so it works
on a stopped mirror's cache and next to a running one (it only reads, records quarantines and
removes bytes that are wrong anyway; the running mirror refills them on the next request).

Exit status: 0 when every blob checked is intact (or absent), 1 when a blob was corrupt (quarantined,
or only reported with --dry-run) or could not be checked, 2 for bad arguments, configuration, or a
named repo with nothing cached.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from typing import Any

from tqdm import tqdm

from mirror.cache import keys
from mirror.config import Config
from mirror.errors import BadRequest, StorageError
from mirror.lifecycle.inventory import repo_blobs
from mirror.lifecycle.offline import add_storage_args, load_or_exit, opened_storage
from mirror.lifecycle.scrub import Scrubber, ScrubReport
from mirror.repo import URL_PREFIXES, RepoRef, validate_repo_id
from mirror.storage import Storage

# Blobs hashed at once: enough to keep a disk array or an object store busy, memory two chunks each.
DEFAULT_JOBS = 4


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "verify",
        help="re-hash cached blobs and quarantine those whose bytes no longer match",
        description=(
            "Re-hash cached blobs against the hash their name carries. A blob that differs is"
            " quarantined: a record is written under quarantine/ and its bytes are removed, so the"
            " next request refills it from upstream. Exit status: 0 all intact, 1 corrupt blobs"
            " found or blobs that could not be read, 2 bad arguments."
        ),
    )
    parser.add_argument(
        "repos",
        nargs="*",
        metavar="REPO",
        help="only the blobs of these repos' cached files: org/name, datasets/org/name, spaces/org/name"
        " (default: every cached blob)",
    )
    parser.add_argument("--dry-run", action="store_true", help="report mismatching blobs, quarantine nothing")
    parser.add_argument(
        "--jobs", type=_positive, default=DEFAULT_JOBS, help=f"blobs hashed at once (default {DEFAULT_JOBS})"
    )
    add_storage_args(parser)
    parser.set_defaults(run=run)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def parse_repo(text: str) -> RepoRef:
    """A repo as its URL path names it (`org/name`, `datasets/org/name`, `spaces/name`); raises BadRequest."""
    for repo_type, prefix in URL_PREFIXES.items():
        if prefix and text.startswith(prefix):
            return RepoRef(repo_type, validate_repo_id(text[len(prefix) :]))
    return RepoRef("model", validate_repo_id(text))


def run(args: argparse.Namespace) -> int:
    try:
        repos = [parse_repo(text) for text in args.repos]
    except BadRequest as exc:
        print(f"hub-mirror verify: {exc}", file=sys.stderr)
        return 2
    config = load_or_exit(args, "verify")
    if config is None:
        return 2
    return asyncio.run(_verify(config, repos, dry_run=args.dry_run, jobs=args.jobs))


async def _verify(config: Config, repos: list[RepoRef], *, dry_run: bool, jobs: int) -> int:
    try:
        async with opened_storage(config) as storage:
            if repos:
                blobs = await _blobs_of(storage, repos)
                if blobs is None:
                    return 2
                total: int | None = sum(blobs.values())
                blob_keys: Any = sorted(blobs)
            else:
                total = await _stored_bytes(storage)
                blob_keys = storage.list(keys.BLOBS)
            scrubber = Scrubber(storage, source=f"hub-mirror verify on {socket.gethostname()}", quarantine=not dry_run)
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr) as bar:
                report = await scrubber.verify(blob_keys, bar.update, concurrency=jobs)
    except StorageError as exc:
        print(f"hub-mirror verify: storage error: {exc}", file=sys.stderr)
        return 1
    _print_report(report, dry_run=dry_run, named=bool(repos))
    return 0 if report.clean else 1


async def _blobs_of(storage: Storage, repos: list[RepoRef]) -> dict[str, int] | None:
    """blob key -> size of every blob the repos' cached file entries name; None (after a message)
    when a repo has none. Entries of every cached commit count: all of them may be served."""
    blobs: dict[str, int] = {}
    for repo in repos:
        found = 0
        async for blob_key, size in repo_blobs(storage, repo):
            blobs[blob_key] = size
            found += 1
        if not found:
            print(f"hub-mirror verify: no cached files of {repo.repo_type} {repo.repo_id}", file=sys.stderr)
            return None
    return blobs


async def _stored_bytes(storage: Storage) -> int | None:
    """The total for the progress bar; none (a bar without an end) if the store cannot say."""
    try:
        return (await storage.usage(keys.BLOBS))[1]
    except (StorageError, ValueError):
        return None


def _print_report(report: ScrubReport, *, dry_run: bool, named: bool) -> None:
    for key in report.corrupt_keys:
        print(f"corrupt: {key}" + (" (reported only: --dry-run)" if dry_run else " (quarantined)"))
    if report.corrupt > len(report.corrupt_keys):
        print(f"... and {report.corrupt - len(report.corrupt_keys)} more corrupt blobs")
    missing = "missing (not cached)" if named else "missing"
    corrupt = f"{report.corrupt} corrupt" + ("" if dry_run else f" ({report.quarantined} quarantined)")
    print(
        f"verify: {report.checked} blobs checked, {tqdm.format_sizeof(report.bytes, 'B', 1024)},"
        f" {report.ok} ok, {corrupt}, {report.missing} {missing}, {report.errors} errors"
    )
    if report.aborted is not None:
        print(f"verify: stopped early, cannot list blobs: {report.aborted}", file=sys.stderr)
    if report.errors:
        print("verify: some blobs could not be read (see the warnings above); run again", file=sys.stderr)
