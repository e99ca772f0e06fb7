"""The CAS tokens and chunk URLs the mirror signs when it is its clients' Xet CAS (`hub.xet: serve`).

A CAS token says: the holder passed the repo's access check (allow-list, gated/private for its Hub
token) when it was issued, and may read that repo's files by Xet hash until it expires. Like the
Hub's, it is short-lived and bound to one repo; it carries no Hub token. A chunk URL is signed
with its expiry so that hf_xet can fetch it without credentials, as it does a CAS's xorb URLs.
Both are HMAC-SHA256 under one secret that every replica shares.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

PREFIX = "hmx1"


@dataclass(frozen=True)
class Grant:
    repo_type: str
    repo_id: str
    expires: int


def _mac(secret: bytes, message: str) -> str:
    digest = hmac.new(secret, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def issue(secret: bytes, repo_type: str, repo_id: str, expires: int) -> str:
    claims = json.dumps({"t": repo_type, "r": repo_id, "e": expires}, separators=(",", ":"), sort_keys=True)
    body = base64.urlsafe_b64encode(claims.encode()).decode().rstrip("=")
    return f"{PREFIX}.{body}.{_mac(secret, f'{PREFIX}.{body}')}"


def check(secret: bytes, token: str, now: float | None = None) -> Grant | None:
    """The grant a token carries, or None when it is not one of ours, was altered or has expired."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX or len(token) > 1024:
        return None
    if not hmac.compare_digest(parts[2], _mac(secret, f"{parts[0]}.{parts[1]}")):
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(claims, dict):
        return None
    repo_type, repo_id, expires = claims.get("t"), claims.get("r"), claims.get("e")
    if not isinstance(repo_type, str) or not isinstance(repo_id, str) or not isinstance(expires, int):
        return None
    if expires <= (time.time() if now is None else now):
        return None
    return Grant(repo_type, repo_id, expires)


def sign_path(secret: bytes, path: str, expires: int) -> str:
    return _mac(secret, f"{path}\n{expires}")


def path_signed(secret: bytes, path: str, expires: str, signature: str, now: float | None = None) -> bool:
    """Whether a chunk URL's path carries our signature and has not expired."""
    # ASCII digits only: str.isdigit() also accepts "¹", which int() refuses.
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
        return False
    if int(expires) <= (time.time() if now is None else now):
        return False
    return hmac.compare_digest(signature, sign_path(secret, path, int(expires)))
