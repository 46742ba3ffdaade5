"""`llamagen`: LlamaGen text-to-image (FoundationVision/LlamaGen): GPT + Flan-T5-XL caption features + VQ-16.

`policy.py` (family config + policy: T5 features, KV-cached CFG sampling, teacher-forced log-probs, decoding),
`loading.py` (released `.pt` files with strict key checks, this project's layout, conversion), `gpt.py` (the
GPT, a transformers model), `vq.py` (the VQ-16 decoder as transformers' `JanusVQVAE`), `tiny.py` (stand-ins in
the released format).
"""

from __future__ import annotations

import glob
import os

from ...checkpoints import has_file, is_local
from ..registry import CONFIG_MATCH, LAYOUT_MATCH, NO_MATCH, register_family
from . import loading
from .loading import RELEASED_GPT_PATTERN
from .policy import FAMILY_CONFIG_NAME, LlamaGenFamilyConfig, LlamaGenPolicy


def detect(checkpoint: str, revision: str | None = None) -> int:
    """`llamagen.json` (a converted or trained folder), else a local folder of released `t2i_*.pt` files."""
    if has_file(checkpoint, FAMILY_CONFIG_NAME, revision):
        return CONFIG_MATCH
    if is_local(checkpoint) and glob.glob(os.path.join(checkpoint, RELEASED_GPT_PATTERN)):
        return LAYOUT_MATCH
    return NO_MATCH


load = register_family(
    "llamagen",
    detect=detect,
    looks_for=f"{FAMILY_CONFIG_NAME}, or released {RELEASED_GPT_PATTERN} files",
    help="LlamaGen t2i: GPT with 2D RoPE + Flan-T5-XL caption features + VQ-16 (FoundationVision/LlamaGen)",
)(loading.load)

__all__ = ["FAMILY_CONFIG_NAME", "LlamaGenFamilyConfig", "LlamaGenPolicy", "load"]
