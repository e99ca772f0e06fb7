"""Typed errors. Each carries what the Hub would answer; hub/errors.py turns them into responses.

The HF client classifies by `X-Error-Code` first (RepoNotFound, RevisionNotFound, EntryNotFound,
GatedRepo) and shows `X-Error-Message` to the user, so every error here has both.
"""

from __future__ import annotations


class HubError(Exception):
    status: int = 500
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})


class BadRequest(HubError):
    status = 400


class MethodNotAllowed(HubError):
    status = 405

    def __init__(self, method: str, allowed: tuple[str, ...]) -> None:
        super().__init__(
            f"{method} is not allowed here; use {', '.join(allowed)}", headers={"Allow": ", ".join(allowed)}
        )


class PreconditionFailed(HubError):
    status = 412


class ResumeRefused(HubError):
    """A Range request for a blob that clients may hold bad bytes of (see cache/blobs/poison.py)."""

    status = 409
    code = "ResumeRefused"


class PayloadTooLarge(HubError):
    status = 413


class UnsupportedMediaType(HubError):
    status = 415


class ReadOnly(HubError):
    """A push, or an LFS upload: the mirror only reads."""

    status = 403
    code = "ReadOnlyMirror"


class Unauthorized(HubError):
    """A credential of the mirror's own (a Xet CAS token) that is missing, altered or expired."""

    status = 401
    code = "Unauthorized"


class Forbidden(HubError):
    """A signed URL of the mirror's own that is not, or no longer, valid."""

    status = 403
    code = "Forbidden"


class Unprocessable(HubError):
    """A well-formed request that asks for what cannot be done (git-lfs's 422)."""

    status = 422
    code = "Unprocessable"


class RangeNotSatisfiable(HubError):
    status = 416


class RepoNotFound(HubError):
    status = 404
    code = "RepoNotFound"


class RevisionNotFound(HubError):
    status = 404
    code = "RevisionNotFound"


class EntryNotFound(HubError):
    status = 404
    code = "EntryNotFound"

    def __init__(self, message: str, *, commit: str | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        if commit:
            # Lets the client record .no_exist/<commit>/<file> and stop re-asking.
            self.headers["X-Repo-Commit"] = commit


class GatedRepo(HubError):
    status = 401
    code = "GatedRepo"


class NotFound(HubError):
    status = 404


class UpstreamUnavailable(HubError):
    """Upstream unreachable, timed out or answering 5xx, and nothing cached can answer.

    A 5xx (never 401/404) makes HF clients fall back to their own caches.
    """

    status = 502


class NotReady(HubError):
    """The answer is on its way (a fill is running) but not ready within the request's wait: 503
    with Retry-After, which clients (hf_xet too) retry."""

    status = 503

    def __init__(self, message: str, retry_after: int = 2) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class UpstreamError(HubError):
    """An upstream answer the mirror passes on as it is (status and error code)."""


class IntegrityError(HubError):
    """Upstream bytes did not match the expected hash or size; nothing was published."""

    status = 502


class StorageError(Exception):
    """The cache store failed; the request cannot be answered from or into it.

    Storage knows nothing of HTTP, so this carries no status: hub/errors.py answers it with a 503
    (which makes HF clients fall back to their own caches) and keeps the details for the log.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
