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

import json
import os
from dataclasses import fields

import torch

from ...checkpoints import CheckpointError, is_local, read_json_file, resolve_subpath
from ..causal_vq.configuration import CausalVQConfig
from ..causal_vq.loading import load_lm, load_tokenizer
from ..causal_vq.policy import CausalVQPolicy
from ..registry import load_visual_tokenizer

SPECIAL_TOKENS = ("<|t2i|>", "<|i2t|>", "<|soi|>", "<|vtokens|>", "<|t2v|>", "<|v2t|>", "<|sov|>")
COSMOS_CODES = 64_000
COSMOS_DOWNSAMPLE = 16
DEFAULT_VISUAL_TOKENIZER = "nvidia/Cosmos-1.0-Tokenizer-DV8x16x16"
GRPO_PREFIX = "A photo of "
INFERENCE_PREFIX = "A highly realistic image of "
FAMILY_KEYS = {"resolution", "prompt_prefix", "visual_tokenizer"}  # family keys; the others override CausalVQConfig
CONFIG_NAME = "simplear.json"  # written next to a trained model: resolution, prefix, tokenizer, overrides


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


class SimpleARPolicy(CausalVQPolicy):
    """`causal_vq`'s policy with SimpleAR's layout; saves `simplear.json` so an output folder reloads as `simplear`
    at the same resolution, prefix and visual tokenizer."""

    def __init__(self, model, tokenizer, visual_tokenizer, config: CausalVQConfig, options: dict) -> None:
        super().__init__(model, tokenizer, visual_tokenizer, config)
        self.options = options  # resolution, prompt_prefix and any causal_vq overrides, as loaded

    def save_pretrained(self, output_dir: str, model=None) -> None:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, CONFIG_NAME), "w") as f:
            json.dump({**self.options, "visual_tokenizer": "visual_tokenizer"}, f, indent=2)
        self.visual_tokenizer.save_pretrained(os.path.join(output_dir, "visual_tokenizer"))


def _saved_options(checkpoint: str, revision: str | None) -> dict:
    """`simplear.json` of a folder this project wrote (empty for a released checkpoint), with the visual tokenizer
    made relative to the checkpoint."""
    path = resolve_subpath(checkpoint, CONFIG_NAME, revision=revision, required=False)
    if path is None:
        return {}
    options = read_json_file(path)
    known = FAMILY_KEYS | {f.name for f in fields(CausalVQConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise CheckpointError(f"{path}: unknown simplear config key(s) {unknown}")
    location = options.get("visual_tokenizer")
    if location and not os.path.isabs(location):
        local = os.path.join(os.path.dirname(path), location)
        options["visual_tokenizer"] = local if os.path.isdir(local) else location
    return options


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
    options = {**_saved_options(checkpoint, revision), **(family_config or {})}
    if visual_tokenizer:
        options["visual_tokenizer"] = visual_tokenizer
    family = {key: options[key] for key in options if key in FAMILY_KEYS}
    overrides = {key: value for key, value in options.items() if key not in FAMILY_KEYS}
    tokenizer = load_tokenizer(checkpoint, revision, trust_remote_code)
    missing = [token for token in SPECIAL_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        raise CheckpointError(f"simplear: {checkpoint} tokenizer lacks SimpleAR's special tokens {missing}")
    config = simplear_config(len(tokenizer), int(family.get("resolution", 1024)),
                             str(family.get("prompt_prefix", GRPO_PREFIX)),
                             str(family.get("visual_tokenizer", DEFAULT_VISUAL_TOKENIZER)))
    if overrides:
        config = CausalVQConfig.from_dict({**config.__dict__, **overrides}, source="family_config")
    model = load_lm(checkpoint, dtype, revision, trust_remote_code)
    rows = model.get_output_embeddings().weight.shape[0]
    if rows < config.image_code_offset + COSMOS_CODES:
        raise CheckpointError(
            f"simplear: {checkpoint} has {rows} LM-head rows; SimpleAR needs len(tokenizer) + 64000 = "
            f"{config.image_code_offset + COSMOS_CODES}"
        )
    vt = load_visual_tokenizer("cosmos", config.visual_tokenizer)
    saved = {key: value for key, value in options.items() if key != "visual_tokenizer"}
    return SimpleARPolicy(model, tokenizer, vt.eval().requires_grad_(False), config, saved)
