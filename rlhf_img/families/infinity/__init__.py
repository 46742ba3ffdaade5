"""`infinity`: Infinity (bitwise next-scale prediction): transformer + Flan-T5 + BSQ-VAE.

This file (registration), `configuration.py` (`infinity.json`), `transformer.py` + `bsq_vae.py` (modeling),
`codes.py` (scales <-> bits), `schedules.py`, `sampler.py` (the next-scale loop, drawing with the engine's
`guided_draw`; teacher-forced bit log-probs through the engine's `score_guided`), `policy.py`, `loading.py`
(released `.pth` files, this project's layout), `convert.py` (`rlhf-img convert infinity`), `tiny.py` (stand-ins
in the released format).
"""

from __future__ import annotations

import glob
import os

from ...checkpoints import has_file, is_local
from ..registry import (
    CONFIG_MATCH,
    LAYOUT_MATCH,
    NO_MATCH,
    StandIn,
    register_family,
)
from . import convert, loading  # noqa: F401  (convert registers its converter)
from .configuration import CONFIG_NAME, InfinityFamilyConfig
from .policy import InfinityPolicy

RELEASED_PATTERN = "infinity_*.pth"


def detect(checkpoint: str, revision: str | None = None) -> int:
    """`infinity.json` (a converted or trained folder), else a local folder of released `infinity_*.pth` files."""
    if has_file(checkpoint, CONFIG_NAME, revision):
        return CONFIG_MATCH
    if is_local(checkpoint) and glob.glob(os.path.join(checkpoint, RELEASED_PATTERN)):
        return LAYOUT_MATCH
    return NO_MATCH


def stand_in(folder: str) -> StandIn:
    from .tiny import save_tiny_infinity, tiny_infinity_family_config

    path = save_tiny_infinity(folder, seed=0)
    # the transformer casts text, AdaLN and logits to float32 as the reference does: no float64 run
    return StandIn(
        path,
        {"dtype": "float32", "family_config": tiny_infinity_family_config(path)},
        ["mat_qkv", "proj", "fc1", "fc2"],
        runs_in_float64=False,
        converter="infinity",
    )


load = register_family(
    "infinity",
    stand_in=stand_in,
    detect=detect,
    looks_for=f"{CONFIG_NAME}, or released {RELEASED_PATTERN} files",
    help="Infinity: bitwise next-scale transformer + Flan-T5 + BSQ-VAE (FoundationVision/Infinity)",
)(loading.load)

__all__ = ["CONFIG_NAME", "InfinityFamilyConfig", "InfinityPolicy", "load"]
