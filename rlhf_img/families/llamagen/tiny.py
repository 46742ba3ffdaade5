"""A tiny stand-in for the released LlamaGen files, saved in their on-disk format (tests, demos)."""

from __future__ import annotations

import argparse
import os

import torch
from transformers import JanusVQVAE, JanusVQVAEConfig, T5Config, T5EncoderModel

from ..causal_vq.tiny import byte_level_tokenizer
from .gpt import LlamaGenConfig, LlamaGenGPT
from .vq import llamagen_key

TINY_GPT_FILE = "t2i_tiny_stage1_8.pt"  # `_8.pt`: 8 px images (a 4x4 grid of a stride-2 VQ)
TINY_VQ_FILE = "vq_tiny.pt"


def save_tiny_llamagen(
    path: str,
    *,
    dim: int = 64,
    n_layer: int = 2,
    n_head: int = 2,
    codebook_size: int = 64,
    caption_dim: int = 32,
    vq_channels: int = 32,
    seed: int = 0,
) -> str:
    """A tiny stand-in for the released LlamaGen files, in their format: the GPT (`t2i_tiny_stage1_8.pt`) and the
    VQ (`vq_tiny.pt`) as `{"model": state_dict, "steps": ..., "args": argparse.Namespace}` torch files with the
    reference's key names (120 caption tokens, as released; the output head perturbed from its zero init so
    logits differ), and a tiny T5 encoder + tokenizer in `t5/`. Returns `path`; load it with
    `family_config=tiny_llamagen_family_config(path)`."""
    torch.manual_seed(seed)
    os.makedirs(path, exist_ok=True)
    config = LlamaGenConfig(
        dim=dim,
        n_layer=n_layer,
        n_head=n_head,
        multiple_of=32,
        vocab_size=codebook_size,
        caption_dim=caption_dim,
        block_size=16,
    )
    gpt = LlamaGenGPT(config)
    with torch.no_grad():
        gpt.output.weight.normal_(std=0.5)  # the reference zero-initialises the head: every code equally likely
    args = argparse.Namespace(gpt_model="tiny", gpt_type="t2i", cls_token_num=120, image_size=8)
    torch.save(
        {"model": {k: v.clone() for k, v in gpt.state_dict().items()}, "steps": 0, "args": args},
        os.path.join(path, TINY_GPT_FILE),
    )
    vq = JanusVQVAE(
        JanusVQVAEConfig(
            base_channels=vq_channels,
            channel_multiplier=[1, 1],
            num_res_blocks=1,
            latent_channels=vq_channels,
            num_embeddings=codebook_size,
            embed_dim=8,
            num_patches=4,
        )
    )
    state = {llamagen_key(k): v.clone() for k, v in vq.state_dict().items()}
    state["quantize.codebook_used"] = torch.zeros(65536)  # the reference's usage counter (a buffer in its files)
    torch.save({"model": state, "steps": 0}, os.path.join(path, TINY_VQ_FILE))
    tokenizer = byte_level_tokenizer()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=caption_dim,
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
    return path


def tiny_llamagen_family_config(path: str) -> dict:
    """The `family_config` that loads `save_tiny_llamagen(path)` through the released-checkpoint path (the files
    are found in the folder; the tiny width matches no named size, so the head count is given)."""
    return {"num_heads": 2, "text_encoder": os.path.join(path, "t5")}
