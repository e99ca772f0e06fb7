"""`export_bundle`: cached revisions written to a new bundle, from storage alone."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mirror import __version__
from mirror.cache import keys
from mirror.cache.blobs.hashing import blob_hasher
from mirror.lifecycle.bundles.errors import BundleError
from mirror.lifecycle.bundles.format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_SUM,
    OBJECTS,
    _hash_label,
    _is_mutable,
    _record_at,
    _sha256,
)
from mirror.lifecycle.bundles.progress import ProgressFactory, human_size, no_progress
from mirror.lifecycle.bundles.target import RevisionPlan, Target, plan_revision
from mirror.lifecycle.bundles.writers import _BundleWriter, _DirWriter, _TarWriter
from mirror.storage import Storage


@dataclass
class ExportSummary:
    path: Path
    revisions: list[RevisionPlan]
    records: int = 0
    blobs: int = 0
    bytes: int = 0

    def line(self) -> str:
        repos = len({plan.target.repo for plan in self.revisions})
        return (
            f"exported {repos} repos ({len(self.revisions)} revisions), {self.blobs} blobs"
            f" ({human_size(self.bytes)}), {self.records} records to {self.path}"
        )


def check_destination(path: Path) -> str | None:
    """Why a bundle cannot be written at `path`, or None."""
    if path.exists() or path.is_symlink():
        return f"{path} already exists; name a new path (an export never overwrites)"
    if not path.parent.is_dir():
        return f"the folder {path.parent} does not exist"
    return None


async def export_bundle(
    storage: Storage, targets: Iterable[Target], path: Path, progress: ProgressFactory = no_progress
) -> ExportSummary:
    """Write a bundle of `targets` at `path` (a tar when it ends with .tar), or raise BundleError.

    Every target is checked to be completely cached before a byte is written, and the bundle is
    built under a temporary name beside `path` and renamed at the end: a failure leaves nothing.
    """
    problem = check_destination(path)
    if problem:
        raise BundleError(problem)
    # Two names of one commit (a branch and a tag) are both kept: each carries its own ref record.
    plans = [await plan_revision(storage, target) for target in targets]
    records: dict[str, RevisionPlan] = {}
    blobs: dict[str, int] = {}
    for plan in plans:
        for key in [*plan.records, *plan.made]:
            records.setdefault(key, plan)
        blobs.update(plan.blobs)
    summary = ExportSummary(path, plans)
    temporary = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
    writer: _BundleWriter = _TarWriter(temporary) if path.name.endswith(".tar") else _DirWriter(temporary)
    try:
        listed_records = []
        for key, plan in sorted(records.items()):
            data = plan.made[key] if key in plan.made else await storage.get_bytes(key)
            if data is None:
                raise BundleError(f"{key} was removed from the cache during the export (a purge?); export again")
            item: dict[str, Any] = {"key": key, "size": len(data), "hash": _sha256(data)}
            if _is_mutable(key, plan.target.repo):
                info = await storage.stat(key)
                item["at"] = _record_at(data) or (info.mtime if info else time.time())
            writer.add_bytes(OBJECTS + key, data)
            listed_records.append(item)
        listed_blobs = []
        with progress("export", sum(blobs.values())) as bar:
            for key, size in sorted(blobs.items()):
                await _copy_blob(storage, key, size, writer, bar)
                listed_blobs.append({"key": key, "size": size, "hash": _hash_label(str(keys.etag_of_blob(key)))})
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "mirror_version": __version__,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "repos": [
                {
                    "type": plan.target.repo.repo_type,
                    "id": plan.target.repo.repo_id,
                    "revision": plan.target.revision,
                    "commit": plan.commit,
                    "files": plan.files,
                    "bytes": sum(plan.blobs.values()),
                }
                for plan in plans
            ],
            "records": listed_records,
            "blobs": listed_blobs,
        }
        raw = json.dumps(manifest, indent=1).encode()
        writer.add_bytes(MANIFEST, raw)
        writer.add_bytes(MANIFEST_SUM, f"{hashlib.sha256(raw).hexdigest()}  {MANIFEST}\n".encode())
        writer.close()
        os.rename(temporary, path)
    except BaseException:
        writer.discard()
        raise
    summary.records, summary.blobs, summary.bytes = len(listed_records), len(listed_blobs), sum(blobs.values())
    return summary


async def _copy_blob(storage: Storage, key: str, size: int, writer: _BundleWriter, bar: Any) -> None:
    """Stream one blob into the bundle, checking it against its address on the way."""
    etag = str(keys.etag_of_blob(key))
    hasher = blob_hasher(etag, size)
    writer.begin(OBJECTS + key, size)
    copied = 0
    async for chunk in storage.read_range(key):
        if copied + len(chunk) > size:
            break
        hasher.update(chunk)
        writer.write(chunk)
        copied += len(chunk)
        bar.update(len(chunk))
    if copied != size or hasher.hexdigest() != etag:
        raise BundleError(
            f"the cached blob {key} is damaged (its bytes do not match its hash or size): delete it and"
            " download the file again through the mirror, then export again"
        )
    writer.end()
