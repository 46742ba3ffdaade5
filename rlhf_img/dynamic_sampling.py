"""Dynamic sampling (DAPO, Yu et al. 2025): refill the groups whose rewards have zero spread.

A group whose images all get the same total reward (all solved, all failed, or fewer than two scored) gives
every image advantage 0: its share of the step teaches nothing and only dilutes the loss. With
`dynamic_sampling: true` the trainer's rollout step replaces such groups before the step trains:

- In place. Each zero-spread group is dropped and its rows are sampled again for a new prompt drawn from the
  training set; the new group takes the dropped group's rows (the same global rows, hence the same processes),
  so nothing moves between processes and the batch keeps its shape: TRL's buffering (`steps_per_generation`,
  `num_iterations`, the shuffle and split of a generation batch) sees a batch of the usual size.
- Same decisions on every process. The flags are computed from the gathered rewards (every process holds the
  same `(N, R)` tensor), the new prompts are drawn by a generator seeded from (seed, generation, round), and each
  new image by its own generator seeded from (seed, round, generation, global row): 1 process x batch 2B and
  2 processes x batch B refill with the same prompts and the same images.
- Up to `max_resample_rounds` rounds. Groups still without spread then stay in the batch (advantage 0, as with
  the key off) and are counted: the batch is never short, and the run says how often it could not fill. A batch
  that no reward scored at all is not refilled (a broken reward: `guards.py` stops or warns).
- Sharded weights (DeepSpeed ZeRO-3, FSDP) need every process in the sampler together: each round, every process
  samples as many rows as the busiest one, padding with throwaway rows.

Logged per rollout batch: `dynamic_sampling/dropped_groups` (groups sampled and not trained on),
`dynamic_sampling/unfilled_groups` (zero-spread groups left in the trained batch), `dynamic_sampling/
resample_rounds` and `dynamic_sampling/reward_before_refill` (the batch's mean reward before refilling, what
`reward` would read with the key off: `reward` itself describes the trained batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from accelerate.utils import gather

from .advantages import zero_spread_groups
from .sampling.generators import SampleGenerators, sample_seed


@dataclass
class RolloutRows:
    """One process's rollout batch, row-aligned: what a refill replaces row by row."""

    prompts: list[str]
    columns: dict[str, list[Any]]  # metadata columns the rewards read
    actions: torch.Tensor  # (B, T)
    logprobs: torch.Tensor | None  # (B, T) log-probs at sampling
    images: torch.Tensor  # (B, 3, H, W) in [0, 1]
    rewards: torch.Tensor  # (B, R), NaN = no score


def refill_zero_spread_groups(
    rows: RolloutRows,
    dataset,
    sample: Callable[[list[str], SampleGenerators], tuple[torch.Tensor, torch.Tensor | None]],
    score: Callable[[list[str], torch.Tensor, dict[str, list[Any]]], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    weights: torch.Tensor,
    num_generations: int,
    max_rounds: int,
    seed: int,
    generation: int,
    process_index: int,
) -> dict[str, float]:
    """Refill `rows` (this process's slice of the global batch, rows `process_index * B ...`) in place; returns the
    metrics to log.

    `sample(prompts, generators)` -> (actions, logprobs) on the generation model, `decode(actions)` -> images,
    `score(prompts, images, columns)` -> rewards `(b, R)`: the trainer's own rollout pieces. `dataset`: a map-style
    training set (`len`, rows by index) the new prompts come from; `generation` numbers the rollout batch."""
    local = len(rows.prompts)
    first = process_index * local
    device = rows.actions.device
    rewards_global = gather(rows.rewards.to(device))  # (N, R): the same tensor on every process
    before = _mean_total(rewards_global, weights)
    zero = zero_spread_groups(rewards_global, weights, num_generations)  # (N / G,) bool, identical everywhere
    dropped = rounds = 0
    if not bool(torch.isfinite(rewards_global).any()):
        max_rounds = 0  # a batch no reward scored is a broken reward, not hard prompts: the guards report it
    for round_number in range(1, max_rounds + 1):
        if not bool(zero.any()):
            break
        if round_number == 1:  # write into copies: the sampler's tensors may be views, the lists the caller's
            rows.actions, rows.images, rows.rewards = rows.actions.clone(), rows.images.clone(), rows.rewards.clone()
            rows.logprobs = rows.logprobs.clone() if rows.logprobs is not None else None
            rows.prompts, rows.columns = list(rows.prompts), {key: list(values) for key, values in rows.columns.items()}
        rounds = round_number
        slots = zero.nonzero().flatten().tolist()
        dropped += len(slots)
        picker = torch.Generator().manual_seed(sample_seed(seed, "refill-prompts", generation, round_number))
        picks = torch.randint(len(dataset), (len(slots),), generator=picker).tolist()
        new_rows = {slot: dataset[pick] for slot, pick in zip(slots, picks)}
        mine = [i for i in range(local) if (first + i) // num_generations in new_rows]  # local rows to resample
        prompts = [new_rows[(first + i) // num_generations]["prompt"] for i in mine]
        # sharded weights: every process runs the sampler with the busiest process's count (padding thrown away)
        count = int(gather(torch.tensor([len(mine)], device=device)).max())
        padding = count - len(mine)
        padded_prompts = prompts + [new_rows[slots[0]]["prompt"]] * padding
        indices = [first + i for i in mine] + [-1 - k for k in range(padding)]
        generators = SampleGenerators.for_samples(seed, f"train-refill{round_number}", generation, indices, device)
        actions, logprobs = sample(padded_prompts, generators)
        if mine:
            actions, logprobs = actions[: len(mine)], (logprobs[: len(mine)] if logprobs is not None else None)
            columns = {key: [new_rows[(first + i) // num_generations].get(key) for i in mine] for key in rows.columns}
            images = decode(actions)
            rewards = score(prompts, images, columns).to(rows.rewards.device)
            index = torch.tensor(mine, device=device)
            rows.actions[index] = actions
            if rows.logprobs is not None and logprobs is not None:
                rows.logprobs[index] = logprobs.to(rows.logprobs.dtype)
            rows.images[index.to(rows.images.device)] = images.to(rows.images.dtype)
            rows.rewards[index.to(rows.rewards.device)] = rewards
            for position, i in enumerate(mine):
                rows.prompts[i] = prompts[position]
                for key in rows.columns:
                    rows.columns[key][i] = columns[key][position]
        zero = zero_spread_groups(gather(rows.rewards.to(device)), weights, num_generations)
    return {
        "dynamic_sampling/resample_rounds": float(rounds),
        "dynamic_sampling/dropped_groups": float(dropped),
        "dynamic_sampling/unfilled_groups": float(zero.sum().item()),
        "dynamic_sampling/reward_before_refill": before,
    }


def _mean_total(rewards_per_func: torch.Tensor, weights: torch.Tensor) -> float:
    """TRL's `reward`: the mean over scored rows of the weighted raw sum (NaN when no row was scored)."""
    scored = ~torch.isnan(rewards_per_func).all(dim=1)
    totals = (rewards_per_func * weights.to(rewards_per_func.device)).nansum(dim=1)
    return totals[scored].mean().item() if bool(scored.any()) else float("nan")
