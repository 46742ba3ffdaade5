"""`shapes_geneval`: the shapes world's exact detector judged by GenEval's rules, as a reward.

The same reward as `geneval` with `detector: shapes` (one rules module, one scorer), under the name the
shapes recipes use. Reads each row's GenEval metadata columns (`tag`, `include`, `exclude`), so the
prompt dataset is the world's JSONL (`recipes/prompts/shapes-train.jsonl`). `mode: dense` gives partial
credit per clause (for RL); `mode: strict` is GenEval's pass/fail.
"""

from __future__ import annotations

from .geneval import GenEvalReward
from .registry import register_reward


@register_reward("shapes_geneval")
class ShapesGenEval(GenEvalReward):
    """GenEval rules on the shapes world's exact detections (mode: dense | strict)."""

    def __init__(self, mode: str = "dense") -> None:
        super().__init__(mode, detector="shapes")
