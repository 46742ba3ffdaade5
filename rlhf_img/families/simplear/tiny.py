"""A tiny stand-in for a released SimpleAR checkpoint, saved in the real on-disk format (tests, demos)."""

from __future__ import annotations

import os

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from ..causal_vq.tiny import byte_level_tokenizer
from .cosmos import CosmosConfig, CosmosDiscreteTokenizer
from .loading import COSMOS_CODES
from .loading import SPECIAL_TOKENS as SIMPLEAR_TOKENS


def save_tiny_simplear(
    path: str, *, hidden_size: int = 32, num_layers: int = 2, seed: int = 0, cosmos_channels: int = 8
) -> tuple[str, str]:
    """A tiny stand-in for a released SimpleAR checkpoint, in its on-disk format: a Qwen2 folder whose
    tokenizer has SimpleAR's seven special tokens and whose vocabulary is `len(tokenizer) + 64000`, plus a
    tiny Cosmos tokenizer (DV8x16x16's module tree, narrow convs) in `rlhf-img convert`'s layout.
    Returns (LM folder, Cosmos folder)."""
    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(SIMPLEAR_TOKENS)})
    config = Qwen2Config(
        vocab_size=len(tokenizer) + COSMOS_CODES,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        initializer_range=0.1,
    )
    lm_path = os.path.join(path, "lm")
    Qwen2ForCausalLM(config).save_pretrained(lm_path)
    tokenizer.save_pretrained(lm_path)
    cosmos_path = os.path.join(path, "cosmos")
    CosmosDiscreteTokenizer(CosmosConfig.tiny(channels=cosmos_channels)).save_pretrained(cosmos_path)
    return lm_path, cosmos_path
