"""Who may read what: gated and private repos.

Cached bytes of a gated or private repo are served only to callers whose token the upstream
accepts for that repo. Visibility comes from the repo info (anonymous probe, or any info fetched
for a client); a decision per (token fingerprint, repo) is trusted for `access_ttl` seconds.

Past that, a known answer stays in force while upstream cannot be asked: it is re-asked in the
background and waited for only `stale_wait` seconds. That never widens access: a token the
upstream has not judged for this repo still needs upstream's answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from mirror.cache import keys
from mirror.cache.memo import Aging
from mirror.cache.records import Records
from mirror.cache.revalidate import STALE_WAIT, Revalidator
from mirror.cache.singleflight import SingleFlight
from mirror.errors import GatedRepo, HubError, RepoNotFound, UpstreamUnavailable
from mirror.repo import RepoRef
from mirror.tokens import fingerprint
from mirror.upstream import Upstream

log = logging.getLogger(__name__)

PUBLIC, GATED, PRIVATE = "public", "gated", "private"

# Answers kept in memory. Visibility older than that is read back from storage; a decision is asked
# of upstream again (decisions are never stored: they depend on a token).
MEMORY_VISIBILITY = 50_000
MEMORY_DECISIONS = 100_000


def visibility_of(info: dict[str, Any]) -> str:
    if info.get("private"):
        return PRIVATE
    if info.get("gated"):
        return GATED
    return PUBLIC


class AccessPolicy:
    def __init__(
        self,
        upstream: Upstream,
        records: Records,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        stale_wait: float = STALE_WAIT,
    ) -> None:
        self.upstream = upstream
        self.records = records
        self.ttl = ttl
        self.clock = clock
        # Answers trusted for `ttl`; kept past it as the last known answer. A decision is the
        # upstream's denial, or None for "allowed".
        self._visibility: Aging[RepoRef, str] = Aging(MEMORY_VISIBILITY, clock)
        self._decisions: Aging[tuple[str, RepoRef], HubError | None] = Aging(MEMORY_DECISIONS, clock)
        self._probe: SingleFlight[str] = SingleFlight()
        self._verify: SingleFlight[HubError | None] = SingleFlight()
        self._revalidator = Revalidator(stale_wait, clock)

    async def close(self) -> None:
        """Cancel refreshes still running (at shutdown, before the upstream session closes)."""
        await self._revalidator.close()

    def forget(self, repo: RepoRef) -> None:
        self._visibility.forget(lambda key: key == repo)
        self._decisions.forget(lambda key: key[1] == repo)

    async def observe(self, repo: RepoRef, info: dict[str, Any]) -> None:
        """Learn visibility from repo info fetched for any caller."""
        await self._record(repo, visibility_of(info))

    async def _record(self, repo: RepoRef, visibility: str) -> None:
        previous = self._visibility.known(repo)
        self._visibility.put(repo, visibility, self.ttl)
        if previous != visibility:
            await self.records.put_best_effort(keys.visibility_key(repo), {"visibility": visibility, "at": time.time()})

    async def check(self, repo: RepoRef, token: str | None, *, files: bool) -> None:
        """Raise the Hub's error unless the caller may read this repo's files (or metadata)."""
        visibility = await self.visibility(repo)
        if visibility == PUBLIC or (visibility == GATED and not files):
            return
        if not token:
            if visibility == GATED:
                raise GatedRepo(
                    f"Access to {repo.repo_type} {repo.repo_id} is restricted. You must have access to it "
                    "and be authenticated to access it. Please log in.",
                    status=401,
                )
            raise RepoNotFound(
                f"Repository Not Found for {repo.repo_type} {repo.repo_id}. Please make sure you specified "
                "the correct repo id and that you have access to it (pass a token if it is private).",
                status=401,
            )
        key = (fingerprint(token), repo)
        hit = self._decisions.get(key)
        if hit is None:
            # Never judged: only upstream can say (a 5xx if it cannot).
            denial = await self._verify.do(key, lambda: self._decide(key, repo, token))
        elif hit.fresh:
            denial = hit.value
        else:
            # Unless upstream answers in time, the known decision stays in force.
            denial = await self._revalidator.latest(("access", key), lambda: self._decide(key, repo, token), hit.value)
        if denial is not None:
            raise denial

    async def _decide(self, key: tuple[str, RepoRef], repo: RepoRef, token: str) -> HubError | None:
        denial = await self._ask_upstream(repo, token)
        self._decisions.put(key, denial, self.ttl)
        return denial

    async def _ask_upstream(self, repo: RepoRef, token: str) -> HubError | None:
        try:
            await self.upstream.api_json(f"{repo.api_path}/auth-check", token)
        except UpstreamUnavailable:
            raise UpstreamUnavailable(
                f"cannot verify access to {repo.repo_type} {repo.repo_id} while upstream is unreachable",
                status=503,
            ) from None
        except HubError as denial:
            if denial.status in (401, 403, 404):
                return denial
            raise
        return None

    async def visibility(self, repo: RepoRef) -> str:
        hit = self._visibility.get(repo)
        if hit is not None and hit.fresh:
            return hit.value
        known = hit.value if hit is not None else await self._stored_visibility(repo)
        if known is None:
            # Nothing known: only upstream can say (if it cannot, a 5xx, so clients fall back to
            # their own caches).
            return await self._probe.do(repo, lambda: self._probe_now(repo))
        return await self._revalidator.latest(("visibility", repo), lambda: self._probe_now(repo), known)

    async def _stored_visibility(self, repo: RepoRef) -> str | None:
        record = await self.records.get(keys.visibility_key(repo))
        if record is None:
            return None
        self._visibility.put_stale(repo, str(record["visibility"]))  # known, and due for a refresh
        return str(record["visibility"])

    async def _probe_now(self, repo: RepoRef) -> str:
        try:
            info, _ = await self.upstream.api_json(repo.api_path, None)
            visibility = visibility_of(info) if isinstance(info, dict) else PRIVATE
        except UpstreamUnavailable:
            raise  # learned nothing: the caller keeps what it knew
        except HubError as exc:
            # Anonymous callers get 401/404 for private and missing repos alike.
            visibility = GATED if exc.code == "GatedRepo" else PRIVATE
        await self._record(repo, visibility)
        return visibility
