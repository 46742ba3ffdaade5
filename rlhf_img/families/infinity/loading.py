"""`infinity`: Infinity (Han et al., 2024; FoundationVision/Infinity) — bitwise next-scale prediction.

A policy is the Infinity transformer (trainable) plus a frozen Flan-T5 encoder and a frozen BSQ-VAE.
Its actions are bits: for each scale of the schedule, for each token, `d` two-way choices (d = 32 for
Infinity-2B; 56 for Infinity-8B, whose tokens cover 2x2 VAE positions). A rollout's log-prob is the sum
over scales, tokens and bits; the trainer sees a flat `(B, T)` tensor like any other family.

Checkpoints load two ways:

  * released: a folder or hub repo (`FoundationVision/Infinity`) holding the transformer state dict
    (`infinity_2b_reg.pth`: a plain state dict) and the VAE (`infinity_vae_d32reg.pth`: under the key
    `vae`), with `family_config` naming the files, the size (`2b`, `8b`) and the Flan-T5 location.
    Keys are checked strictly: a missing or unexpected key is an error that lists them (only the
    constant-zero `zero_k_bias` buffers may be absent).
  * saved by this project (`rlhf-img convert infinity`, or a training run): `config.json` +
    `model.safetensors` (a transformers model, `InfinityTransformer`), `infinity.json` (this file's
    `InfinityFamilyConfig`), `vae/`, and the T5 tokenizer files; a LoRA run saves the adapter instead
    and `infinity.json` points at the base.
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ...checkpoints import (
    CheckpointError,
    check_state_dict,
    is_local,
    read_json_file,
    resolve_subfolder,
    resolve_subpath,
)
from ..shared_loading import (
    WEIGHT_SUFFIXES,
    load_text_encoder,
    load_with_adapter,
    read_weights,
    resolve_file,
    whole_on_every_rank,
)
from .bsq_vae import BSQVAE, BSQVAEConfig, load_vae_state_dict
from .configuration import CONFIG_NAME, SIZE_NAMES, InfinityFamilyConfig
from .policy import InfinityPolicy
from .transformer import InfinityConfig, InfinityTransformer

AutoConfig.register(InfinityConfig.model_type, InfinityConfig, exist_ok=True)
# TRL rebuilds a full-fine-tuning reference model with AutoModelForCausalLM.from_pretrained(path)
AutoModelForCausalLM.register(InfinityConfig, InfinityTransformer, exist_ok=True)


# ------------------------------------------------------------------------------------ named sizes
def infinity_2b() -> InfinityConfig:
    return InfinityConfig(depth=32, embed_dim=2048, num_heads=16, bits_per_token=32, block_chunks=8)


def infinity_8b() -> InfinityConfig:
    return InfinityConfig(depth=40, embed_dim=3584, num_heads=28, bits_per_token=56, block_chunks=8)


def vae_d32() -> BSQVAEConfig:
    """`infinity_vae_d32reg.pth` (Infinity-2B): 32 bits per position, stride 16."""
    return BSQVAEConfig(codebook_dim=32, patch_size=16, channel_multipliers=(1, 2, 4, 4, 4))


def vae_d14() -> BSQVAEConfig:
    """The Infinity-8B VAE: 14 bits per position, stride 8 (the transformer patchifies 2x2)."""
    return BSQVAEConfig(codebook_dim=14, patch_size=8, channel_multipliers=(1, 2, 4, 4))


SIZES = {"2b": (infinity_2b, vae_d32, False), "8b": (infinity_8b, vae_d14, True)}
assert tuple(SIZES) == SIZE_NAMES
# The files of the hub repo FoundationVision/Infinity for Infinity-2B, as a family_config.
RELEASED_2B_FILES = {
    "size": "2b",
    "transformer": "infinity_2b_reg.pth",
    "vae": "infinity_vae_d32reg.pth",
    "text_encoder": "google/flan-t5-xl",
}


# ------------------------------------------------------------------------------------ loading
def infer_config(state: dict[str, torch.Tensor]) -> InfinityConfig:
    """An `InfinityConfig` read off a released state dict's shapes (depth, width, heads, bits, text width)."""
    try:
        blocks = {tuple(k.split(".")[1:4:2]) for k in state if k.startswith("block_chunks.")}
        chunks = {c for c, _ in blocks}
        heads = state["block_chunks.0.module.0.sa.scale_mul_1H11"].shape[1]
        width, bits = state["word_embed.weight"].shape
        maxlen, text_channels = state["cfg_uncond"].shape
        hidden = state["block_chunks.0.module.0.ffn.fc1.weight"].shape[0]
    except KeyError as error:
        raise CheckpointError(f"not an Infinity transformer state dict (no {error.args[0]!r})") from None
    return InfinityConfig(
        depth=len(blocks),
        embed_dim=width,
        num_heads=heads,
        mlp_ratio=hidden / width,
        bits_per_token=bits,
        text_channels=text_channels,
        text_maxlen=maxlen,
        block_chunks=len(chunks),
    )


def infer_vae_config(state: dict[str, torch.Tensor]) -> BSQVAEConfig:
    """A `BSQVAEConfig` read off a VAE state dict's shapes (either key layout: `conv1.conv.weight` or `conv1.weight`)."""

    def shape(name: str) -> tuple[int, ...]:
        for key in (name, name.replace(".conv.weight", ".weight")):
            if key in state:
                return tuple(state[key].shape)
        raise CheckpointError(f"not an Infinity BSQ-VAE state dict (no {name!r})")

    base = shape("encoder.conv_in.conv.weight")[0]
    levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.down.")})
    multipliers = tuple(shape(f"encoder.down.{level}.block.0.conv1.conv.weight")[0] // base for level in levels)
    halvings = len({k.split(".")[2] for k in state if k.startswith("encoder.down.") and ".downsample." in k})
    res_blocks = len({k.split(".")[4] for k in state if k.startswith("encoder.down.0.block.")})
    return BSQVAEConfig(
        codebook_dim=shape("decoder.conv_in.conv.weight")[1],
        patch_size=2**halvings,
        base_channels=base,
        channel_multipliers=multipliers,
        num_res_blocks=res_blocks,
    )


def load_transformer_state(model: InfinityTransformer, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load of a released state dict: every key present, none extra, every shape equal. The one
    exception: the attention's `zero_k_bias` buffers (constant zeros, the key bias the attention leaves out) may
    be absent; they are then made as zeros (in the dtype of the file's `v_bias` next to them)."""
    expected = model.state_dict()
    state = dict(state)
    for key in expected:
        if key.endswith(".zero_k_bias") and key not in state:
            like = state.get(key[: -len("zero_k_bias")] + "v_bias")
            dtype = like.dtype if like is not None else torch.float32
            state[key] = torch.zeros(expected[key].shape, dtype=dtype)
    check_state_dict(expected, state, source)
    model.load_state_dict(state, strict=True, assign=True)


def _load_released_transformer(path: str, size: str | None, dtype: torch.dtype, name: str) -> InfinityTransformer:
    state = read_weights(path)
    config = SIZES[size][0]() if size else infer_config(state)
    config._name_or_path = name
    with torch.device("meta"):  # no second copy of the weights: the file's tensors are assigned in place
        model = InfinityTransformer(config)
    load_transformer_state(model, state, path)
    return model.to(dtype)


def _load_vae(location: str, checkpoint: str, size: str | None, revision: str | None) -> BSQVAE:
    """A VAE folder saved by this project, or a released `.pth` with the weights under `vae`."""
    if location.endswith(WEIGHT_SUFFIXES):
        path = resolve_file(location, checkpoint, revision)
        state = read_weights(path)
        state = state.get("vae", state) if isinstance(state.get("vae"), dict) else state
        vae_config = SIZES[size][1]() if size else infer_vae_config(state)
        vae = BSQVAE(vae_config)
        load_vae_state_dict(vae, state, path)
        return vae
    folder = resolve_subfolder(checkpoint, location, revision, "infinity: VAE folder")
    try:
        return BSQVAE.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(f"cannot load the BSQ-VAE from {folder}: {error}") from None


def _load_transformer(
    checkpoint: str, config: InfinityFamilyConfig, dtype: torch.dtype, revision: str | None
) -> InfinityTransformer:
    base_config = replace(config, base_checkpoint=None)
    merged = load_with_adapter(
        checkpoint,
        revision,
        config.base_checkpoint,
        lambda base: _load_transformer(base, base_config, dtype, None),
        CONFIG_NAME,
    )
    if merged is not None:  # a LoRA run: base from `base_checkpoint`, adapter merged in
        return merged
    if config.transformer == "model.safetensors" and resolve_subpath(
        checkpoint, "config.json", revision, required=False
    ):
        return InfinityTransformer.from_pretrained(checkpoint, revision=revision, dtype=dtype)
    return _load_released_transformer(
        resolve_file(config.transformer, checkpoint, revision), config.size, dtype, checkpoint
    )


def load(
    checkpoint: str,
    *,
    visual_tokenizer: str | None = None,
    dtype: str | torch.dtype = "bfloat16",
    family_config: dict | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> InfinityPolicy:
    """An Infinity policy from a folder or hub repo. `family_config` (see `InfinityFamilyConfig`) overrides
    `infinity.json`, or replaces it for a released repo, e.g.
    `{size: 2b, transformer: infinity_2b_reg.pth, vae: infinity_vae_d32reg.pth}`; `visual_tokenizer`
    overrides the VAE location."""
    if is_local(checkpoint) and not os.path.isdir(checkpoint):
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    config_file = resolve_subpath(checkpoint, CONFIG_NAME, revision=revision, required=not family_config)
    data = read_json_file(config_file) if config_file else {}
    data.update(family_config or {})
    config = InfinityFamilyConfig.from_dict(data, source=config_file or "family_config")
    if visual_tokenizer:
        config.vae = visual_tokenizer
    if config.patchify is None:
        config.patchify = SIZES[config.size][2] if config.size else False
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype

    model = _load_transformer(checkpoint, config, torch_dtype, revision)
    with whole_on_every_rank():  # frozen: never partitioned by ZeRO-3
        vae = _load_vae(config.vae, checkpoint, config.size, revision).eval().requires_grad_(False)
    tokenizer, text_encoder, _ = load_text_encoder(config.text_encoder, config.text_encoder_dtype, checkpoint, revision)
    return InfinityPolicy(model, tokenizer, text_encoder, vae, config)
