"""`simplear`: SimpleAR (Qwen2.5 LM + NVIDIA's Cosmos DV8x16x16 codes), on `causal_vq`'s policy and sampler.

This file (registration), `configuration.py` (`CosmosConfig`), `cosmos.py` + `cosmos_layers.py` (modeling: the
Cosmos tokenizer, our implementation with the published state-dict layout), `loading.py` (the released layout and
this project's `simplear.json`; the policy is `causal_vq`'s), `convert.py` (`rlhf-img convert cosmos`), `tiny.py`
(stand-ins in the released format). SFT and pretraining are the shared upstream stages (`rlhf_img/upstream/`).
"""

from __future__ import annotations

from ...checkpoints import has_file, resolve_subpath
from ..registry import (
    CONFIG_MATCH,
    LAYOUT_MATCH,
    NO_MATCH,
    StandIn,
    register_family,
)
from . import convert, loading  # noqa: F401  (convert registers its converter)
from .cosmos import CosmosConfig, CosmosDiscreteTokenizer
from .loading import CONFIG_NAME, SPECIAL_TOKENS, SimpleARPolicy

TOKENIZER_FILES = ("tokenizer_config.json", "added_tokens.json", "special_tokens_map.json", "tokenizer.json")


def detect(checkpoint: str, revision: str | None = None) -> int:
    """`simplear.json` (a folder this project wrote), else a tokenizer that declares SimpleAR's special tokens."""
    if has_file(checkpoint, CONFIG_NAME, revision):
        return CONFIG_MATCH
    for name in TOKENIZER_FILES:
        path = resolve_subpath(checkpoint, name, revision=revision, required=False)
        if path is not None:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            if all(token in text for token in SPECIAL_TOKENS):
                return LAYOUT_MATCH
    return NO_MATCH


def stand_in(folder: str) -> StandIn:
    from .tiny import save_tiny_simplear

    lm, cosmos = save_tiny_simplear(folder, seed=0)
    return StandIn(lm, {"visual_tokenizer": cosmos, "dtype": "float32", "family_config": {"resolution": 32}})


load = register_family(
    "simplear",
    stand_in=stand_in,
    detect=detect,
    looks_for=f"{CONFIG_NAME}, or a tokenizer with SimpleAR's special tokens {' '.join(SPECIAL_TOKENS)}",
    help="SimpleAR: Qwen2.5 + Cosmos DV8x16x16 codes (released Daniel0724/SimpleAR-* folders)",
)(loading.load)

__all__ = ["CONFIG_NAME", "CosmosConfig", "CosmosDiscreteTokenizer", "SimpleARPolicy", "load"]
