"""Upstream.body: a file's bytes as plain chunks, with broken transfers resumed by the transport.

The cache above it sees no HTTP response and no aiohttp error: only the file's bytes in order, an
UpstreamUnavailable once resuming stops making progress, or an IntegrityError for surplus bytes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator

import pytest

from mirror.config import UpstreamConfig
from mirror.errors import EntryNotFound, IntegrityError, UpstreamUnavailable
from mirror.metrics import Metrics
from mirror.repo import RepoRef
from mirror.upstream import Upstream
from testbed.hubemu import HubEmulator

DATA = os.urandom(2 * 1024 * 1024 + 777)
CHUNK = 256 * 1024


@dataclasses.dataclass(frozen=True)
class File:
    repo: RepoRef
    commit: str
    path: str
    etag: str
    size: int

    @property
    def label(self) -> str:
        return self.path


@pytest.fixture
async def upstream(hub: HubEmulator) -> AsyncIterator[Upstream]:
    # Short timeouts and no breaker: these tests count attempts, not cooldowns.
    config = UpstreamConfig(url=hub.url, read_timeout=2.0, resume_attempts=2, breaker_failures=0)
    session = Upstream.new_session(config)
    try:
        yield Upstream(config, session, Metrics())
    finally:
        await session.close()


async def file_of(upstream: Upstream, hub: HubEmulator, data: bytes = DATA) -> File:
    hub.add_repo("model", "org/m", {"w.bin": data})
    repo = RepoRef("model", "org/m")
    meta = await upstream.file_meta(repo, "main", "w.bin", None)
    return File(repo, "main", "w.bin", meta.etag, meta.size)


async def read(upstream: Upstream, file: File, start: int = 0) -> bytes:
    return b"".join([chunk async for chunk in upstream.body(file, None, start, chunk_size=CHUNK)])


def resumes(upstream: Upstream) -> float:
    assert upstream.metrics is not None
    return upstream.metrics.fill_resumes._value.get()


async def test_body_is_the_file_from_any_offset(upstream: Upstream, hub: HubEmulator) -> None:
    file = await file_of(upstream, hub)
    assert await read(upstream, file) == DATA
    assert await read(upstream, file, 1_000_001) == DATA[1_000_001:]
    assert await read(upstream, file, file.size) == b""


async def test_drops_are_resumed_from_the_next_byte(upstream: Upstream, hub: HubEmulator) -> None:
    file = await file_of(upstream, hub)
    hub.faults.drop_after(300_000, path_contains="w.bin", times=2, origin="cdn")
    assert await read(upstream, file) == DATA
    ranges = [r.headers.get("range") for r in hub.requests if r.origin == "cdn"]
    assert len(ranges) == 3 and ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:])
    assert resumes(upstream) == 2


async def test_an_expired_signed_url_is_re_resolved(upstream: Upstream, hub: HubEmulator) -> None:
    file = await file_of(upstream, hub)
    hub.faults.drop_after(300_000, path_contains="w.bin", times=1, origin="cdn")
    hub.faults.expire_signed_urls()
    assert await read(upstream, file) == DATA
    assert hub.count(method="GET", origin="hub", path_contains="w.bin") == 2


async def test_no_progress_gives_up_as_upstream_unavailable(upstream: Upstream, hub: HubEmulator) -> None:
    file = await file_of(upstream, hub)
    hub.faults.drop_after(0, path_contains="w.bin", times=None, origin="cdn")
    with pytest.raises(UpstreamUnavailable, match="failed 3 times in a row"):
        await read(upstream, file)
    assert hub.count(method="GET", origin="cdn", path_contains="w.bin") == 3  # resume_attempts + 1


async def test_progress_between_failures_keeps_the_transfer_going(upstream: Upstream, hub: HubEmulator) -> None:
    """resume_attempts counts failures in a row: each drop after some bytes starts the count again."""
    file = await file_of(upstream, hub)
    hub.faults.drop_after(400_000, path_contains="w.bin", times=5, origin="cdn")
    assert await read(upstream, file) == DATA
    assert resumes(upstream) == 5


async def test_a_refusal_is_not_retried(upstream: Upstream, hub: HubEmulator) -> None:
    file = await file_of(upstream, hub)
    missing = dataclasses.replace(file, path="nope.bin")
    with pytest.raises(EntryNotFound):
        await read(upstream, missing)
    assert resumes(upstream) == 0


async def test_surplus_bytes_are_an_integrity_error(upstream: Upstream, hub: HubEmulator) -> None:
    file = await file_of(upstream, hub)
    short = dataclasses.replace(file, size=file.size - 10)
    with pytest.raises(IntegrityError, match="more than"):
        await read(upstream, short)


async def test_closing_early_releases_the_connection(upstream: Upstream, hub: HubEmulator) -> None:
    file = await file_of(upstream, hub)
    body = upstream.body(file, None, 0, chunk_size=CHUNK)
    first = await anext(body)
    await body.aclose()
    assert first == DATA[: len(first)]
    # The pool is not left holding a half-read response: the next read gets the whole file.
    assert await read(upstream, file) == DATA
