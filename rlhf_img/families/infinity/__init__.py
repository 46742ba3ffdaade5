"""`infinity`: Infinity (bitwise next-scale prediction): transformer + Flan-T5 + BSQ-VAE.

`policy.py` (family config + policy), `loading.py` (released `.pth` files, this project's layout, conversion),
`sampler.py` (KV-cached next-scale sampling, teacher-forced bit log-probs), `transformer.py`, `bsq_vae.py`,
`codes.py` (scales <-> bits), `schedules.py`, `tiny.py` (stand-ins in the released format).
"""

from __future__ import annotations

import glob
import os

from ...checkpoints import has_file, is_local
from ..registry import CONFIG_MATCH, LAYOUT_MATCH, NO_MATCH, register_family
from . import loading
from .policy import FAMILY_CONFIG_NAME, InfinityFamilyConfig, InfinityPolicy

RELEASED_PATTERN = "infinity_*.pth"


def detect(checkpoint: str, revision: str | None = None) -> int:
    """`infinity.json` (a converted or trained folder), else a local folder of released `infinity_*.pth` files."""
    if has_file(checkpoint, FAMILY_CONFIG_NAME, revision):
        return CONFIG_MATCH
    if is_local(checkpoint) and glob.glob(os.path.join(checkpoint, RELEASED_PATTERN)):
        return LAYOUT_MATCH
    return NO_MATCH


load = register_family(
    "infinity",
    detect=detect,
    looks_for=f"{FAMILY_CONFIG_NAME}, or released {RELEASED_PATTERN} files",
    help="Infinity: bitwise next-scale transformer + Flan-T5 + BSQ-VAE (FoundationVision/Infinity)",
)(loading.load)

__all__ = ["FAMILY_CONFIG_NAME", "InfinityFamilyConfig", "InfinityPolicy", "load"]
