"""Leases in shared storage: which replica does a piece of work, for replicas that share storage.

One primitive for every lease: fills (which replica fetches a blob from upstream; the others
stream it from that one, replicas.py) and the sync scheduler (which replica starts due
syncs). A claim creates the lease object with a conditional write (Storage.create_exclusive),
naming the holder and the URL the other replicas reach it at; the holder renews it while it works,
and a lease past its expiry is taken over.

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
import socket
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from mirror.errors import StorageError
from mirror.storage import Storage
from mirror.tasks import within

log = logging.getLogger(__name__)

# Seconds one lease read or write may take: they are small objects on the request path.
OP_TIMEOUT = 5.0
# Seconds a replica that claimed or took a lease over waits before reading it back (`settle`).
SETTLE = 0.2
T = TypeVar("T")


class LeaseUnavailable(StorageError):
    """The lease store failed or did not answer in time: work as if no lease were in use."""


async def _bounded(operation: Awaitable[T], what: str) -> T:
    try:
        return await within(operation, OP_TIMEOUT)
    except asyncio.TimeoutError:
        raise LeaseUnavailable(f"lease store did not {what} within {OP_TIMEOUT:.0f} s") from None
    except StorageError as exc:
        raise LeaseUnavailable(f"lease store cannot {what}: {exc.message}") from exc


@dataclass(frozen=True)
class Lease:
    owner: str  # the holder's replica id (one per process start)
    url: str  # where the other replicas reach the holder (a fill's bytes); may be empty
    expires: float  # wall-clock seconds


class Leases:
    def __init__(self, storage: Storage, url: str, ttl: float, owner: str | None = None) -> None:
        self.storage = storage
        self.url = url
        self.ttl = ttl
        # Named after the host, so logs say which replica holds what.
        self.owner = owner or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"

    def _record(self) -> bytes:
        return json.dumps({"owner": self.owner, "url": self.url, "expires": time.time() + self.ttl}).encode()

    async def read(self, key: str) -> Lease | None:
        data = await _bounded(self.storage.get_bytes(key), "read a lease")
        if data is None:
            return None
        try:
            value = json.loads(data)
            return Lease(str(value["owner"]), str(value["url"]), float(value["expires"]))
        except (ValueError, KeyError, TypeError):
            return None  # damaged: as good as none, and the next claim replaces it

    async def claim(self, key: str) -> Lease | None:
        """Take the lease `key` (a storage key, cache/keys.py), or return the live lease another
        replica holds. Raises LeaseUnavailable when the lease store cannot say."""
        if await _bounded(self.storage.create_exclusive(key, self._record()), "create a lease"):
            return None
        current = self.elsewhere(await self.read(key))
        if current is not None:
            return current
        await self.take(key)  # expired, damaged, or ours already
        return None

    def elsewhere(self, lease: Lease | None) -> Lease | None:
        """`lease` if another replica holds it and it has not expired, else None."""
        if lease is None or lease.owner == self.owner or lease.expires <= time.time():
            return None
        return lease

    async def take(self, key: str) -> None:
        """Hold the lease whoever held it (its holder is gone or cannot be reached)."""
        await _bounded(self.storage.put_bytes(key, self._record()), "write a lease")

    async def settle(self, key: str) -> Lease | None:
        """The lease as it stands once racing takeovers have landed (None if nobody holds it).

        After a claim or a take, other replicas may be writing theirs at the same moment: wait a
        little for their writes, then read. The one whose write landed last holds it; the others
        see its owner here and follow it.
        """
        await asyncio.sleep(SETTLE)
        return await self.read(key)

    async def confirm(self, key: str) -> bool:
        """Whether we hold the lease once racing takeovers have landed (see `settle`)."""
        current = await self.settle(key)
        return current is not None and current.owner == self.owner

    async def renew(self, key: str) -> bool:
        """Extend our lease; False (and nothing written) once another replica has taken it over."""
        try:
            current = await self.read(key)
            if current is not None and current.owner != self.owner:
                return False
            await self.take(key)
        except StorageError as exc:
            log.warning("cannot renew the lease %s: %s", key, exc.message)
        return True

    async def release(self, key: str) -> None:
        try:
            current = await self.read(key)
            if current is not None and current.owner == self.owner:
                await _bounded(self.storage.delete(key), "delete a lease")
        except StorageError as exc:
            # It expires on its own (a fill's blob is published first, so others find that).
            log.warning("cannot release the lease %s: %s", key, exc.message)
