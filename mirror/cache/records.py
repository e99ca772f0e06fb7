"""Small JSON records in storage."""

from __future__ import annotations

import json
from typing import Any

from mirror.storage import Storage


class Records:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def get(self, key: str) -> Any | None:
        data = await self.storage.get_bytes(key)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:
            # A record is published atomically, so this is damage from outside; treat as missing.
            return None

    async def put(self, key: str, value: Any) -> None:
        await self.storage.put_bytes(key, json.dumps(value, separators=(",", ":")).encode())
