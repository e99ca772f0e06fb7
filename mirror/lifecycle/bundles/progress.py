"""Progress reporting for long exports, verifications and imports, and sizes as people read them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any


class _NoBar:
    def update(self, n: int) -> None:
        pass


# (what is being done, total bytes) -> a context giving an object with update(nbytes): a tqdm bar.
ProgressFactory = Callable[[str, int], AbstractContextManager[Any]]


def no_progress(description: str, total: int) -> AbstractContextManager[Any]:
    return contextlib.nullcontext(_NoBar())


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
