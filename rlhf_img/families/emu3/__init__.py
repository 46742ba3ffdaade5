"""`emu3`: Emu3-Gen (BAAI) through transformers' `Emu3ForConditionalGeneration`, no remote code.

This file (registration), `configuration.py` (`emu3.json`: image area and ratio, prompt template, negative prompt),
`adapter.py` (the engine adapter: visual codes over the visual block of the LM head, end-of-line tokens forced
between rows, BAAI's unconditional row), `policy.py` (prompts, frozen VQ, decoding and encoding), `loading.py`
(folders, hub ids, LoRA outputs; BAAI's remote-code layout refused), `tiny.py` (random stand-ins in the released
format). The network is transformers' own; no `convert.py` (nothing to convert).
"""

from __future__ import annotations

import json

from ...checkpoints import has_file, resolve_subpath
from ..registry import CONFIG_MATCH, LAYOUT_MATCH, NO_MATCH, StandIn, register_family
from . import loading
from .configuration import CONFIG_NAME, Emu3FamilyConfig
from .policy import Emu3Policy

# LoRA in the text model only: the VQ has q_proj / k_proj / v_proj layers too (the policy refuses adapters there)
LORA_TARGETS = r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def detect(checkpoint: str, revision: str | None = None) -> int:
    """`emu3.json` (a folder this project wrote), else a config.json with model_type "emu3" (transformers') or
    "Emu3" (BAAI's remote-code layout, which `load` refuses with a pointer to the converted repo)."""
    if has_file(checkpoint, CONFIG_NAME, revision):
        return CONFIG_MATCH
    path = resolve_subpath(checkpoint, "config.json", revision=revision, required=False)
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                if json.load(f).get("model_type") in ("emu3", loading.ORIGINAL_LAYOUT):
                    return LAYOUT_MATCH
        except (OSError, ValueError, AttributeError):
            pass
    return NO_MATCH


def stand_in(folder: str) -> StandIn:
    from .tiny import TINY_IMAGE_AREA, save_tiny_emu3

    load_kwargs = {"dtype": "float32", "family_config": {"image_area": TINY_IMAGE_AREA}}  # 4x4 codes, 32x32 px
    return StandIn(save_tiny_emu3(folder, seed=0), load_kwargs, LORA_TARGETS)


load = register_family(
    "emu3",
    stand_in=stand_in,
    detect=detect,
    looks_for=f'{CONFIG_NAME}, or a config.json with model_type "emu3"',
    help="Emu3-Gen: transformers' Emu3ForConditionalGeneration (BAAI/Emu3-Gen-hf)",
)(loading.load)

__all__ = ["CONFIG_NAME", "Emu3FamilyConfig", "Emu3Policy", "load"]
