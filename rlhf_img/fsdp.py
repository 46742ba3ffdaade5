"""Rollouts under FSDP2 (`torch.distributed.fsdp.fully_shard`, accelerate's `fsdp_version: 2`).

FSDP2 keeps each wrapped module's parameters sharded and gathers them in that module's forward hooks. The
samplers do not call `model.forward`: their KV-cached loops call the decoder and the image head directly, so the
root module's own parameters (embeddings, final norm, head: whatever no inner block owns) are never gathered
and the first embedding lookup fails on a sharded weight. Worse, blocks called before any root forward would
each initialise as their own FSDP root and break the training forward that follows. `unsharded_root` does
for FSDP2 what TRL's `unwrap_model_for_generation` does for ZeRO-3: gather what the loop needs, for the rollout.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def unsharded_root(model: nn.Module) -> Iterator[nn.Module]:
    """Gather the outermost FSDP2 module's own parameters for the body, reshard after; a no-op without FSDP2.

    Inner FSDP2 blocks still gather and free their parameters in their own hooks as the loop calls them, so the
    extra memory is the root's parameters only."""
    from torch.distributed.fsdp import FSDPModule

    root = next((module for module in model.modules() if isinstance(module, FSDPModule)), None)
    if root is None:
        yield model
        return
    # settle which FSDP state is the root before any inner block runs on its own (torch has no public call for
    # this; the root's first forward would do it)
    root._get_fsdp_state()._lazy_init()
    root.unshard()
    try:
        yield model
    finally:
        root.reshard()
