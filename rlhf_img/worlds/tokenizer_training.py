"""Upstream stage (a): train the VQ tokenizer of a procedural world on rendered images.

    rlhf-img pretrain-tokenizer recipes/shapes-tokenizer.yaml [--key value ...]

A plain PyTorch loop (the model is a few hundred thousand parameters): reconstruction MSE plus the VQ
codebook/commitment loss, straight-through gradients, dead codes re-seeded from encoder outputs. Ends by
scoring reconstructions of held-out scenes with the world's detector and saving `config.json` +
`model.safetensors` (loadable with `VQTokenizer.from_pretrained`).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..families.causal_vq.vq import VQTokenizer
from ..geneval_rules import summarize
from ..images import to_uint8
from . import shapes
from .shapes_detector import judge


@dataclass
class TokenizerTrainingConfig:
    output_dir: str = field(default="runs/shapes-tokenizer", metadata={"help": "Where the tokenizer is written."})
    codebook_size: int = field(default=256, metadata={"help": "Number of codes K."})
    code_dim: int = field(default=16, metadata={"help": "Codebook vector size."})
    channels: list[int] = field(
        default_factory=lambda: [16, 32], metadata={"help": "Conv widths; one 2x down-sampling each."}
    )
    num_images: int = field(default=20000, metadata={"help": "Rendered training images (train prompts only)."})
    batch_size: int = field(default=64, metadata={"help": "Images per step."})
    max_steps: int = field(default=2500, metadata={"help": "Optimizer steps."})
    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW peak learning rate (cosine decay)."})
    dead_code_every: int = field(default=100, metadata={"help": "Re-seed codes unused for this many steps."})
    eval_images_per_prompt: int = field(
        default=4, metadata={"help": "Held-out renders per prompt for the final check."}
    )
    seed: int = field(default=0, metadata={"help": "Random seed (scenes, init, batches)."})


def render_dataset(rows: list[dict], count: int, seed: int) -> torch.Tensor:
    """`(count, 3, H, W)` uint8 renders of random prompts from `rows`."""
    rng = random.Random(seed)
    images = np.stack([shapes.render_prompt(rng.choice(rows), rng.randrange(2**31)) for _ in range(count)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def reconstruction_table(tokenizer: VQTokenizer, rows: list[dict], per_prompt: int, seed: int) -> dict[str, float]:
    """GenEval table (strict) of encode -> decode reconstructions of fresh renders of `rows`."""
    tokenizer.eval()
    results = []
    for index, row in enumerate(rows):
        renders = np.stack([shapes.render_prompt(row, seed * 100003 + index * 101 + k) for k in range(per_prompt)])
        images = torch.from_numpy(renders).permute(0, 3, 1, 2).float() / 255
        recon = to_uint8(tokenizer.decode(tokenizer.encode(images)))
        results += [(row["tag"], judge(image, row).correct) for image in recon]
    return summarize(results)


def train_tokenizer(config: TokenizerTrainingConfig) -> dict:
    torch.manual_seed(config.seed)
    train_rows, held_out = shapes.split_prompts()
    start = time.time()
    data = render_dataset(train_rows, config.num_images, config.seed)
    tokenizer = VQTokenizer(
        codebook_size=config.codebook_size, code_dim=config.code_dim, channels=tuple(config.channels)
    )
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=config.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / config.max_steps))
    )
    generator = torch.Generator().manual_seed(config.seed)
    usage = torch.zeros(config.codebook_size)
    progress = tqdm(range(config.max_steps), desc="pretrain-tokenizer", dynamic_ncols=True)
    for step in progress:
        tokenizer.train()
        batch = data[torch.randint(0, len(data), (config.batch_size,), generator=generator)].float() / 255
        recon, vq_loss, codes = tokenizer(batch)
        recon_loss = torch.nn.functional.mse_loss(recon, batch * 2 - 1)
        loss = recon_loss + vq_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        usage += torch.bincount(codes.flatten(), minlength=config.codebook_size).float()
        if (step + 1) % config.dead_code_every == 0:
            dead = (usage == 0).nonzero().flatten()
            if len(dead):  # re-seed unused codes on encoder outputs so the whole codebook gets used
                with torch.no_grad():
                    z = tokenizer.encoder(batch * 2 - 1).permute(0, 2, 3, 1).reshape(-1, config.code_dim)
                    tokenizer.codebook.weight[dead] = z[torch.randint(0, len(z), (len(dead),), generator=generator)]
            usage.zero_()
        if step % 20 == 0:
            progress.set_postfix(recon=f"{recon_loss.item():.4f}", vq=f"{vq_loss.item():.4f}")
    train_seconds = time.time() - start
    table = reconstruction_table(tokenizer, held_out, config.eval_images_per_prompt, config.seed + 1)
    os.makedirs(config.output_dir, exist_ok=True)
    tokenizer.save_pretrained(config.output_dir)
    summary = {
        "config": asdict(config),
        "train_seconds": round(train_seconds, 1),
        "held_out_reconstruction": table,
        "final_recon_mse": recon_loss.item(),
    }
    with open(os.path.join(config.output_dir, "training_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
