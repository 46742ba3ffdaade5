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

import torch

from .causal_vq import CausalVQConfig, CausalVQPolicy, _load_lm, _load_tokenizer
from .resolve import CheckpointError, is_local
from .visual_tokenizers import load_visual_tokenizer

SPECIAL_TOKENS = ("<|t2i|>", "<|i2t|>", "<|soi|>", "<|vtokens|>", "<|t2v|>", "<|v2t|>", "<|sov|>")
COSMOS_CODES = 64_000
COSMOS_DOWNSAMPLE = 16
DEFAULT_VISUAL_TOKENIZER = "nvidia/Cosmos-1.0-Tokenizer-DV8x16x16"
GRPO_PREFIX = "A photo of "
INFERENCE_PREFIX = "A highly realistic image of "
FAMILY_KEYS = {"resolution", "prompt_prefix"}  # family_config keys of this family; others override CausalVQConfig


def simplear_config(text_vocab_size: int, resolution: int = 1024, prompt_prefix: str = GRPO_PREFIX,
                    visual_tokenizer: str = DEFAULT_VISUAL_TOKENIZER) -> CausalVQConfig:
    """SimpleAR's layout as a `causal_vq` config: codes after the text vocabulary, grid from the resolution."""
    if resolution % COSMOS_DOWNSAMPLE:
        raise CheckpointError(f"simplear: resolution must be a multiple of {COSMOS_DOWNSAMPLE}, got {resolution}")
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


def load(
    checkpoint: str,
    *,
    visual_tokenizer: str | None = None,
    dtype: str | torch.dtype = "bfloat16",
    family_config: dict | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> CausalVQPolicy:
    """A SimpleAR checkpoint (hub id or folder) plus the Cosmos tokenizer (`visual_tokenizer`: hub id or folder
    with the published `encoder.jit`/`decoder.jit`, or `rlhf-img convert`'s safetensors; default the NVIDIA
    repo). `family_config`: `resolution` (1024), `prompt_prefix` ("A photo of "), and any `causal_vq` key."""
    if is_local(checkpoint) and not os.path.isdir(checkpoint):
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    options = dict(family_config or {})
    family = {key: options.pop(key) for key in list(options) if key in FAMILY_KEYS}
    tokenizer = _load_tokenizer(checkpoint, revision, trust_remote_code)
    missing = [token for token in SPECIAL_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        raise CheckpointError(f"simplear: {checkpoint} tokenizer lacks SimpleAR's special tokens {missing}")
    config = simplear_config(len(tokenizer), int(family.get("resolution", 1024)),
                             str(family.get("prompt_prefix", GRPO_PREFIX)),
                             visual_tokenizer or DEFAULT_VISUAL_TOKENIZER)
    if options:
        config = CausalVQConfig.from_dict({**config.__dict__, **options}, source="family_config")
    model = _load_lm(checkpoint, dtype, revision, trust_remote_code)
    rows = model.get_output_embeddings().weight.shape[0]
    if rows < config.image_code_offset + COSMOS_CODES:
        raise CheckpointError(
            f"simplear: {checkpoint} has {rows} LM-head rows; SimpleAR needs len(tokenizer) + 64000 = "
            f"{config.image_code_offset + COSMOS_CODES}"
        )
    vt = load_visual_tokenizer("cosmos", config.visual_tokenizer)
    return CausalVQPolicy(model, tokenizer, vt.eval().requires_grad_(False), config)
