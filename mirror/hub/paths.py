"""Parse the raw request path into what the Hub routes mean.

Routing is done on the raw (still percent-encoded) path: revisions arrive as `refs%2Fpr%2F1` and
tree sub-paths as `sub%2Fdir`, and decoding before splitting would change the meaning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from mirror.errors import BadRequest, NotFound
from mirror.repo import (
    API_TYPES,
    OID_RE,
    RepoRef,
    validate_file_path,
    validate_repo_id,
    validate_revision,
)

RESOLVE_PREFIXES = {"datasets": "dataset", "spaces": "space", "models": "model"}
# Operations under /api/{type}/{repo}/...; those marked True take a revision next.
API_OPS = {
    "revision": True,
    "tree": True,
    "treesize": True,
    "paths-info": True,
    "commits": True,
    "xet-read-token": True,
    "refs": False,
    "auth-check": False,
}
# Operations that take a folder path after the revision.
PATH_OPS = ("tree", "treesize")
MAX_RAW_PATH = 4096
# The endpoints git (smart HTTP) and git-lfs call under a repo's URL; longest first.
GIT_ENDPOINTS = ("info/lfs/objects/batch", "info/refs", "git-upload-pack", "git-receive-pack")
# The mirror's own route for one LFS object (`{repo}.git/info/lfs/objects/{oid}`): its batch answers point there.
LFS_OBJECT = "info/lfs/objects"
# llama.cpp's tags name a quantisation (`Q4_K_M`, `IQ2_XXS`) or are `latest`.
_TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}")


@dataclass(frozen=True)
class ResolveTarget:
    repo: RepoRef
    revision: str
    path: str


@dataclass(frozen=True)
class ApiTarget:
    repo: RepoRef
    op: str  # "info" or one of API_OPS
    revision: str | None
    path: str  # tree or treesize sub-path ("" for the root)


@dataclass(frozen=True)
class GitTarget:
    """git's smart HTTP (and git-lfs's batch API): `/[datasets/|spaces/]{repo}[.git]/{endpoint}`."""

    repo: RepoRef
    dot_git: bool  # the client named the repo with `.git`, and upstream is asked the same way
    endpoint: str  # one of GIT_ENDPOINTS, or LFS_OBJECT
    oid: str = ""  # the object's sha256, for LFS_OBJECT

    @property
    def upstream_path(self) -> str:
        return f"/{self.repo.url_prefix}{self.repo.repo_id}{'.git' if self.dot_git else ''}/{self.endpoint}"


@dataclass(frozen=True)
class ManifestTarget:
    """llama.cpp's `/v2/{repo}/manifests/{tag}`."""

    repo: RepoRef
    tag: str


def _segments(raw_path: str) -> list[str]:
    if len(raw_path) > MAX_RAW_PATH:
        raise BadRequest(f"request path longer than {MAX_RAW_PATH} characters")
    if "?" in raw_path:
        raw_path = raw_path.split("?", 1)[0]
    return raw_path.strip("/").split("/")


def _decode(segment: str) -> str:
    try:
        text = unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("request path is not valid UTF-8 after percent-decoding") from None
    if "\x00" in text:
        raise BadRequest("NUL byte in request path")
    return text


def _take_revision(segs: list[str]) -> tuple[str, list[str]]:
    """A revision from the front of segs: one encoded segment, or an unencoded refs/pr/N."""
    if not segs:
        raise NotFound("missing revision")
    if segs[0] == "refs" and len(segs) >= 3 and segs[1] in ("pr", "convert", "heads", "tags"):
        return validate_revision("/".join(_decode(s) for s in segs[:3])), segs[3:]
    return validate_revision(_decode(segs[0])), segs[1:]


def parse_resolve(raw_path: str) -> ResolveTarget | None:
    """`/[datasets/|spaces/]{repo}/resolve/{rev}/{path}`; None when the path is not a resolve URL."""
    segs = _segments(raw_path)
    repo_type = "model"
    if segs and segs[0] in RESOLVE_PREFIXES and len(segs) >= 4:
        repo_type = RESOLVE_PREFIXES[segs[0]]
        segs = segs[1:]
    if len(segs) >= 5 and segs[2] == "resolve":
        repo_id, rest = f"{segs[0]}/{segs[1]}", segs[3:]
    elif len(segs) >= 4 and segs[1] == "resolve":
        repo_id, rest = segs[0], segs[2:]
    else:
        return None
    repo = RepoRef(repo_type, validate_repo_id(_decode(repo_id)))
    revision, rest = _take_revision(rest)
    path = validate_file_path("/".join(_decode(s) for s in rest))
    return ResolveTarget(repo, revision, path)


def parse_api(raw_path: str) -> ApiTarget | None:
    """`/api/{models|datasets|spaces}/{repo}[/{op}[/{rev}[/{path}]]]`; None if not a repo API path."""
    segs = _segments(raw_path)
    if len(segs) < 3 or segs[0] != "api" or segs[1] not in API_TYPES:
        return None
    repo_type = API_TYPES[segs[1]]
    rest = segs[2:]
    # An op that takes no revision ends the path, so `gpt2/tree/refs/pr/1` is a tree of gpt2.
    if len(rest) >= 3 and rest[2] in API_OPS and (API_OPS[rest[2]] or len(rest) == 3):
        repo_id, op, args = "/".join(rest[:2]), rest[2], rest[3:]
    elif len(rest) >= 2 and rest[1] in API_OPS and (len(rest) > 2 or not API_OPS[rest[1]]):
        repo_id, op, args = rest[0], rest[1], rest[2:]
    elif len(rest) <= 2:
        repo_id, op, args = "/".join(rest), "info", []
    else:
        raise NotFound(f"unknown API path {raw_path[:200]}")
    repo = RepoRef(repo_type, validate_repo_id(_decode(repo_id)))
    revision = None
    if API_OPS.get(op):
        revision, args = _take_revision(args)
    elif args:
        raise NotFound(f"unknown API path {raw_path[:200]}")
    path = ""
    if args:
        if op not in PATH_OPS:
            raise NotFound(f"unknown API path {raw_path[:200]}")
        path = validate_file_path("/".join(_decode(s) for s in args))
    return ApiTarget(repo, op, revision, path)


def parse_listing(raw_path: str) -> str | None:
    """`/api/{models|datasets|spaces}`: the repo type listed; None for any other path."""
    segs = _segments(raw_path)
    if len(segs) == 2 and segs[0] == "api" and segs[1] in API_TYPES:
        return API_TYPES[segs[1]]
    return None


def parse_manifest(raw_path: str) -> ManifestTarget | None:
    """`/v2/{namespace}/{name}/manifests/{tag}` (llama.cpp's `-hf user/repo[:tag]`); None otherwise."""
    segs = _segments(raw_path)
    if len(segs) != 5 or segs[0] != "v2" or segs[3] != "manifests":
        return None
    repo = RepoRef("model", validate_repo_id(f"{_decode(segs[1])}/{_decode(segs[2])}"))
    tag = _decode(segs[4])
    if not _TAG_RE.fullmatch(tag):
        raise BadRequest(f"Invalid tag {tag[:200]!r}: expected a quantisation like Q4_K_M, or latest")
    return ManifestTarget(repo, tag)


def parse_git(raw_path: str) -> GitTarget | None:
    """`/[datasets/|spaces/]{repo}[.git]/{info/refs|git-upload-pack|git-receive-pack|info/lfs/objects/batch}`,
    or `.../info/lfs/objects/{oid}` (the mirror's own LFS object route).

    None when the path is not one; called after parse_resolve, so a resolve URL whose file is
    named `info/refs` stays a resolve URL.
    """
    segs = _segments(raw_path)
    oid = ""
    for endpoint in GIT_ENDPOINTS:
        tail = endpoint.split("/")
        if len(segs) > len(tail) and segs[-len(tail) :] == tail:
            rest = segs[: -len(tail)]
            break
    else:
        if len(segs) < 5 or segs[-4:-1] != LFS_OBJECT.split("/"):
            return None
        endpoint, oid, rest = LFS_OBJECT, _decode(segs[-1]), segs[:-4]
        if not OID_RE.fullmatch(oid):
            raise BadRequest(f"Invalid LFS object id {oid[:200]!r}: expected a lowercase sha256")
    repo_type = "model"
    if len(rest) >= 2 and rest[0] in RESOLVE_PREFIXES:
        repo_type = RESOLVE_PREFIXES[rest[0]]
        rest = rest[1:]
    if not 1 <= len(rest) <= 2:
        return None
    names = [_decode(s) for s in rest]
    dot_git = names[-1].endswith(".git")
    if dot_git:
        names[-1] = names[-1][: -len(".git")]
    repo = RepoRef(repo_type, validate_repo_id("/".join(names)))
    return GitTarget(repo, dot_git, endpoint, oid)
