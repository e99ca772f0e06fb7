"""Which LFS objects belong to which repo: what git-lfs's batch API is answered from.

git-lfs names an object by its sha256 and size alone, and may ask for one of any commit (an old
checkout, `git lfs fetch --all`). A hash is no secret (a gated repo's listing shows them), so the
mirror serves an object of a repo only once it knows the object is that repo's:

1. a record of the object (repos/<type>s/<id>/lfs/...), written once the upstream confirmed it;
2. else the upstream's batch API, asked with the caller's token; what it confirms is recorded;
3. else, when the upstream cannot be reached, the repo's file entries: a file the mirror resolved
   with that content (its LFS sha256) is as good as a confirmation, and is recorded too.

A record says nothing about the caller's access: the repo's policy check (allow-list, gated and
private access for the token) comes first, as it does for resolve.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Callable, Sequence

from mirror.cache import keys
from mirror.cache.memo import Memo
from mirror.cache.records import Records
from mirror.errors import UpstreamUnavailable
from mirror.repo import OID_RE, LfsObject, RepoRef
from mirror.upstream import LfsAction, LfsRefusal, Upstream

log = logging.getLogger(__name__)

MEMORY_OBJECTS = 50_000
# Asked of the upstream when it cannot be reached and the object is not known here.
UNAVAILABLE = LfsRefusal(503, "the upstream cannot be reached and this object is not in the mirror's cache")

# (blob key, size) of every file entry of a repo, at every cached commit (lifecycle/inventory.py).
Scan = Callable[[RepoRef], AsyncIterable[tuple[str, int]]]


class LfsObjects:
    def __init__(self, upstream: Upstream, records: Records, scan: Scan | None = None) -> None:
        self.upstream = upstream
        self.records = records
        self.scan = scan
        # Only confirmations are kept: an object unknown now may come with the next commit.
        self._memory: Memo[tuple[RepoRef, str], int] = Memo(MEMORY_OBJECTS)

    async def known(self, repo: RepoRef, oid: str) -> LfsObject | None:
        """The object, if the mirror already knows it belongs to the repo (no upstream asked)."""
        size = self._memory.get((repo, oid))
        if size is None:
            record = await self.records.get(keys.lfs_key(repo, oid))
            if not isinstance(record, dict) or record.get("etag") != oid or not _is_size(record.get("size")):
                return None
            size = record["size"]
            self._memory.put((repo, oid), size)
        return LfsObject(repo, oid, size)

    async def find(
        self, repo: RepoRef, wanted: Sequence[tuple[str, int]], token: str | None
    ) -> dict[str, LfsObject | LfsRefusal]:
        """Each (oid, size) asked for: the repo's object, or why it is not served.

        Raises the upstream's refusal of the whole repo (401/403/404) as its HubError.
        """
        found: dict[str, LfsObject | LfsRefusal] = {}
        unknown: list[tuple[str, int]] = []
        for oid, size in wanted:
            if not OID_RE.fullmatch(oid) or not _is_size(size):
                found[oid] = LfsRefusal(422, "an object is a 64-character lowercase sha256 oid and a size")
                continue
            known = await self.known(repo, oid)
            if known is None:
                unknown.append((oid, size))
            elif known.size != size:
                found[oid] = LfsRefusal(422, f"Object size mismatch: it is {known.size} bytes")
            else:
                found[oid] = known
        if unknown:
            found.update(await self._confirm(repo, unknown, token))
        return found

    async def _confirm(
        self, repo: RepoRef, unknown: list[tuple[str, int]], token: str | None
    ) -> dict[str, LfsObject | LfsRefusal]:
        try:
            answers = await self.upstream.lfs_batch(repo, unknown, token)
        except UpstreamUnavailable as exc:
            log.info("LFS batch for %s: upstream unavailable (%s); looking in the file entries", repo, exc.message)
            return await self._from_entries(repo, unknown)
        confirmed: dict[str, LfsObject | LfsRefusal] = {}
        for oid, size in unknown:
            answer = answers[oid]
            if isinstance(answer, LfsAction):
                confirmed[oid] = await self._remember(LfsObject(repo, oid, size))
            else:
                confirmed[oid] = answer
        return confirmed

    async def _from_entries(self, repo: RepoRef, unknown: list[tuple[str, int]]) -> dict[str, LfsObject | LfsRefusal]:
        found: dict[str, LfsObject | LfsRefusal] = {oid: UNAVAILABLE for oid, _ in unknown}
        if self.scan is None:
            return found
        wanted = {keys.blob_key(oid): (oid, size) for oid, size in unknown}
        async for blob_key, size in self.scan(repo):
            match = wanted.pop(blob_key, None)
            if match is None:
                continue
            oid, asked = match
            if size == asked:
                found[oid] = await self._remember(LfsObject(repo, oid, size))
            else:
                found[oid] = LfsRefusal(422, f"Object size mismatch: it is {size} bytes")
        return found

    async def _remember(self, obj: LfsObject) -> LfsObject:
        # Best effort: without the record this replica still knows it, and the upstream is asked again elsewhere.
        await self.records.put_best_effort(keys.lfs_key(obj.repo, obj.oid), {"etag": obj.oid, "size": obj.size})
        self._memory.put((obj.repo, obj.oid), obj.size)
        return obj

    def forget(self, repo: RepoRef) -> None:
        self._memory.forget(lambda key: key[0] == repo)


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
