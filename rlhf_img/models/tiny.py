"""Tiny `causal_vq` checkpoints with random weights, saved in the real on-disk format.

Used by the tests, the benchmark and the smallest recipe: a byte-level BPE tokenizer (256 byte tokens,
no merges) with SimpleAR-style special tokens, a transformers Qwen2 or Llama LM whose vocabulary is
`len(tokenizer) + codebook_size` (image code c = token `len(tokenizer) + c`), and a `VQTokenizer`.
"""

from __future__ import annotations

import json
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from .causal_vq import CausalVQConfig
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


def save_tiny_simplear(path: str, *, hidden_size: int = 32, num_layers: int = 2, seed: int = 0,
                       cosmos_channels: int = 8) -> tuple[str, str]:
    """A tiny stand-in for a released SimpleAR checkpoint, in its on-disk format: a Qwen2 folder whose
    tokenizer has SimpleAR's seven special tokens and whose vocabulary is `len(tokenizer) + 64000`, plus a
    tiny Cosmos tokenizer (DV8x16x16's module tree, narrow convs) in `rlhf-img convert`'s layout.
    Returns (LM folder, Cosmos folder)."""
    from .cosmos import CosmosConfig, CosmosDiscreteTokenizer
    from .simplear import COSMOS_CODES, SPECIAL_TOKENS as SIMPLEAR_TOKENS

    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(SIMPLEAR_TOKENS)})
    config = Qwen2Config(
        vocab_size=len(tokenizer) + COSMOS_CODES, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, initializer_range=0.1,
    )
    lm_path = os.path.join(path, "lm")
    Qwen2ForCausalLM(config).save_pretrained(lm_path)
    tokenizer.save_pretrained(lm_path)
    cosmos_path = os.path.join(path, "cosmos")
    CosmosDiscreteTokenizer(CosmosConfig.tiny(channels=cosmos_channels)).save_pretrained(cosmos_path)
    return lm_path, cosmos_path


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
    from transformers import T5Config, T5EncoderModel

    from .bsq_vae import BSQVAE, BSQVAEConfig
    from .infinity_transformer import InfinityConfig, InfinityTransformer

    torch.manual_seed(seed)
    os.makedirs(path, exist_ok=True)
    config = InfinityConfig(
        depth=depth, embed_dim=embed_dim, num_heads=num_heads, bits_per_token=codebook_dim,
        text_channels=text_channels, text_maxlen=text_maxlen, block_chunks=block_chunks, initializer_range=0.1,
    )
    transformer = InfinityTransformer(config)
    torch.save({k: v.clone() for k, v in transformer.state_dict().items()}, os.path.join(path, "infinity_tiny.pth"))
    vae = BSQVAE(BSQVAEConfig(codebook_dim=codebook_dim, patch_size=2, base_channels=vae_channels, channel_multipliers=(1, 1), num_res_blocks=1))
    torch.save({"vae": vae.state_dict()}, os.path.join(path, "infinity_vae_tiny.pth"))
    tokenizer = byte_level_tokenizer()
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=text_channels, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0,
    ))
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
        "transformer": "infinity_tiny.pth", "vae": "infinity_vae_tiny.pth",
        "text_encoder": os.path.join(path, "t5"), "num_scales": num_scales,
    }
