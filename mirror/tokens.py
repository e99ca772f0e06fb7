"""Caller tokens: read from the request, fingerprinted for cache keys, never logged."""

from __future__ import annotations

import hashlib
import hmac
import re

from mirror.errors import BadRequest

# The token is forwarded upstream as a header, so it must be a valid header value: printable
# ASCII. Raw non-ASCII bytes (which aiohttp hands over decoded with surrogateescape) and control
# characters could not be sent, nor hashed for a cache key, and are no real token either. This is
# wider than RFC 6750's b64token on purpose: an operator's admin token may hold any printable
# character.
_TOKEN_RE = re.compile(r"[\x20-\x7e]+")
MAX_TOKEN_LENGTH = 4096


def bearer_token(authorization: str | None) -> str | None:
    """The bearer token of an Authorization header; None when there is none (anonymous).

    A bearer token that could not be sent on as a header is refused here, before it is hashed for
    a cache key or sent upstream; the message never repeats the token.
    """
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return None
    if len(value) > MAX_TOKEN_LENGTH or not _TOKEN_RE.fullmatch(value):
        raise BadRequest(
            f"malformed Authorization header: a bearer token is printable ASCII of at most {MAX_TOKEN_LENGTH} "
            "characters",
            headers={"WWW-Authenticate": 'Bearer error="invalid_request"'},
        )
    return value


def same_token(presented: str, expected: str) -> bool:
    # Constant time, so the comparison does not tell how much of a guess was right.
    return hmac.compare_digest(presented.encode(), expected.encode())


def is_token(authorization: str | None, expected: str) -> bool:
    """Whether an Authorization header carries `expected` (a configured token); never raises.

    A missing, malformed or wrong token, or no token configured, is simply not it.
    """
    if not expected:
        return False
    try:
        token = bearer_token(authorization)
    except BadRequest:
        return False
    return token is not None and same_token(token, expected)


def fingerprint(token: str | None) -> str:
    """A stable, non-reversible name for a token (or for anonymous access)."""
    if not token:
        return "anonymous"
    return hashlib.sha256(token.encode()).hexdigest()[:32]
