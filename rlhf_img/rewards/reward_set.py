"""The run's reward set: built once, from the recipe's `rewards` or a Python list, and handed to the trainer.

Everything the training loop reads about its rewards lives here, so no part of it re-derives them: the names the
dashboards and guards use (an entry's `label`, else its `name`), the weights and the per-reward `normalize`
flags of the advantage step, scoring, and one optional capability -- `image_embedder()`, the first reward that
embeds images (the CLIP-based ones), whose embeddings the diversity monitor reuses instead of loading a CLIP of
its own.

The capability is a public method a reward's callable may define:

    def embed_images(self, images: Tensor) -> Tensor:  # (B, 3, H, W) in [0, 1] -> (B, D) float32, L2-normalised

Given the very tensor the reward just scored, it may return the embeddings of that call instead of running its
model again (the built-in CLIP rewards do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, overload

import torch

from .compose import RewardFunction, build_rewards, score_rewards
from .loading import RewardConfigError, RewardSpec

ImageEmbedder = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) in [0, 1] -> (B, D), L2-normalised
RewardEntry = RewardFunction | RewardSpec | str | dict | Callable


def check_unique_names(names: Sequence[str], where: str = "rewards") -> None:
    """Raise `RewardConfigError` (one line) naming the repeated names: names key the logged metrics and the
    rollout records, so two rewards under one name would overwrite each other's numbers."""
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise RewardConfigError(f"{where}: {repeated} appear more than once; give each a distinct `label`")


class RewardSet(Sequence[RewardFunction]):
    """The rewards of a run, in order, with their names (unique), weights and normalize flags.

    Build it with `RewardSet.build(entries)` (what `prepare_training` does) or from `RewardFunction`s. It is a
    read-only sequence of `RewardFunction`s; `weights` and `normalize` are fresh tensors on every access, so a
    caller moving or changing them cannot change the set."""

    def __init__(self, rewards: Iterable[RewardFunction]) -> None:
        self._rewards: tuple[RewardFunction, ...] = tuple(rewards)
        if not self._rewards:
            raise RewardConfigError("no rewards: set `rewards` in the recipe or pass reward_funcs")
        check_unique_names(self.names)

    @classmethod
    def build(cls, entries: "RewardSet | Iterable[RewardEntry]") -> "RewardSet":
        """A set from recipe entries (`RewardSpec`s, names, dicts), callables or `RewardFunction`s; a `RewardSet` is
        returned as it is (its rewards are loaded already)."""
        if isinstance(entries, RewardSet):
            return entries
        if isinstance(entries, (str, dict, RewardSpec)) or callable(entries):
            entries = [entries]  # one reward given on its own
        return cls(build_rewards(list(entries)))

    # ------------------------------------------------------------------------------------- the sequence
    @overload
    def __getitem__(self, index: int) -> RewardFunction: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[RewardFunction, ...]: ...

    def __getitem__(self, index):
        return self._rewards[index]

    def __len__(self) -> int:
        return len(self._rewards)

    def __iter__(self) -> Iterator[RewardFunction]:
        return iter(self._rewards)

    def __repr__(self) -> str:
        return f"RewardSet({', '.join(f'{r.name}={r.weight:g}' for r in self._rewards)})"

    # ----------------------------------------------------------------------------------- what runs read
    @property
    def names(self) -> list[str]:
        """Display names, in order: an entry's `label`, else its `name` (metric keys `rewards/<name>/mean`)."""
        return [reward.name for reward in self._rewards]

    @property
    def weights(self) -> torch.Tensor:
        """`(R,)` float32 on the CPU: the weight of each reward in the total (TRL's `reward_weights`)."""
        return torch.tensor([reward.weight for reward in self._rewards], dtype=torch.float32)

    @property
    def normalize(self) -> torch.Tensor:
        """`(R,)` bool on the CPU: which rewards are z-scored over the batch before weighting."""
        return torch.tensor([reward.normalize for reward in self._rewards], dtype=torch.bool)

    def image_embedder(self) -> ImageEmbedder | None:
        """`embed_images` of the first reward that has one (see the module docstring), else None."""
        for reward in self._rewards:
            embed = getattr(reward.fn, "embed_images", None)
            if callable(embed):
                return embed
        return None

    def object_credit_source(self) -> RewardFunction | None:
        """The first reward that can say where in an image each of its clauses was judged (`object_credits`, see
        rlhf_img/object_credit.py), else None."""
        for reward in self._rewards:
            if callable(getattr(reward.fn, "object_credits", None)):
                return reward
        return None

    def score(self, prompts: list[str], images: torch.Tensor, columns: dict[str, list[Any]]) -> torch.Tensor:
        """Rewards `(B, R)` float32 on the CPU, NaN where a reward gave no score (`score_rewards`)."""
        return score_rewards(self._rewards, prompts, images, columns)

    def weighted_totals(self, rewards: torch.Tensor) -> torch.Tensor:
        """`(B, R)` rewards -> `(B,)` weighted sums, an unscored (NaN) reward counting 0 (TRL's `nansum`)."""
        return (rewards.nan_to_num(0.0) * self.weights.to(rewards.device)).sum(1)
