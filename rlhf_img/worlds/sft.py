"""Upstream stage (b) of the shapes world: pretrain a small transformers causal LM on caption -> image codes.

    rlhf-img sft recipes/shapes-sft.yaml [--key value ...]

The world's data and model, the project's shared stages: prompts are drawn tag-balanced from the world's train
split (held-out prompts are never seen) and rendered to an image folder (`NNNNNN.png` + `.txt` caption); a fresh
Llama / Qwen2 of the recipe's shape is written as a `causal_vq` checkpoint with the world's word-level tokenizer and
the stage-(a) VQ; `rlhf-img encode` turns the folder into Arrow shards of codes through that checkpoint, and the
shared SFT stage (`rlhf_img/upstream/sft.py`) trains it: the loss on the image codes only, ~10% of captions dropped
(the family's unconditional prompt `<|t2i|> <|soi|>`) so that the model also learns what classifier-free guidance
needs. The intermediate folders stay under `output_dir/upstream/` (`init/`, `pairs/`, `encoded/`: a rerun reuses
the rendered pairs and the finished shards); the trained checkpoint is `output_dir` itself.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from tqdm.auto import tqdm
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from ..families.causal_vq.configuration import CausalVQConfig
from ..families.causal_vq.sft import save_causal_vq
from ..families.causal_vq.vq import VQTokenizer
from ..upstream.sft import ActionSFTConfig
from . import shapes

SPECIAL_TOKENS = ["<|endoftext|>", "<|t2i|>", "<|soi|>", "<|unk|>"]
PROMPT_TEMPLATE = "<|t2i|> {prompt} <|soi|>"


@dataclass
class WorldSFTConfig(ActionSFTConfig):
    """The shared SFT stage's keys (transformers `TrainingArguments` + `caption_dropout`) plus the world's model
    shape and data; `dataset` is left unset: the stage renders and encodes its own."""

    visual_tokenizer: str = field(default="runs/shapes-tokenizer", metadata={"help": "VQ tokenizer folder (stage a)."})
    arch: str = field(
        default="llama", metadata={"help": "LM architecture: 'llama' or 'qwen2'.", "choices": ["llama", "qwen2"]}
    )
    hidden_size: int = field(default=128, metadata={"help": "LM width."})
    num_layers: int = field(default=4, metadata={"help": "LM depth."})
    num_heads: int = field(default=4, metadata={"help": "Attention heads."})
    intermediate_size: int = field(default=384, metadata={"help": "MLP width."})
    num_examples: int = field(default=40000, metadata={"help": "Rendered (caption, image) pairs to train on."})
    caption_dropout: float = field(default=0.1, metadata={"help": "Share of empty captions (for CFG)."})
    shape_free_counts: bool = field(
        default=False,
        metadata={
            "help": "Add the training-only counting prompts that name no shape ('a photo of four shapes', each "
            "object's shape random) to the counting tag's rows, so the model can learn a count apart from a shape."
        },
    )
    # TrainingArguments defaults suited to a tiny model on a CPU:
    output_dir: str = field(default="runs/shapes-sft", metadata={"help": "Where the causal_vq checkpoint is written."})
    learning_rate: float = field(default=3e-3, metadata={"help": "AdamW peak learning rate."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Sequences per step."})
    max_steps: int = field(default=2000, metadata={"help": "Optimizer steps."})
    warmup_steps: int = field(default=100, metadata={"help": "Linear warm-up steps."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    logging_steps: int = field(default=50, metadata={"help": "Log every N steps."})
    save_strategy: str = field(
        default="no", metadata={"help": "Checkpointing during SFT ('no' keeps only the result)."}
    )
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Dashboards."})
    use_cpu: bool = field(default=True, metadata={"help": "Train on the CPU."})


def world_tokenizer(shape_free_counts: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over every word of the world's prompts (and of the shape-free counts when the SFT
    trains on them), with the special tokens."""
    rows = shapes.all_prompts() + (shapes.shape_free_count_prompts() if shape_free_counts else [])
    words = sorted({word for row in rows for word in row["prompt"].split()})
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.add_special_tokens({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|unk|>"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|t2i|>", "<|soi|>"]})
    return tokenizer


def render_pairs(config: WorldSFTConfig, folder: str) -> str:
    """`num_examples` tag-balanced (prompt, image) pairs of the train split (with `shape_free_counts`, plus the
    shape-free counting prompts) as `NNNNNN.png` + `NNNNNN.txt` in `folder` (kept when complete: a rerun reuses
    it); returns the folder."""
    done = os.path.join(folder, ".complete")
    if os.path.exists(done):
        return folder
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(config.seed)
    train_rows, _ = shapes.split_prompts()
    if config.shape_free_counts:
        train_rows = train_rows + shapes.shape_free_count_prompts()
    by_tag: dict[str, list[dict]] = {}
    for row in train_rows:
        by_tag.setdefault(row["tag"], []).append(row)
    tags = sorted(by_tag)
    for index in tqdm(
        range(config.num_examples), desc="sft: rendering pairs", dynamic_ncols=True, disable=config.disable_tqdm
    ):
        row = rng.choice(by_tag[rng.choice(tags)])
        Image.fromarray(shapes.render_prompt(row, rng.randrange(2**31))).save(os.path.join(folder, f"{index:06d}.png"))
        with open(os.path.join(folder, f"{index:06d}.txt"), "w") as f:
            f.write(row["prompt"])
    open(done, "w").close()
    return folder


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


def write_initial_checkpoint(config: WorldSFTConfig, path: str) -> str:
    """A fresh LM of the recipe's shape (seeded), the world's tokenizer and the stage-(a) VQ as a `causal_vq`
    checkpoint: what `rlhf-img encode` encodes with and the SFT stage starts from."""
    torch.manual_seed(config.seed)
    vq = VQTokenizer.from_pretrained(config.visual_tokenizer).eval()
    tokenizer = world_tokenizer(config.shape_free_counts)
    model = build_model(config, len(tokenizer) + vq.codebook_size, tokenizer)
    family_config = CausalVQConfig(
        image_code_offset=len(tokenizer),
        image_code_count=vq.codebook_size,
        grid=(shapes.IMAGE_SIZE // vq.downsample_factor,) * 2,
        prompt_template=PROMPT_TEMPLATE,
        special_tokens=["<|t2i|>", "<|soi|>"],
        add_special_tokens=False,
    )
    save_causal_vq(path, model, tokenizer, config.visual_tokenizer, family_config)
    return path


def run_sft(config: WorldSFTConfig) -> str:
    """Render, encode and train; the `causal_vq` checkpoint is written to `config.output_dir`, returned."""
    from ..config import ImageModelConfig
    from ..upstream.encode import EncodeConfig, run_encode
    from ..upstream.sft import run_action_sft

    if not os.path.isdir(config.visual_tokenizer):
        raise FileNotFoundError(f"visual tokenizer not found: {config.visual_tokenizer} (run pretrain-tokenizer first)")
    work = os.path.join(config.output_dir, "upstream")
    initial = write_initial_checkpoint(config, os.path.join(work, "init"))
    pairs = render_pairs(config, os.path.join(work, "pairs"))
    encoded = os.path.join(work, "encoded")
    run_encode(
        EncodeConfig(
            model_name_or_path=initial,
            dataset=pairs,
            output_dir=encoded,
            batch_size=256,
            shard_size=20000,
            use_cpu=config.use_cpu,
            seed=config.seed,
        )
    )
    config.dataset = encoded
    return run_action_sft(config, ImageModelConfig(model_name_or_path=initial, dtype="float32"))
