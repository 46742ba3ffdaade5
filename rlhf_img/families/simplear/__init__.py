"""`simplear`: SimpleAR (Qwen2.5 LM + NVIDIA's Cosmos DV8x16x16 codes), on `causal_vq`'s policy and sampler.

`loading.py` (the released layout and this project's `simplear.json`), `cosmos.py` + `cosmos_layers.py` (the
Cosmos tokenizer, our implementation with the published state-dict layout), `sft.py` (upstream SFT on
image/caption pairs), `tiny.py` (stand-ins in the released format).
"""

from __future__ import annotations

from ...checkpoints import has_file, resolve_subpath
from ..registry import CONFIG_MATCH, LAYOUT_MATCH, NO_MATCH, register_family
from . import loading
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


def _sft():
    from .sft import SimpleARSFTConfig, run_simplear_sft

    return SimpleARSFTConfig, run_simplear_sft


load = register_family(
    "simplear",
    detect=detect,
    looks_for=f"{CONFIG_NAME}, or a tokenizer with SimpleAR's special tokens {' '.join(SPECIAL_TOKENS)}",
    help="SimpleAR: Qwen2.5 + Cosmos DV8x16x16 codes (released Daniel0724/SimpleAR-* folders)",
    sft=_sft,
)(loading.load)

__all__ = ["CONFIG_NAME", "CosmosConfig", "CosmosDiscreteTokenizer", "SimpleARPolicy", "load"]
