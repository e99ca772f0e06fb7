"""The CAS's state: access tokens handed out by the Hub's xet-read-token route, and the xorbs it has described."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

from .layout import Xorb


@dataclass(frozen=True)
class CasToken:
    repo_type: str
    repo_id: str
    expires: int
    generation: int  # Faults.cas_token_generation when issued; a later generation revokes it


class XetStore:
    def __init__(self, token_ttl: int = 900) -> None:
        # Short-lived like the Hub's (minutes), yet well past huggingface_hub's 60 s refresh margin.
        self.token_ttl = token_ttl
        self._lock = threading.Lock()
        self._tokens: dict[str, CasToken] = {}
        self._xorbs: dict[str, Xorb] = {}
        self._names: dict[str, set[str]] = {}  # xorb hash -> "{prefix}{repo}/{path}" it was served for

    def issue(self, repo_type: str, repo_id: str, generation: int) -> tuple[str, int]:
        token = "xet_" + secrets.token_urlsafe(24)
        expires = int(time.time()) + self.token_ttl
        with self._lock:
            self._tokens[token] = CasToken(repo_type, repo_id, expires, generation)
        return token, expires

    def token(self, value: str) -> CasToken | None:
        with self._lock:
            return self._tokens.get(value)

    def remember(self, xorb: Xorb, name: str) -> None:
        with self._lock:
            self._xorbs[xorb.hash] = xorb
            self._names.setdefault(xorb.hash, set()).add(name)

    def xorb(self, digest: str) -> Xorb | None:
        with self._lock:
            return self._xorbs.get(digest)

    def names(self, digest: str) -> list[str]:
        with self._lock:
            return sorted(self._names.get(digest, ()))
