"""Group-relative advantages and the reward statistics GRPO logs, by the rules of TRL 1.16's GRPOTrainer.

TRL (`trl/trainer/grpo_trainer.py`, `_generate_and_score_completions`, after `_calculate_rewards`) computes,
from `rewards_per_func` `(N, R)` (None from a reward = NaN) and the reward weights:

- `sum_then_normalize`: the weighted sum over rewards (`nansum`; NaN where every reward is NaN) minus its
  group mean; divided by the group std + 1e-4 (`scale_rewards: group`), by the batch std + 1e-4 (`batch`), or
  not divided (`none`). The zero-std flag is `isclose(std, 0)` of that std: the group std for `group` and
  `none`, the batch std (one flag for every row) for `batch`.
- `normalize_then_sum`: each reward z-scored per group (std + 1e-4), weighted and summed, then z-scored over
  the batch; `scale_rewards` is not read. The zero-std flag is that batch std's.
- Rows no reward scored get advantage 0. What it logs as `reward` / `reward_std` is the mean / std of the
  weighted sum of the RAW rewards over the scored rows, whatever the aggregation; `frac_reward_zero_std` is
  the mean of the zero-std flag. A batch with no scored row logs NaN, which `GRPOTrainer.log` turns into None.

On top of TRL: `normalize` `(R,)` bool z-scores those rewards over the whole batch before weighting (a
reward's own `normalize: true`), for the advantages only; the logged reward stays the weighted raw sum.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from trl.trainer.utils import nanstd

AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
SCALE_REWARDS = ("group", "batch", "none")


class GroupAdvantages(NamedTuple):
    advantages: torch.Tensor  # (N,), 0 where no reward scored the row
    rewards: torch.Tensor  # (N,) weighted sum of the raw rewards, NaN where no reward scored the row (TRL's `reward`)
    is_std_zero: torch.Tensor  # (N,) bool, TRL's zero-std flag (its `frac_reward_zero_std` is the mean)


def group_advantages(
    rewards_per_func: torch.Tensor,
    weights: torch.Tensor,
    num_generations: int,
    scale_rewards: str,
    aggregation: str,
    normalize: torch.Tensor | None = None,
) -> GroupAdvantages:
    """Advantages `(N,)` from rewards `(N, R)` (NaN = no score) for consecutive groups of `num_generations`.

    The rules of TRL's GRPO (module docstring); `normalize` `(R,)` bool: those rewards are first z-scored over
    the whole batch, so a reward on a large scale (PickScore ~20) cannot drown one on a small scale (CLIP
    cosine ~0.3). Returns `GroupAdvantages(advantages, logged rewards, zero-std flags)`.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"multi_objective_aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if aggregation == "sum_then_normalize" and scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    weights = weights.to(rewards_per_func.device).unsqueeze(0)
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    logged = (rewards_per_func * weights).nansum(dim=1)
    logged[unscorable] = torch.nan

    if normalize is not None and bool(normalize.any()):
        normalize = normalize.to(rewards_per_func.device)
        columns = rewards_per_func[:, normalize]
        columns = (columns - torch.nanmean(columns, dim=0)) / (nanstd(columns, dim=0) + 1e-4)
        rewards_per_func = rewards_per_func.clone()
        rewards_per_func[:, normalize] = columns

    if aggregation == "sum_then_normalize":
        rewards = (rewards_per_func * weights).nansum(dim=1)
        rewards[unscorable] = torch.nan
        mean = torch.nanmean(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations)
        if scale_rewards == "batch":
            std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
        elif num_generations > 1:  # "group", and "none" (where the std only feeds the zero-std flag)
            std = nanstd(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations)
        else:
            std = torch.zeros_like(rewards)
        advantages = rewards - mean
        if scale_rewards != "none":
            advantages = advantages / (std + 1e-4)
    else:  # normalize_then_sum: scale_rewards is not read, as in TRL
        grouped = rewards_per_func.view(-1, num_generations, rewards_per_func.size(1))
        mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
        std_k = nanstd(grouped, dim=1, keepdim=True) if num_generations > 1 else torch.zeros_like(mean_k)
        z = ((grouped - mean_k) / (std_k + 1e-4)).view(-1, rewards_per_func.size(1))
        rewards = (z * weights).nansum(dim=1)
        rewards[unscorable] = torch.nan
        std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
        advantages = (rewards - torch.nanmean(rewards)) / (std + 1e-4)
    is_std_zero = torch.isclose(std, torch.zeros_like(std))
    return GroupAdvantages(torch.nan_to_num(advantages, nan=0.0), logged, is_std_zero)


def reward_metrics(result: GroupAdvantages) -> dict[str, float]:
    """What TRL appends to its metrics for one batch: `reward`, `reward_std`, `frac_reward_zero_std` (NaN when
    no row was scored)."""
    return {
        "reward": torch.nanmean(result.rewards).item(),
        "reward_std": nanstd(result.rewards).item(),
        "frac_reward_zero_std": result.is_std_zero.float().mean().item(),
    }


def zero_spread_groups(rewards_per_func: torch.Tensor, weights: torch.Tensor, num_generations: int) -> torch.Tensor:
    """`(N / G,)` bool: the groups of rewards `(N, R)` (NaN = no score) whose weighted total reward cannot rank two
    of their images -- fewer than two scored images, or all scored totals equal (TRL's `isclose(std, 0)`). Such a
    group gives every image advantage 0 under `scale_rewards` group / batch / none; dynamic sampling refills it."""
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    totals = (rewards_per_func * weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    totals[unscorable] = torch.nan
    grouped = totals.view(-1, num_generations)  # (N / G, G)
    scored = torch.isfinite(grouped).sum(dim=1)
    std = nanstd(grouped, dim=1) if num_generations > 1 else torch.zeros(grouped.size(0), device=grouped.device)
    return (scored < 2) | torch.isclose(std, torch.zeros_like(std))
