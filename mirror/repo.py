"""Repository identity and the validation rules for what clients may name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from mirror.errors import BadRequest

REPO_TYPES = ("model", "dataset", "space")
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}

# Used with fullmatch: `$` alone would accept a trailing newline ("org/m\n").
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,95}")
COMMIT_RE = re.compile(r"[0-9a-f]{40}")
MAX_PATH_LENGTH = 1024
MAX_REVISION_LENGTH = 256


@dataclass(frozen=True)
class RepoRef:
    repo_type: str  # "model" | "dataset" | "space"
    repo_id: str  # "name" or "namespace/name"

    @property
    def url_prefix(self) -> str:
        return URL_PREFIXES[self.repo_type]

    @property
    def api_type(self) -> str:
        return self.repo_type + "s"

    @property
    def api_path(self) -> str:
        return f"/api/{self.api_type}/{self.repo_id}"

    @property
    def storage_prefix(self) -> str:
        return f"{self.api_type}/{self.repo_id}"

    def __str__(self) -> str:
        return f"{self.repo_type}:{self.repo_id}"


class FileAt(Protocol):
    """One file at one commit, with the content hash and size it must have.

    What the transport needs to fetch a file's bytes and check they are the file's; the cache's
    FileEntry is one.
    """

    @property
    def repo(self) -> RepoRef: ...
    @property
    def commit(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def etag(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def label(self) -> str: ...


# 64 lowercase hex digits: an LFS oid (sha256), and also the form of every Xet hash (file, xorb).
OID_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class LfsObject:
    """An LFS object of a repo, named as git-lfs names it: by its sha256 and size, with no path.

    git-lfs asks for objects of any commit (an old checkout, `git lfs fetch --all`), so the
    upstream is asked for one by the batch API rather than by resolve. Its sha256 is its ETag, and
    the blob it is stored as is the one the resolve of any file with that content reads.
    """

    repo: RepoRef
    oid: str
    size: int

    @property
    def etag(self) -> str:
        return self.oid

    @property
    def label(self) -> str:
        return f"{self.repo.repo_id} LFS object {self.oid}"


# What the transport can fetch: a file at a commit (by resolve) or an LFS object (by the batch API).
Fetchable = FileAt | LfsObject


def validate_repo_id(repo_id: str) -> str:
    parts = repo_id.split("/")
    if not 1 <= len(parts) <= 2 or not all(_NAME_RE.fullmatch(p) for p in parts):
        raise BadRequest(f"Invalid repo id {repo_id[:200]!r}: expected 'name' or 'namespace/name'")
    for part in parts:
        if "--" in part or ".." in part or part.endswith((".", "-")) or part.endswith(".git"):
            raise BadRequest(f"Invalid repo id {repo_id[:200]!r}")
    return repo_id


def _check_text(kind: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise BadRequest(f"{kind} is longer than {limit} characters")
    if any(ord(c) < 32 or c in "\\\x7f" for c in value):
        raise BadRequest(f"{kind} contains control characters or backslashes")


def validate_revision(revision: str) -> str:
    _check_text("revision", revision, MAX_REVISION_LENGTH)
    parts = revision.split("/")
    if not revision or any(p in ("", ".", "..") for p in parts) or revision.startswith("-"):
        raise BadRequest(f"Invalid revision {revision[:200]!r}")
    return revision


def validate_file_path(path: str) -> str:
    """A path inside a repo, already percent-decoded: no traversal, no empty segments."""
    _check_text("path", path, MAX_PATH_LENGTH)
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") for p in parts):
        raise BadRequest(f"Invalid file path {path[:200]!r}")
    return path


def is_commit(revision: str) -> bool:
    return bool(COMMIT_RE.fullmatch(revision))
