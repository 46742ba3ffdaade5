"""Emu3's VQ and transformers' weight initialisation under DeepSpeed ZeRO-3 (loading only)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from transformers.models.emu3.modeling_emu3 import Emu3VQVAE


@contextlib.contextmanager
def loaded_vq_modules_left_alone() -> Iterator[None]:
    """While loading, the VQ's weight initialisation skips modules whose parameters all came from the checkpoint.

    Why: transformers runs each module's `_init_weights` after loading and its init functions skip the loaded
    tensors, but `Emu3VQVAE._init_weights` first computes a convolution's fan-in from its weight. Under DeepSpeed
    ZeRO-3 (`zero3_init_flag`) that weight is a partition placeholder with no shape, only the tensors missing from
    the checkpoint are gathered, and the read fails ("Fan in and fan out can not be computed for tensor with
    fewer than 2 dimensions"). Elsewhere skipping those modules changes nothing: every tensor they would touch was
    loaded."""
    init_weights = Emu3VQVAE._init_weights

    def init_unloaded(self, module) -> None:
        own = list(module.parameters(recurse=False))
        if own and all(getattr(parameter, "_is_hf_initialized", False) for parameter in own):
            return
        init_weights(self, module)

    Emu3VQVAE._init_weights = init_unloaded
    try:
        yield
    finally:
        Emu3VQVAE._init_weights = init_weights
