"""Loading a `causal_vq` checkpoint: a transformers causal LM folder (or hub repo, or LoRA adapter folder) with
`causal_vq.json` and a visual tokenizer."""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from ...checkpoints import CheckpointError, is_local, read_json_file, resolve_subpath
from ..registry import load_visual_tokenizer
from ..shared_loading import merge_saved_adapter
from .configuration import CausalVQConfig
from .policy import CausalVQPolicy


def load_tokenizer(checkpoint: str, revision: str | None, trust_remote_code: bool):
    """The checkpoint's text tokenizer, padding with EOS when it defines no pad token (left padding at sampling)."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_lm(checkpoint: str, dtype: torch.dtype | str, revision: str | None, trust_remote_code: bool) -> nn.Module:
    """The LM; a folder holding a peft adapter loads its base and merges the adapter in."""
    adapter_config = resolve_subpath(checkpoint, "adapter_config.json", revision=revision, required=False)
    kwargs = dict(dtype=dtype, revision=revision, trust_remote_code=trust_remote_code)
    if adapter_config is None:
        return AutoModelForCausalLM.from_pretrained(checkpoint, **kwargs)
    base = read_json_file(adapter_config)["base_model_name_or_path"]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, trust_remote_code=trust_remote_code)
    return merge_saved_adapter(checkpoint, revision, model)


def load(
    checkpoint: str,
    *,
    visual_tokenizer: str | None = None,
    dtype: str | torch.dtype = "float32",
    family_config: dict | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> CausalVQPolicy:
    """Load a `causal_vq` policy from a local folder or hub id.

    `family_config` entries override `causal_vq.json` (or replace it, when the checkpoint is a plain LM
    with an image-code block and no such file); `visual_tokenizer` overrides the config's path.
    """
    if is_local(checkpoint) and not os.path.isdir(checkpoint):
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    config = CausalVQConfig.load(checkpoint, family_config, revision)

    tokenizer = load_tokenizer(checkpoint, revision, trust_remote_code)
    model = load_lm(checkpoint, dtype, revision, trust_remote_code)

    vt_location = visual_tokenizer or config.visual_tokenizer
    if not os.path.isabs(vt_location) and is_local(checkpoint) and os.path.isdir(os.path.join(checkpoint, vt_location)):
        vt_location = os.path.join(checkpoint, vt_location)
    vt = load_visual_tokenizer(config.visual_tokenizer_class, vt_location)
    config.visual_tokenizer = vt_location
    return CausalVQPolicy(model, tokenizer, vt.eval().requires_grad_(False), config)
