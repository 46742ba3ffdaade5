"""Rollout records on disk: one PNG per image and one JSONL line per rollout (prompt, rewards, advantage)."""

from __future__ import annotations

import json
import os

import torch

from .images import to_pil


def save_rollouts(
    directory: str,
    step: int,
    images: torch.Tensor,
    prompts: list[str],
    rewards: dict[str, list[float]],
    total_rewards: list[float],
    advantages: list[float],
    rank: int = 0,
) -> str:
    """Write `directory/step_XXXXXX/rank{r}_{i:04d}.png` and append to `directory/rollouts.jsonl`; returns the step dir."""
    step_dir = os.path.join(directory, f"step_{step:06d}")
    os.makedirs(step_dir, exist_ok=True)
    with open(os.path.join(directory, "rollouts.jsonl" if rank == 0 else f"rollouts_rank{rank}.jsonl"), "a") as f:
        for index, image in enumerate(to_pil(images)):
            name = f"rank{rank}_{index:04d}.png"
            image.save(os.path.join(step_dir, name))
            record = {
                "step": step,
                "rank": rank,
                "index": index,
                "prompt": prompts[index],
                "rewards": {key: _finite(values[index]) for key, values in rewards.items()},
                "reward": _finite(total_rewards[index]),
                "advantage": _finite(advantages[index]),
                "image": os.path.join(f"step_{step:06d}", name),
            }
            f.write(json.dumps(record) + "\n")
    return step_dir


def _finite(value: float) -> float | None:
    return None if value != value else float(value)  # NaN (no score) -> null
