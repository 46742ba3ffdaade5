"""Loading a `janus` checkpoint: a transformers Janus folder or hub repo (`deepseek-community/Janus-Pro-1B`,
`-7B`), this project's training output (the same, plus `janus.json`), or a LoRA adapter folder over one."""

from __future__ import annotations

import os

import torch
from transformers import JanusConfig, JanusForConditionalGeneration

from ...checkpoints import CheckpointError, is_local, read_json_file, resolve_subpath
from ..shared_loading import load_transformers_model_and_processor
from .configuration import JanusFamilyConfig
from .policy import JanusPolicy

ORIGINAL_LAYOUT = "multi_modality"  # deepseek-ai/Janus-Pro-*: DeepSeek's remote-code layout


def _check_transformers_layout(checkpoint: str, revision: str | None) -> None:
    path = resolve_subpath(checkpoint, "config.json", revision=revision)
    model_type = read_json_file(path).get("model_type")
    if model_type == ORIGINAL_LAYOUT:
        raise CheckpointError(
            f"janus: {checkpoint} is DeepSeek's original (remote-code) layout; use transformers' conversion, "
            "deepseek-community/Janus-Pro-1B or -7B"
        )
    if model_type != "janus":
        raise CheckpointError(f"janus: {path} has model_type {model_type!r}, not 'janus'")


def load(
    checkpoint: str,
    *,
    visual_tokenizer: str | None = None,
    dtype: str | torch.dtype = "bfloat16",
    family_config: dict | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> JanusPolicy:
    """A Janus policy from a local folder or hub id (no remote code: transformers' own Janus classes).

    `family_config` overrides `janus.json` (`prompt_template`). The VQ is part of the checkpoint, so
    `visual_tokenizer` is refused rather than ignored."""
    if visual_tokenizer:
        raise CheckpointError("janus: the VQ decoder is part of the checkpoint; visual_tokenizer does not apply")
    if is_local(checkpoint) and not os.path.isdir(checkpoint):
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    config = JanusFamilyConfig.load(checkpoint, family_config, revision, required=False)

    model, processor = load_transformers_model_and_processor(
        checkpoint, revision, dtype, JanusConfig, JanusForConditionalGeneration, _check_transformers_layout
    )
    return JanusPolicy(model, processor, config)
