"""Fill leases: which replica is fetching a blob from upstream, for replicas that share storage.

A replica about to fill a blob creates `leases/fills/<blob key>.json` with a conditional write
(Storage.create_exclusive), naming itself and the URL the other replicas reach it at, and renews it
while the fill runs. A replica that finds a live lease of another one streams the blob from that
replica instead of fetching it again (cache/blobs/peers.py), so concurrent cold requests on several
replicas cause one upstream fetch.

Leases only save upstream traffic; correctness never depends on them. Blobs are content-addressed
and published whole, so two replicas that both fill a blob (a lease that expired under a slow
renewal, a store that ignores conditional writes) store the same bytes twice and nothing worse.
Expiry uses wall-clock time: replicas' clocks must agree to well within the TTL. For the same
reason a lease store that fails or hangs never holds a request up: each lease operation is
bounded, and a claim that cannot be made (LeaseUnavailable) means filling here without one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from mirror.errors import StorageError
from mirror.storage import Storage

log = logging.getLogger(__name__)

PREFIX = "leases/fills/"
# Seconds one lease read or write may take: they are small objects on the request path.
OP_TIMEOUT = 5.0
T = TypeVar("T")


class LeaseUnavailable(StorageError):
    """The lease store failed or did not answer in time: fill without a lease."""


async def _bounded(operation: Awaitable[T], what: str) -> T:
    try:
        return await asyncio.wait_for(operation, OP_TIMEOUT)
    except asyncio.TimeoutError:
        raise LeaseUnavailable(f"fill lease store did not {what} within {OP_TIMEOUT:.0f} s") from None
    except StorageError as exc:
        raise LeaseUnavailable(f"fill lease store cannot {what}: {exc.message}") from exc


@dataclass(frozen=True)
class Lease:
    owner: str  # the holder's replica id (one per process start)
    url: str  # where the holder serves the blob while filling it
    expires: float  # wall-clock seconds


def lease_key(blob_key: str) -> str:
    return f"{PREFIX}{blob_key}.json"


class FillLeases:
    def __init__(self, storage: Storage, url: str, ttl: float, owner: str | None = None) -> None:
        self.storage = storage
        self.url = url
        self.ttl = ttl
        self.owner = owner or uuid.uuid4().hex

    def _record(self) -> bytes:
        return json.dumps({"owner": self.owner, "url": self.url, "expires": time.time() + self.ttl}).encode()

    async def read(self, blob_key: str) -> Lease | None:
        data = await _bounded(self.storage.get_bytes(lease_key(blob_key)), "read a lease")
        if data is None:
            return None
        try:
            value = json.loads(data)
            return Lease(str(value["owner"]), str(value["url"]), float(value["expires"]))
        except (ValueError, KeyError, TypeError):
            return None  # damaged: as good as none, and the next claim replaces it

    async def claim(self, blob_key: str) -> Lease | None:
        """Take the lease to fill this blob, or return the live lease another replica holds.

        Raises LeaseUnavailable when the lease store cannot say: the caller fills without a lease.
        """
        if await _bounded(self.storage.create_exclusive(lease_key(blob_key), self._record()), "create a lease"):
            return None
        current = await self.read(blob_key)
        if current is not None and current.owner != self.owner and current.expires > time.time():
            return current
        await self.take(blob_key)  # expired, damaged, or ours already
        return None

    async def take(self, blob_key: str) -> None:
        """Hold the lease whoever held it (its holder is gone or cannot be reached)."""
        await _bounded(self.storage.put_bytes(lease_key(blob_key), self._record()), "write a lease")

    async def renew(self, blob_key: str) -> bool:
        """Extend our lease; False (and nothing written) once another replica has taken it over."""
        try:
            current = await self.read(blob_key)
            if current is not None and current.owner != self.owner:
                return False
            await self.take(blob_key)
        except StorageError as exc:
            log.warning("cannot renew the fill lease of %s: %s", blob_key, exc.message)
        return True

    async def release(self, blob_key: str) -> None:
        try:
            current = await self.read(blob_key)
            if current is not None and current.owner == self.owner:
                await _bounded(self.storage.delete(lease_key(blob_key)), "delete a lease")
        except StorageError as exc:
            # It expires on its own; until then other replicas find the blob published first.
            log.warning("cannot release the fill lease of %s: %s", blob_key, exc.message)
