"""`shapes_geneval`: the shapes world's exact detector judged by GenEval's rules, as a reward.

Reads each row's GenEval metadata columns (`tag`, `include`, `exclude`), so the prompt dataset is the
world's JSONL (`recipes/prompts/shapes-train.jsonl`). `mode: dense` gives partial credit per clause (for
RL); `mode: strict` is GenEval's pass/fail.
"""

from __future__ import annotations

import torch

from .registry import register_reward


@register_reward("shapes_geneval")
class ShapesGenEval:
    """GenEval rules on the shapes world's exact detections (mode: dense | strict)."""

    def __init__(self, mode: str = "dense") -> None:
        if mode not in ("dense", "strict"):
            raise ValueError(f"shapes_geneval: mode must be 'dense' or 'strict', got {mode!r}")
        self.mode = mode

    def __call__(self, prompts: list[str], images: torch.Tensor, tag: list[str], include: list[list[dict]],
                 exclude: list[list[dict] | None] | None = None, **kwargs) -> list[float]:
        from ..images import to_uint8
        from ..worlds.shapes_detector import judge

        exclude = exclude or [None] * len(prompts)
        scores = []
        for image, t, inc, exc in zip(to_uint8(images), tag, include, exclude):
            metadata = {"tag": t, "include": [_clean(c) for c in inc], "exclude": [_clean(c) for c in exc or []]}
            scores.append(judge(image, metadata, self.mode).score)
        return scores


def _clean(clause: dict) -> dict:
    """Arrow-typed rows carry absent keys as None; GenEval clauses only have the keys they use."""
    return {key: value for key, value in clause.items() if value is not None}
