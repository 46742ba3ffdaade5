"""`simplear`: SimpleAR (Wang et al., 2025; wdrink/SimpleAR) — a Qwen2.5 causal LM whose vocabulary is extended
by the 64,000 codes of NVIDIA's Cosmos-1.0-Tokenizer-DV8x16x16, predicting an image as a raster of codes.

The released checkpoints (`Daniel0724/SimpleAR-{0.5B,1.5B}-{SFT,RL}`) are plain Qwen2 folders: the text
tokenizer carries seven added special tokens (`<|t2i|> <|i2t|> <|soi|> <|vtokens|> <|t2v|> <|v2t|> <|sov|>`)
and the embeddings are resized to `len(tokenizer) + 64000`; image code `c` is token `len(tokenizer) + c`.
A prompt is `<|t2i|>{prefix}{caption}<|soi|>` (their GRPO uses the prefix "A photo of ", their inference
"A highly realistic image of "); the unconditional prompt is `<|t2i|><|soi|>` (10% caption dropout in
their SFT). 1024 px images are 64x64 codes, 512 px 32x32. There is no end-of-image token: sampling is
restricted to the image codes, so every rollout is a full grid (their GRPO sampled the full vocabulary and
an early EOS crashed decoding).

This family is `causal_vq` with that configuration filled in from the checkpoint: the policy class, the
sampler and the loss are shared.
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch

from ...checkpoints import (
    CheckpointError,
    is_local,
    parameter_shape,
    read_json_file,
    resolve_subpath,
)
from ..causal_vq.configuration import CausalVQConfig
from ..causal_vq.loading import load_lm, load_tokenizer
from ..causal_vq.policy import CausalVQPolicy
from ..registry import load_visual_tokenizer
from .configuration import CONFIG_NAME, COSMOS_DOWNSAMPLE, GRPO_PREFIX, SimpleARConfig

SPECIAL_TOKENS = ("<|t2i|>", "<|i2t|>", "<|soi|>", "<|vtokens|>", "<|t2v|>", "<|v2t|>", "<|sov|>")
COSMOS_CODES = 64_000
DEFAULT_VISUAL_TOKENIZER = "nvidia/Cosmos-1.0-Tokenizer-DV8x16x16"
INFERENCE_PREFIX = "A highly realistic image of "


def simplear_config(
    text_vocab_size: int,
    resolution: int = 1024,
    prompt_prefix: str = GRPO_PREFIX,
    visual_tokenizer: str = DEFAULT_VISUAL_TOKENIZER,
) -> CausalVQConfig:
    """SimpleAR's layout as a `causal_vq` config: codes after the text vocabulary, grid from the resolution (a
    multiple of 16, which `SimpleARConfig.validate` checked)."""
    side = resolution // COSMOS_DOWNSAMPLE
    return CausalVQConfig(
        image_code_offset=text_vocab_size,
        image_code_count=COSMOS_CODES,
        grid=(side, side),
        prompt_template="<|t2i|>" + prompt_prefix.replace("{", "{{").replace("}", "}}") + "{prompt}<|soi|>",
        uncond_prompt="<|t2i|><|soi|>",
        special_tokens=list(SPECIAL_TOKENS),
        visual_tokenizer=visual_tokenizer,
        visual_tokenizer_class="cosmos",
    )


class SimpleARPolicy(CausalVQPolicy):
    """`causal_vq`'s policy with SimpleAR's layout; saves `simplear.json` so an output folder reloads as `simplear`
    at the same resolution, prefix and visual tokenizer."""

    def __init__(self, model, tokenizer, visual_tokenizer, config: CausalVQConfig, family: SimpleARConfig) -> None:
        super().__init__(model, tokenizer, visual_tokenizer, config)
        self.family_config = family  # resolution, prompt_prefix and any causal_vq overrides, as loaded

    def save_pretrained(self, output_dir: str, model=None) -> None:
        replace(self.family_config, visual_tokenizer="visual_tokenizer").save(output_dir)
        self.visual_tokenizer.save_pretrained(os.path.join(output_dir, "visual_tokenizer"))


def _family_config(checkpoint: str, revision: str | None, overrides: dict | None) -> SimpleARConfig:
    """`simplear.json` of a folder this project wrote (none for a released checkpoint), its visual tokenizer made
    relative to the checkpoint, with `overrides` (the user's family_config) applied."""
    path = resolve_subpath(checkpoint, CONFIG_NAME, revision=revision, required=False)
    saved = read_json_file(path) if path else {}
    location = saved.get("visual_tokenizer")
    if location and not os.path.isabs(location):
        local = os.path.join(os.path.dirname(path), location)
        saved["visual_tokenizer"] = local if os.path.isdir(local) else location
    if path:
        SimpleARConfig.from_dict(saved, source=path)  # the file's own keys, named in its own errors
    return SimpleARConfig.from_dict({**saved, **(overrides or {})}, source=path or "family_config")


def load(
    checkpoint: str,
    *,
    visual_tokenizer: str | None = None,
    dtype: str | torch.dtype = "bfloat16",
    family_config: dict | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> SimpleARPolicy:
    """A SimpleAR checkpoint (hub id or folder) plus the Cosmos tokenizer (`visual_tokenizer`: hub id or folder
    with the published `encoder.jit`/`decoder.jit`, or `rlhf-img convert`'s safetensors; default: the folder a
    trained checkpoint saved, else the NVIDIA repo). `family_config`: `resolution` (1024), `prompt_prefix`
    ("A photo of "), and any `causal_vq` key; it overrides the `simplear.json` a trained checkpoint saved."""
    if is_local(checkpoint) and not os.path.isdir(checkpoint):
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    family = _family_config(checkpoint, revision, family_config)
    if visual_tokenizer:
        family = replace(family, visual_tokenizer=visual_tokenizer)
    tokenizer = load_tokenizer(checkpoint, revision, trust_remote_code)
    missing = [token for token in SPECIAL_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        raise CheckpointError(f"simplear: {checkpoint} tokenizer lacks SimpleAR's special tokens {missing}")
    config = simplear_config(
        len(tokenizer),
        int(family.resolution),
        family.prompt_prefix,
        family.visual_tokenizer or DEFAULT_VISUAL_TOKENIZER,
    )
    overrides = family.causal_vq_overrides()
    if overrides:
        config = CausalVQConfig.from_dict({**config.to_dict(), **overrides}, source="family_config")
    model = load_lm(checkpoint, dtype, revision, trust_remote_code)
    rows = parameter_shape(model.get_output_embeddings().weight)[0]  # ZeRO-3: partitioned at load
    if rows < config.image_code_offset + COSMOS_CODES:
        raise CheckpointError(
            f"simplear: {checkpoint} has {rows} LM-head rows; SimpleAR needs len(tokenizer) + 64000 = "
            f"{config.image_code_offset + COSMOS_CODES}"
        )
    vt = load_visual_tokenizer("cosmos", config.visual_tokenizer)
    return SimpleARPolicy(model, tokenizer, vt.eval().requires_grad_(False), config, family)
