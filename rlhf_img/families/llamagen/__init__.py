"""`llamagen`: LlamaGen text-to-image (FoundationVision/LlamaGen): GPT + Flan-T5-XL caption features + VQ-16.

This file (registration), `configuration.py` (`llamagen.json`), `gpt.py` + `vq.py` (modeling: the GPT as a
transformers model speaking the transformers cache API, the VQ-16 decoder as transformers' `JanusVQVAE`),
`adapter.py` (the engine adapter: T5 caption prefix, 2D RoPE positions), `policy.py` (prompts, T5 features,
decoding, saving), `loading.py` (released `.pt` files with strict key checks, this project's layout),
`convert.py` (`rlhf-img convert llamagen`), `tiny.py` (stand-ins in the released format).
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
from .configuration import CONFIG_NAME, LlamaGenFamilyConfig
from .loading import RELEASED_GPT_PATTERN
from .policy import LlamaGenPolicy


def detect(checkpoint: str, revision: str | None = None) -> int:
    """`llamagen.json` (a converted or trained folder), else a local folder of released `t2i_*.pt` files."""
    if has_file(checkpoint, CONFIG_NAME, revision):
        return CONFIG_MATCH
    if is_local(checkpoint) and glob.glob(os.path.join(checkpoint, RELEASED_GPT_PATTERN)):
        return LAYOUT_MATCH
    return NO_MATCH


def stand_in(folder: str) -> StandIn:
    from .tiny import save_tiny_llamagen, tiny_llamagen_family_config

    path = save_tiny_llamagen(folder, seed=0)
    return StandIn(
        path,
        {"dtype": "float32", "family_config": tiny_llamagen_family_config(path)},
        ["wqkv", "wo", "w1", "w2", "w3"],
        converter="llamagen",
    )


load = register_family(
    "llamagen",
    stand_in=stand_in,
    detect=detect,
    looks_for=f"{CONFIG_NAME}, or released {RELEASED_GPT_PATTERN} files",
    help="LlamaGen t2i: GPT with 2D RoPE + Flan-T5-XL caption features + VQ-16 (FoundationVision/LlamaGen)",
)(loading.load)

__all__ = ["CONFIG_NAME", "LlamaGenFamilyConfig", "LlamaGenPolicy", "load"]
