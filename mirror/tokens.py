"""Caller tokens: read from the request, fingerprinted for cache keys, never logged."""

from __future__ import annotations

import base64
import binascii
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


# The challenge that makes git (and git-lfs) ask its credential helper and try again.
BASIC_REALM = 'Basic realm="Hugging Face Hub mirror", charset="UTF-8"'


def git_token(authorization: str | None) -> str | None:
    """The caller's token: Bearer as the HF client sends it, or the password of git's HTTP Basic.

    Basic's user name is ignored (the Hub takes any); no password is anonymous. The token passes the
    same checks as a bearer token before it is hashed for a cache key or sent upstream.
    """
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return bearer_token(authorization)
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        decoded = ""
    _, colon, password = decoded.partition(":")
    if not colon:
        raise BadRequest(
            "malformed Authorization header: Basic credentials are base64 of user:token",
            headers={"WWW-Authenticate": BASIC_REALM},
        )
    return bearer_token(f"Bearer {password}") if password else None


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
