"""Model families behind one policy interface. `load_policy(family, checkpoint, ...)` is the entry point."""

from __future__ import annotations

from typing import Callable

from . import causal_vq, infinity, simplear
from .policy import CFG_MODES, Policy, PromptBatch, Rollout, Sampling
from .resolve import CheckpointError

FAMILIES: dict[str, Callable[..., Policy]] = {
    "causal_vq": causal_vq.load,
    "simplear": simplear.load,
    "infinity": infinity.load,
}


def load_policy(family: str, checkpoint: str, **kwargs) -> Policy:
    """Load a policy of `family` from a local folder or hub id; kwargs go to the family's `load`."""
    if family not in FAMILIES:
        raise CheckpointError(f"unknown model_family {family!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[family](checkpoint, **kwargs)


__all__ = ["CFG_MODES", "FAMILIES", "CheckpointError", "Policy", "PromptBatch", "Rollout", "Sampling", "load_policy"]
