"""Per-sample random streams, so the images a run samples do not depend on how the batch is split.

With one global generator, the image drawn for a prompt depends on every row sampled before it on the same
process, so 1 process x batch 32 and 2 processes x batch 16 sample different images from the same seed. Here
each image gets its own `torch.Generator`, seeded from (seed, stream, generation, global sample index): the
same image for the same sample whatever the number of processes, the batch it rides in, or a resume.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch

_SEED_MASK = (1 << 63) - 1  # torch seeds are 64-bit; stay clear of the sign bit


def sample_seed(seed: int, stream: str, generation: int, index: int) -> int:
    """A stable 63-bit seed for one sample: the same on every machine, process and Python run (no `hash()`)."""
    key = f"{seed}/{stream}/{generation}/{index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & _SEED_MASK


class SampleGenerators:
    """One `torch.Generator` per sample of a batch, for `sample_actions` (`rlhf_img/sampling/guidance.py`).

    A sampler hands `sample_actions` a logits matrix `(N, V)` whose rows are grouped by sample, batch-major:
    `N = len(self) * rows_per_sample` (one row per sample for next-token families, `tokens * bits` rows per
    sample for a next-scale family). Each sample's block of rows is drawn with that sample's own generator.

    Args:
        seeds: one seed per sample, in batch order.
        device: where the generators live; the logits must be on it.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str) -> None:
        if not seeds:
            raise ValueError("SampleGenerators needs at least one seed")
        self.seeds = list(seeds)
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in self.seeds]

    @classmethod
    def for_samples(
        cls, seed: int, stream: str, generation: int, indices: Sequence[int], device: torch.device | str
    ) -> "SampleGenerators":
        """Generators for the samples at global positions `indices` of generation `generation` of `stream`.

        `stream` names the use (`train`, `eval`) so the two never share randomness; `generation` numbers the
        rollout batches within it; `indices` are positions in the global (all-process) batch."""
        return cls([sample_seed(seed, stream, generation, index) for index in indices], device)

    def __len__(self) -> int:
        return len(self.generators)

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """One draw per row of `probs` `(N, V)` -> `(N,)` long, each sample's rows from its own generator.

        Inverse-CDF sampling: each sample's generator supplies its rows' uniforms (one small `rand` per sample),
        then one vectorised search over the float64 cumulative sums draws every row at once. A row picks the
        first action whose cumulative mass exceeds `u * total`, `u` in [0, 1), so an action of probability 0
        (cut by top-k/top-p) is never drawn."""
        rows = probs.size(0)
        if rows % len(self) != 0:
            raise ValueError(
                f"sampling got {rows} rows of logits for {len(self)} per-sample generators: the rows must be "
                "grouped by sample (batch-major), the same number per sample"
            )
        per_sample = rows // len(self)
        uniforms = torch.cat(
            [torch.rand(per_sample, generator=g, device=probs.device, dtype=torch.float64) for g in self.generators]
        )  # (N,) in [0, 1)
        cumulative = probs.double().cumsum(-1)  # (N, V)
        total = cumulative[:, -1]
        # strictly below the total even after rounding, so the search always lands on an action with mass
        target = torch.minimum(uniforms * total, torch.nextafter(total, torch.zeros_like(total)))
        return torch.searchsorted(cumulative, target.unsqueeze(-1), right=True).squeeze(-1)
