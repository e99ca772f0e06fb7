"""The Hub's git side: smart HTTP (`git http-backend` as CGI over real bare repos) and the LFS batch API.

Every emulator repo gets a real bare repository on disk, written lazily on its first git request and
brought up to date on every later one (new commits, branches, tags, PRs): loose objects built from
the same blobs, trees and commit bodies as `repos.py`, so `git clone` sees exactly the commit ids
the API reports. LFS files are pointer files in git; their content comes from the CDN, whose signed
URLs the batch API hands out (as the resolve 302s do). The emulator is read-only: pushes are refused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import web

from .repos import Blob, Commit, Repo, git_files, git_object_id, git_trees

if TYPE_CHECKING:
    from .server import HubServer

LFS_TYPE = "application/vnd.git-lfs+json"
# What follows the repo id (and its optional ".git") in a git or LFS URL.
GIT_SUFFIXES = (
    ("info", "refs"),
    ("git-upload-pack",),
    ("git-receive-pack",),
    ("info", "lfs", "objects", "batch"),
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 16


def split_git_path(segments: list[str]) -> tuple[list[str], tuple[str, ...]] | None:
    """Raw `ns/name[.git]/<suffix>` (or legacy `name[.git]/<suffix>`) → (repo segments, suffix)."""
    for suffix in GIT_SUFFIXES:
        n = len(suffix)
        if len(segments) > n and tuple(segments[-n:]) == suffix and 1 <= len(segments) - n <= 2:
            repo = list(segments[:-n])
            if repo[-1].endswith(".git"):
                repo[-1] = repo[-1][: -len(".git")]
            if all(repo):
                return repo, suffix
    return None


def git_token(request: web.Request) -> str | None:
    """A Bearer token, or the password of HTTP Basic auth (how git sends `http://user:hf_x@host/...`)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return password or user or None
    return None


def text_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    # git prints a text/plain error body as "remote: ..." lines.
    return web.Response(status=status, text=message + "\n", content_type="text/plain", headers=headers)


class GitRepos:
    """Bare repositories on disk mirroring the emulator's in-memory repos."""

    def __init__(self) -> None:
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._lock = threading.Lock()
        self._written: dict[Path, set[str]] = {}  # commits (with their trees and blobs) on disk

    @property
    def root(self) -> Path:
        with self._lock:
            if self._dir is None:
                self._dir = tempfile.TemporaryDirectory(prefix="hubemu-git-")
            return Path(self._dir.name)

    def close(self) -> None:
        with self._lock:
            if self._dir is not None:
                self._dir.cleanup()
            self._dir = None
            self._written.clear()

    @staticmethod
    def relative(repo: Repo) -> str:
        return f"{repo.repo_type}/{repo.repo_id}.git"

    def sync(self, repo: Repo) -> Path:
        """Write what is missing of `repo` and rewrite its refs; returns the bare repo's path."""
        path = self.root / self.relative(repo)
        with self._lock:
            written = self._written.get(path)
            if written is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                if not (path / "HEAD").exists():
                    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True, env=_git_env())
                    with open(path / "config", "a") as config:
                        # Let clients fetch any commit by id (`git fetch origin <sha>`), as the Hub does.
                        config.write("[uploadpack]\n\tallowReachableSHA1InWant = true\n\tallowAnySHA1InWant = true\n")
                    shutil.rmtree(path / "hooks", ignore_errors=True)
                written = self._written[path] = set()
            branches, tags, prs = repo.refs()
            refs = {f"refs/heads/{name}": sha for name, sha in branches.items()}
            refs.update({f"refs/tags/{name}": sha for name, sha in tags.items()})
            refs.update({f"refs/pr/{number}": sha for number, sha in prs.items()})
            for sha in set(refs.values()):
                self._write_history(path, repo.commits[sha], written)
            # One atomic file for all refs, so a concurrent upload-pack never sees half an update.
            packed = "".join(f"{sha} {name}\n" for name, sha in sorted(refs.items()))
            _atomic_write(path / "packed-refs", ("# pack-refs with: peeled fully-peeled sorted \n" + packed).encode())
            _atomic_write(path / "HEAD", b"ref: refs/heads/main\n")
        return path

    def _write_history(self, path: Path, head: Commit, written: set[str]) -> None:
        pending = []
        for commit in head.history():
            if commit.sha in written:
                break
            pending.append(commit)
        for commit in reversed(pending):
            files = git_files(commit.files)
            for blob in files.values():
                _write_object(path, "blob", _git_content(blob), blob.oid)
            oids, bodies = git_trees(files)
            assert oids[""] == commit.git_tree, "git tree differs from the emulator's"
            for oid, body in bodies.items():
                _write_object(path, "tree", body, oid)
            _write_object(path, "commit", commit.raw, commit.sha)
            written.add(commit.sha)


def _git_content(blob: Blob) -> bytes:
    return blob.pointer if blob.pointer is not None else blob.data


def _write_object(repo: Path, kind: str, body: bytes, oid: str) -> None:
    target = repo / "objects" / oid[:2] / oid[2:]
    if target.exists():
        return
    assert git_object_id(kind, body) == oid, f"{kind} {oid} does not hash to its id"
    target.parent.mkdir(exist_ok=True)
    _atomic_write(target, zlib.compress(b"%s %d\0" % (kind.encode(), len(body)) + body))


def _atomic_write(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def _git_env() -> dict[str, str]:
    # Nothing from the user's or the system's git configuration may change what the server does.
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "HOME": os.devnull,
    }


class GitHandlers:
    """Smart HTTP and LFS batch routes of the Hub origin."""

    def __init__(self, server: HubServer, repos: GitRepos) -> None:
        self.server = server
        self.emu = server.emu
        self.repos = repos

    async def handle(
        self, request: web.Request, repo_type: str, repo_segments: list[str], suffix: tuple[str, ...]
    ) -> web.StreamResponse:
        repo_id = unquote("/".join(repo_segments))
        if suffix[-1] == "batch":
            if request.method != "POST":
                return lfs_error(404, "Not Found")
        elif suffix == ("info", "refs"):
            if request.method not in ("GET", "HEAD"):
                return text_error(404, "Not Found")
        elif request.method != "POST":
            return text_error(404, "Not Found")
        service = request.query.get("service", "") if suffix == ("info", "refs") else suffix[0]
        pushing = service == "git-receive-pack"
        repo = self.emu.get_repo(repo_type, repo_id)
        refusal = self.authorize(request, repo, repo_type, repo_id, lfs=suffix[-1] == "batch")
        if refusal is not None:
            return refusal
        assert repo is not None
        if suffix[-1] == "batch":
            return await self.lfs_batch(request, repo)
        if pushing:
            return text_error(
                403, f"You are not authorized to push to this repo ({repo.repo_id}): the emulator is read-only."
            )
        if suffix == ("info", "refs") and service != "git-upload-pack":
            # Only smart HTTP: no dumb-protocol info/refs file exists.
            return text_error(403, "Please upgrade your git client: smart HTTP is required.")
        loop = asyncio.get_running_loop()
        path = await loop.run_in_executor(None, self.repos.sync, repo)
        path_info = "/" + path.relative_to(self.repos.root).as_posix() + "/" + "/".join(suffix)
        return await self.cgi(request, path_info)

    def authorize(
        self, request: web.Request, repo: Repo | None, repo_type: str, repo_id: str, *, lfs: bool
    ) -> web.Response | None:
        """The Hub's answers for git: missing → 404, private/gated without credentials → 401 asking
        for Basic credentials (git then asks its credential helper), wrong credentials → 404 (private)
        or 403 (gated)."""
        error = lfs_error if lfs else text_error
        token = git_token(request)
        challenge = {"WWW-Authenticate": 'Basic realm="Authentication required", charset="UTF-8"'}
        if lfs:
            challenge["LFS-Authenticate"] = challenge["WWW-Authenticate"]
        if repo is None:
            return error(404, "Repository not found")
        if token in repo.tokens or not (repo.private or repo.gated):
            return None
        if token is None:
            return error(401, "Authentication required", challenge)
        if repo.private:
            return error(404, "Repository not found")
        return error(
            403,
            f"Access to {repo.repo_type} {repo.repo_id} is restricted. You must have access to it "
            "and be authenticated to access it. Please log in.",
        )

    # -- smart HTTP via git http-backend -------------------------------------------------------------

    async def cgi(self, request: web.Request, path_info: str) -> web.StreamResponse:
        env = _git_env() | {
            "GIT_PROJECT_ROOT": str(self.repos.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path_info,
            "QUERY_STRING": request.rel_url.raw_query_string,
            "REQUEST_METHOD": request.method,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "REMOTE_ADDR": "127.0.0.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
        }
        # aiohttp already inflates gzip request bodies (git compresses large upload-pack requests), so
        # the backend gets plain bytes: no HTTP_CONTENT_ENCODING, and no length when the wire length
        # is the compressed one (without CONTENT_LENGTH the backend reads to EOF).
        if "Content-Length" in request.headers and "Content-Encoding" not in request.headers:
            env["CONTENT_LENGTH"] = request.headers["Content-Length"]
        if "Git-Protocol" in request.headers:
            env["HTTP_GIT_PROTOCOL"] = env["GIT_PROTOCOL"] = request.headers["Git-Protocol"]
        process = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None

        async def feed() -> None:
            assert process.stdin is not None
            try:
                async for chunk in request.content.iter_chunked(_CHUNK):
                    process.stdin.write(chunk)
                    await process.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                process.stdin.close()

        feeder = asyncio.ensure_future(feed())
        stderr = asyncio.ensure_future(process.stderr.read())
        try:
            status, headers = await _cgi_headers(process.stdout)
            response = web.StreamResponse(status=status, headers=headers)
            await response.prepare(request)
            while chunk := await process.stdout.read(_CHUNK):
                await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            feeder.cancel()
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await process.wait()
            stderr.cancel()

    # -- LFS batch API ---------------------------------------------------------------------------

    async def lfs_batch(self, request: web.Request, repo: Repo) -> web.Response:
        # Bodies are parsed by their Content-Type only (git-lfs labels its JSON as its own type).
        if request.content_type not in (LFS_TYPE, "application/json"):
            return lfs_error(422, f"Invalid batch request: {request.content_type or 'untyped'} body is not JSON")
        try:
            body: Any = json.loads(await request.read())
            operation = body.get("operation")
            objects = body["objects"]
            if not isinstance(objects, list):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            return lfs_error(422, "Invalid batch request")
        if operation == "upload":
            return lfs_error(403, f"You don't have write access to {repo.repo_id}: the emulator is read-only.")
        if operation != "download":
            return lfs_error(422, f"Invalid operation: {operation!r}")
        transfers = body.get("transfers") or ["basic"]
        if "basic" not in transfers:
            return lfs_error(422, "Only the basic transfer adapter is supported")
        answers = []
        for item in objects:
            oid = item.get("oid") if isinstance(item, dict) else None
            size = item.get("size") if isinstance(item, dict) else None
            found = self.find_lfs(repo, oid) if isinstance(oid, str) and _HEX64.fullmatch(oid) else None
            if found is None:
                answers.append({"oid": oid, "size": size, "error": {"code": 404, "message": "Object does not exist"}})
                continue
            path, blob = found
            if size != blob.size:
                answers.append({"oid": oid, "size": size, "error": {"code": 422, "message": "Object size mismatch"}})
                continue
            href = self.server.sign_cdn_url(repo, path, blob)
            answers.append(
                {
                    "oid": oid,
                    "size": blob.size,
                    "authenticated": True,
                    "actions": {"download": {"href": href, "expires_in": 3600}},
                }
            )
        return web.json_response(
            {"transfer": "basic", "objects": answers, "hash_algo": "sha256"}, content_type=LFS_TYPE
        )

    @staticmethod
    def find_lfs(repo: Repo, oid: str) -> tuple[str, Blob] | None:
        """The LFS file with this sha256 in any commit of the repo (the Hub keeps old versions)."""
        for path, blob in _all_files(repo):
            if blob.sha256 == oid:
                return path, blob
        return None


def _all_files(repo: Repo) -> Iterator[tuple[str, Blob]]:
    with repo._lock:  # the test thread may be adding commits
        commits = list(repo.commits.values())
    for commit in commits:
        yield from commit.files.items()


def lfs_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"message": message, "documentation_url": "https://huggingface.co/docs/hub"},
        status=status,
        headers=headers,
        content_type=LFS_TYPE,
    )


async def _cgi_headers(stdout: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Parse the CGI header block (`Status:` and ordinary headers up to a blank line)."""
    status = 200
    headers: dict[str, str] = {}
    while True:
        raw = await stdout.readline()
        if not raw.endswith(b"\n"):  # the backend died before finishing its headers
            return 500, {"Content-Type": "text/plain"}
        line = raw.decode("latin-1").rstrip("\r\n")
        if not line:
            break
        name, _, value = line.partition(":")
        value = value.strip()
        if name.lower() == "status":
            status = int(value.split()[0])
        else:
            headers[name] = value
    return status, headers
