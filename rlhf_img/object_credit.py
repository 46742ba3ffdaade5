"""`object_credit`: per-token advantages from where each object of a prompt was drawn.

A GenEval-style prompt ("a photo of a red circle and a blue square") is judged clause by clause, and the image's
reward averages the clauses; under GRPO every token of the image then shares one advantage, whether it drew the
right red circle or the wrongly coloured square. With `object_credit: β` (0 < β ≤ 1) a reward that says which
region of the image each clause was judged on (`object_credits(prompts, images, **columns)`, e.g. `geneval` and
`shapes_geneval`: the clause's dense credit and the boxes of its detections) gives each clause its own
group-normalised advantage, and the pixels inside that clause's boxes learn from a mix:

    A[i, k] = (c[i, k] - mean of c[., k] over the group) / (std of c[., k] over the group + 1e-4)
              (the std as `scale_rewards` says: the group's, the batch's over every clause, or none)
    pixel inside the boxes of clauses K:  (1 - β) * A[i] + β * mean over k in K of A[i, k]
    any other pixel (background, extra objects, where a missing object should be):  A[i]

Each action then takes the mean over the pixels its code covers (the family's `pool_to_actions`). A clause with no
spread in its group gives 0, as a zero-spread group does at image level. β = 0 is the plain image-level advantage.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .advantages import SCALE_REWARDS
from .geneval_rules import ObjectCredit


class ObjectCreditError(ValueError):
    """object_credit cannot work with this recipe's family or rewards (one line: what and why)."""


def clause_advantages(
    credits: Sequence[Sequence[float]], num_generations: int, scale_rewards: str = "group"
) -> list[list[float]]:
    """Per image, each clause's credit centred within its group of `num_generations` consecutive images and scaled
    as the image advantages are (`scale_rewards`): divided by the clause's std in the group (`group`), by the std
    of every clause credit in the batch (`batch`), or not at all (`none`), each + 1e-4.

    Images of one group share a prompt, so they have the same clauses; a clause missing from some images of the
    group (a reward that judged fewer) is centred over the images that have it. A clause with no spread in its
    group gives 0."""
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    pooled = torch.tensor([float(value) for row in credits for value in row], dtype=torch.float64)
    batch_std = pooled.std() if pooled.numel() > 1 else torch.zeros((), dtype=torch.float64)
    out: list[list[float]] = [[] for _ in credits]
    for start in range(0, len(credits), num_generations):
        group = range(start, min(start + num_generations, len(credits)))
        clauses = max((len(credits[i]) for i in group), default=0)
        for k in range(clauses):
            rows = [i for i in group if len(credits[i]) > k]
            values = torch.tensor([float(credits[i][k]) for i in rows], dtype=torch.float64)
            std = values.std() if len(rows) > 1 else torch.zeros((), dtype=torch.float64)
            if torch.isclose(std, torch.zeros_like(std)):
                normalised = torch.zeros_like(values)
            else:
                scale = {"group": std + 1e-4, "batch": batch_std + 1e-4, "none": 1.0}[scale_rewards]
                normalised = (values - values.mean()) / scale
            for i, value in zip(rows, normalised.tolist()):
                out[i].append(value)
    return out


def pixel_advantages(
    advantage: float,
    objects: Sequence[ObjectCredit],
    clause_values: Sequence[float],
    image_size: tuple[int, int],
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's `(H, W)` advantage map (`advantage` everywhere, mixed with the clause advantages inside the
    clauses' boxes; box corners in pixels, clipped to the image, a fractional corner covering its whole pixel),
    and the `(H, W)` mask of pixels inside some box."""
    height, width = image_size
    covered = torch.zeros(height, width, dtype=torch.float64)
    summed = torch.zeros(height, width, dtype=torch.float64)
    for item, value in zip(objects, clause_values):
        mask = torch.zeros(height, width, dtype=torch.bool)
        for x1, y1, x2, y2 in item.boxes:
            left, top = max(math.floor(x1), 0), max(math.floor(y1), 0)
            right, bottom = min(math.ceil(x2), width), min(math.ceil(y2), height)
            mask[top:bottom, left:right] = True
        covered += mask
        summed += mask * value
    inside = covered > 0
    result = torch.full((height, width), float(advantage), dtype=torch.float64)
    result[inside] = (1 - beta) * advantage + beta * summed[inside] / covered[inside]
    return result, inside


def object_token_advantages(
    advantages: torch.Tensor,
    objects: Sequence[Sequence[ObjectCredit]],
    clause_values: Sequence[Sequence[float]],
    image_size: tuple[int, int],
    pool_to_actions: Callable[[torch.Tensor], torch.Tensor],
    beta: float,
) -> tuple[torch.Tensor, float]:
    """`(B,)` image advantages -> `(B, T)` per-action advantages, and the share of pixels inside some clause box."""
    maps, inside = zip(
        *(
            pixel_advantages(float(a), items, values, image_size, beta)
            for a, items, values in zip(advantages.tolist(), objects, clause_values)
        )
    )
    covered = torch.stack(inside).double().mean().item()
    return pool_to_actions(torch.stack(maps)).to(advantages.device, advantages.dtype), covered
