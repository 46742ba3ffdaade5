"""Prompt rows a next-token family prefills (`PrefixRows`) and how rows of different lengths are stacked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass
class PrefixRows:
    """Left-padded prompt rows a family prefills.

    `inputs`: `(R, L)` token ids or `(R, L, C)` embeddings (whatever the family's `forward` takes); `mask` `(R, L)`
    (1 = attend); `positions` `(R, L)` the position ids of each slot. `pad_value` fills `inputs` where rows of
    different lengths are left-padded together (masked, so it never changes a result)."""

    inputs: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    pad_value: int = 0

    @property
    def rows(self) -> int:
        return self.inputs.size(0)

    def expand(self, rows: int) -> "PrefixRows":
        """One row repeated `rows` times (a prompt-independent unconditional row, prefilled per sample by `plain`)."""
        shape = (rows, *self.inputs.shape[1:])
        return PrefixRows(
            self.inputs.expand(shape), self.mask.expand(rows, -1), self.positions.expand(rows, -1), self.pad_value
        )


def stack_prefixes(blocks: Sequence[PrefixRows]) -> PrefixRows:
    """Blocks of `(R_i, L_i)` rows -> one left-padded `(sum R_i, max L_i)` block (padding masked, position 0)."""
    length = max(block.mask.size(1) for block in blocks)

    def pad(x: torch.Tensor, amount: int, value) -> torch.Tensor:
        spec = (0, 0, amount, 0) if x.dim() == 3 else (amount, 0)  # left-pad the sequence dimension
        return F.pad(x, spec, value=value)

    inputs, masks, positions = [], [], []
    for block in blocks:
        amount = length - block.mask.size(1)
        inputs.append(pad(block.inputs, amount, block.pad_value if block.inputs.dim() == 2 else 0.0))
        masks.append(pad(block.mask, amount, 0))
        positions.append(pad(block.positions, amount, 0))
    return PrefixRows(torch.cat(inputs), torch.cat(masks), torch.cat(positions), blocks[0].pad_value)
