"""Upstream stage (b): pretrain/SFT a small transformers causal LM on caption -> image-token sequences.

    rlhf-img sft recipes/shapes-sft.yaml [--key value ...]

Sequences are `<|t2i|> caption <|soi|> code_1 ... code_hw` with the loss on the image codes only; ~10% of
captions are dropped (`<|t2i|> <|soi|> codes`) so the model also learns the unconditional distribution that
classifier-free guidance needs. Prompts are drawn tag-balanced from the world's train split (held-out prompts
are never seen). Training is transformers' `Trainer`; the result is a `causal_vq` checkpoint folder.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Trainer,
    TrainingArguments,
)

from ..families.causal_vq.configuration import CausalVQConfig
from ..families.causal_vq.sft import collate, image_token_example, save_causal_vq
from ..families.causal_vq.vq import VQTokenizer
from . import shapes

SPECIAL_TOKENS = ["<|endoftext|>", "<|t2i|>", "<|soi|>", "<|unk|>"]
PROMPT_TEMPLATE = "<|t2i|> {prompt} <|soi|>"


@dataclass
class WorldSFTConfig(TrainingArguments):
    """transformers `TrainingArguments` plus the model and data of the world."""

    visual_tokenizer: str = field(default="runs/shapes-tokenizer", metadata={"help": "VQ tokenizer folder (stage a)."})
    arch: str = field(default="llama", metadata={"help": "LM architecture: 'llama' or 'qwen2'.", "choices": ["llama", "qwen2"]})
    hidden_size: int = field(default=128, metadata={"help": "LM width."})
    num_layers: int = field(default=4, metadata={"help": "LM depth."})
    num_heads: int = field(default=4, metadata={"help": "Attention heads."})
    intermediate_size: int = field(default=384, metadata={"help": "MLP width."})
    num_examples: int = field(default=40000, metadata={"help": "Rendered (caption, image) pairs to train on."})
    caption_dropout: float = field(default=0.1, metadata={"help": "Share of empty captions (for CFG)."})
    # TrainingArguments defaults suited to a tiny model on a CPU:
    output_dir: str = field(default="runs/shapes-sft", metadata={"help": "Where the causal_vq checkpoint is written."})
    learning_rate: float = field(default=3e-3, metadata={"help": "AdamW peak learning rate."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Sequences per step."})
    max_steps: int = field(default=2000, metadata={"help": "Optimizer steps."})
    warmup_steps: int = field(default=100, metadata={"help": "Linear warm-up steps."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    logging_steps: int = field(default=50, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpointing during SFT ('no' keeps only the result)."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Dashboards."})
    use_cpu: bool = field(default=True, metadata={"help": "Train on the CPU."})


def world_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over every word of the world's prompts, with the special tokens."""
    words = sorted({word for row in shapes.all_prompts() for word in row["prompt"].split()})
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.add_special_tokens({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|unk|>"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|t2i|>", "<|soi|>"]})
    return tokenizer


@torch.no_grad()
def build_examples(config: WorldSFTConfig, tokenizer, vq: VQTokenizer) -> list[dict]:
    """Tag-balanced (prompt, image) pairs from the train split, image encoded to codes."""
    rng = random.Random(config.seed)
    train_rows, _ = shapes.split_prompts()
    by_tag: dict[str, list[dict]] = {}
    for row in train_rows:
        by_tag.setdefault(row["tag"], []).append(row)
    tags = sorted(by_tag)
    offset = len(tokenizer)
    examples, batch_rows, batch_images = [], [], []

    def flush() -> None:
        images = torch.from_numpy(np.stack(batch_images)).permute(0, 3, 1, 2).float() / 255
        codes = vq.encode(images).flatten(1) + offset  # (B, h*w) token ids
        for row, row_codes in zip(batch_rows, codes.tolist()):
            caption = "" if rng.random() < config.caption_dropout else row["prompt"]
            prompt_ids = tokenizer(PROMPT_TEMPLATE.format(prompt=caption), add_special_tokens=False).input_ids
            examples.append(image_token_example(prompt_ids, row_codes))
        batch_rows.clear()
        batch_images.clear()

    for _ in range(config.num_examples):
        row = rng.choice(by_tag[rng.choice(tags)])
        batch_rows.append(row)
        batch_images.append(shapes.render_prompt(row, rng.randrange(2**31)))
        if len(batch_rows) == 256:
            flush()
    if batch_rows:
        flush()
    return examples


def build_model(config: WorldSFTConfig, vocab_size: int, tokenizer):
    common = dict(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    if config.arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    return Qwen2ForCausalLM(Qwen2Config(**common))


def run_sft(config: WorldSFTConfig) -> str:
    """Train and write the `causal_vq` checkpoint to `config.output_dir`; returns that path."""
    torch.manual_seed(config.seed)
    if not os.path.isdir(config.visual_tokenizer):
        raise FileNotFoundError(f"visual tokenizer not found: {config.visual_tokenizer} (run pretrain-tokenizer first)")
    vq = VQTokenizer.from_pretrained(config.visual_tokenizer).eval()
    tokenizer = world_tokenizer()
    examples = build_examples(config, tokenizer, vq)
    model = build_model(config, len(tokenizer) + vq.codebook_size, tokenizer)
    trainer = Trainer(model=model, args=config, train_dataset=examples, data_collator=collate(tokenizer.pad_token_id))
    trainer.train()
    family_config = CausalVQConfig(
        image_code_offset=len(tokenizer),
        image_code_count=vq.codebook_size,
        grid=(shapes.IMAGE_SIZE // vq.downsample_factor,) * 2,
        prompt_template=PROMPT_TEMPLATE,
        special_tokens=["<|t2i|>", "<|soi|>"],
        add_special_tokens=False,
    )
    save_causal_vq(config.output_dir, model, tokenizer, config.visual_tokenizer, family_config)
    trainer.save_state()
    return config.output_dir
