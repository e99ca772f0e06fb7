"""A small blocking client for the admin API, used by the CLI."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class AdminClientError(Exception):
    """Something a person can act on: the message says what went wrong and what to do."""


class AdminClient:
    def __init__(self, url: str, token: str | None, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        if not self.token:
            raise AdminClientError("no admin token: set HUB_MIRROR_ADMIN_TOKEN (or pass --token)")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            message = exc.headers.get("X-Error-Message") or exc.reason
            hint = {
                401: " (the mirror wants an admin token)",
                403: " (check HUB_MIRROR_ADMIN_TOKEN: the mirror rejected it)",
            }.get(exc.code, "")
            raise AdminClientError(f"{method} {path}: HTTP {exc.code}: {message}{hint}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminClientError(
                f"cannot reach the mirror at {self.url}: {reason} (is it running? see --url)"
            ) from None
        return json.loads(raw) if raw else None
