"""`janus`: Janus-Pro (DeepSeek) through transformers' `JanusForConditionalGeneration`, no remote code.

This file (registration), `configuration.py` (`janus.json`), `adapter.py` (the engine adapter: text embeddings
in, generation embeddings -> aligner -> language model -> generation head; Janus' unconditional prompt),
`policy.py` (prompts, frozen parts, decoding), `loading.py` (folders, hub ids, LoRA outputs), `tiny.py` (random
stand-ins in the released format). The network is transformers' own; no `convert.py` (nothing to convert).
"""

from __future__ import annotations

import json

from ...checkpoints import has_file, resolve_subpath
from ..registry import CONFIG_MATCH, LAYOUT_MATCH, NO_MATCH, StandIn, register_family
from . import loading
from .configuration import CONFIG_NAME, JanusFamilyConfig
from .policy import JanusPolicy


def detect(checkpoint: str, revision: str | None = None) -> int:
    """`janus.json` (a folder this project wrote), else a transformers config.json with model_type "janus"."""
    if has_file(checkpoint, CONFIG_NAME, revision):
        return CONFIG_MATCH
    path = resolve_subpath(checkpoint, "config.json", revision=revision, required=False)
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                if json.load(f).get("model_type") == "janus":
                    return LAYOUT_MATCH
        except (OSError, ValueError, AttributeError):
            pass
    return NO_MATCH


def stand_in(folder: str) -> StandIn:
    from .tiny import save_tiny_janus

    # LoRA stays in the language model (the family refuses adapters on the vision tower or image head)
    targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    return StandIn(save_tiny_janus(folder, seed=0), {"dtype": "float32"}, targets)


load = register_family(
    "janus",
    stand_in=stand_in,
    detect=detect,
    looks_for=f'{CONFIG_NAME}, or a config.json with model_type "janus"',
    help="Janus-Pro: transformers' JanusForConditionalGeneration (deepseek-community/Janus-Pro-1B, -7B)",
)(loading.load)

__all__ = ["CONFIG_NAME", "JanusFamilyConfig", "JanusPolicy", "load"]
