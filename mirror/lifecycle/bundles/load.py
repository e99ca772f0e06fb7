"""`load_bundle`: a verified bundle written into storage, resumably, never replacing newer records."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirror.cache import keys
from mirror.cache.blobs.hashing import blob_hasher
from mirror.lifecycle.bundles.errors import BundleError
from mirror.lifecycle.bundles.format import _record_at
from mirror.lifecycle.bundles.manifest import Item
from mirror.lifecycle.bundles.progress import ProgressFactory, human_size, no_progress
from mirror.lifecycle.bundles.readers import _BundleReader, _open_reader
from mirror.lifecycle.bundles.verify import Bundle
from mirror.storage import Storage


@dataclass
class ImportSummary:
    repos: int = 0
    blobs_written: int = 0
    blobs_skipped: int = 0
    bytes_written: int = 0
    records_written: int = 0
    records_skipped: int = 0
    records_kept: int = 0  # newer in the target than in the bundle

    def line(self) -> str:
        kept = f", {self.records_kept} kept (newer in this cache)" if self.records_kept else ""
        return (
            f"imported {self.repos} repos: {self.blobs_written} blobs written ({human_size(self.bytes_written)}),"
            f" {self.blobs_skipped} already stored; {self.records_written} records written,"
            f" {self.records_skipped} unchanged{kept}"
        )


def _write_order(item: Item) -> int:
    """Records that name other things go after them: an interrupted import never leaves a branch
    pointing at a commit whose files are not stored yet."""
    assert item.repo is not None
    rest = item.key[len(keys.repo_prefix(item.repo)) :]
    return 2 if rest.startswith(("refs/", "pins/")) else 1 if item.at is not None else 0


async def load_bundle(
    bundle: Bundle, storage: Storage, progress: ProgressFactory = no_progress, summary: ImportSummary | None = None
) -> ImportSummary:
    """Write a verified bundle into storage: blobs first, then records; counts go into `summary`
    as they happen (so a caller knows how far a failed import got).

    Idempotent and resumable: blobs already stored are skipped, records equal to the stored ones
    are, and a ref, pin or other changing record is not replaced by an older one. Each blob is hashed
    again while it is written and published only if it still matches.
    """
    summary = summary if summary is not None else ImportSummary()
    summary.repos = len({repo for repo, _ in bundle.repos})
    reader = _open_reader(bundle.path)
    try:
        reader.files()
        with progress("import", sum(item.size for item in bundle.blobs)) as bar:
            for item in bundle.blobs:
                info = await storage.stat(item.key)
                if info is not None and info.size == item.size:
                    summary.blobs_skipped += 1
                    bar.update(item.size)
                    continue
                await _write_blob(bundle.path, reader, item, storage, bar)
                summary.blobs_written += 1
                summary.bytes_written += item.size
        for item in sorted(bundle.records, key=_write_order):
            await _write_record(bundle.path, reader, item, storage, summary)
    finally:
        reader.close()
    return summary


async def _write_blob(path: Path, reader: _BundleReader, item: Item, storage: Storage, bar: Any) -> None:
    hasher = blob_hasher(item.digest, item.size)
    writer = await storage.open_writer(item.key)
    try:
        for chunk in reader.chunks(item.name):
            hasher.update(chunk)
            await writer.write(chunk)
            bar.update(len(chunk))
        if writer.written != item.size or hasher.hexdigest() != item.digest:
            raise BundleError(f"{path}: blob {item.key} changed after it was checked; it was not written")
    except BaseException:
        await writer.abort()
        raise
    await writer.commit()


async def _write_record(
    path: Path, reader: _BundleReader, item: Item, storage: Storage, summary: ImportSummary
) -> None:
    data = reader.read(item.name)
    if hashlib.sha256(data).hexdigest() != item.digest:
        raise BundleError(f"{path}: record {item.key} changed after it was checked; it was not written")
    existing = await storage.get_bytes(item.key)
    if existing == data:
        summary.records_skipped += 1
        return
    if existing is not None:
        if item.at is None:
            # Fixed once written for a commit: another form of the same answer is as good (a
            # damaged one, which the mirror reads as missing, is replaced).
            if _parses(existing):
                summary.records_skipped += 1
                return
        else:
            info = await storage.stat(item.key)
            theirs = _record_at(existing) or (info.mtime if info else 0.0)
            if theirs >= item.at:
                summary.records_kept += 1
                return
    await storage.put_bytes(item.key, data)
    summary.records_written += 1


def _parses(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True
