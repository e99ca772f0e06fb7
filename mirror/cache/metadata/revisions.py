"""Revision resolution and repo info.

Branches and tags map to commits through the upstream, trusted for a short TTL; the last answer is
kept in storage so that cached repos keep working (at their last known commit) while upstream is
down. Info for a commit is immutable and cached for good.

Past the TTL, a client waits for upstream's new answer only briefly (`stale_wait`): a hanging or
dead upstream must not hold up files and metadata the mirror already has. `Revalidator` runs those
refreshes; the access policy and the refs listings use it too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol
from urllib.parse import quote

from mirror.cache import keys
from mirror.cache.memo import Aging
from mirror.cache.records import Records
from mirror.cache.revalidate import STALE_WAIT, Revalidator
from mirror.cache.singleflight import SingleFlight
from mirror.errors import UpstreamError, UpstreamUnavailable
from mirror.metrics import LogLimit
from mirror.repo import RepoRef, is_commit
from mirror.tokens import fingerprint
from mirror.upstream import Upstream

log = logging.getLogger(__name__)

# (repo, branch or tag) commits kept in memory; older ones are read back from storage when asked.
MEMORY_REFS = 50_000

InfoObserver = Callable[[RepoRef, dict[str, Any]], Awaitable[None]]


class PinSource(Protocol):
    """Branches whose reported commit is fixed by a completed sync (see mirror/sync/pins.py)."""

    async def get(self, repo: RepoRef, revision: str) -> str | None: ...


class Revisions:
    def __init__(
        self,
        upstream: Upstream,
        records: Records,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        stale_wait: float = STALE_WAIT,
        *,
        pins: PinSource | None = None,
        observers: Sequence[InfoObserver] = (),
    ) -> None:
        """`pins`: branches a completed sync fixed; `observers`: told of every repo info fetched
        (the access policy learns visibility from them)."""
        self.upstream = upstream
        self.records = records
        self.ttl = ttl
        self.clock = clock
        # (repo, revision) -> commit, trusted for `ttl`; kept past that as the last known answer.
        self._commits: Aging[tuple[RepoRef, str], str] = Aging(MEMORY_REFS, clock)
        self._flight: SingleFlight[dict[str, Any]] = SingleFlight()
        self._revalidator = Revalidator(stale_wait, clock)
        self._stale_log = LogLimit(log)
        self.observers: tuple[InfoObserver, ...] = tuple(observers)
        self.pins = pins

    async def close(self) -> None:
        """Cancel refreshes still running (at shutdown, before the upstream session closes)."""
        await self._revalidator.close()

    async def _pinned(self, repo: RepoRef, revision: str | None) -> str | None:
        if self.pins is None or not revision or is_commit(revision):
            return None
        return await self.pins.get(repo, revision)

    def forget(self, repo: RepoRef) -> None:
        self._commits.forget(lambda key: key[0] == repo)

    async def resolve(self, repo: RepoRef, revision: str | None, token: str | None) -> str:
        """The commit a revision names now (or, upstream slow or down, last time we asked)."""
        if revision and is_commit(revision):
            return revision
        pinned = await self._pinned(repo, revision)
        if pinned:
            return pinned
        fresh = self._fresh_commit(repo, revision)
        if fresh:
            return fresh
        known = await self._known_commit(repo, revision)
        if known is None:
            return (await self._fetch(repo, revision, "", token))["sha"]
        info = await self._refresh(repo, revision, "", token)
        if info is None:
            self._served_stale(repo, revision, known)
            return known
        return str(info["sha"])

    async def info(self, repo: RepoRef, revision: str | None, query: str, token: str | None) -> dict[str, Any]:
        """Repo info JSON at a revision; `query` is the canonical query string."""
        if revision and is_commit(revision):
            cached = await self.records.get(keys.api_key(repo, revision, "info", query))
            if cached is not None:
                return cached
            try:
                return await self._fetch(repo, revision, query, token)
            except UpstreamUnavailable:
                # Another form of the same commit's info beats no answer while upstream is down.
                fallback = await self.records.get(keys.api_key(repo, revision, "info", ""))
                if fallback is None:
                    raise
                return fallback
        pinned = await self._pinned(repo, revision)
        if pinned:
            return await self.info(repo, pinned, query, token)
        commit = self._fresh_commit(repo, revision)
        if commit:
            cached = await self.records.get(keys.api_key(repo, commit, "info", query))
            if cached is not None:
                return cached
        known = await self._known_commit(repo, revision)
        stale = await self.records.get(keys.api_key(repo, known, "info", query)) if known else None
        if known is None or stale is None:
            try:
                return await self._fetch(repo, revision, query, token)
            except UpstreamUnavailable:
                # The plain form at the last known commit beats no answer while upstream is down.
                fallback = await self.records.get(keys.api_key(repo, known, "info", "")) if known else None
                if fallback is None:
                    raise
                self._served_stale(repo, revision, str(known))
                return fallback
        info = await self._refresh(repo, revision, query, token)
        if info is None:
            self._served_stale(repo, revision, known)
            return stale
        return info

    def _fresh_commit(self, repo: RepoRef, revision: str | None) -> str | None:
        return self._commits.fresh((repo, revision or ""))

    async def _known_commit(self, repo: RepoRef, revision: str | None) -> str | None:
        """The last answer, however old: from memory, or from storage (kept across restarts)."""
        known = self._commits.known((repo, revision or ""))
        if known is not None:
            return known
        record = await self.records.get(keys.ref_key(repo, revision or ""))
        if record is None:
            return None
        self._commits.put_stale((repo, revision or ""), str(record["commit"]))  # known, and due for a refresh
        return str(record["commit"])

    async def _refresh(
        self, repo: RepoRef, revision: str | None, query: str, token: str | None
    ) -> dict[str, Any] | None:
        """Upstream's info now, or None when it has not answered in time (serve the last known)."""
        key = (repo, revision, query, fingerprint(token))
        return await self._revalidator.latest(key, lambda: self._fetch_now(repo, revision, query, token), None)

    def _served_stale(self, repo: RepoRef, revision: str | None, commit: str) -> None:
        self._stale_log.warning(
            "stale",
            "upstream slow or unavailable; serving %s@%s at last known commit %s",
            repo,
            revision or "default",
            commit,
        )

    async def remember(self, repo: RepoRef, revision: str, commit: str) -> None:
        self._commits.put((repo, revision), commit, self.ttl)
        await self.records.put_best_effort(
            keys.ref_key(repo, revision), {"revision": revision, "commit": commit, "at": time.time()}
        )

    async def fetch_info(self, repo: RepoRef, revision: str, token: str | None) -> dict[str, Any]:
        """Ask upstream now, whatever is cached (scheduled sync wants upstream's current answer)."""
        return await self._fetch(repo, revision, "", token)

    async def _fetch(self, repo: RepoRef, revision: str | None, query: str, token: str | None) -> dict[str, Any]:
        flight_key = (repo, revision, query, fingerprint(token))
        return await self._flight.do(flight_key, lambda: self._fetch_now(repo, revision, query, token))

    async def _fetch_now(self, repo: RepoRef, revision: str | None, query: str, token: str | None) -> dict[str, Any]:
        path = repo.api_path
        if revision:
            path += f"/revision/{quote(revision, safe='')}"
        # `expand=` selects the properties the Hub returns instead of adding to them: a selection
        # without `sha` gets no commit, which the cache is keyed by. Ask for it too, and hand the
        # caller the answer to its own question.
        params = query.split("&") if query else []
        added_sha = any(p.startswith("expand=") for p in params) and "expand=sha" not in params
        upstream_query = "&".join(sorted([*params, "expand=sha"])) if added_sha else query
        if upstream_query:
            path += f"?{upstream_query}"
        data, _ = await self.upstream.api_json(path, token)
        sha = data.get("sha") if isinstance(data, dict) else None
        if not isinstance(sha, str) or not is_commit(sha):
            raise UpstreamError(f"upstream repo info for {repo} has no commit sha", status=502)
        if added_sha:
            data = {key: value for key, value in data.items() if key != "sha"}
        await self.records.put_best_effort(keys.api_key(repo, sha, "info", query), data)
        if not (revision and is_commit(revision)):
            await self.remember(repo, revision or "", sha)
        if "private" in data and "gated" in data:
            # Only a whole answer says who may read the repo: a selection (`expand=siblings`) has
            # neither key, and reading it as "public" would open a gated repo to every token.
            for observe in self.observers:
                await observe(repo, data)
        return data
