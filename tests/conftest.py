from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror.config import load_config
from mirror.storage import Storage
from mirror.storage.s3 import MIN_PART_SIZE
from tests.hubemu import HubEmulator
from tests.hubemu.fixtures import hub  # noqa: F401
from tests.mirror_server import MirrorThread
from tests.old_client import old_python  # noqa: F401
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server

SHARED_BUCKET = "hub-mirror-shared"


def start_mirror(
    upstream_url: str, cache_dir: Path, port: int = 0, store: Storage | None = None, **sections: dict
) -> MirrorThread:
    """A mirror of `upstream_url`; config `sections` override the defaults, `store` the backend."""
    # No background upstream probe unless a test asks for one: tests count upstream requests.
    overrides = {
        "upstream": {"url": upstream_url, "resume_attempts": 5, "probe_interval": 0},
        "cache": {"dir": str(cache_dir)},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return MirrorThread(load_config(None, overrides, environ={}), port, store).start()


@pytest.fixture
def mirror(hub: HubEmulator, tmp_path: Path) -> Iterator[MirrorThread]:  # noqa: F811
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


def use_test_s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mirror takes credentials from the standard AWS chain: here, the environment only."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


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
