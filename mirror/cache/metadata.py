"""Listings: tree, paths-info, refs and commits.

Listings at a commit are immutable and cached for good (a missing folder too, since transformers
asks for `additional_chat_templates` on every load). Trees are fetched whole from upstream, across
its pages, so the mirror can page them itself with links to its own origin. Refs change, so they
are cached for a TTL and the last answer is kept for when upstream is slow or down (served after
`stale_wait` while a refresh runs behind it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from mirror.cache import keys
from mirror.cache.records import Records
from mirror.cache.revisions import STALE_WAIT, Revalidator, Revisions
from mirror.cache.singleflight import SingleFlight
from mirror.errors import EntryNotFound, UpstreamUnavailable
from mirror.repo import RepoRef
from mirror.tokens import fingerprint
from mirror.upstream import Upstream


def next_link(link_header: str | None) -> str | None:
    """The URL of `rel="next"` in a Link header."""
    if not link_header:
        return None
    for part in link_header.split(","):
        url, _, params = part.partition(";")
        if 'rel="next"' in params.replace(" ", "") or "rel=next" in params.replace(" ", ""):
            return url.strip().strip("<>")
    return None


def _bool(value: bool) -> str:
    return "true" if value else "false"


class Metadata:
    def __init__(
        self,
        upstream: Upstream,
        records: Records,
        revisions: Revisions,
        refs_ttl: float,
        clock: Callable[[], float] = time.monotonic,
        stale_wait: float = STALE_WAIT,
    ) -> None:
        self.upstream = upstream
        self.records = records
        self.revisions = revisions
        self.refs_ttl = refs_ttl
        self.clock = clock
        self._flight: SingleFlight[Any] = SingleFlight()
        # (repo, query) -> (refs, trusted until); kept past that as the last known answer.
        self._refs_fresh: dict[tuple[RepoRef, str], tuple[Any, float]] = {}
        self._revalidator = Revalidator(stale_wait, clock)

    async def close(self) -> None:
        """Cancel refreshes still running (at shutdown, before the upstream session closes)."""
        await self._revalidator.close()

    def forget(self, repo: RepoRef) -> None:
        for key in [k for k in self._refs_fresh if k[0] == repo]:
            del self._refs_fresh[key]

    async def _immutable(self, key: str, flight_key: tuple[Any, ...], fetch: Callable[[], Any]) -> Any:
        """A cached answer for a commit, or fetch-and-store once however many ask."""
        record = await self.records.get(key)
        if record is None:

            async def fetch_and_store() -> Any:
                try:
                    value = {"value": await fetch()}
                except EntryNotFound as exc:
                    value = {"missing": exc.message}
                await self.records.put_best_effort(key, value)
                return value

            record = await self._flight.do(flight_key, fetch_and_store)
        return record

    async def tree(
        self, repo: RepoRef, revision: str, path: str, recursive: bool, expand: bool, token: str | None
    ) -> tuple[str, list[dict[str, Any]]]:
        """(commit, every entry) of a folder listing."""
        commit = await self.revisions.resolve(repo, revision, token)
        query = f"{path}\n{recursive}\n{expand}"
        key = keys.api_key(repo, commit, "tree", query)

        async def fetch() -> list[dict[str, Any]]:
            url = f"{repo.api_path}/tree/{commit}" + (f"/{quote(path, safe='')}" if path else "")
            url += f"?recursive={_bool(recursive)}&expand={_bool(expand)}"
            entries: list[dict[str, Any]] = []
            next_url: str | None = url
            while next_url:
                page, headers = await self.upstream.api_json(next_url, token)
                entries.extend(page)
                next_url = next_link(headers.get("Link"))
            return entries

        try:
            record = await self._immutable(key, ("tree", key, fingerprint(token)), fetch)
        except UpstreamUnavailable:
            record = await self._tree_from_root(repo, commit, path, recursive, expand)
            if record is None:
                raise
        if "missing" in record:
            raise EntryNotFound(record["missing"], commit=commit)
        return commit, record["value"]

    async def _tree_from_root(
        self, repo: RepoRef, commit: str, path: str, recursive: bool, expand: bool
    ) -> dict[str, Any] | None:
        """Answer a listing from a cached recursive listing of the whole repo (upstream down)."""
        root = await self.records.get(keys.api_key(repo, commit, "tree", f"\nTrue\n{expand}"))
        if root is None or "value" not in root:
            return None
        entries = root["value"]
        if not path and recursive:
            return root
        prefix = f"{path}/" if path else ""
        if path and not any(e["path"] == path and e["type"] == "directory" for e in entries):
            return {"missing": f'{path} does not exist on "{commit}"'}
        selected = [
            e for e in entries if e["path"].startswith(prefix) and (recursive or "/" not in e["path"][len(prefix) :])
        ]
        return {"value": selected}

    async def paths_info(
        self, repo: RepoRef, revision: str, paths: list[str], expand: bool, token: str | None
    ) -> list[dict[str, Any]]:
        commit = await self.revisions.resolve(repo, revision, token)
        wanted = sorted(set(paths))
        key = keys.api_key(repo, commit, "paths-info", json.dumps([wanted, expand]))

        async def fetch() -> list[dict[str, Any]]:
            form = [("paths", p) for p in wanted] + [("expand", _bool(expand))]
            data, _ = await self.upstream.api_json(
                f"{repo.api_path}/paths-info/{commit}", token, method="POST", form=urlencode(form)
            )
            return list(data)

        try:
            record = await self._immutable(key, ("paths-info", key, fingerprint(token)), fetch)
        except UpstreamUnavailable:
            root = await self._tree_from_root(repo, commit, "", True, expand)
            if root is None:
                raise
            record = {"value": [e for e in root["value"] if e["path"] in set(wanted)]}
        return list(record.get("value", []))

    async def refs(self, repo: RepoRef, include_prs: bool, token: str | None) -> Any:
        query = "include_prs=1" if include_prs else ""
        mem_key = (repo, query)
        hit = self._refs_fresh.get(mem_key)
        if hit and hit[1] > self.clock():
            return hit[0]
        key = keys.latest_key(repo, "refs", query)

        async def fetch() -> Any:
            data, _ = await self.upstream.api_json(f"{repo.api_path}/refs" + (f"?{query}" if query else ""), token)
            self._refs_fresh[mem_key] = (data, self.clock() + self.refs_ttl)
            await self.records.put_best_effort(key, data)
            return data

        flight_key = ("refs", key, fingerprint(token))
        known = hit[0] if hit else await self.records.get(key)
        if known is None:
            return await self._flight.do(flight_key, fetch)
        if hit is None:
            self._refs_fresh[mem_key] = (known, 0.0)  # known, and due for a refresh
        done = await self._revalidator.refresh(flight_key, fetch)
        if done is None:
            return known
        try:
            return done.result()
        except UpstreamUnavailable:
            return known

    async def commits(
        self, repo: RepoRef, revision: str, query: str, token: str | None
    ) -> tuple[str, list[Any], str | None]:
        """(commit, one page of history, the upstream's query for the next page or None)."""
        commit = await self.revisions.resolve(repo, revision, token)
        key = keys.api_key(repo, commit, "commits", query)

        async def fetch() -> dict[str, Any]:
            data, headers = await self.upstream.api_json(
                f"{repo.api_path}/commits/{commit}" + (f"?{query}" if query else ""), token
            )
            nxt = next_link(headers.get("Link"))
            return {"items": data, "next": urlsplit(nxt).query if nxt else None}

        record = await self._immutable(key, ("commits", key, fingerprint(token)), fetch)
        if "missing" in record:
            raise EntryNotFound(record["missing"], commit=commit)
        return commit, record["value"]["items"], record["value"]["next"]
