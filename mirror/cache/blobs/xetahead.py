"""Xorb ranges a Xet fill will need next, fetched while it decodes the current one.

One xorb range at a time leaves the link idle between ranges and caps a fill at what one stream
from the CAS gives (hf_xet itself fetches many at once). A fill therefore starts the next few
ranges early. Each one streams into a small queue; once that is full, its reads stop and TCP's
flow control holds the rest upstream, so memory stays `depth` x `queued` pieces per fill.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from mirror.tasks import stop
from mirror.xetcas import XetCas, XorbFetch


class _Fetching:
    def __init__(self, cas: XetCas, fetch: XorbFetch, chunk_size: int, queued: int) -> None:
        self.queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=queued)
        self.task = asyncio.create_task(self._run(cas, fetch, chunk_size), name=f"xorb-ahead:{fetch.xorb[:12]}")

    async def _run(self, cas: XetCas, fetch: XorbFetch, chunk_size: int) -> None:
        try:
            async with contextlib.aclosing(cas.xorb_range(fetch, chunk_size=chunk_size)) as pieces:
                async for piece in pieces:
                    await self.queue.put(piece)
        except Exception as exc:  # handed to the fill, which resumes or fails as for a direct fetch
            await self.queue.put(exc)
            return
        await self.queue.put(None)

    async def pieces(self) -> AsyncIterator[bytes]:
        while (item := await self.queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item


class Ahead:
    """The ranges started early for one reconstruction of one fill; `close` stops what is left."""

    def __init__(self, cas: XetCas, chunk_size: int, depth: int = 3, queued: int = 4) -> None:
        self.cas = cas
        self.chunk_size = chunk_size
        self.depth = depth
        self.queued = queued
        self._started: dict[XorbFetch, _Fetching] = {}

    def want(self, fetch: XorbFetch) -> None:
        """Start fetching `fetch` now, unless it runs already or `depth` others do."""
        if fetch not in self._started and len(self._started) < self.depth:
            self._started[fetch] = _Fetching(self.cas, fetch, self.chunk_size, self.queued)

    def body(self, fetch: XorbFetch) -> AsyncIterator[bytes]:
        """The range's bytes in order: from its early fetch if one was started, else fetched now."""
        started = self._started.pop(fetch, None)
        if started is None:
            return self.cas.xorb_range(fetch, chunk_size=self.chunk_size)
        return self._drained(started)

    async def _drained(self, started: _Fetching) -> AsyncIterator[bytes]:
        try:
            async for piece in started.pieces():
                yield piece
        finally:
            if not started.task.done():
                await stop(started.task)

    async def close(self) -> None:
        started, self._started = list(self._started.values()), {}
        for fetching in started:
            await stop(fetching.task)
