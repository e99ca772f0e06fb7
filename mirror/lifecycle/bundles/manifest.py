"""Reading a bundle's manifest: its checksum and format version first, then each entry checked to
be an object a bundle may carry (a record of one of its revisions, or a blob under its address)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirror import __version__
from mirror.cache import keys
from mirror.errors import BadRequest, HubError
from mirror.lifecycle.bundles.errors import BadBundle
from mirror.lifecycle.bundles.format import (
    _COMMIT_RECORD,
    _MUTABLE_RECORD,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_SUM,
    MAX_MANIFEST,
    OBJECTS,
    _hash_label,
)
from mirror.lifecycle.bundles.readers import _BundleReader
from mirror.repo import RepoRef, is_commit, validate_repo_id
from mirror.storage.base import check_key


@dataclass(frozen=True)
class Item:
    """One object of a bundle: a record or a blob."""

    key: str
    size: int
    digest: str  # hex: sha256 of a record, the content hash (its address) of a blob
    repo: RepoRef | None = None  # records: the repo they belong to
    at: float | None = None  # records that change over time: when written

    @property
    def name(self) -> str:
        return OBJECTS + self.key


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _read_manifest(path: Path, reader: _BundleReader, files: dict[str, int]) -> dict[str, Any]:
    if MANIFEST not in files:
        raise BadBundle(
            path, [f"no {MANIFEST}: not a hub-mirror bundle, or a truncated one (the manifest is written last)"]
        )
    if files[MANIFEST] > MAX_MANIFEST:
        raise BadBundle(path, [f"{MANIFEST} is {files[MANIFEST]} bytes, more than a manifest can be"])
    raw = reader.read(MANIFEST)
    if files.get(MANIFEST_SUM, 1024) >= 1024:
        raise BadBundle(
            path, [f"no {MANIFEST_SUM} (one line, written with the manifest): the manifest cannot be checked"]
        )
    expected = reader.read(MANIFEST_SUM).decode("ascii", "replace").split(" ", 1)[0].strip()
    if hashlib.sha256(raw).hexdigest() != expected:
        raise BadBundle(path, [f"{MANIFEST} does not match {MANIFEST_SUM}: the manifest was changed after export"])
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise BadBundle(path, [f"{MANIFEST} is not JSON ({exc})"]) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadBundle(path, [f"{MANIFEST} is not a hub-mirror bundle manifest"])
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BadBundle(path, [f"{MANIFEST}: format_version {version!r} is not a version number"])
    if version > FORMAT_VERSION:
        raise BadBundle(
            path,
            [
                f"the bundle is format version {version} (made by hub-mirror {manifest.get('mirror_version')});"
                f" this hub-mirror {__version__} reads format version {FORMAT_VERSION} and older: upgrade"
                " hub-mirror here to import it"
            ],
        )
    return manifest


def _parse_repos(manifest: dict[str, Any], problems: list[str]) -> list[tuple[RepoRef, str]]:
    repos: list[tuple[RepoRef, str]] = []
    listed = manifest.get("repos")
    if not isinstance(listed, list) or not listed:
        problems.append("the manifest names no repos")
        return repos
    for entry in listed:
        try:
            if not isinstance(entry, dict) or entry.get("type") not in ("model", "dataset", "space"):
                raise BadRequest(f"repo entry {str(entry)[:200]} has no valid type")
            repo = RepoRef(entry["type"], validate_repo_id(str(entry.get("id"))))
            commit = entry.get("commit")
            if not isinstance(commit, str) or not is_commit(commit):
                raise BadRequest(f"repo {repo} has no valid commit")
        except HubError as exc:
            problems.append(f"manifest: {exc.message}")
            continue
        repos.append((repo, commit))
    return repos


def _record_item(entry: Any, repos: list[tuple[RepoRef, str]]) -> Item | str:
    """A manifest's record entry, checked to be a record of one of its revisions, or the problem."""
    if not isinstance(entry, dict):
        return f"manifest: record entry {str(entry)[:200]} is not an object"
    key, size, digest = entry.get("key"), entry.get("size"), str(entry.get("hash", ""))
    try:
        check_key(str(key))
    except ValueError:
        return f"manifest: {str(key)[:300]!r} is not a storage key"
    if not isinstance(size, int) or size < 0 or not digest.startswith("sha256:"):
        return f"manifest: record {key} has no valid size or sha256"
    for repo, _ in repos:
        prefix = keys.repo_prefix(repo)
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        scoped = _COMMIT_RECORD.fullmatch(rest)
        if scoped and (repo, scoped.group(2)) in repos:
            return Item(key, size, digest[7:], repo)
        if _MUTABLE_RECORD.fullmatch(rest):
            at = entry.get("at")
            if not _number(at):
                return f"manifest: record {key} has no time ('at')"
            return Item(key, size, digest[7:], repo, float(at))
    return f"manifest: {key} is not a record of the bundle's repos and commits (a bundle writes nothing else)"


def _blob_item(entry: Any) -> Item | str:
    if not isinstance(entry, dict):
        return f"manifest: blob entry {str(entry)[:200]} is not an object"
    key, size = str(entry.get("key")), entry.get("size")
    etag = keys.etag_of_blob(key)
    if etag is None:
        return f"manifest: {key[:300]!r} is not a blob key"
    if not isinstance(size, int) or size < 0 or entry.get("hash") != _hash_label(etag):
        return f"manifest: blob {key} has no valid size or hash"
    return Item(key, size, etag)


def _listed(manifest: dict[str, Any], name: str, problems: list[str]) -> list[Any]:
    listed = manifest.get(name)
    if not isinstance(listed, list):
        problems.append(f"manifest: {name} is not a list")
        return []
    return listed
