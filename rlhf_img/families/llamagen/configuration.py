"""The `llamagen` family config (`llamagen.json`): which files make a policy and how it runs. No modeling code is
imported here (the GPT's own architecture config, `LlamaGenConfig`, is a transformers config in `gpt.py`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..configuration import FamilyConfig

CONFIG_NAME = "llamagen.json"


@dataclass
class LlamaGenFamilyConfig(FamilyConfig):
    """How to assemble and run a policy. File names are relative to the checkpoint (folder or hub repo) unless
    absolute; `text_encoder` is a hub id or folder of a transformers T5 encoder + tokenizer."""

    file_name = CONFIG_NAME
    family = "llamagen"

    gpt: str = "model.safetensors"  # a released .pt (weights under "model"), or this project's transformers folder
    vq: str = "vq"  # a folder saved by this project, or a released .pt (weights under "model")
    size: str | None = None  # GPT-B ... GPT-7B (the reference's names); None: read off the state dict's shapes
    num_heads: int | None = None  # for a released file whose width and depth match no named size
    text_encoder: str = "google/flan-t5-xl"
    text_encoder_dtype: str = "float32"
    image_size: int | None = None  # 256 (stage 1) or 512 (stage 2); None: from the .pt name (`..._256.pt`), else 256
    lowercase_prompts: bool = True  # LlamaGen's caption cleaning lower-cases and strips (the rest is not applied)
    base_checkpoint: str | None = None  # for a saved LoRA adapter: where the base GPT lives
