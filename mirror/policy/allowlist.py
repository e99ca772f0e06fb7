"""The allow-list: which repos this mirror serves and keeps synced.

Stored as one JSON document in the storage backend, so every replica shares it; each replica
re-reads it at most every few seconds, so changes take effect without a restart.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from mirror.cache import keys
from mirror.cache.records import Records
from mirror.durations import parse_duration
from mirror.errors import BadRequest, RepoNotFound
from mirror.repo import REPO_TYPES, RepoRef, validate_revision

RELOAD_SECONDS = 5.0
_PATTERN_RE = re.compile(r"^[A-Za-z0-9._\-*?\[\]]{1,96}(/[A-Za-z0-9._\-*?\[\]]{1,96})?$")
_ENTRY_ID_RE = re.compile(r"[0-9a-f]{12}")
MIN_INTERVAL = 60
# Every revision of every matching repo is a sync target, and every target costs upstream calls:
# the caps keep one admin request from turning into an unbounded job.
MAX_REVISIONS = 32
MAX_GLOBS = 64
MAX_GLOB_LENGTH = 256
MAX_ENTRIES = 1000


def parse_interval(text: str) -> int:
    try:
        seconds = round(parse_duration(text))
    except ValueError:
        raise BadRequest(f"sync_interval {text[:40]!r} must look like 30m, 6h or 1d") from None
    if seconds < MIN_INTERVAL:
        raise BadRequest(f"sync_interval must be at least {MIN_INTERVAL} seconds")
    return seconds


def _unique(values: list[str]) -> list[str]:
    """Duplicates dropped, first occurrence kept: the order an admin wrote is the order shown."""
    return list(dict.fromkeys(values))


def _glob_list(name: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= MAX_GLOB_LENGTH for v in value):
        raise BadRequest(f"{name} must be a list of glob strings of at most {MAX_GLOB_LENGTH} characters")
    globs = _unique(value)
    if len(globs) > MAX_GLOBS:
        raise BadRequest(f"{name} has {len(globs)} distinct globs; at most {MAX_GLOBS} are allowed")
    if any(ord(c) < 32 or c == "\x7f" for glob in globs for c in glob):
        raise BadRequest(f"{name} globs must not contain control characters")
    return globs


def check_entry_id(entry_id: str) -> str:
    if not _ENTRY_ID_RE.fullmatch(entry_id):
        raise BadRequest("an allow-list entry id is 12 hexadecimal digits (see GET /admin/allowlist)")
    return entry_id


@dataclass(frozen=True)
class AllowEntry:
    id: str
    repo_type: str
    pattern: str
    revisions: list[str] = field(default_factory=lambda: ["main"])
    sync_interval: str = "6h"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    created_at: float = 0.0

    @property
    def interval_seconds(self) -> int:
        return parse_interval(self.sync_interval)

    @property
    def is_exact(self) -> bool:
        return not any(c in self.pattern for c in "*?[")

    def matches(self, repo: RepoRef) -> bool:
        return repo.repo_type == self.repo_type and fnmatch.fnmatchcase(repo.repo_id, self.pattern)

    def wants_file(self, path: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(path, g) for g in self.include):
            return False
        return not any(fnmatch.fnmatchcase(path, g) for g in self.exclude)

    @classmethod
    def from_request(cls, body: Any) -> AllowEntry:
        """Validate an admin's POST body; every problem is a 400 with a sentence."""
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        unknown = set(body) - {"repo_type", "pattern", "revisions", "sync_interval", "include", "exclude"}
        if unknown:
            raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
        repo_type = body.get("repo_type")
        if repo_type not in REPO_TYPES:
            raise BadRequest(f"repo_type must be one of {', '.join(REPO_TYPES)}")
        pattern = body.get("pattern")
        if not isinstance(pattern, str) or not _PATTERN_RE.match(pattern) or ".." in pattern:
            raise BadRequest("pattern must be a repo id or a glob like 'Qwen/Qwen3-VL-*' (at most one '/')")
        revisions = body.get("revisions", ["main"])
        if not isinstance(revisions, list) or not revisions or not all(isinstance(r, str) for r in revisions):
            raise BadRequest("revisions must be a non-empty list of branch, tag or commit names")
        revisions = _unique(revisions)
        if len(revisions) > MAX_REVISIONS:
            raise BadRequest(f"revisions has {len(revisions)} distinct names; at most {MAX_REVISIONS} are allowed")
        for revision in revisions:
            validate_revision(revision)
        interval = body.get("sync_interval", "6h")
        if not isinstance(interval, str):
            raise BadRequest("sync_interval must be a string like '6h'")
        parse_interval(interval)
        return cls(
            id=secrets.token_hex(6),
            repo_type=repo_type,
            pattern=pattern,
            revisions=revisions,
            sync_interval=interval,
            include=_glob_list("include", body.get("include")),
            exclude=_glob_list("exclude", body.get("exclude")),
            created_at=time.time(),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _stored_entry(data: dict[str, Any]) -> AllowEntry:
    # Entries saved before input was deduplicated may repeat a revision or glob many times over.
    lists = {k: _unique(data[k]) for k in ("revisions", "include", "exclude") if isinstance(data.get(k), list)}
    return AllowEntry(**{**data, **lists})


class AllowList:
    def __init__(
        self,
        records: Records,
        enforce: bool = False,
        on_deny: Callable[[RepoRef], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.records = records
        self.enforce = enforce
        self.on_deny = on_deny
        self.clock = clock
        self._entries: list[AllowEntry] = []
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    async def entries(self) -> list[AllowEntry]:
        if self._loaded_at is None or self.clock() - self._loaded_at > RELOAD_SECONDS:
            await self._reload()
        return list(self._entries)

    async def _reload(self) -> None:
        data = await self.records.get(keys.ALLOWLIST) or {"entries": []}
        self._entries = [_stored_entry(e) for e in data["entries"]]
        self._loaded_at = self.clock()

    async def check(self, repo: RepoRef) -> None:
        """With enforcement on, refuse repos that no entry matches, in words the HF client shows."""
        if not self.enforce or await self.allows(repo):
            return
        if self.on_deny is not None:
            self.on_deny(repo)
        raise RepoNotFound(
            f"{repo.repo_type.capitalize()} {repo.repo_id} is not on this mirror's allow-list. "
            "Ask the mirror's administrators to add it."
        )

    async def allows(self, repo: RepoRef) -> bool:
        return any(e.matches(repo) for e in await self.entries())

    async def matching(self, repo: RepoRef) -> list[AllowEntry]:
        return [e for e in await self.entries() if e.matches(repo)]

    async def add(self, entry: AllowEntry) -> AllowEntry:
        async with self._lock:
            await self._reload()
            same = next(
                (e for e in self._entries if (e.repo_type, e.pattern) == (entry.repo_type, entry.pattern)), None
            )
            if same is not None:
                # A second entry would sync the same repos twice; changing one is remove + add.
                raise BadRequest(
                    f"{entry.repo_type} {entry.pattern} is already on the allow-list as entry {same.id}; "
                    "remove that entry first to change it"
                )
            if len(self._entries) >= MAX_ENTRIES:
                raise BadRequest(f"the allow-list is full ({MAX_ENTRIES} entries); use a glob or remove entries")
            await self._save([*self._entries, entry])
        return entry

    async def remove(self, entry_id: str) -> AllowEntry | None:
        check_entry_id(entry_id)
        async with self._lock:
            await self._reload()
            found = next((e for e in self._entries if e.id == entry_id), None)
            if found is not None:
                await self._save([e for e in self._entries if e.id != entry_id])
        return found

    async def _save(self, entries: list[AllowEntry]) -> None:
        await self.records.put(keys.ALLOWLIST, {"entries": [e.to_json() for e in entries]})
        self._entries = entries
        self._loaded_at = self.clock()
