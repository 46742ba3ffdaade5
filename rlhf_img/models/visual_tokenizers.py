"""Registry of visual tokenizer classes a family config can name (`visual_tokenizer_class`)."""

from __future__ import annotations

import os

from torch import nn

from .cosmos import CosmosDiscreteTokenizer
from .resolve import CheckpointError, is_local
from .vq import VQTokenizer

VISUAL_TOKENIZERS: dict[str, type] = {"vq": VQTokenizer, "cosmos": CosmosDiscreteTokenizer}


def load_visual_tokenizer(kind: str, location: str) -> nn.Module:
    if kind not in VISUAL_TOKENIZERS:
        raise CheckpointError(f"unknown visual_tokenizer_class {kind!r}; known: {sorted(VISUAL_TOKENIZERS)}")
    if is_local(location) and not os.path.isdir(location):
        raise CheckpointError(f"visual tokenizer not found: {location}")
    try:
        return VISUAL_TOKENIZERS[kind].from_pretrained(location)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot load visual tokenizer {location!r}: {error}") from None
