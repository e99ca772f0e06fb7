"""transformers.from_pretrained of a Qwen3-VL (tiny, real layout) through the mirror (§E, §G 12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.hubemu import HubEmulator
from testbed.mirror_server import MirrorThread
from tests.support.client import run_client
from tests.support.tiny_qwen3vl import build_tiny_qwen3vl, repo_files

REPO = "Qwen/Tiny-VL"
LOAD = f"""
import hashlib, torch
from transformers import AutoProcessor, Qwen3VLForConditionalGeneration
model = Qwen3VLForConditionalGeneration.from_pretrained("{REPO}", dtype=torch.float32)
processor = AutoProcessor.from_pretrained("{REPO}")
digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode()); digest.update(tensor.contiguous().numpy().tobytes())
out["weights"] = digest.hexdigest()
out["tokens"] = processor.tokenizer("What colour is this?")["input_ids"]
"""
OPTIONAL = ("model.safetensors", "processor_config.json", "chat_template.jinja", "audio_tokenizer_config.json")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen3vl(tmp_path_factory.mktemp("tiny-qwen3vl"))


def test_from_pretrained_through_the_mirror(
    hub: HubEmulator, mirror: MirrorThread, tiny_dir: Path, tmp_path: Path
) -> None:
    hub.add_repo("model", REPO, repo_files(tiny_dir))
    reference = run_client(
        "http://127.0.0.1:9", LOAD.replace(f'"{REPO}"', f'"{tiny_dir}"'), tmp_path / "ref", env={"HF_HUB_OFFLINE": "1"}
    )
    home = tmp_path / "home"

    first = run_client(mirror.url, LOAD, home)
    assert first == reference, "the weights and tokenizer loaded through the mirror equal the local ones"
    heads = {path.rsplit("/", 1)[-1] for method, path in mirror.requests if method == "HEAD"}
    assert set(OPTIONAL) <= heads, "optional files were probed"
    cache = home / "hub" / "models--Qwen--Tiny-VL" / ".no_exist"
    assert set(OPTIONAL) <= {p.name for p in cache.rglob("*")}, "EntryNotFound with X-Repo-Commit recorded"
    assert any("additional_chat_templates" in path for _, path in mirror.requests)

    mirror.requests.clear()
    second = run_client(mirror.url, LOAD, home)
    assert second == reference
    assert all("/resolve/" not in path for _, path in mirror.requests), mirror.requests
    assert all(path.startswith("/api/") for _, path in mirror.requests)

    mirror.requests.clear()
    offline = run_client(mirror.url, LOAD, home, env={"HF_HUB_OFFLINE": "1"})
    assert offline == reference and mirror.requests == []
    assert hub.count(path_contains="xet-read-token") == 0
