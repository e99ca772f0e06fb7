"""Pytest fixtures; conftest re-exports them with `from tests.hubemu.fixtures import hub`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .emulator import HubEmulator


@pytest.fixture
def hub() -> Iterator[HubEmulator]:
    with HubEmulator() as emu:
        yield emu
