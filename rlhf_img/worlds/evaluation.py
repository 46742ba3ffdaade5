"""`rlhf-img eval`: GenEval-style scores of a checkpoint of a world on its held-out prompts.

N images per prompt, each from its own fixed seed, judged by the world's exact detector with GenEval's
strict rules; prints GenEval's per-tag table and can write one JSON line per image.
"""

from __future__ import annotations

import json
import os

import torch
from tqdm.auto import tqdm

from ..models.policy import Policy, Sampling
from ..rewards.geneval_rules import TAGS, summarize
from . import shapes
from ..images import to_uint8
from .shapes_detector import judge


@torch.no_grad()
def generate_images(policy: Policy, rows: list[dict], images_per_prompt: int, sampling: Sampling, seed: int,
                    batch_prompts: int = 16, progress: bool = True) -> torch.Tensor:
    """`(len(rows) * images_per_prompt, 3, H, W)`; image k of prompt i depends only on (seed, i, k batch)."""
    model = policy.model
    device = next(model.parameters()).device
    chunks = []
    starts = range(0, len(rows), batch_prompts)
    for start in tqdm(starts, desc="eval: sampling", disable=not progress, dynamic_ncols=True):
        prompts = [row["prompt"] for row in rows[start : start + batch_prompts] for _ in range(images_per_prompt)]
        generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + start)
        rollout = policy.sample(model, policy.encode_prompts(prompts, device), sampling, generator=generator)
        chunks.append(policy.decode(rollout.actions).cpu())
    return torch.cat(chunks)


def evaluate_policy(policy: Policy, rows: list[dict] | None = None, images_per_prompt: int = 16,
                    sampling: Sampling | None = None, seed: int = 0, progress: bool = True):
    """(table {tag: accuracy, overall}, per-image records, images) on `rows` (default: held-out prompts)."""
    rows = rows if rows is not None else shapes.split_prompts()[1]
    sampling = sampling or Sampling()
    images = generate_images(policy, rows, images_per_prompt, sampling, seed, progress=progress)
    pixels = to_uint8(images)
    records, results = [], []
    for index, image in enumerate(pixels):
        row = rows[index // images_per_prompt]
        verdict = judge(image, row)
        results.append((row["tag"], verdict.correct))
        records.append({"prompt": row["prompt"], "tag": row["tag"], "image_index": index % images_per_prompt,
                        "correct": verdict.correct, "reason": "; ".join(verdict.reasons)})
    return summarize(results), records, images


def format_table(table: dict[str, float], title: str = "") -> str:
    """GenEval's summary layout: one line per tag, then overall."""
    lines = [title] if title else []
    for tag in (*TAGS, "overall"):
        if tag in table:
            lines.append(f"  {tag:<14s} {table[tag]:.4f}")
    return "\n".join(lines)


def write_records(records: list[dict], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
