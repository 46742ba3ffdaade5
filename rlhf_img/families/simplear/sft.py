"""Upstream SFT of a `simplear` model on image/caption pairs: `rlhf-img sft recipes/simplear-sft.yaml`.

SimpleAR's SFT recipe (wdrink/SimpleAR): images are encoded once with the Cosmos DV8x16x16 encoder into a
`(res/16) x (res/16)` grid of codes; a sequence is `<|t2i|>{prefix}{caption}<|soi|>` followed by the codes
as tokens `len(tokenizer) + code`, with ~10% of captions dropped (`<|t2i|><|soi|>`) so that the model also
learns the unconditional distribution classifier-free guidance needs. The loss is on the image tokens only.
Training is transformers' `Trainer`; the output folder loads with `model_family: simplear`.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import Trainer, TrainingArguments

from ...data import load_prompt_dataset
from ..causal_vq.sft import collate, image_token_example
from .loading import load


@dataclass
class SimpleARSFTConfig(TrainingArguments):
    """transformers `TrainingArguments` plus the model and the image/caption data."""

    model_family: str = field(default="simplear", metadata={"help": "Must be 'simplear' for this stage."})
    model_name_or_path: str = field(default="Daniel0724/SimpleAR-0.5B-SFT",
                                    metadata={"help": "SimpleAR checkpoint to fine-tune (hub id or folder)."})
    visual_tokenizer: str = field(default="nvidia/Cosmos-1.0-Tokenizer-DV8x16x16",
                                  metadata={"help": "Cosmos tokenizer: hub id, folder with the .jit files, or `rlhf-img convert` output."})
    dataset: str = field(default="", metadata={"help": "Image/caption pairs: .jsonl/.json/.csv/.parquet file, "
                                               "save_to_disk folder or datasets name; image paths are relative to the file."})
    image_column: str = field(default="image", metadata={"help": "Column with image paths (or images)."})
    caption_column: str = field(default="caption", metadata={"help": "Column with captions."})
    resolution: int = field(default=1024, metadata={"help": "Square training resolution (1024 -> 64x64 codes)."})
    prompt_prefix: str = field(default="", metadata={"help": "Text put before each caption."})
    caption_dropout: float = field(default=0.1, metadata={"help": "Share of empty captions (for CFG)."})
    max_examples: int | None = field(default=None, metadata={"help": "Use at most this many pairs."})
    encode_batch_size: int = field(default=8, metadata={"help": "Images per Cosmos-encoder batch."})
    dtype: str = field(default="bfloat16", metadata={"help": "LM weights dtype."})


def load_image(value, base_dir: str, resolution: int) -> torch.Tensor:
    """`(3, res, res)` in [0, 1]: shorter side resized to `res` (bicubic), centre crop."""
    image = value if isinstance(value, Image.Image) else Image.open(
        value if os.path.isabs(str(value)) else os.path.join(base_dir, str(value)))
    image = image.convert("RGB")
    scale = resolution / min(image.size)
    image = image.resize((max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))),
                         Image.BICUBIC)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


@torch.no_grad()
def build_examples(config: SimpleARSFTConfig, policy) -> list[dict]:
    """Token sequences with labels on the image codes only; captions dropped at `caption_dropout`."""
    rows = list(load_prompt_dataset(config.dataset, prompt_column=config.caption_column, max_prompts=config.max_examples))
    base_dir = os.path.dirname(os.path.abspath(config.dataset)) if os.path.isfile(config.dataset) else config.dataset
    rng = random.Random(config.seed)
    tokenizer, offset = policy.processing_class, policy.config.image_code_offset
    encoder = policy.visual_tokenizer
    examples = []
    for start in tqdm(range(0, len(rows), config.encode_batch_size), desc="sft: encoding images", dynamic_ncols=True):
        chunk = rows[start : start + config.encode_batch_size]
        images = torch.stack([load_image(row[config.image_column], base_dir, config.resolution) for row in chunk])
        codes = encoder.encode(images).flatten(1) + offset  # (B, h*w) token ids
        for row, row_codes in zip(chunk, codes.tolist()):
            caption = "" if rng.random() < config.caption_dropout else config.prompt_prefix + str(row["prompt"])
            prompt_ids = tokenizer("<|t2i|>" + caption + "<|soi|>").input_ids
            examples.append(image_token_example(prompt_ids, row_codes))
    return examples


def run_simplear_sft(config: SimpleARSFTConfig) -> str:
    """Fine-tune and write the model + tokenizer to `config.output_dir`; returns it."""
    policy = load(config.model_name_or_path, visual_tokenizer=config.visual_tokenizer,
                         dtype=config.dtype, family_config={"resolution": config.resolution})
    examples = build_examples(config, policy)
    tokenizer = policy.processing_class
    trainer = Trainer(model=policy.model, args=config, train_dataset=examples, data_collator=collate(tokenizer.pad_token_id))
    trainer.train()
    policy.model.save_pretrained(config.output_dir)
    tokenizer.save_pretrained(config.output_dir)
    policy.save_pretrained(config.output_dir)  # simplear.json + visual_tokenizer/: reloads at this resolution
    trainer.save_state()
    return config.output_dir
