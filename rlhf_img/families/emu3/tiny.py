"""A tiny stand-in for `BAAI/Emu3-Gen-hf`, saved in transformers' on-disk format (tests, demos, `create-tiny`).

The released folder is an `Emu3ForConditionalGeneration` (`config.json`: model_type "emu3", a text config, a VQ
config and a `vocabulary_map` of every token string to its id), `model.safetensors` and an `Emu3Processor`
(a byte-level BPE tokenizer with Emu3's special tokens, an `Emu3ImageProcessor`). The stand-in has the same files
with tiny widths, the way transformers' own Emu3 tests build one: a byte-level BPE tokenizer (no merges) written
with `tokenizers`, Emu3's special tokens (their released names: `<|extra_203|>` BOS, `<|extra_200|>` end of line,
...), then the visual tokens `<|visual token%06d|>` as one contiguous block at the end of the vocabulary (as in
the released tokenizer); a 2-layer text model; a VQ with the released layout (4 resolutions: 8x spatial factor,
4x temporal) at 32 channels, so a 4x4 grid of 64 codes decodes to 32x32 pixels.
"""

from __future__ import annotations

import os

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Emu3Config,
    Emu3ForConditionalGeneration,
    Emu3ImageProcessor,
    Emu3Processor,
    PreTrainedTokenizerFast,
)

# Emu3's special tokens (BAAI's tokenizer), under the names transformers' Emu3Processor reads
PAD, BOS, EOS = "<|endoftext|>", "<|extra_203|>", "<|extra_204|>"
END_OF_LINE = "<|extra_200|>"
IMAGE_TOKENS = {
    "image_token": "<image>",
    "boi_token": "<|image start|>",
    "eoi_token": "<|image end|>",
    "image_wrapper_token": "<|image token|>",
    "eof_token": "<|extra_201|>",
}
VISUAL_TOKEN = "<|visual token{:06d}|>"

# BAAI's demo normalises pixels to [-1, 1]; the stand-in's image processor says so explicitly
PIXEL_MEAN, PIXEL_STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
TINY_IMAGE_AREA = 32 * 32  # family_config of the stand-in: a 4x4 grid at the VQ's 8x factor


def emu3_tokenizer(codebook_size: int) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (no BOS added: Emu3's processor writes it into the text) with Emu3's special tokens,
    then `codebook_size` visual tokens, contiguous and in code order, last."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = [
        PAD,
        "<|extra_0|>",
        END_OF_LINE,
        IMAGE_TOKENS["eof_token"],
        BOS,
        EOS,
        IMAGE_TOKENS["image_wrapper_token"],
        IMAGE_TOKENS["boi_token"],
        IMAGE_TOKENS["eoi_token"],
        IMAGE_TOKENS["image_token"],
    ]
    visual = [VISUAL_TOKEN.format(code) for code in range(codebook_size)]
    backend = Tokenizer(models.BPE(vocab={token: index for index, token in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials + visual])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=IMAGE_TOKENS,
        padding_side="left",
    )


def save_tiny_emu3(
    path: str, *, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4, codebook_size: int = 64, seed: int = 0
) -> str:
    """Write a random-weight `Emu3ForConditionalGeneration` folder with its processor to `path`; returns `path`.

    Load it with `family_config={"image_area": TINY_IMAGE_AREA}` (4x4 codes; the released default is 720x720).
    The image area sets the grid, so a larger `image_area` samples a larger image from the same weights."""
    torch.manual_seed(seed)
    tokenizer = emu3_tokenizer(codebook_size)
    vocabulary = tokenizer.get_vocab()
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=9216,  # as released (RoPE: the range costs nothing)
        pad_token_id=vocabulary[PAD],
        bos_token_id=vocabulary[BOS],
        eos_token_id=vocabulary[EOS],
        attention_dropout=0.1,  # the released value (the family sets its own, see Emu3FamilyConfig)
    )
    vq_config = dict(
        codebook_size=codebook_size,
        embed_dim=4,
        latent_channels=4,
        base_channels=32,
        channel_multiplier=[1, 1, 1, 1],
        num_res_blocks=1,
        attn_resolutions=[3],
        hidden_size=32,
        num_attention_heads=1,
        temporal_downsample_factor=4,
    )
    config = Emu3Config(text_config=text_config, vq_config=vq_config, vocabulary_map=vocabulary)
    model = Emu3ForConditionalGeneration(config)
    with torch.no_grad():  # unit-variance codes and a wider head: random images and next-code distributions that differ
        model.model.vqmodel.quantize.embedding.weight.normal_()
        model.lm_head.weight.normal_(std=0.5)
    model.generation_config.pad_token_id = vocabulary[PAD]
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    image_processor = Emu3ImageProcessor(
        image_mean=PIXEL_MEAN, image_std=PIXEL_STD, min_pixels=16 * 16, max_pixels=64 * 64, spatial_factor=8
    )
    Emu3Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path
