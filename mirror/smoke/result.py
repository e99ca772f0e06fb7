"""The JSON result of one smoke run: what operators read, what the metrics export, what decides the exit code."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

# The step a run reached; a failed run names the step that failed.
STAGES = ("start", "download", "verify", "load", "generate", "compare", "done")


class SmokeFailure(Exception):
    """A check failed: the run stops at its stage and reports `reason` verbatim."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


@dataclass
class SmokeResult:
    repo: str
    revision: str
    endpoint: str
    passed: bool = False
    reason: str = ""
    stage: str = "start"
    commit: str | None = None
    device: str | None = None
    dtype: str | None = None
    files_verified: int = 0
    bytes: int = 0
    download_s: float | None = None
    download_mb_per_s: float | None = None
    load_s: float | None = None
    time_to_first_token_s: float | None = None
    tokens_per_s: float | None = None
    new_tokens: int | None = None
    peak_gpu_memory_bytes: int | None = None
    answer: str | None = None
    expected: list[str] = field(default_factory=list)
    token_ids: list[int] | None = None
    logits_sha256: str | None = None
    # With --reference: file, token id and logit comparisons against the same model loaded from a directory.
    reference: dict[str, Any] | None = None
    started_at: str | None = None
    duration_s: float | None = None

    def fail(self, stage: str, reason: str) -> SmokeResult:
        self.passed, self.stage, self.reason = False, stage, reason
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SmokeResult:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)
