"""Caller tokens: read from the request, fingerprinted for cache keys, never logged."""

from __future__ import annotations

import hashlib


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def fingerprint(token: str | None) -> str:
    """A stable, non-reversible name for a token (or for anonymous access)."""
    if not token:
        return "anonymous"
    return hashlib.sha256(token.encode()).hexdigest()[:32]
