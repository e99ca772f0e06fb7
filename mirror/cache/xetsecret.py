"""The secret the mirror signs its Xet CAS tokens and chunk URLs with, shared by every replica.

Configured (`hub.xet_secret`), or generated once and kept in storage: replicas on one storage then
verify each other's tokens. Two replicas generating it at once both write; each reads it back
after a moment, so both end up with the one written last.
"""

from __future__ import annotations

import asyncio
import secrets

from mirror.cache import keys
from mirror.cache.records import Records

SETTLE = 0.2


class XetSecret:
    def __init__(self, records: Records, configured: str = "") -> None:
        self.records = records
        self._value: bytes | None = configured.encode() if configured else None
        self._lock = asyncio.Lock()

    async def get(self) -> bytes:
        if self._value is not None:
            return self._value
        async with self._lock:
            if self._value is None:
                self._value = await self._load()
            return self._value

    async def _load(self) -> bytes:
        found = _secret_of(await self.records.get(keys.XET_SECRET))
        if found is not None:
            return found
        await self.records.put(keys.XET_SECRET, {"secret": secrets.token_hex(32)})  # StorageError: not now
        await asyncio.sleep(SETTLE)
        found = _secret_of(await self.records.get(keys.XET_SECRET))
        if found is None:
            raise RuntimeError("the Xet token secret just written cannot be read back")
        return found


def _secret_of(record: object) -> bytes | None:
    value = record.get("secret") if isinstance(record, dict) else None
    if not isinstance(value, str) or len(value) < 32:
        return None
    return value.encode()
