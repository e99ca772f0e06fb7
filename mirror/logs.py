"""Log setup: human text or one JSON object per line (for log shippers), with secrets redacted.

Tokens are never logged. The mirror's own log lines do not carry them, but aiohttp's server logs a
request it cannot parse at ERROR, with a traceback and the raw offending header line, which may be
`Authorization: Bearer ...`. `SecretFilter` rewrites such records: anything that looks like a
credential is replaced, and a parser error (the client's fault, not the mirror's) becomes one INFO
line without traceback.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

# Attributes every LogRecord has; anything else was passed with `extra=` and is structured data.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

REDACTED = "[REDACTED]"
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # A header line, raw or inside a bytes repr: the whole rest of the line goes, whatever the scheme.
    (
        re.compile(
            r"(?im)\b(authorization|proxy-authorization|cookie|set-cookie|x-api-key|x-xet-access-token)(\s*:\s*)[^\n]*"
        ),
        rf"\1\2{REDACTED}",
    ),
    (re.compile(r"(?i)\b(bearer)(\s+)\S+"), rf"\1\2{REDACTED}"),
    (re.compile(r"(?i)\b(basic)(\s+)[A-Za-z0-9+/]{4,}={0,2}"), rf"\1\2{REDACTED}"),
    # Credentials in query strings: signed CDN and S3 URLs, `?token=`.
    (
        re.compile(
            r"(?i)\b(token|access_token|api_key|apikey|password|secret|signature|x-amz-signature|"
            r"x-amz-credential|x-amz-security-token)=[^&\s'\"]+"
        ),
        rf"\1={REDACTED}",
    ),
    # Hugging Face user access tokens, wherever they turn up.
    (re.compile(r"\bhf_[A-Za-z0-9]{30,}"), REDACTED),
]
# Shorter configured secrets would redact ordinary words.
MIN_LITERAL_SECRET = 8
# aiohttp's logger for requests it could not parse or handle.
AIOHTTP_SERVER = "aiohttp.server"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class SecretFilter(logging.Filter):
    """Redacts credentials in a record and turns client-caused parser errors into INFO lines.

    Installed on aiohttp's loggers (a logger's filters see its records before any handler, pytest's
    caplog included) and on the mirror's own log handler (which sees every record).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if len(s) >= MIN_LITERAL_SECRET)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.name.startswith(AIOHTTP_SERVER) and isinstance(exc, HttpProcessingError) and exc.code < 500:
            # Malformed HTTP is the client's mistake: worth a line, not a traceback or an alert.
            # Only the first line: aiohttp puts the raw offending bytes on the lines after it.
            summary = next(iter(str(exc.message or "").strip().splitlines()), "").rstrip(":")[:200]
            record.msg = "rejected a malformed HTTP request (%s %d: %s)"
            record.args = (type(exc).__name__, exc.code, summary)
            # aiohttp already logs some (a non-HTTP first line) at DEBUG; those stay there.
            level = min(record.levelno, logging.INFO)
            record.levelno, record.levelname = level, logging.getLevelName(level)
            record.exc_info, record.exc_text = None, None
            if not logging.getLogger(record.name).isEnabledFor(level):
                return False
        self._redact(record)
        return True

    def _redact(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        cleaned = redact(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            # Formatters use exc_text when it is set, so the traceback is rendered once, redacted.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD:
                setattr(record, key, self._redact_value(value, depth=0))

    def _redact_value(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return redact(value, self.secrets)
        if depth >= 4:
            return value
        if isinstance(value, dict):
            return {k: self._redact_value(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._redact_value(v, depth + 1) for v in value)
        return value


def install_log_filters(handler: logging.Handler | None = None, secrets: Iterable[str] = ()) -> SecretFilter:
    """Put one SecretFilter on aiohttp's loggers and on `handler`; calling it again replaces it."""
    secret_filter = SecretFilter(secrets)
    targets: list[logging.Filterer] = [logging.getLogger(name) for name in (AIOHTTP_SERVER, "aiohttp.web")]
    if handler is not None:
        targets.append(handler)
    for target in targets:
        for old in [f for f in target.filters if isinstance(f, SecretFilter)]:
            target.removeFilter(old)
        target.addFilter(secret_filter)
    return secret_filter


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            # exc_text, not exc_info: SecretFilter leaves the redacted rendering there.
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str)


def setup_logging(level: str, fmt: str, secrets: Iterable[str] = ()) -> None:
    """`secrets`: configured credentials (admin and upstream tokens) to redact wherever they appear."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    install_log_filters(handler, secrets)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # aiohttp's own access log would duplicate mirror.access.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
