"""HubEmulator: repos, request log and fault switches, served from one background thread."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import unquote

from aiohttp import web

from .faults import Faults
from .gitserver import GitRepos
from .repos import REPO_TYPES, Blob, Content, Repo
from .server import HubServer
from .xet.store import XetStore

# The client API says "model", URLs say "models"; accept either so callers need not care.
_TYPE_ALIASES = {**{t: t for t in REPO_TYPES}, **{t + "s": t for t in REPO_TYPES}}


@dataclass(frozen=True)
class RequestRecord:
    method: str
    origin: str  # "hub" | "cdn"
    path: str  # raw path with query, exactly as received
    headers: dict[str, str]  # lower-cased names
    time: float


class HubEmulator:
    def __init__(
        self,
        page_size: int = 1000,
        expand_page_size: int = 50,
        lfs_threshold: int = 10_000,
        commits_page_size: int = 50,
        list_page_size: int = 1000,
    ) -> None:
        self.page_size = page_size
        self.expand_page_size = expand_page_size
        self.lfs_threshold = lfs_threshold
        self.commits_page_size = commits_page_size
        self.list_page_size = list_page_size  # repo listings without `limit`
        self.faults = Faults()
        self.users: dict[str, str] = {}  # extra token -> user name for whoami
        self._repos: dict[tuple[str, str], Repo] = {}
        self._secret = os.urandom(32)
        # Content the CDN may serve, and the repo paths each sha256 was issued for (fault matching).
        self._cdn_blobs: dict[str, Blob] = {}
        self._cdn_names: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._log: list[RequestRecord] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []
        self._urls: tuple[str, str] | None = None
        self.git_repos = GitRepos()  # bare repos behind the git routes, written on first use
        self.xet = XetStore()  # the CAS's access tokens and the xorbs it has handed out URLs for

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._urls is None:
            raise RuntimeError("HubEmulator is not started")
        return self._urls[0]

    @property
    def cdn_url(self) -> str:
        if self._urls is None:
            raise RuntimeError("HubEmulator is not started")
        return self._urls[1]

    def start(self) -> HubEmulator:
        if self._thread is not None:
            raise RuntimeError("HubEmulator already started")
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as error:  # surfaced to start()'s caller
                failure.append(error)
                started.set()
                return
            started.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="hubemu", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            self._thread = self._loop = None
            loop.close()
            raise failure[0]
        return self

    async def _serve(self) -> None:
        server = HubServer(self)
        urls = []
        for app in (server.hub_app(), server.cdn_app()):
            # A short shutdown timeout: stop() must not wait on bodies a test abandoned mid-stream.
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self._runners.append(runner)
            host, port = runner.addresses[0][:2]
            urls.append(f"http://{host}:{port}")
        self._urls = (urls[0], urls[1])

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            await asyncio.gather(*(runner.cleanup() for runner in self._runners))

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
        self._loop = self._thread = None
        self._runners = []
        self._urls = None
        self.git_repos.close()

    def __enter__(self) -> HubEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- repos -----------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_type: str,
        repo_id: str,
        files: Mapping[str, Content],
        *,
        lfs: Iterable[str] | None = None,
        gated: bool | str = False,
        private: bool = False,
        tokens: Iterable[str] = ("hf_good",),
    ) -> Repo:
        """Add a repo whose first commit holds `files`. A file's content may be a `Synthetic` (an LFS file of any
        size, generated from a seed); adding it waits for its sha256, so call its `prepare()` early."""
        repo_type = _TYPE_ALIASES[repo_type]
        repo = Repo(
            repo_type,
            repo_id,
            files,
            lfs=lfs,
            gated=gated,
            private=private,
            tokens=tokens,
            lfs_threshold=self.lfs_threshold,
        )
        with self._lock:
            self._repos[(repo_type, repo_id)] = repo
        return repo

    def remove_repo(self, repo_type: str, repo_id: str) -> None:
        with self._lock:
            self._repos.pop((_TYPE_ALIASES[repo_type], repo_id), None)

    def repos(self) -> list[Repo]:
        with self._lock:
            return list(self._repos.values())

    def get_repo(self, repo_type: str, repo_id: str) -> Repo | None:
        return self._repos.get((_TYPE_ALIASES[repo_type], repo_id))

    def user_for(self, token: str) -> str | None:
        if token in self.users:
            return self.users[token]
        with self._lock:
            known = any(token in repo.tokens for repo in self._repos.values())
        return "emulator-user" if known else None

    def _publish(self, blob: Blob, name: str) -> None:
        assert blob.sha256 is not None
        with self._lock:
            self._cdn_blobs[blob.sha256] = blob
            self._cdn_names.setdefault(blob.sha256, set()).add(name)

    # -- request log -----------------------------------------------------------------------------

    def _record(self, origin: str, request: web.BaseRequest) -> None:
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        record = RequestRecord(request.method, origin, request.rel_url.raw_path_qs, headers, time.time())
        with self._lock:
            self._log.append(record)

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def count(self, method: str | None = None, origin: str | None = None, path_contains: str | None = None) -> int:
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (origin is None or r.origin == origin)
            and (path_contains is None or path_contains in r.path or path_contains in unquote(r.path))
        )
