"""Check downloaded files against the mirror's tree listing, and against a reference copy, before any load.

Pure stdlib so it can be unit tested without torch. The listing gives every file's size and hash the
way the Hub does: LFS files carry the sha256 of their content, plain files the git blob sha1
(`sha1("blob <size>\\0" + content)`) as `blob_id`. The hashes are recomputed from the bytes on disk,
independently of whatever the client's cache trusted, so a corrupt blob is caught even when the
client would happily reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

CHUNK = 8 * 1024 * 1024
# Folders a client writes beside downloaded files (`hf download --local-dir` keeps its metadata here).
IGNORED_DIRS = frozenset({".cache"})
INDEX_FILE = "model.safetensors.index.json"
SINGLE_WEIGHTS = "model.safetensors"
# How many problems a reason spells out; the full list stays in the report.
REASON_ITEMS = 5


@dataclass(frozen=True)
class ListedFile:
    """One file of the mirror's recursive tree listing."""

    path: str
    size: int
    blob_id: str
    sha256: str | None = None  # LFS files only

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None


@dataclass
class VerifyReport:
    verified: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def reason(self) -> str:
        shown = "; ".join(self.problems[:REASON_ITEMS])
        more = len(self.problems) - REASON_ITEMS
        return shown + (f"; and {more} more" if more > 0 else "")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1_file(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _safe(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return bool(parts) and not path.startswith("/") and ".." not in parts


def _check_one(root: Path, entry: ListedFile) -> str | None:
    """The problem with one file, or None when it matches the listing."""
    if not _safe(entry.path):
        return f"unsafe path in listing: {entry.path!r}"
    local = root / entry.path
    if not local.is_file():
        return f"missing on disk: {entry.path}"
    size = local.stat().st_size
    if size != entry.size:
        return f"size mismatch: {entry.path} (listing {entry.size} bytes, disk {size})"
    if entry.sha256 is not None:
        actual = sha256_file(local)
        if actual != entry.sha256:
            return f"sha256 mismatch: {entry.path} (listing {entry.sha256}, disk {actual})"
    else:
        actual = git_blob_sha1_file(local)
        if actual != entry.blob_id:
            return f"git blob sha1 mismatch: {entry.path} (listing {entry.blob_id}, disk {actual})"
    return None


def files_on_disk(root: Path) -> set[str]:
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if d not in IGNORED_DIRS]
        rel = Path(dirpath).relative_to(root)
        found.update((rel / name).as_posix() for name in filenames)
    return found


def verify_files(root: Path, listing: Sequence[ListedFile], workers: int | None = None) -> VerifyReport:
    """Every listed file must be on disk with the listed size and hash, and nothing unlisted may be there."""
    report = VerifyReport()
    # hashlib releases the GIL on large buffers, so threads hash several shards at once.
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        outcomes = list(pool.map(lambda entry: _check_one(root, entry), listing))
    for entry, problem in zip(listing, outcomes, strict=True):
        if problem is None:
            report.verified.append(entry.path)
        else:
            report.problems.append(problem)
    listed = {entry.path for entry in listing}
    for extra in sorted(files_on_disk(root) - listed):
        report.problems.append(f"not in the mirror's listing: {extra}")
    return report


def missing_weights(root: Path, listing: Iterable[ListedFile]) -> list[str]:
    """Files a transformers load needs that the repo does not have, found before a load would fail on them.

    Reads the (already verified) index: a shard it names that is not in the listing means the
    repo is incomplete upstream or in the mirror, which no amount of hashing would notice.
    """
    listed = {entry.path for entry in listing}
    problems = [] if "config.json" in listed else ["missing file: config.json is not in the mirror's listing"]
    if INDEX_FILE in listed:
        try:
            weight_map = json.loads((root / INDEX_FILE).read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return [*problems, f"unreadable {INDEX_FILE}: {exc}"]
        for shard in sorted(set(weight_map.values())):
            if shard not in listed:
                problems.append(f"missing file: {shard} is named by {INDEX_FILE} but not in the mirror's listing")
    elif SINGLE_WEIGHTS not in listed:
        problems.append(f"missing file: neither {INDEX_FILE} nor {SINGLE_WEIGHTS} is in the mirror's listing")
    return problems


def compare_with_reference(root: Path, listing: Sequence[ListedFile], reference: Path) -> VerifyReport:
    """The downloaded files must be the reference directory's files, byte for byte (by sha256)."""
    report = VerifyReport()
    listed = {entry.path: entry for entry in listing}
    in_reference = files_on_disk(reference)

    def compare(entry: ListedFile) -> str | None:
        ref = reference / entry.path
        if entry.path not in in_reference:
            return f"not in reference: {entry.path}"
        ours = entry.sha256 or sha256_file(root / entry.path)  # LFS hashes were verified against the disk already
        theirs = sha256_file(ref)
        return None if ours == theirs else f"differs from reference: {entry.path} (sha256 {ours} vs {theirs})"

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        outcomes = list(pool.map(compare, listing))
    for entry, problem in zip(listing, outcomes, strict=True):
        if problem is None:
            report.verified.append(entry.path)
        else:
            report.problems.append(problem)
    for extra in sorted(in_reference - set(listed)):
        report.problems.append(f"only in reference: {extra}")
    return report
