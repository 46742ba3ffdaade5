"""`causal_vq`: any transformers causal LM whose vocabulary holds a block of image codes, plus a visual tokenizer.

The reference family, in the folder shape every family has: this file (registration: detection, stand-in),
`configuration.py` (`causal_vq.json`), `vq.py` (modeling: the small VQ tokenizer the shapes world trains),
`policy.py` (prompts, decoding, saving; sampling and scoring are the engine's through
`rlhf_img.sampling.CausalLMAdapter`), `loading.py` (folders, hub ids, LoRA adapters), `sft.py` (sequence
collation and checkpoint writing for upstream SFT), `tiny.py` (random-weight checkpoints in the real on-disk
format). No `convert.py`: a causal_vq checkpoint is already a transformers folder.
"""

from __future__ import annotations

from ...checkpoints import has_file
from ..registry import CONFIG_MATCH, NO_MATCH, StandIn, register_family
from . import loading
from .configuration import CONFIG_NAME, CausalVQConfig
from .policy import CausalVQPolicy
from .vq import VQTokenizer


def detect(checkpoint: str, revision: str | None = None) -> int:
    return CONFIG_MATCH if has_file(checkpoint, CONFIG_NAME, revision) else NO_MATCH


def stand_in(folder: str) -> StandIn:
    from .tiny import save_tiny_causal_vq

    return StandIn(save_tiny_causal_vq(folder, seed=0), {"dtype": "float32"})


load = register_family(
    "causal_vq",
    stand_in=stand_in,
    detect=detect,
    looks_for=CONFIG_NAME,
    help="a transformers causal LM with a block of image codes + a visual tokenizer (causal_vq.json)",
)(loading.load)

__all__ = ["CONFIG_NAME", "CausalVQConfig", "CausalVQPolicy", "VQTokenizer", "load"]
