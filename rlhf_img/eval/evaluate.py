"""One evaluation path for every checkpoint and prompt set: sample -> detect -> GenEval's rules -> table.

Image k of prompt i depends only on (seed, the chunk of `batch_prompts` prompts it is sampled in), so the
same seed gives the same images on every run; the table is GenEval's (accuracy per tag, `overall` = the
unweighted mean over tags) and the per-image records are GenEval's results lines.
"""

from __future__ import annotations

import json
import os
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from ..families import load_policy
from ..geneval_rules import TAGS
from ..policy import Policy, Sampling
from ..rewards.geneval import GenEvalScorer, build_scorer
from .geneval_folder import save_image_folder
from .judges import ImageJudge, as_judge


def load_for_eval(
    checkpoint: str,
    model_family: str | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: str | None = None,
    family_config: dict | None = None,
    visual_tokenizer: str | None = None,
) -> Policy:
    """A policy in eval mode with its model and frozen parts on `device` (weights in `dtype`, default the family's)."""
    policy = load_policy(
        checkpoint, model_family, visual_tokenizer=visual_tokenizer, dtype=dtype, family_config=family_config
    )
    policy.model.to(device).eval()
    return policy.to(device)


@torch.no_grad()
def sample_chunks(
    policy: Policy,
    rows: Sequence[dict],
    images_per_prompt: int,
    sampling: Sampling,
    seed: int,
    batch_prompts: int = 16,
    progress: bool = True,
    model: torch.nn.Module | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (index of the chunk's first prompt, images `(n * images_per_prompt, 3, H, W)` on the CPU) per chunk.
    `model`: the module to sample with, default `policy.model` (the trainer passes its unwrapped model)."""
    model = model if model is not None else policy.model
    device = next(model.parameters()).device
    for start in tqdm(
        range(0, len(rows), batch_prompts), desc="eval: sampling", disable=not progress, dynamic_ncols=True
    ):
        prompts = [row["prompt"] for row in rows[start : start + batch_prompts] for _ in range(images_per_prompt)]
        generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + start)
        rollout = policy.sample(model, policy.encode_prompts(prompts, device), sampling, generator=generator)
        yield start, policy.decode(rollout.actions).cpu()


def generate_images(
    policy: Policy,
    rows: Sequence[dict],
    images_per_prompt: int,
    sampling: Sampling,
    seed: int,
    batch_prompts: int = 16,
    progress: bool = True,
    model: torch.nn.Module | None = None,
) -> torch.Tensor:
    """All images `(len(rows) * images_per_prompt, 3, H, W)` of `sample_chunks`, concatenated."""
    return torch.cat(
        [
            images
            for _, images in sample_chunks(
                policy, rows, images_per_prompt, sampling, seed, batch_prompts, progress, model
            )
        ]
    )


def evaluate_policy(
    policy: Policy,
    rows: Sequence[dict],
    scorer: ImageJudge | GenEvalScorer | None = None,
    images_per_prompt: int = 16,
    sampling: Sampling | None = None,
    seed: int = 0,
    *,
    batch_prompts: int = 16,
    image_dir: str | None = None,
    keep_images: bool = False,
    progress: bool = True,
    model: torch.nn.Module | None = None,
) -> tuple[dict[str, float], list[dict], torch.Tensor | None]:
    """(table, one record per image, images if `keep_images`) of `policy` on `rows` (prompt rows with the
    metadata the judge reads).

    `scorer`: an `ImageJudge` (`eval/judges.py`) or a `GenEvalScorer`; default GenEval's rules on the shapes
    world's exact detector. `image_dir` also saves the images in GenEval's layout (the records' `filename`s are
    relative to it either way).
    """
    judge = as_judge(scorer or build_scorer("shapes"))
    sampling = sampling or Sampling()
    records, kept = [], []
    for start, images in sample_chunks(policy, rows, images_per_prompt, sampling, seed, batch_prompts, progress, model):
        chunk_rows = list(rows[start : start + batch_prompts])
        if image_dir is not None:
            names = save_image_folder(images, chunk_rows, image_dir, images_per_prompt, first_prompt_index=start)
        else:
            names = [
                os.path.join(f"{start + i // images_per_prompt:05d}", "samples", f"{i % images_per_prompt:04d}.png")
                for i in range(len(images))
            ]
        metadata = [chunk_rows[i // images_per_prompt] for i in range(len(images))]
        records.extend({"filename": name, **record} for name, record in zip(names, judge.judge(images, metadata)))
        if keep_images:
            kept.append(images)
    return judge.table(records), records, (torch.cat(kept) if keep_images else None)


def format_table(table: dict[str, float], title: str = "") -> str:
    """GenEval's summary layout: one line per entry (GenEval's tags in its order, then any other), overall last."""
    lines = [title] if title else []
    order = [tag for tag in TAGS if tag in table] + [key for key in table if key not in TAGS and key != "overall"]
    for key in order + (["overall"] if "overall" in table else []):
        value = table[key]
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"  {key:<{max(14, len(key))}s} {text}")
    return "\n".join(lines)


def write_records(records: list[dict], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
