"""The one protocol every `rlhf-img eval` metric implements (`eval/judges.py` lists them)."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class ImageJudge(Protocol):
    """Scores images against their prompt rows (`rows[i]` belongs to `images[i]`)."""

    name: str

    def judge(self, images: torch.Tensor, rows: Sequence[dict]) -> list[dict]:
        """`(B, 3, H, W)` in [0, 1] -> B JSON-able records (the caller adds each image's `filename` first)."""
        ...

    def table(self, records: Sequence[dict]) -> dict[str, float]:
        """Records -> named numbers, `overall` among them where the metric has one."""
        ...
