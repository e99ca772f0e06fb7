"""In-memory git-like data model of Hub repositories: blobs, commits, refs."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING

from .synthetic import Synthetic

if TYPE_CHECKING:
    from .xet.layout import XetFile
    from .xet.synthetic import SyntheticLayout

# What a file's content may be given as: its bytes, or a synthetic LFS file generated from a seed.
Content = bytes | Synthetic

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".parquet")
REPO_TYPES = ("model", "dataset", "space")
# The Hub spells repo types three ways: singular in the client API, plural in /api URLs,
# and as a prefix (none for models) in /resolve URLs.
API_SEGMENT = {"model": "models", "dataset": "datasets", "space": "spaces"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
HEX40 = re.compile(r"[0-9a-f]{40}")
SHORT_SHA = re.compile(r"[0-9a-f]{7,39}")


def git_blob_sha1(data: bytes) -> str:
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def content_size(data: Content) -> int:
    return data.size if isinstance(data, Synthetic) else len(data)


def is_default_lfs(path: str, data: Content, threshold: int) -> bool:
    name = path.rsplit("/", 1)[-1]
    return content_size(data) >= threshold or name.endswith(LFS_SUFFIXES) or name == "tokenizer.json"


@dataclass(frozen=True, eq=False)
class Blob:
    content: Content  # `data` for the bytes; a Synthetic is read through `content.pieces`
    oid: str  # git object sha1 of what git stores: the content, or for LFS files the pointer
    sha256: str | None  # only LFS files carry one (it is their linked ETag)
    pointer: bytes | None  # the git-lfs pointer file
    # The LFS file this one replaced at its path: Xet stores only the chunks that are new (deduplication).
    xet_base: Blob | None = field(default=None, repr=False)

    @classmethod
    def make(cls, data: Content, lfs: bool, base: Blob | None = None) -> Blob:
        if isinstance(data, Synthetic):
            if not lfs:
                raise ValueError(f"{data!r} can only be an LFS file: list its path in `lfs`")
            # Blocks until the background sha256 is done (Synthetic.prepare starts it early): the pointer,
            # hence the commit id, contains it. The layout and Xet hash are ready by then too.
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{data.sha256}\nsize {data.size}\n"
            raw = pointer.encode()
            return cls(data, git_blob_sha1(raw), data.sha256, raw)
        data = data if isinstance(data, bytes) else bytes(data)
        if base is not None and isinstance(base.content, Synthetic):
            base = None  # deduplicating against a synthetic file's chunks would walk all of them
        if not lfs:
            return cls(data, git_blob_sha1(data), None, None)
        digest = sha256_hex(data)
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest}\nsize {len(data)}\n".encode()
        return cls(data, git_blob_sha1(pointer), digest, pointer, base if base is not None and base.lfs else None)

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None

    @property
    def data(self) -> bytes:
        """The file's bytes; a synthetic file has none in memory (read it through `content.pieces`)."""
        if isinstance(self.content, Synthetic):
            raise TypeError(f"{self.content!r} is not held in memory: read it with Synthetic.read or .pieces")
        return self.content

    @property
    def size(self) -> int:
        return content_size(self.content)

    @cached_property
    def xet(self) -> XetFile | SyntheticLayout | None:
        """The LFS file's Xet layout (chunks, xorbs, file hash), computed on first use and kept: most tests
        never ask, and the CAS, `X-Xet-Hash` and `xetHash` must agree."""
        if self.sha256 is None:
            return None
        if isinstance(self.content, Synthetic):
            return self.content.xet
        from .xet.layout import XetFile  # the CAS's libraries load only when a test reaches Xet

        return XetFile(self.data, self.xet_base.xet if self.xet_base is not None else None)

    @property
    def xet_hash(self) -> str | None:
        layout = self.xet
        return None if layout is None else layout.hash


def git_trees(files: Mapping[str, Blob]) -> tuple[dict[str, str], dict[str, bytes]]:
    """Real git tree object ids for every directory ("" is the root), and each tree's body by oid."""
    entries: dict[str, dict[str, tuple[bool, str]]] = {"": {}}
    for path, blob in files.items():
        parts = path.split("/")
        for depth in range(1, len(parts)):
            entries.setdefault("/".join(parts[:depth]), {})
        parent, _, name = path.rpartition("/")
        entries[parent][name] = (False, blob.oid)
    oids: dict[str, str] = {}
    bodies: dict[str, bytes] = {}
    # Deepest directories first so each parent already holds its children's oids.
    for directory in sorted(entries, key=lambda d: d.count("/") + (d != ""), reverse=True):
        # git orders tree entries as if directory names ended with "/".
        ordered = sorted(entries[directory].items(), key=lambda e: e[0] + "/" * e[1][0])
        body = b"".join(
            (b"40000 " if is_dir else b"100644 ") + name.encode() + b"\0" + bytes.fromhex(oid)
            for name, (is_dir, oid) in ordered
        )
        oids[directory] = oid = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
        bodies[oid] = body
        if directory:
            parent, _, name = directory.rpartition("/")
            entries[parent][name] = (True, oids[directory])
    return oids, bodies


def _tree_oids(files: Mapping[str, Blob]) -> dict[str, str]:
    return git_trees(files)[0]


def _attribute_pattern(path: str) -> str:
    # Anchored at the root; glob characters escaped, spaces spelled the way `git lfs track` writes them.
    escaped = re.sub(r"([*?\[\\])", r"\\\1", path).replace(" ", "[[:space:]]")
    return "/" + escaped


def git_files(files: Mapping[str, Blob]) -> dict[str, Blob]:
    """What the commit's git tree holds: the files plus, unless the repo has its own, a `.gitattributes`
    marking each LFS file `filter=lfs` so a real `git clone` smudges the pointers. The API listings do
    not show that generated file (the emulator's repos predate it); its git tree and commit do."""
    if ".gitattributes" in files:
        return dict(files)
    lines = [f"{_attribute_pattern(p)} filter=lfs diff=lfs merge=lfs -text\n" for p, b in files.items() if b.lfs]
    attributes = ("# LFS files of this commit (generated by hubemu)\n" + "".join(lines)).encode()
    return {**files, ".gitattributes": Blob.make(attributes, False)}


def git_commit_body(tree: str, parent: str | None, author: str, date: datetime, message: str) -> bytes:
    stamp = f"{author} {int(date.timestamp())} +0000"
    head = f"tree {tree}\n" + (f"parent {parent}\n" if parent else "") + f"author {stamp}\ncommitter {stamp}\n\n"
    return (head + message + ("\n" if message and not message.endswith("\n") else "")).encode()


def git_object_id(kind: str, body: bytes) -> str:
    return hashlib.sha1(b"%s %d\0" % (kind.encode(), len(body)) + body).hexdigest()


@dataclass(frozen=True, eq=False)
class Commit:
    sha: str
    parent: Commit | None
    message: str
    date: datetime
    files: Mapping[str, Blob]
    dir_oids: Mapping[str, str] = field(repr=False)  # trees of the API listing (no generated .gitattributes)
    git_tree: str = field(default="", repr=False)  # root tree of the git commit (see git_files)
    raw: bytes = field(default=b"", repr=False)  # the git commit object's body; sha is its real git id

    @property
    def title(self) -> str:
        return self.message.splitlines()[0] if self.message else ""

    def history(self) -> Iterable[Commit]:
        commit: Commit | None = self
        while commit is not None:
            yield commit
            commit = commit.parent

    def oid_of(self, path: str) -> str | None:
        blob = self.files.get(path)
        return blob.oid if blob is not None else self.dir_oids.get(path)

    def last_change(self, path: str) -> Commit:
        """The newest commit in history that changed `path` (file or directory)."""
        commit = self
        oid = self.oid_of(path)
        while commit.parent is not None and commit.parent.oid_of(path) == oid:
            commit = commit.parent
        return commit


class Repo:
    """One repository. Mutations are locked because the server thread reads concurrently."""

    def __init__(
        self,
        repo_type: str,
        repo_id: str,
        files: Mapping[str, Content],
        *,
        lfs: Iterable[str] | None,
        gated: bool | str,
        private: bool,
        tokens: Iterable[str],
        lfs_threshold: int,
    ) -> None:
        if repo_type not in REPO_TYPES:
            raise ValueError(f"repo_type must be one of {REPO_TYPES}, not {repo_type!r}")
        if gated not in (False, "auto", "manual"):
            raise ValueError("gated must be False, 'auto' or 'manual'")
        self.repo_type = repo_type
        self.repo_id = repo_id
        self.gated: bool | str = gated
        self.private = private
        self.tokens = frozenset(tokens)
        self.lfs_paths = None if lfs is None else frozenset(lfs)
        self.lfs_threshold = lfs_threshold
        self.commits: dict[str, Commit] = {}
        self.branches: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.prs: dict[int, str] = {}
        self._lock = threading.RLock()
        self._make_commit(None, dict(files), (), "initial commit", "main")

    @property
    def url_prefix(self) -> str:
        return URL_PREFIX[self.repo_type]

    @property
    def api_segment(self) -> str:
        return API_SEGMENT[self.repo_type]

    def _is_lfs(self, path: str, data: Content) -> bool:
        if self.lfs_paths is not None:
            return path in self.lfs_paths
        return is_default_lfs(path, data, self.lfs_threshold)

    def _make_commit(
        self,
        parent: Commit | None,
        changes: Mapping[str, Content],
        delete: Iterable[str],
        message: str,
        branch: str,
    ) -> str:
        files = dict(parent.files) if parent is not None else {}
        for path in delete:
            files.pop(path, None)
        for path, data in changes.items():
            path = path.strip("/")
            lfs = self._is_lfs(path, data)
            if isinstance(data, Synthetic) and not lfs:
                raise ValueError(f"{path}: a Synthetic file can only be an LFS file; list it in `lfs`")
            files[path] = Blob.make(data, lfs, base=files.get(path))
        files = dict(sorted(files.items()))
        dir_oids = _tree_oids(files)
        date = EPOCH + timedelta(minutes=len(self.commits))
        # The sha is the id of a real git commit (served by gitserver.py). The author names the repo
        # so that two repos with the same files still get different commits, as on the Hub.
        git_tree = git_trees(git_files(files))[0][""]
        author = f"hubemu <{self.repo_type}/{self.repo_id}@hubemu.invalid>"
        raw = git_commit_body(git_tree, parent.sha if parent else None, author, date, message)
        sha = git_object_id("commit", raw)
        self.commits[sha] = Commit(
            sha, parent, message, date, MappingProxyType(files), MappingProxyType(dir_oids), git_tree, raw
        )
        self.branches[branch] = sha
        return sha

    def commit(
        self,
        files: Mapping[str, Content],
        message: str = "update",
        delete: Iterable[str] = (),
        branch: str = "main",
    ) -> str:
        """Add a commit on `branch` (created from main's head if new); unchanged files carry over."""
        for data in files.values():
            if isinstance(data, Synthetic):
                data.wait()  # its sha256 can take half a minute: not while holding the lock the server reads under
        with self._lock:
            parent_sha = self.branches.get(branch) or self.branches["main"]
            return self._make_commit(self.commits[parent_sha], files, delete, message, branch)

    def _target(self, rev: str | None) -> str:
        commit = self.resolve(rev or "main")
        if commit is None:
            raise KeyError(f"unknown revision {rev!r}")
        return commit.sha

    def tag(self, name: str, sha: str | None = None) -> None:
        with self._lock:
            self.tags[name] = self._target(sha)

    def create_branch(self, name: str, sha: str | None = None) -> None:
        with self._lock:
            self.branches[name] = self._target(sha)

    def create_pr(self, sha: str | None = None) -> int:
        with self._lock:
            number = len(self.prs) + 1
            self.prs[number] = self._target(sha)
            return number

    def head(self, branch: str = "main") -> str:
        return self.branches[branch]

    def files(self, sha: str | None = None) -> dict[str, Content]:
        return {path: blob.content for path, blob in self.commits[self._target(sha)].files.items()}

    def resolve(self, rev: str) -> Commit | None:
        """Map any revision form the Hub accepts (branch, tag, refs/pr/N, full or short sha) to a commit."""
        with self._lock:
            sha = self.branches.get(rev) or self.tags.get(rev)
            if sha is None and rev.startswith("refs/"):
                kind, _, name = rev[len("refs/") :].partition("/")
                if kind == "pr" and name.isdigit():
                    sha = self.prs.get(int(name))
                else:
                    sha = {"heads": self.branches, "tags": self.tags}.get(kind, {}).get(name)
            if sha is None and HEX40.fullmatch(rev):
                sha = rev if rev in self.commits else None
            if sha is None and SHORT_SHA.fullmatch(rev):
                matches = [c for c in self.commits if c.startswith(rev)]
                sha = matches[0] if len(matches) == 1 else None
            return self.commits.get(sha) if sha else None

    def refs(self) -> tuple[dict[str, str], dict[str, str], dict[int, str]]:
        with self._lock:
            return dict(self.branches), dict(self.tags), dict(self.prs)
