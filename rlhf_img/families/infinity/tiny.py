"""A tiny stand-in for the released Infinity files, saved in their on-disk format (tests, demos)."""

from __future__ import annotations

import json
import os

import torch
from transformers import T5Config, T5EncoderModel

from ..causal_vq.tiny import byte_level_tokenizer
from .bsq_vae import BSQVAE, BSQVAEConfig
from .transformer import InfinityConfig, InfinityTransformer


def save_tiny_infinity(
    path: str,
    *,
    depth: int = 2,
    embed_dim: int = 64,
    num_heads: int = 2,
    block_chunks: int = 2,
    text_channels: int = 128,
    text_maxlen: int = 32,
    codebook_dim: int = 8,
    vae_channels: int = 32,
    num_scales: int = 4,
    seed: int = 0,
) -> str:
    """A tiny stand-in for the released Infinity files, in their on-disk format: the transformer as a plain
    torch state dict (`infinity_tiny.pth`, blocks under `block_chunks.{c}.module.{j}`), the BSQ-VAE under the
    key `vae` (`infinity_vae_tiny.pth`, stride 2), and a tiny T5 encoder + tokenizer in `t5/`. Returns `path`;
    load it with `family_config=tiny_infinity_family_config(path)`."""
    torch.manual_seed(seed)
    os.makedirs(path, exist_ok=True)
    config = InfinityConfig(
        depth=depth,
        embed_dim=embed_dim,
        num_heads=num_heads,
        bits_per_token=codebook_dim,
        text_channels=text_channels,
        text_maxlen=text_maxlen,
        block_chunks=block_chunks,
        initializer_range=0.1,
    )
    transformer = InfinityTransformer(config)
    torch.save({k: v.clone() for k, v in transformer.state_dict().items()}, os.path.join(path, "infinity_tiny.pth"))
    vae = BSQVAE(
        BSQVAEConfig(
            codebook_dim=codebook_dim,
            patch_size=2,
            base_channels=vae_channels,
            channel_multipliers=(1, 1),
            num_res_blocks=1,
        )
    )
    torch.save({"vae": vae.state_dict()}, os.path.join(path, "infinity_vae_tiny.pth"))
    tokenizer = byte_level_tokenizer()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=text_channels,
            d_kv=16,
            d_ff=64,
            num_layers=1,
            num_heads=2,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=0,
        )
    )
    t5.save_pretrained(os.path.join(path, "t5"))
    tokenizer.save_pretrained(os.path.join(path, "t5"))
    with open(os.path.join(path, "tiny.json"), "w") as f:
        json.dump({"num_scales": num_scales}, f)
    return path


def tiny_infinity_family_config(path: str) -> dict:
    """The `family_config` that loads `save_tiny_infinity(path)` through the released-checkpoint path."""
    with open(os.path.join(path, "tiny.json")) as f:
        num_scales = json.load(f)["num_scales"]
    return {
        "transformer": "infinity_tiny.pth",
        "vae": "infinity_vae_tiny.pth",
        "text_encoder": os.path.join(path, "t5"),
        "num_scales": num_scales,
    }
