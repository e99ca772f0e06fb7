"""Fixtures every test module may ask for: the Hub emulator, a mirror of it, an S3 cache, the old client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror.storage.s3 import MIN_PART_SIZE
from testbed.hubemu import HubEmulator
from testbed.mirror_server import MirrorThread
from testbed.s3server import S3Server
from tests.support.mirrors import start_mirror, use_test_s3_credentials
from tests.support.old_client import old_python  # noqa: F401

SHARED_BUCKET = "hub-mirror-shared"


@pytest.fixture
def hub() -> Iterator[HubEmulator]:
    with HubEmulator() as emu:
        yield emu


@pytest.fixture
def mirror(hub: HubEmulator, tmp_path: Path) -> Iterator[MirrorThread]:
    server = start_mirror(hub.url, tmp_path / "mirror-cache")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS for every test module that runs a scenario on both backends."""
    server = S3Server(tmp_path_factory.mktemp("seaweedfs-shared")).start()
    try:
        server.create_bucket(SHARED_BUCKET)
        yield server
    finally:
        server.close()


@pytest.fixture
def s3_settings(shared_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """`storage` settings of an S3 cache under a prefix of its own, with credentials in the environment."""
    use_test_s3_credentials(monkeypatch)
    return {
        "backend": "s3",
        "s3_endpoint": shared_s3.endpoint,
        "s3_bucket": SHARED_BUCKET,
        "s3_prefix": f"t-{uuid.uuid4().hex[:12]}",
        "s3_part_size": MIN_PART_SIZE,
    }
