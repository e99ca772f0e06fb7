"""Build a tiny Qwen3-VL repository offline: the real architecture and file layout, random weights.

The real `Qwen/Qwen3-VL-8B-Instruct` (17 GB) cannot be fetched in tests, so this writes a ~1 MB
stand-in with the same classes and the same files (sharded safetensors + index, BPE tokenizer as
vocab.json/merges.txt/tokenizer.json, chat_template.json, preprocessor and video preprocessor
configs), see ../shared/docs/tiny-qwen3vl.md. torch and transformers are imported inside the
builder so that collecting the test module stays cheap.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Minimal Qwen-style template: images become <|vision_start|><|image_pad|><|vision_end|>, which the
# processor expands to one pad per merged patch.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}\n"
    "{%- if message['content'] is string %}{{ message['content'] }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif item['type'] == 'text' %}{{ item['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}<|im_end|>\n"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
CORPUS = "The quick brown fox looks at a small picture and says what colour it is, one word at a time. "
LFS_PATTERNS = ("*.safetensors", "tokenizer.json")
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS)
# Shards small enough that the ~1 MB model splits into several files, as the real repo does.
MAX_SHARD_SIZE = "300KB"


def build_tiny_qwen3vl(directory: Path, seed: int = 0) -> Path:
    """Write the tiny repo into `directory` (created) and return it. Deterministic for a given seed."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Qwen2TokenizerFast,
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    directory.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator([CORPUS] * 50, trainer=trainer)
    # The Hub repo ships the slow-tokenizer files beside tokenizer.json; transformers 5.x no longer writes them.
    bpe.model.save(str(directory))
    tokenizer = Qwen2TokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}

    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 512,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": [2, 3, 3],
                "mrope_interleaved": True,
            },
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0, 1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(directory, max_shard_size=MAX_SHARD_SIZE)

    # The patch size must match the vision config's 16, or generation fails with a reshape error.
    image_processor = Qwen2VLImageProcessor(
        patch_size=16, temporal_patch_size=2, merge_size=2, min_pixels=32 * 32, max_pixels=64 * 64
    )
    processor = Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(directory)
    _to_hub_layout(directory)
    (directory / ".gitattributes").write_text(GITATTRIBUTES)
    (directory / "README.md").write_text("# Tiny-VL\n\nA random tiny Qwen3-VL for the smoke worker's tests.\n")
    return directory


def _to_hub_layout(directory: Path) -> None:
    """Rewrite transformers 5.x's processor files into the layout of the real Qwen3-VL repo.

    save_pretrained writes processor_config.json (with the image and video processors nested) and
    chat_template.jinja; the Hub repo has preprocessor_config.json, video_preprocessor_config.json
    and chat_template.json, which exercise the loader's 404 probes for the newer names.
    """
    processor_file = directory / "processor_config.json"
    if processor_file.exists():
        nested = json.loads(processor_file.read_text())
        for key, name in (
            ("image_processor", "preprocessor_config.json"),
            ("video_processor", "video_preprocessor_config.json"),
        ):
            if key in nested:
                (directory / name).write_text(json.dumps(nested.pop(key), indent=2, sort_keys=True) + "\n")
        rest = {k: v for k, v in nested.items() if k != "processor_class"}
        if rest:
            raise RuntimeError(f"unexpected processor_config.json keys: {sorted(rest)}")
        processor_file.unlink()
    template_file = directory / "chat_template.jinja"
    if template_file.exists():
        chat = {"chat_template": template_file.read_text()}
        (directory / "chat_template.json").write_text(json.dumps(chat, indent=2) + "\n")
        template_file.unlink()


def repo_files(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` as {relative posix path: bytes}, ready for HubEmulator.add_repo."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}
