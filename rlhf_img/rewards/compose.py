"""Calling rewards: the contract check, sync and async rewards together, weights.

The contract (TRL's, with images in place of completions): a reward is called as
`reward(prompts=list[str], images=Tensor(B, 3, H, W) in [0, 1], **dataset_columns)` and returns B floats
(None = no score for that sample). It may be `async`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import math
from typing import Any, Callable, Sequence

import torch

from .loading import RewardSpec, resolve_reward


class RewardError(RuntimeError):
    """A reward raised or broke the contract; the message names the reward."""


class RewardFunction:
    """A resolved reward with its display name and weight."""

    def __init__(self, fn: Callable, name: str, weight: float = 1.0, normalize: bool = False) -> None:
        self.fn, self.name, self.weight, self.normalize = fn, name, float(weight), bool(normalize)
        self.__name__ = name  # TRL names reward columns after `__name__`

    @classmethod
    def from_spec(cls, spec: RewardSpec) -> "RewardFunction":
        return cls(resolve_reward(spec), name=spec.display_name, weight=spec.weight, normalize=spec.normalize)

    def check(self, values: Any, batch: int) -> list[float]:
        """Contract check; None becomes NaN (TRL's convention for 'no score')."""
        if isinstance(values, torch.Tensor):
            values = values.detach().float().cpu().flatten().tolist()
        try:
            values = list(values)
        except TypeError:
            raise RewardError(f"reward {self.name!r} returned {type(values).__name__}, expected a list of floats") from None
        if len(values) != batch:
            raise RewardError(f"reward {self.name!r} returned {len(values)} values for {batch} images")
        out = []
        for value in values:
            if value is None:
                out.append(math.nan)
                continue
            try:
                out.append(float(value))
            except (TypeError, ValueError):
                raise RewardError(f"reward {self.name!r} returned a non-number: {value!r}") from None
        return out

    def __call__(self, prompts: list[str], images: torch.Tensor, **columns: Any) -> Any:
        return self.fn(prompts=prompts, images=images, **columns)

    def __repr__(self) -> str:
        return f"RewardFunction({self.name!r}, weight={self.weight})"


def build_rewards(specs: Sequence[RewardSpec | str | dict | Callable]) -> list[RewardFunction]:
    """Specs from a recipe, or callables from Python, to `RewardFunction`s."""
    rewards = []
    for spec in specs:
        if isinstance(spec, RewardFunction):
            rewards.append(spec)
        elif callable(spec) and not isinstance(spec, (str, dict)):
            rewards.append(RewardFunction(spec, name=getattr(spec, "__name__", type(spec).__name__)))
        else:
            rewards.append(RewardFunction.from_spec(spec if isinstance(spec, RewardSpec) else RewardSpec.parse(spec)))
    return rewards


def _run_coroutines(coroutines: list) -> list:
    async def gather() -> list:
        return await asyncio.gather(*coroutines, return_exceptions=True)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(gather())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # already inside a loop (e.g. a notebook)
        return pool.submit(asyncio.run, gather()).result()


def score_rewards(
    rewards: Sequence[RewardFunction], prompts: list[str], images: torch.Tensor, columns: dict[str, list]
) -> torch.Tensor:
    """Rewards `(B, R)` float32 on CPU, NaN where a reward gave no score. Async rewards run concurrently."""
    batch = len(prompts)
    results: list[list[float] | None] = [None] * len(rewards)
    pending: list[tuple[int, Any]] = []
    for index, reward in enumerate(rewards):
        try:
            output = reward(prompts, images, **columns)
        except RewardError:
            raise
        except Exception as error:  # noqa: BLE001 - re-raised with the reward's name
            raise RewardError(f"reward {reward.name!r} raised {type(error).__name__}: {error}") from error
        if inspect.isawaitable(output):
            pending.append((index, output))
        else:
            results[index] = reward.check(output, batch)
    if pending:
        outputs = _run_coroutines([output for _, output in pending])
        for (index, _), output in zip(pending, outputs):
            if isinstance(output, BaseException):
                name = rewards[index].name
                raise RewardError(f"reward {name!r} raised {type(output).__name__}: {output}") from output
            results[index] = rewards[index].check(output, batch)
    return torch.tensor(results, dtype=torch.float32).t().reshape(batch, len(rewards))
