"""Listings: tree, treesize, paths-info, refs, commits; repo listings and llama.cpp manifests.

Listings at a commit are immutable and cached for good (a missing folder too, since transformers
asks for `additional_chat_templates` on every load), but only when they are a real answer for that
commit: a paths-info answer that leaves out paths the commit's tree lists is upstream's fault, and
is never kept. Trees are fetched whole from upstream, across its pages, so the mirror can page them
itself with links to its own origin. Refs, repo listings and llama.cpp manifests change, so they
are cached for a TTL and the last answer is kept for when upstream is slow or down
(`cache/metadata/latest.py`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from mirror.cache import keys
from mirror.cache.metadata.latest import LatestAnswers
from mirror.cache.metadata.revisions import Revisions
from mirror.cache.records import Records
from mirror.cache.revalidate import STALE_WAIT
from mirror.cache.singleflight import SingleFlight
from mirror.errors import EntryNotFound, UpstreamError, UpstreamUnavailable
from mirror.metrics import LogLimit
from mirror.repo import RepoRef
from mirror.tokens import fingerprint
from mirror.upstream import Upstream

log = logging.getLogger(__name__)

# What llama.cpp sends for its manifest (common/download.cpp, `common_get_hf_file`). The Hub shapes
# the answer by User-Agent: only to "llama-cpp" does it name the GGUF file (`ggufFile`), and that is
# the one form whose follow-up downloads (resolve URLs) the mirror serves.
LLAMACPP_HEADERS = {"Accept": "application/json", "User-Agent": "llama-cpp"}


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
        self._latest = LatestAnswers(records, refs_ttl, clock, stale_wait)
        self._fault_log = LogLimit(log)

    async def close(self) -> None:
        """Cancel refreshes still running (at shutdown, before the upstream session closes)."""
        await self._latest.close()

    def forget(self, repo: RepoRef) -> None:
        self._latest.forget(f"repos/{repo.storage_prefix}/")

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

    async def _root_entries(self, repo: RepoRef, commit: str, expand: bool) -> list[dict[str, Any]] | None:
        """Every entry of the commit from a cached recursive listing of the whole repo, if any.

        The listing asked with the same `expand` is preferred; the other one names the same paths.
        """
        for flag in (expand, not expand):
            root = await self.records.get(keys.api_key(repo, commit, "tree", f"\nTrue\n{flag}"))
            if root is not None and "value" in root:
                return list(root["value"])
        return None

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

    async def treesize(self, repo: RepoRef, revision: str, path: str, token: str | None) -> tuple[str, Any]:
        """(commit, upstream's `{"size": bytes}` for the folder) at the commit a revision names."""
        commit = await self.revisions.resolve(repo, revision, token)
        key = keys.api_key(repo, commit, "treesize", path)

        async def fetch() -> Any:
            url = f"{repo.api_path}/treesize/{commit}" + (f"/{quote(path, safe='')}" if path else "")
            data, _ = await self.upstream.api_json(url, token)
            if not isinstance(data, dict) or not isinstance(data.get("size"), int):
                raise UpstreamError(f"upstream treesize answer for {repo} has no size", status=502)
            return data

        try:
            record = await self._immutable(key, ("treesize", key, fingerprint(token)), fetch)
        except UpstreamUnavailable:
            record = await self._treesize_from_root(repo, commit, path)
            if record is None:
                raise
        if "missing" in record:
            raise EntryNotFound(record["missing"], commit=commit)
        return commit, record["value"]

    async def _treesize_from_root(self, repo: RepoRef, commit: str, path: str) -> dict[str, Any] | None:
        """The size summed over a cached recursive listing (upstream down). Only `size` is known
        for sure to be in the Hub's answer, and it is all hfd.sh reads."""
        entries = await self._root_entries(repo, commit, False)
        if entries is None:
            return None
        if path and not any(e.get("path") == path for e in entries):
            return {"missing": f'{path} does not exist on "{commit}"'}
        prefix = f"{path}/" if path else ""
        size = sum(
            int(e.get("size") or 0)
            for e in entries
            if e.get("type") == "file" and (e.get("path") == path or str(e.get("path", "")).startswith(prefix))
        )
        return {"value": {"size": size}}

    async def paths_info(
        self, repo: RepoRef, revision: str, paths: list[str], expand: bool, token: str | None
    ) -> list[dict[str, Any]]:
        commit = await self.revisions.resolve(repo, revision, token)
        wanted = sorted(set(paths))
        key = keys.api_key(repo, commit, keys.PATHS_INFO, json.dumps([wanted, expand]))
        record = await self.records.get(key)
        if record is None:
            flight_key = ("paths-info", key, fingerprint(token))
            try:
                record = await self._flight.do(
                    flight_key, lambda: self._fetch_paths_info(repo, commit, wanted, expand, token, key)
                )
            except UpstreamUnavailable:
                entries = await self._root_entries(repo, commit, expand)
                if entries is None:
                    raise
                record = {"value": [e for e in entries if e["path"] in set(wanted)]}
        return list(record.get("value", []))

    async def _fetch_paths_info(
        self, repo: RepoRef, commit: str, wanted: list[str], expand: bool, token: str | None, key: str
    ) -> dict[str, Any]:
        """Upstream's answer, stored for the commit only when it can be trusted to be one.

        Missing paths are silently left out by the Hub, so a short answer is normal; but one that
        leaves out paths the commit's tree lists is a fault (a request the Hub misread, a broken
        upstream mirror), and an empty answer to a non-empty request looks exactly like that fault
        when there is no tree to check it against. Neither is kept: the next request asks again.
        """
        form = [("paths", p) for p in wanted] + [("expand", _bool(expand))]
        data, _ = await self.upstream.api_json(f"{repo.api_path}/paths-info/{commit}", token, method="POST", form=form)
        if not isinstance(data, list):
            raise UpstreamError(f"upstream paths-info answer for {repo} is not a list", status=502)
        record = {"value": data}
        entries = await self._root_entries(repo, commit, expand)
        if entries is not None:
            listed = {e.get("path") for e in entries}
            answered = {e.get("path") for e in data if isinstance(e, dict)}
            omitted = [p for p in wanted if p in listed and p not in answered]
            if omitted:
                self._fault_log.warning(
                    "paths-info",
                    "upstream paths-info for %s@%s left out %d paths its tree lists (%s); answering from the tree",
                    repo,
                    commit,
                    len(omitted),
                    omitted[0][:200],
                )
                return {"value": [e for e in entries if e.get("path") in set(wanted)]}
        elif wanted and not data:
            return record
        await self.records.put_best_effort(key, record)
        return record

    async def refs(self, repo: RepoRef, include_prs: bool, token: str | None) -> Any:
        query = "include_prs=1" if include_prs else ""

        async def fetch() -> Any:
            data, _ = await self.upstream.api_json(f"{repo.api_path}/refs" + (f"?{query}" if query else ""), token)
            return data

        return await self._latest.get(keys.latest_key(repo, "refs", query), fetch, token)

    async def listing(self, repo_type: str, query: str, token: str | None) -> tuple[list[Any], str | None]:
        """(one page of a repo listing, the upstream path and query of the next page or None).

        `query` is the canonical query. The answer depends on the token (the Hub lists the
        token's private repos too), so it is kept per token.
        """
        path = f"/api/{repo_type}s" + (f"?{query}" if query else "")

        async def fetch() -> dict[str, Any]:
            data, headers = await self.upstream.api_json(path, token)
            if not isinstance(data, list):
                raise UpstreamError(f"upstream {repo_type} listing is not a list", status=502)
            return {"items": data, "next": self._upstream_path(path, next_link(headers.get("Link")))}

        record = await self._latest.get(keys.listing_key(f"{repo_type}s", fingerprint(token), query), fetch, token)
        return list(record["items"]), record["next"]

    def _upstream_path(self, asked: str, link: str | None) -> str | None:
        """A link of upstream's as a path and query under its base (None off its origin)."""
        if not link:
            return None
        absolute = urljoin(self.upstream.url(asked), link)
        base = self.upstream.base + "/"
        return absolute[len(base) - 1 :] if absolute.startswith(base) else None

    async def llamacpp_manifest(self, repo: RepoRef, tag: str, token: str | None) -> Any:
        """llama.cpp's manifest of a GGUF repo at a tag (`Q4_K_M`, `latest`): it names the file.

        The tag picks a file of the default branch as upstream sees it now, so it is cached like
        refs, not for good.
        """

        async def fetch() -> Any:
            url = f"/v2/{repo.repo_id}/manifests/{quote(tag, safe='')}"
            data, _ = await self.upstream.api_json(url, token, headers=LLAMACPP_HEADERS)
            if not isinstance(data, dict):
                raise UpstreamError(f"upstream manifest for {repo}:{tag} is not an object", status=502)
            return data

        return await self._latest.get(keys.latest_key(repo, "llamacpp-manifest", tag), fetch, token)

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
