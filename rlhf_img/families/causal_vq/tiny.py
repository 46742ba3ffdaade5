"""Tiny `causal_vq` checkpoints with random weights, saved in the real on-disk format.

Used by the tests, the benchmark and the smallest recipe: a byte-level BPE tokenizer (256 byte tokens,
no merges) with SimpleAR-style special tokens, a transformers Qwen2 or Llama LM whose vocabulary is
`len(tokenizer) + codebook_size` (image code c = token `len(tokenizer) + c`), and a `VQTokenizer`.
"""

from __future__ import annotations

import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from .configuration import CausalVQConfig
from .vq import VQTokenizer

SPECIAL_TOKENS = ["<|endoftext|>", "<|t2i|>", "<|soi|>"]


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A real byte-level tokenizer: every UTF-8 string round-trips, 256 base tokens plus the specials."""
    byte_to_unicode = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(byte_to_unicode))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.add_special_tokens({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    return tokenizer


def save_tiny_causal_vq(
    path: str,
    *,
    arch: str = "qwen2",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    grid: tuple[int, int] = (4, 4),
    codebook_size: int = 64,
    vq_channels: tuple[int, ...] = (16, 32),
    seed: int = 0,
) -> str:
    """Write a random-weight `causal_vq` checkpoint to `path` and return `path`."""
    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    offset = len(tokenizer)
    common = dict(
        vocab_size=offset + codebook_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        # wider than the usual 0.02 so a 64-wide random model has peaked, learnable next-code distributions
        initializer_range=0.1,
    )
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        raise ValueError(f"arch must be 'qwen2' or 'llama', got {arch!r}")
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    vq = VQTokenizer(codebook_size=codebook_size, code_dim=8, channels=vq_channels)
    torch.nn.init.normal_(vq.codebook.weight)  # unit-variance codes decode to visibly different patches
    vq.save_pretrained(os.path.join(path, "visual_tokenizer"))
    CausalVQConfig(
        image_code_offset=offset,
        image_code_count=codebook_size,
        grid=tuple(grid),
        prompt_template="<|t2i|>{prompt}<|soi|>",
        special_tokens=SPECIAL_TOKENS[1:],
        add_special_tokens=False,
    ).save(path)
    return path
