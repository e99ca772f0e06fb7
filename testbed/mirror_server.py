"""The mirror under test: an app in a background thread of this process, or a real `hub-mirror serve`.

Clients under test (huggingface_hub, curl, aria2c) are blocking and run in the caller's thread or in
subprocesses, so the servers must not share their event loop.

Tests look at a running mirror the way operators do, through HTTP (its responses and `/metrics`),
and otherwise through the few methods of `MirrorThread` below. `MirrorThread` is the only code
outside `mirror/` that reaches into a running app's objects: when the app's wiring changes, this file
changes, not the tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from mirror.app import create_app
from mirror.config import Config
from mirror.hub.appkeys import FILLER, STORAGE
from mirror.storage import Storage

T = TypeVar("T")

# Sent with the scrapes made by the methods below: they are not client traffic, so `requests` skips them.
SCRAPE_HEADER = "X-Testbed-Scrape"


def samples(base_url: str) -> list[Sample]:
    """Every sample of one scrape of `base_url`/metrics."""
    request = urllib.request.Request(f"{base_url}/metrics", headers={SCRAPE_HEADER: "1"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        text = resp.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def metric(base_url: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` that carry these labels (among others); 0 if there are none."""
    return sum(s.value for s in samples(base_url) if s.name == name and labels.items() <= s.labels.items())


class MirrorThread:
    def __init__(self, config: Config, port: int = 0, storage: Storage | None = None) -> None:
        """`port` 0: any free one (server.port is ignored, so tests never clash); `storage` replaces
        the configured backend (a fault-injecting wrapper, say)."""
        self.config = config
        self._given_storage = storage
        self.port = port
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="mirror", daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""
        # (method, raw path) of every request the mirror received, so tests can see what clients sent.
        self.requests: list[tuple[str, str]] = []

    def start(self) -> MirrorThread:
        self._thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        app = create_app(self.config, self._given_storage)

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            if SCRAPE_HEADER not in request.headers:
                self.requests.append((request.method, request.rel_url.raw_path_qs))
            return await handler(request)

        app.middlewares.insert(0, record)
        # As `hub-mirror serve` runs it: aiohttp gives handlers the grace and a little more, the
        # mirror cuts what is left at the end of the grace (hub/drain.py).
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.config.server.shutdown_grace + 5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    # -- what tests may ask of a running mirror ----------------------------------------------------

    @property
    def storage(self) -> Storage:
        """The storage the mirror uses, for checks of what is stored (call its coroutines with `call`)."""
        return self._app()[STORAGE]

    def part(self, key: web.AppKey[T]) -> T:
        """One part of the running mirror by its app key (hub/appkeys.py), to drive it from a test
        (an eviction pass, a flush); call its coroutines with `call`."""
        return self._app()[key]

    def settle(self, timeout: float = 60) -> None:
        """Wait until the fills running now have ended.

        A download completes once its bytes are verified, a moment before the blob is published
        (fsync and rename, or the multipart completion): tests that look at storage right after a
        download wait for that first.
        """
        self.call(self._app()[FILLER].wait_idle(), timeout)

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (summed over the label values not given); see `metric`."""
        return metric(self.url, name, **labels)

    def fills_in_flight(self) -> int:
        """Blob fills running now: `hub_mirror_fills_in_flight`."""
        return int(self.metric("hub_mirror_fills_in_flight"))

    def fills_started(self) -> int:
        """Blob fills this mirror has started from upstream since it started (joined ones not counted).

        From /metrics: every fill is either in flight (`hub_mirror_fills_in_flight`) or has ended and
        observed its duration once (`hub_mirror_fill_duration_seconds`, by outcome); both come from
        one scrape, so a fill that ends meanwhile is counted once.
        """
        counted = ("hub_mirror_fills_in_flight", "hub_mirror_fill_duration_seconds_count")
        return int(sum(s.value for s in samples(self.url) if s.name in counted))

    # -- plumbing ----------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        assert self._runner is not None, "not started"
        return self._runner.app

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the mirror's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self._runner is not None:
            try:
                self.call(self._runner.cleanup(), timeout=self.config.server.shutdown_grace + 60)
            except TimeoutError:
                # Say what the shutdown is stuck on, so a hang shows its cause in the test log.
                for task in asyncio.all_tasks(self.loop):
                    task.print_stack(limit=8)
                raise
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MirrorProcess:
    """`hub-mirror serve` as a real process, for CLI and crash tests."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mirror", "serve", "--port", str(self.port), *args],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_ready(self, timeout: float = 20) -> MirrorProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mirror exited with {self.proc.returncode}: {self.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("mirror did not become healthy")

    def settle(self, timeout: float = 30) -> None:
        """Wait until no fill is in flight (see MirrorThread.settle), as /metrics reports it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.metric("hub_mirror_fills_in_flight") == 0:
                return
            time.sleep(0.02)
        raise TimeoutError("fills still in flight")

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (summed over the label values not given); see `metric`."""
        return metric(self.url, name, **labels)

    def output(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.read() if self.proc.poll() is not None else ""

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.output()
