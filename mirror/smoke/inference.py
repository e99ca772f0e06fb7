"""Load a vision-language model with the standard transformers API and ask it one image question.

Imports torch and transformers at module level on purpose: only the worker process imports this
module, and only once the files have been verified.
"""

from __future__ import annotations

import gc
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.generation.streamers import BaseStreamer

# Large enough that the real Qwen3-VL processor keeps the image small (a few dozen vision tokens).
DEFAULT_IMAGE_SIZE = 224
RED = (255, 0, 0)


@dataclass
class Answer:
    token_ids: list[int]
    text: str
    logits: torch.Tensor  # the prompt's logits, float32 on the CPU, for comparison with a reference load
    logits_sha256: str
    time_to_first_token_s: float | None
    tokens_per_s: float | None


class _TokenClock(BaseStreamer):
    """Timestamps each streamed step: generate() first puts the prompt, then one put per new token."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    return device


def resolve_dtype(dtype: str | None, device: str) -> str:
    return dtype or ("bfloat16" if device == "cuda" else "float32")


def make_image(path: str | None) -> Image.Image:
    if path:
        return Image.open(path).convert("RGB")
    return Image.new("RGB", (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE), RED)


def load(model_dir: Path, device: str, dtype: str) -> tuple[Any, Any]:
    """(processor, model) from a local directory, as a GPU job would load them after download."""
    processor = AutoProcessor.from_pretrained(model_dir)
    # device_map="auto" lets accelerate place (and if needed split) the model across the GPUs.
    device_map = "auto" if device == "cuda" else None
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=getattr(torch, dtype), device_map=device_map)
    model.eval()
    return processor, model


def unload(model: Any) -> None:
    """Free a model before the next is loaded, so a reference run does not need twice the GPU memory."""
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_bytes(device: str) -> int | None:
    return int(torch.cuda.max_memory_allocated()) if device == "cuda" else None


def ask(processor: Any, model: Any, image: Image.Image, question: str, max_new_tokens: int) -> Answer:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[image], return_tensors="pt").to(model.device)
    with torch.inference_mode():
        # Token ids alone can hide a damaged weight (greedy argmax is robust to small changes), so the
        # prompt's logits are kept too and compared bit for bit.
        logits = model(**inputs).logits.float().cpu()
        clock = _TokenClock()
        start = time.perf_counter()
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            # Greedy: the repo's generation_config samples by default, which would make runs incomparable.
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            streamer=clock,
        )
    new_ids = output[0, inputs["input_ids"].shape[1] :].tolist()
    text = processor.decode(new_ids, skip_special_tokens=True).strip()
    token_times = clock.times[1:]
    ttft = token_times[0] - start if token_times else None
    # Decode speed after the first token, which prefill (image encoding included) dominates.
    tps = (len(token_times) - 1) / (token_times[-1] - token_times[0]) if len(token_times) > 1 else None
    return Answer(new_ids, text, logits, logits_sha256(logits), ttft, tps)


def logits_sha256(logits: torch.Tensor) -> str:
    return hashlib.sha256(logits.contiguous().numpy().tobytes()).hexdigest()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """None when the shapes differ (different prompts or vocabularies): no element-wise comparison exists."""
    if a.shape != b.shape:
        return None
    return float((a - b).abs().max())
