"""A small blocking client for the admin API, used by the CLI."""

from __future__ import annotations

import enum
import http.client
import json
import re
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit


class ExitCode(enum.IntEnum):
    """How `hub-mirror allow|sync|status` ends, so scripts can tell failures apart (docs/admin.md)."""

    OK = 0
    # The mirror answered 4xx other than 401/403: bad input, an unknown id, a repo not allow-listed,
    # the admin API disabled on the mirror.
    REFUSED = 1
    # Bad arguments, --url included; argparse exits with 2 for the others too.
    USAGE = 2
    # No HTTP answer at --url: connection refused, unknown host, timeout, TLS failure, not HTTP.
    UNREACHABLE = 3
    # No admin token here, or the mirror rejected it (401, 403).
    AUTH = 4
    # The mirror answered 5xx, or something that is not the admin API's JSON.
    MIRROR_ERROR = 5
    # The sync job ran and ended "failed"; its errors are printed.
    SYNC_FAILED = 6
    # Ctrl-C while following a sync job (128 + SIGINT, as shells report it); the job goes on.
    INTERRUPTED = 130


class AdminClientError(Exception):
    """Something a person can act on: the message says what went wrong and what to do."""

    def __init__(self, message: str, exit_code: ExitCode) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_url(url: str) -> str:
    """The mirror's base URL without a trailing slash, or AdminClientError(USAGE)."""
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number, or out of range
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or parts.query or parts.fragment:
        raise AdminClientError(
            f"--url must be the mirror's http(s) URL, like http://127.0.0.1:8090, got {url!r}", ExitCode.USAGE
        )
    return url.rstrip("/")


class AdminClient:
    def __init__(self, url: str, token: str | None, timeout: float = 30) -> None:
        self.url = check_url(url)
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        if not self.token:
            raise AdminClientError("no admin token: set HUB_MIRROR_ADMIN_TOKEN (or pass --token)", ExitCode.AUTH)
        if not re.fullmatch(r"[\x21-\x7e]+", self.token):
            # The mirror only ever accepts printable ASCII (admin.token); anything else would fail
            # in the HTTP library with a traceback instead.
            raise AdminClientError("the admin token must be printable ASCII without spaces", ExitCode.AUTH)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise _http_error(method, path, exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            # HTTPException: something answered at --url, but not in HTTP (BadStatusLine, ...).
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
            raise AdminClientError(
                f"cannot reach the mirror at {self.url}: {_printable(str(reason))} (is it running? see --url)",
                ExitCode.UNREACHABLE,
            ) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise AdminClientError(
                f"{method} {path}: the answer from {self.url} is not JSON (is --url the mirror?)", ExitCode.MIRROR_ERROR
            ) from None


def _http_error(method: str, path: str, exc: urllib.error.HTTPError) -> AdminClientError:
    # The mirror says what is wrong in X-Error-Message; a bare reason means something else answered.
    message = exc.headers.get("X-Error-Message") if exc.headers else None
    hint = ""
    if exc.code == 401:
        code, hint = ExitCode.AUTH, " (the mirror wants an admin token)"
    elif exc.code == 403:
        code, hint = ExitCode.AUTH, " (check HUB_MIRROR_ADMIN_TOKEN or --token: the mirror rejected it)"
    elif exc.code >= 500:
        code = ExitCode.MIRROR_ERROR
    else:
        code = ExitCode.REFUSED
        if message is None:
            hint = " (is --url the mirror?)"
    return AdminClientError(f"{method} {path}: HTTP {exc.code}: {_printable(message or exc.reason)}{hint}", code)


def _printable(text: str, limit: int = 300) -> str:
    """Text from whatever answers at --url, made safe for one terminal line.

    It may carry line breaks (a non-HTTP banner) or escape sequences, and any length.
    """
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else f"{text[:limit]}..."
