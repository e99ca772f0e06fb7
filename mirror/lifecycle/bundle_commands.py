"""`hub-mirror export` and `hub-mirror import`: offline bundles for mirrors that cannot reach the Hub.

Exit status: 0 done; 1 the export or import could not be carried out (a revision not completely
cached, a bundle rejected, storage failing); 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mirror.config import Config
from mirror.errors import BadRequest, StorageError
from mirror.lifecycle.bundles import (
    Bundle,
    BundleError,
    ExportSummary,
    ImportSummary,
    Target,
    check_destination,
    export_bundle,
    load_bundle,
    parse_target,
    verify_bundle,
)
from mirror.lifecycle.offline import add_storage_args, load_or_exit, opened_storage

REPO_HELP = (
    "a repo as in Hub URLs, optionally at a revision: org/name, datasets/org/name, spaces/org/name,"
    " then @branch, @tag or @<40-hex commit> (default: the default branch)"
)


def add_parser(sub: Any) -> None:
    export = sub.add_parser(
        "export",
        help="write cached revisions to an offline bundle (for a mirror without Hub access)",
        description="Copy what the mirror needs to serve the given revisions, from the cache alone, into a"
        " bundle that `hub-mirror import` loads into another cache. Every file of each revision must be"
        " cached.",
    )
    export.add_argument("repos", nargs="+", metavar="REPO[@REV]", help=REPO_HELP)
    export.add_argument(
        "--to",
        required=True,
        metavar="PATH",
        help="the bundle to write: a tar file if PATH ends with .tar, else a directory; PATH must not exist",
    )
    add_storage_args(export)
    export.set_defaults(run=run_export)

    load = sub.add_parser(
        "import",
        help="load an offline bundle into the cache",
        description="Check every byte of a bundle made by `hub-mirror export`, then write it into the cache."
        " A bundle that fails a check changes nothing; an interrupted import finishes when run again.",
    )
    load.add_argument("path", metavar="PATH", help="the bundle: a directory or a .tar file")
    add_storage_args(load)
    load.set_defaults(run=run_import)


@contextmanager
def _bar(description: str, total: int) -> Iterator[tqdm]:
    # On stderr, and only on a terminal: in a log file the redraws would be noise.
    with tqdm(
        total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, disable=None
    ) as bar:
        yield bar


def _fail(command: str, message: str, status: int = 1) -> int:
    print(f"hub-mirror {command}: {message}", file=sys.stderr)
    return status


def run_export(args: argparse.Namespace) -> int:
    try:
        targets = [parse_target(text) for text in args.repos]
    except BadRequest as exc:
        return _fail("export", exc.message, 2)
    destination = Path(args.to)
    problem = check_destination(destination)
    if problem:
        return _fail("export", problem, 2)
    config = load_or_exit(args, "export")
    if config is None:
        return 2
    if config.storage.backend == "local" and not (config.cache_dir / "objects").is_dir():
        # Opening local storage would create an empty cache there; there is nothing to export.
        return _fail("export", f"no cache at {config.cache_dir.resolve()} (see --cache-dir, --config)")
    try:
        summary = asyncio.run(_export(config, targets, destination))
    except BundleError as exc:
        return _fail("export", str(exc))
    except StorageError as exc:
        return _fail("export", f"storage failed: {exc.message}; nothing was written at {destination}")
    except OSError as exc:
        return _fail("export", f"cannot write the bundle: {exc}; nothing was written at {destination}")
    for plan in summary.revisions:
        print(f"{plan.target}: commit {plan.commit}, {plan.files} files", file=sys.stderr)
        for note in plan.notes:
            print(f"hub-mirror export: note: {note}", file=sys.stderr)
    print(summary.line())
    return 0


async def _export(config: Config, targets: list[Target], destination: Path) -> ExportSummary:
    async with opened_storage(config) as storage:
        return await export_bundle(storage, targets, destination, _bar)


def run_import(args: argparse.Namespace) -> int:
    config = load_or_exit(args, "import")
    if config is None:
        return 2
    path = Path(args.path)
    if not path.exists():
        return _fail("import", f"{path} does not exist (a bundle is a directory or a .tar file)", 2)
    try:
        # Checked whole before the cache is opened: a rejected bundle leaves no trace there.
        bundle = verify_bundle(path, _bar)
    except BundleError as exc:
        return _fail("import", str(exc))
    except OSError as exc:
        return _fail("import", f"cannot read {path}: {exc}")
    summary = ImportSummary()
    try:
        asyncio.run(_import(config, bundle, summary))
    except BundleError as exc:
        return _fail("import", f"{exc}\nrun the same import again to finish it")
    except (StorageError, OSError) as exc:
        reason = exc.message if isinstance(exc, StorageError) else str(exc)
        return _fail(
            "import",
            f"stopped after writing {summary.blobs_written} blobs: {reason}; what was written is complete and"
            " verified: run the same import again to finish it",
        )
    print(summary.line())
    return 0


async def _import(config: Config, bundle: Bundle, summary: ImportSummary) -> None:
    async with opened_storage(config) as storage:
        await load_bundle(bundle, storage, _bar, summary)
