"""Mirrors configured for tests: a `MirrorThread` of an upstream, and the S3 credentials tests give it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mirror.config import load_config
from mirror.storage import Storage
from testbed.mirror_server import MirrorThread
from testbed.s3server import ACCESS_KEY, SECRET_KEY


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


def use_test_s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mirror takes credentials from the standard AWS chain: here, the environment only."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
