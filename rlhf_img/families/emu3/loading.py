"""Loading an `emu3` checkpoint: transformers' Emu3 folder or hub repo (`BAAI/Emu3-Gen-hf`), this project's
training output (the same, plus `emu3.json`), or a LoRA adapter folder over one. BAAI's original remote-code
layout (`BAAI/Emu3-Gen`: model_type "Emu3", a separate vision tokenizer repo) is refused with a pointer."""

from __future__ import annotations

import os

import torch
from transformers import Emu3Config, Emu3ForConditionalGeneration

from ...checkpoints import CheckpointError, is_local, read_json_file, resolve_subpath
from ..shared_loading import load_transformers_model_and_processor
from .configuration import Emu3FamilyConfig
from .policy import Emu3Policy
from .vq_init import loaded_vq_modules_left_alone

ORIGINAL_LAYOUT = "Emu3"  # BAAI/Emu3-Gen: BAAI's remote-code `Emu3ForCausalLM` (its config's model_type)


def check_transformers_layout(checkpoint: str, revision: str | None) -> None:
    """Refuse anything but transformers' Emu3 layout, in one line naming the checkpoint and what to use."""
    path = resolve_subpath(checkpoint, "config.json", revision=revision)
    model_type = read_json_file(path).get("model_type")
    if model_type == ORIGINAL_LAYOUT:
        raise CheckpointError(
            f"emu3: {checkpoint} is BAAI's original remote-code layout; use transformers' conversion, BAAI/Emu3-Gen-hf"
        )
    if model_type != "emu3":
        raise CheckpointError(f"emu3: {path} has model_type {model_type!r}, not 'emu3'")


def load(
    checkpoint: str,
    *,
    visual_tokenizer: str | None = None,
    dtype: str | torch.dtype = "bfloat16",
    family_config: dict | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Emu3Policy:
    """An Emu3 policy from a local folder or hub id (no remote code: transformers' own Emu3 classes).

    `family_config` overrides `emu3.json` (`image_area`, `ratio`, `prompt_template`, `negative_prompt`,
    `attention_dropout`). The VQ is part of the checkpoint, so `visual_tokenizer` is refused rather than ignored."""
    if visual_tokenizer:
        raise CheckpointError("emu3: the VQ is part of the checkpoint; visual_tokenizer does not apply")
    if is_local(checkpoint) and not os.path.isdir(checkpoint):
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    config = Emu3FamilyConfig.load(checkpoint, family_config, revision, required=False)

    with loaded_vq_modules_left_alone():
        model, processor = load_transformers_model_and_processor(
            checkpoint, revision, dtype, Emu3Config, Emu3ForConditionalGeneration, check_transformers_layout
        )
    return Emu3Policy(model, processor, config)
