"""What to export: a repo at a revision, named as in Hub URLs, and the plan of what carrying it copies,
found from storage alone (the cache is all an export reads)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mirror.cache import keys
from mirror.errors import BadRequest
from mirror.lifecycle.bundles.errors import NotCached
from mirror.repo import API_TYPES, RepoRef, is_commit, validate_repo_id, validate_revision
from mirror.storage import Storage

# What "the default branch" may be stored as: "" is what a request without a revision resolved
# to, "main" what clients that name it (huggingface_hub always does) resolved.
DEFAULT_NAMES = ("main", "")


@dataclass(frozen=True)
class Target:
    """One revision of one repo; `revision` None is the default branch."""

    repo: RepoRef
    revision: str | None

    def __str__(self) -> str:
        name = f"{self.repo.url_prefix}{self.repo.repo_id}"
        return f"{name}@{self.revision}" if self.revision else name


def parse_target(text: str) -> Target:
    """`[models/|datasets/|spaces/]ID[@REV]`, as in Hub URLs; raises BadRequest.

    The Hub reserves those three words as namespaces, so `datasets/squad` can only be the dataset.
    Repo ids never contain '@', so the first one starts the revision (which may hold '/').
    """
    spec, at, revision = text.partition("@")
    if at and not revision:
        raise BadRequest(f"{text!r}: nothing after '@' (name a branch, tag or commit, or leave '@' out)")
    repo_type = "model"
    head, slash, rest = spec.partition("/")
    if slash and head in API_TYPES and rest:
        repo_type, spec = API_TYPES[head], rest
    try:
        validate_repo_id(spec)
        if at:
            validate_revision(revision)
    except BadRequest as exc:
        raise BadRequest(f"{text!r}: {exc.message}") from None
    return Target(RepoRef(repo_type, spec), revision or None)


@dataclass
class RevisionPlan:
    """What exporting one revision copies, found before anything is written."""

    target: Target
    commit: str
    records: list[str] = field(default_factory=list)  # keys copied from storage
    made: dict[str, bytes] = field(default_factory=dict)  # records the export writes itself
    blobs: dict[str, int] = field(default_factory=dict)  # blob key -> size
    files: int = 0
    notes: list[str] = field(default_factory=list)


async def _json_record(storage: Storage, key: str) -> Any | None:
    data = await storage.get_bytes(key)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None  # damaged from outside: the mirror treats it as missing too


def _commit_of(record: Any) -> str | None:
    commit = record.get("commit") if isinstance(record, dict) else None
    return commit if isinstance(commit, str) and is_commit(commit) else None


async def resolve(storage: Storage, target: Target) -> tuple[str, list[str], dict[str, bytes]]:
    """(commit, ref and pin records to carry, records to make) for a target, from the cache alone.

    A completed sync's pin comes first (it names a snapshot known to be whole), then the last
    commit the mirror saw the branch or tag at. A mirror without the allow-list entry reads refs,
    not pins, so a branch known only from its pin gets a ref record made from the pin.
    """
    repo, revision = target.repo, target.revision
    if revision and is_commit(revision):
        return revision, [], {}
    names = [revision] if revision else list(DEFAULT_NAMES)
    refs = {name: await _json_record(storage, keys.ref_key(repo, name)) for name in names}
    for name in names:
        pin = await _json_record(storage, keys.pin_key(repo, name)) if name else None
        commit = _commit_of(pin)
        if commit is None:
            continue
        carried = [keys.pin_key(repo, name)]
        carried += [keys.ref_key(repo, n) for n, ref in refs.items() if _commit_of(ref) == commit]
        made = {}
        if _commit_of(refs[name]) != commit:
            record = {"revision": name, "commit": commit, "at": pin.get("at", 0)}
            made[keys.ref_key(repo, name)] = json.dumps(record, separators=(",", ":")).encode()
        return commit, carried, made
    known = [(name, ref) for name, ref in refs.items() if _commit_of(ref)]
    if not known:
        what = f"the revision {revision!r}" if revision else "its default branch"
        raise NotCached(
            f"{target}: the cache knows no commit for {what}: download it through the mirror"
            " (or run `hub-mirror sync` for an allow-listed repo) before exporting, or name a commit"
        )
    _, newest = max(known, key=lambda item: float(item[1].get("at") or 0))
    commit = str(_commit_of(newest))
    return commit, [keys.ref_key(repo, n) for n, ref in known if _commit_of(ref) == commit], {}


async def plan_revision(storage: Storage, target: Target) -> RevisionPlan:
    """Everything the revision needs, checked to be in the cache; raises NotCached naming what is not."""
    repo = target.repo
    commit, carried, made = await resolve(storage, target)
    plan = RevisionPlan(target, commit, records=carried, made=made)
    prefix = keys.repo_prefix(repo)
    missing: list[str] = []
    async for key in storage.list(f"{prefix}entries/{commit}/"):
        entry = await _json_record(storage, key)
        if not isinstance(entry, dict):
            continue
        if entry.get("missing"):
            plan.records.append(key)  # "no such file" answers spare the importing mirror an upstream call
            continue
        etag, size = entry.get("etag"), entry.get("size")
        if not isinstance(etag, str) or keys.etag_of_blob(keys.blob_key(etag)) is None or not isinstance(size, int):
            continue
        blob = keys.blob_key(etag)
        info = await storage.stat(blob)
        if info is None or info.size != size:
            missing.append(str(entry.get("path")))
            continue
        plan.records.append(key)
        plan.blobs[blob] = size
        plan.files += 1
    if missing:
        listed = ", ".join(sorted(missing)[:5]) + (", ..." if len(missing) > 5 else "")
        raise NotCached(
            f"{target} (commit {commit}) is not completely cached: the bytes of {len(missing)} of its"
            f" {len(missing) + plan.files} known files are not stored ({listed}); download them through the"
            " mirror (or run `hub-mirror sync`) first, then export again"
        )
    if plan.files == 0:
        raise NotCached(
            f"{target} (commit {commit}): no file of this revision is in the cache; download it through"
            " the mirror (snapshot_download, or `hub-mirror sync` for an allow-listed repo) before exporting"
        )
    api = [key async for key in storage.list(f"{prefix}api/{commit}/")]
    plan.records += api
    plan.records += [key async for key in storage.list(f"{prefix}latest/")]
    if await storage.stat(keys.visibility_key(repo)) is not None:
        plan.records.append(keys.visibility_key(repo))
    else:
        plan.notes.append(f"{target}: no visibility record: the importing mirror must ask upstream who may read it")
    if not any(key.rsplit("/", 1)[-1].startswith("info-") for key in api):
        plan.notes.append(
            f"{target}: no repo info at commit {commit}: snapshot_download through the importing mirror needs it"
            " (hf_hub_download of single files works)"
        )
    return plan
