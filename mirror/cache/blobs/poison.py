"""Blobs that clients may hold bad bytes of: a fill failed verification after serving some.

A fill streams bytes before it can check the hash (all but the last byte of each response are
released as they arrive), so when the hash then fails, clients are left holding a prefix that may
contain bad bytes. Resuming such a prefix with a Range request would complete a file of the right
size and the wrong hash. Such blobs are recorded here, in storage (so the record outlives restarts
and is shared by replicas), and the mirror ignores Range for them from then on: a resuming client
gets the whole file with 200, which every HF client, curl, wget and aria2c handle by starting over
or by refusing to resume, never by appending.

The record is written once and kept: a client may resume a partial file at any later time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from mirror.cache import keys
from mirror.errors import StorageError
from mirror.storage import Storage

log = logging.getLogger(__name__)


class PoisonLedger:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._known: set[str] = set()  # etags; only ever grows, so a positive answer is final
        self._writes: set[asyncio.Task[None]] = set()

    def mark(self, etag: str, served: int, reason: str) -> None:
        """Record a poisoned blob now (in memory at once, in storage in the background).

        Synchronous on purpose: it must hold before any client sees its cut connection, since the
        client's resume can arrive within milliseconds.
        """
        self._known.add(etag)
        task = asyncio.create_task(self._persist(etag, served, reason), name=f"poison:{etag}")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _persist(self, etag: str, served: int, reason: str) -> None:
        record = {"etag": etag, "at": time.time(), "served_bytes": served, "reason": reason[:500]}
        try:
            await self.storage.put_bytes(keys.poison_key(etag), json.dumps(record).encode())
        except StorageError as exc:
            # Still known in memory; another replica or a restart would not know it.
            log.error("cannot record that blob %s failed verification: %s", etag, exc)

    async def resume_unsafe(self, etag: str) -> bool:
        """True if a Range request for this blob must be answered with the whole file."""
        if etag in self._known:
            return True
        try:
            found = await self.storage.get_bytes(keys.poison_key(etag)) is not None
        except StorageError as exc:
            log.warning("cannot check the verification record of blob %s (%s); answering in full", etag, exc)
            return True
        if found:
            self._known.add(etag)
        return found

    async def flush(self) -> None:
        """Wait for the records being written (tests; shutdown)."""
        await asyncio.gather(*list(self._writes), return_exceptions=True)
