"""`verify_bundle`: every byte of a bundle checked against its manifest before any of it is imported."""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirror.cache import keys
from mirror.cache.blobs.hashing import blob_hasher
from mirror.lifecycle.bundles.errors import BadBundle
from mirror.lifecycle.bundles.format import OBJECTS
from mirror.lifecycle.bundles.manifest import Item, _blob_item, _listed, _parse_repos, _read_manifest, _record_item
from mirror.lifecycle.bundles.progress import ProgressFactory, no_progress
from mirror.lifecycle.bundles.readers import _BundleReader, _open_reader
from mirror.lifecycle.bundles.target import _commit_of
from mirror.repo import RepoRef


@dataclass
class Bundle:
    """A bundle whose every byte has been checked (verify_bundle)."""

    path: Path
    manifest: dict[str, Any]
    repos: list[tuple[RepoRef, str]]  # (repo, commit) of each revision
    records: list[Item]
    blobs: list[Item]


def _check_record(
    item: Item, data: bytes, blobs: dict[str, Item], commits: set[tuple[RepoRef, str]]
) -> tuple[str | None, str | None]:
    """(what is wrong with a record's content, or None; the blob key it names, if a file entry)."""
    try:
        value = json.loads(data)
    except ValueError:
        return f"record {item.key} is not JSON", None
    assert item.repo is not None
    rest = item.key[len(keys.repo_prefix(item.repo)) :]
    if rest.startswith(("refs/", "pins/")) and (item.repo, _commit_of(value)) not in commits:
        return f"record {item.key} names a commit the bundle does not carry", None
    if not rest.startswith("entries/"):
        return None, None
    if not isinstance(value, dict):
        return f"record {item.key} is not a file entry", None
    if value.get("missing"):
        return None, None
    etag, size = value.get("etag"), value.get("size")
    blob = blobs.get(keys.blob_key(etag)) if isinstance(etag, str) and etag else None
    if blob is None or blob.size != size:
        return f"record {item.key} (file {str(value.get('path'))[:200]}) names a blob the bundle does not carry", None
    return None, blob.key


def _read_whole(reader: _BundleReader, item: Item, hasher: Any, bar: Any) -> bytes | str:
    """(the bytes of a record, or b"" for a blob, which is only hashed) or what stopped the read.

    A truncated tar still lists the member it was cut in; reading it comes up short.
    """
    kept: list[bytes] = []
    read = 0
    try:
        for chunk in reader.chunks(item.name):
            hasher.update(chunk)
            if item.repo is not None:
                kept.append(chunk)
            read += len(chunk)
            bar.update(len(chunk))
    except (tarfile.TarError, OSError, EOFError) as exc:
        return f"{item.name} cannot be read whole ({exc}): a truncated or damaged bundle?"
    if read != item.size:
        return f"{item.name}: read {read} of its {item.size} bytes: a truncated bundle?"
    return b"".join(kept)


def verify_bundle(path: Path, progress: ProgressFactory = no_progress) -> Bundle:
    """Check a bundle completely, reading every byte; raises BadBundle listing what is wrong."""
    reader = _open_reader(path)
    try:
        try:
            return _verify(path, reader, progress)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BadBundle(path, [f"cannot be read: {exc} (a truncated or damaged bundle?)"]) from None
    finally:
        reader.close()


def _verify(path: Path, reader: _BundleReader, progress: ProgressFactory) -> Bundle:
    files = reader.files()
    manifest = _read_manifest(path, reader, files)
    problems = list(reader.problems)
    repos = _parse_repos(manifest, problems)
    records: list[Item] = []
    blobs: dict[str, Item] = {}
    for entry in _listed(manifest, "records", problems):
        item = _record_item(entry, repos)
        if isinstance(item, str):
            problems.append(item)
        else:
            records.append(item)
    for entry in _listed(manifest, "blobs", problems):
        item = _blob_item(entry)
        if isinstance(item, str):
            problems.append(item)
        else:
            blobs[item.key] = item
    items = [*records, *blobs.values()]
    if len({item.key for item in items}) != len(items):
        problems.append("manifest: a key is listed more than once")
    for item in items:
        if item.name not in files:
            problems.append(f"{item.name} is missing (the manifest lists it)")
        elif files[item.name] != item.size:
            problems.append(f"{item.name} is {files[item.name]} bytes; the manifest says {item.size}")
    listed = {item.name for item in items}
    problems += [f"{name} is not in the manifest" for name in files if name.startswith(OBJECTS) and name not in listed]
    if problems:
        raise BadBundle(path, problems)

    commits = set(repos)
    named: set[str] = set()
    with progress("verify", sum(item.size for item in items)) as bar:
        for item in records:
            hasher = hashlib.sha256()
            data = _read_whole(reader, item, hasher, bar)
            if isinstance(data, str):
                problems.append(data)
                continue
            if hasher.hexdigest() != item.digest:
                problems.append(f"record {item.key} does not match its sha256 in the manifest: it was changed")
                continue
            problem, blob = _check_record(item, data, blobs, commits)
            if problem:
                problems.append(problem)
            if blob:
                named.add(blob)
        for item in blobs.values():
            hasher = blob_hasher(item.digest, item.size)
            result = _read_whole(reader, item, hasher, bar)
            if isinstance(result, str):
                problems.append(result)
            elif hasher.hexdigest() != item.digest:
                problems.append(f"blob {item.key} does not match its content hash: its bytes were changed")
    problems += [f"blob {key} is named by no file entry of the bundle" for key in blobs if key not in named]
    for repo, commit in repos:
        if not any(item.repo == repo and f"/entries/{commit}/" in item.key for item in records):
            problems.append(f"{repo} at commit {commit}: the bundle carries no file entry of it")
    if problems:
        raise BadBundle(path, problems)
    return Bundle(path, manifest, repos, records, list(blobs.values()))
