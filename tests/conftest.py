from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror.config import load_config
from tests.hubemu import HubEmulator
from tests.hubemu.fixtures import hub  # noqa: F401
from tests.mirror_server import MirrorThread
from tests.old_client import old_python  # noqa: F401


def start_mirror(upstream_url: str, cache_dir: Path, port: int = 0, **sections: dict) -> MirrorThread:
    overrides = {"upstream": {"url": upstream_url, "resume_attempts": 5}, "cache": {"dir": str(cache_dir)}}
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return MirrorThread(load_config(None, overrides, environ={}), port).start()


@pytest.fixture
def mirror(hub: HubEmulator, tmp_path: Path) -> Iterator[MirrorThread]:  # noqa: F811
    server = start_mirror(hub.url, tmp_path / "mirror-cache")
    yield server
    server.stop()
