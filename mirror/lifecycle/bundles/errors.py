"""What an export or import that cannot be carried out raises."""

from __future__ import annotations

from pathlib import Path

# Problems listed in a rejection; the rest are counted.
SHOWN_PROBLEMS = 10


class BundleError(Exception):
    """An export or import that cannot be carried out; the message says why and what to do."""


class NotCached(BundleError):
    """A revision asked for export is not completely in the cache."""


class BadBundle(BundleError):
    """A bundle that fails a check; nothing of it was written."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        shown = "".join(f"\n  - {p}" for p in problems[:SHOWN_PROBLEMS])
        more = len(problems) - SHOWN_PROBLEMS
        super().__init__(
            f"the bundle {path} is rejected and nothing was imported:{shown}"
            + (f"\n  ... and {more} more problems" if more > 0 else "")
        )
        self.problems = problems
