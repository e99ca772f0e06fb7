"""What one smoke run is asked to do, as plain data that crosses the process boundary as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from mirror.durations import parse_duration

DEFAULT_REPO = "Qwen/Qwen3-VL-8B-Instruct"
DEFAULT_QUESTION = "What colour is this image? Answer in one word."
DEFAULT_EXPECT = ("red",)
DEVICES = ("auto", "cuda", "cpu")
DTYPES = ("bfloat16", "float16", "float32")


@dataclass
class SmokeOptions:
    endpoint: str
    repo: str = DEFAULT_REPO
    revision: str = "main"
    device: str = "auto"
    # None means bfloat16 on CUDA and float32 on the CPU (bf16 matmuls on CPU are slow and not what GPU jobs run).
    dtype: str | None = None
    image: str | None = None
    question: str = DEFAULT_QUESTION
    # None means the default ("red") without --reference, and no answer check with it: a reference run
    # proves the weights by comparison, and random test weights say nothing meaningful.
    expect: list[str] | None = None
    reference: str | None = None
    max_new_tokens: int = 16

    def expected_words(self) -> list[str]:
        if self.expect is not None:
            return self.expect
        return [] if self.reference else list(DEFAULT_EXPECT)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SmokeOptions:
        return cls(**json.loads(text))


def parse_interval(text: str) -> float:
    """'6h', '30m', '90s', '1d' or plain seconds ('2.5') to seconds; raises ValueError otherwise."""
    return parse_duration(text)
