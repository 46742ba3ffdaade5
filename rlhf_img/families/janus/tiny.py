"""A tiny stand-in for a released Janus-Pro checkpoint, saved in transformers' on-disk format (tests, demos).

`deepseek-community/Janus-Pro-{1B,7B}` are `JanusForConditionalGeneration` folders: `config.json` (model_type
"janus": a Llama text config, a SigLIP-style vision config, a VQ config), `generation_config.json` (pad, BOS,
`generation_kwargs.boi_token_id`, guidance 5), `model.safetensors`, and a `JanusProcessor` (tokenizer with
Janus' special tokens, image processor, chat template). The stand-in has the same files with tiny widths: a
byte-level tokenizer with Janus' special tokens, a 2-layer Llama, a 1-layer vision tower, and a VQ with
GroupNorm-compatible channels (32) and 8x upsampling: a 4x4 grid of 64 codes decodes to 32x32 pixels.
"""

from __future__ import annotations

import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    GenerationConfig,
    JanusConfig,
    JanusForConditionalGeneration,
    JanusImageProcessor,
    JanusProcessor,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

# Janus-Pro's special tokens (tokenizer of deepseek-ai/Janus-Pro-*), with the names transformers' JanusProcessor reads
BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
IMAGE_TOKENS = {"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>", "eoi_token": "<end_of_image>"}

# The chat template transformers' conversion script (convert_janus_weights_to_hf.py) writes into the processor:
# a user turn renders as "<|User|>: {text}\n\n" and the generation prompt as "<|Assistant|>:".
CHAT_TEMPLATE = (
    "{%set seps=['\n\n','<｜end▁of▁sentence｜>']%}"
    "{%for message in messages%}"
    "{%if message['role']|lower=='user'%}<|User|>: "
    "{%elif message['role']|lower=='assistant'%}<|Assistant|>:"
    "{%if not (loop.last and not add_generation_prompt and message['content'][0]['type']=='text' "
    "and message['content'][0]['text']=='')%} {%endif%}"
    "{%else%}{{message['role'].capitalize()}}: {%endif%}"
    "{%for content in message['content']%}"
    "{%if content['type']=='image'%}{%if not loop.first%}{{'\n'}}{%endif%}<image_placeholder>"
    "{%if not loop.last%}{{'\n'}}{%endif%}"
    "{%elif content['type']=='text'%}{%set text=content['text']%}"
    "{%if loop.first%}{%set text=text.lstrip()%}{%endif%}"
    "{%if loop.last%}{%set text=text.rstrip()%}{%endif%}"
    "{%if not loop.first and message['content'][loop.index0-1]['type']=='text'%}{{' '+text}}"
    "{%else%}{{text}}{%endif%}{%endif%}"
    "{%endfor%}"
    "{%if not loop.last or add_generation_prompt%}"
    "{%if message['role']|lower=='user'%}{{seps[0]}}{%else%}{{seps[1]}}{%endif%}{%endif%}"
    "{%endfor%}"
    "{%if add_generation_prompt%}<|Assistant|>:{%endif%}"
)


def janus_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer that adds BOS (as Janus' Llama tokenizer does) and carries Janus' special tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = [BOS, EOS, PAD, *IMAGE_TOKENS.values()]
    vocab = {token: index for index, token in enumerate(specials + alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=IMAGE_TOKENS,
        padding_side="left",
    )
    return tokenizer


def save_tiny_janus(
    path: str, *, hidden_size: int = 32, num_layers: int = 2, grid: int = 4, codebook_size: int = 64, seed: int = 0
) -> str:
    """Write a random-weight `JanusForConditionalGeneration` folder with its processor to `path`; returns `path`.

    `grid` x `grid` image tokens (Janus-Pro: 24 x 24 at 384 px); the VQ upsamples 8x (Janus-Pro: 16x)."""
    torch.manual_seed(seed)
    tokenizer = janus_tokenizer()
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    patch_size = 8
    vision_config = dict(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        mlp_ratio=2.0,
        image_size=grid * patch_size,
        patch_size=patch_size,
        projection_dim=hidden_size,
        num_image_tokens=grid * grid,
    )
    vq_config = dict(
        embed_dim=8,
        num_embeddings=codebook_size,
        base_channels=32,
        latent_channels=32,
        channel_multiplier=[1, 1, 2, 2],
        num_res_blocks=1,
        projection_dim=hidden_size,
        image_token_embed_dim=hidden_size,
    )
    config = JanusConfig(
        text_config=text_config,
        vision_config=vision_config,
        vq_config=vq_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKENS["image_token"]),
    )
    model = JanusForConditionalGeneration(config)
    with torch.no_grad():  # unit-variance codes and a wider head: random images and next-code distributions that differ
        model.model.vqmodel.quantize.embedding.weight.normal_()
        model.model.generation_head.vision_head.weight.normal_(std=0.5)
    # as transformers' conversion script sets it for the released checkpoints
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        guidance_scale=5.0,
        temperature=1.0,
        generation_kwargs={"boi_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKENS["boi_token"])},
    )
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    image_processor = JanusImageProcessor(size={"height": grid * patch_size, "width": grid * patch_size})
    JanusProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        use_default_system_prompt=True,
        num_image_tokens=grid * grid,
    ).save_pretrained(path)
    return path
