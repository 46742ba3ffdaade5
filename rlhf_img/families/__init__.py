"""Model families behind one policy interface.

    policy = load_policy("checkpoints/shapes-tiny")                      # family found from its files
    policy = load_policy("Daniel0724/SimpleAR-0.5B-RL", model_family="simplear", family_config={...})

Each family is a package here (`causal_vq/`, `simplear/`, `infinity/`, `janus/`, `llamagen/`, `emu3/`) that registers its
`load` with `@register_family`; adding one is a new package plus one import line below.
"""

from __future__ import annotations

import os

import torch

from ..checkpoints import CheckpointError, is_local
from ..policy import Policy
from . import causal_vq, emu3, infinity, janus, llamagen, simplear  # noqa: E402,F401  (registers the built-in families)
from .registry import (
    CONFIG_MATCH,
    CONVERTERS,
    FAMILIES,
    NO_MATCH,
    Converter,
    Family,
    StandIn,
    load_visual_tokenizer,
    register_converter,
    register_family,
    register_visual_tokenizer,
)


def detect_family(checkpoint: str, revision: str | None = None) -> str:
    """The family whose files `checkpoint` holds: its own config file (`causal_vq.json`, `simplear.json`,
    `infinity.json`) first, else a released layout a family recognises. One line naming what was looked for
    when nothing or more than one family matches."""
    if is_local(checkpoint) and not os.path.isdir(checkpoint):
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    scores = {name: family.detect(checkpoint, revision) for name, family in FAMILIES.items()}
    best = max(scores.values())
    matches = sorted(name for name, score in scores.items() if score == best and score != NO_MATCH)
    if len(matches) == 1:
        return matches[0]
    looked_for = "; ".join(f"{name}: {family.looks_for}" for name, family in FAMILIES.items())
    if not matches:
        raise CheckpointError(
            f"cannot tell the model family of {checkpoint!r} (looked for {looked_for}); set model_family"
        )
    kind = "config files" if best == CONFIG_MATCH else "released layouts"
    raise CheckpointError(f"{checkpoint!r} holds the {kind} of several families {matches}; set model_family")


def load_policy(
    checkpoint: str,
    model_family: str | None = None,
    *,
    visual_tokenizer: str | None = None,
    dtype: str | torch.dtype | None = None,
    family_config: dict | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Policy:
    """Load a policy from a local folder or hub id. `model_family=None` finds it from the checkpoint's files
    (`detect_family`). `dtype=None` is the family's default (float32 for `causal_vq`, bfloat16 for the
    released families); `family_config` overrides the family's config file."""
    if checkpoint in FAMILIES and model_family is not None and model_family not in FAMILIES:
        raise TypeError(f"load_policy(checkpoint, model_family=None, ...): got the family {checkpoint!r} first")
    family = model_family or detect_family(checkpoint, revision)
    if family not in FAMILIES:
        raise CheckpointError(f"unknown model_family {family!r}; known: {sorted(FAMILIES)}")
    kwargs = dict(
        visual_tokenizer=visual_tokenizer,
        family_config=family_config,
        revision=revision,
        trust_remote_code=trust_remote_code,
    )
    if dtype is not None:
        kwargs["dtype"] = dtype
    return FAMILIES[family].load(checkpoint, **kwargs)


__all__ = [
    "CONVERTERS",
    "FAMILIES",
    "Converter",
    "StandIn",
    "register_converter",
    "CheckpointError",
    "Family",
    "detect_family",
    "load_policy",
    "load_visual_tokenizer",
    "register_family",
    "register_visual_tokenizer",
]
