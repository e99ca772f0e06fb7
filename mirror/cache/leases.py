"""Fill leases: which replica is fetching a blob from upstream, for replicas that share storage.

A replica about to fill a blob creates `leases/fills/<blob key>.json` with a conditional write
(Storage.create_exclusive), naming itself and the URL the other replicas reach it at, and renews it
while the fill runs. A replica that finds a live lease of another one streams the blob from that
replica instead of fetching it again (cache/peers.py), so concurrent cold requests on several
replicas cause one upstream fetch.

Leases only save upstream traffic; correctness never depends on them. Blobs are content-addressed
and published whole, so two replicas that both fill a blob (a lease that expired under a slow
renewal, a store that ignores conditional writes) store the same bytes twice and nothing worse.
Expiry uses wall-clock time: replicas' clocks must agree to well within the TTL.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass

from mirror.errors import StorageError
from mirror.storage import Storage

log = logging.getLogger(__name__)

PREFIX = "leases/fills/"


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
        data = await self.storage.get_bytes(lease_key(blob_key))
        if data is None:
            return None
        try:
            value = json.loads(data)
            return Lease(str(value["owner"]), str(value["url"]), float(value["expires"]))
        except (ValueError, KeyError, TypeError):
            return None  # damaged: as good as none, and the next claim replaces it

    async def claim(self, blob_key: str) -> Lease | None:
        """Take the lease to fill this blob, or return the live lease another replica holds."""
        if await self.storage.create_exclusive(lease_key(blob_key), self._record()):
            return None
        current = await self.read(blob_key)
        if current is not None and current.owner != self.owner and current.expires > time.time():
            return current
        await self.take(blob_key)  # expired, damaged, or ours already
        return None

    async def take(self, blob_key: str) -> None:
        """Hold the lease whoever held it (its holder is gone or cannot be reached)."""
        await self.storage.put_bytes(lease_key(blob_key), self._record())

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
                await self.storage.delete(lease_key(blob_key))
        except StorageError as exc:
            # It expires on its own; until then other replicas find the blob published first.
            log.warning("cannot release the fill lease of %s: %s", blob_key, exc.message)
