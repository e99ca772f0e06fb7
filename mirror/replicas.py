"""The HTTP client to the other replicas: streaming a blob from the one filling it.

With shared storage, the replica that holds a blob's fill lease is the one filling it; the others
stream the blob from it rather than fetch it upstream again (cache/blobs/blobs.py decides when).

The request goes to the holder's own resolve URL at the file's commit, with the client's token and
Range, so the holder applies every check it applies to clients and serves from its fill, holding
back the last byte until the hash matched, as for any client. The `X-Hub-Mirror-Peer` header marks
it: the holder never passes such a request on to a third replica, nor redirects it to the object
store, so requests cannot loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from urllib.parse import quote

import aiohttp

from mirror.errors import UpstreamUnavailable
from mirror.metrics import Metrics
from mirror.repo import Fetchable, LfsObject
from mirror.upstream import normalise_etag

log = logging.getLogger(__name__)

PEER_HEADER = "X-Hub-Mirror-Peer"
CHUNK = 1024 * 1024


class Replicas:
    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics | None = None) -> None:
        self.session = session
        self.metrics = metrics

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.peer_fills.labels(outcome).inc()

    @staticmethod
    def new_session(connect_timeout: float, read_timeout: float) -> aiohttp.ClientSession:
        timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        return aiohttp.ClientSession(timeout=timeout, auto_decompress=False)

    async def open(
        self, holder: str, entry: Fetchable, token: str | None, start: int, end: int
    ) -> AsyncIterator[bytes] | None:
        """Bytes [start, end) from the replica at base URL `holder`, or None when it cannot serve
        them (then the caller fills here)."""
        repo = entry.repo
        if isinstance(entry, LfsObject):  # filled there for git-lfs: its object route serves it
            url = f"{holder}/{repo.url_prefix}{repo.repo_id}.git/info/lfs/objects/{entry.oid}"
        else:
            url = f"{holder}/{repo.url_prefix}{repo.repo_id}/resolve/{entry.commit}/{quote(entry.path)}"
        headers = {PEER_HEADER: "1", "Accept-Encoding": "identity"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        ranged = (start, end) != (0, entry.size)
        if ranged:
            headers["Range"] = f"bytes={start}-{end - 1}"
        try:
            resp = await self.session.get(url, headers=headers, allow_redirects=False)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("replica %s, filling %s, cannot be reached (%s): filling here", holder, entry.label, exc)
            self._count("unreachable")
            return None
        etag = normalise_etag(resp.headers.get("X-Linked-Etag") or resp.headers.get("ETag"))
        if resp.status != (206 if ranged else 200) or etag != entry.etag or resp.content_length != end - start:
            log.warning(
                "replica %s answered %d for %s (etag %s, %s bytes): filling here",
                holder,
                resp.status,
                entry.label,
                etag,
                resp.content_length,
            )
            resp.release()
            self._count("unreachable")
            return None
        self._count("streamed")
        return self._body(resp, holder)

    async def forward(
        self, holder: str, method: str, path_qs: str, headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse | None:
        """`method` (GET or HEAD) `path_qs` (a route of the mirror's own, e.g. its Xet CAS) on the
        replica at `holder`, marked as a peer request; the answer to relay (the caller releases it),
        or None when the holder cannot be reached."""
        sent = {PEER_HEADER: "1", "Accept-Encoding": "identity", **headers}
        try:
            return await self.session.request(method, f"{holder}{path_qs}", headers=sent, allow_redirects=False)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("replica %s cannot be reached (%s): answering here", holder, exc)
            self._count("unreachable")
            return None

    async def _body(self, resp: aiohttp.ClientResponse, holder: str) -> AsyncIterator[bytes]:
        async with resp:
            try:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    yield chunk
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                # A cut body from the holder (it died, or its fill failed verification): cut ours too.
                raise UpstreamUnavailable(f"the mirror replica filling this file ({holder}) stopped: {exc}") from exc
