"""KV-cache machinery for fast next-token sampling: shared prefill, a static cache, a compiled decode step.

A GRPO batch holds each prompt `num_generations` times, so the prompt prefill is mostly repeated work: the
distinct prompt rows are found from the ids and masks themselves (a group may be split across ranks, so
row order proves nothing), prefilled once, and their cache rows are copied to every sample of the group.
Decoding then runs on a `transformers.StaticCache` whose buffers never move, so one decode step can be
`torch.compile`d (CUDA graphs on GPU, `mode="reduce-overhead"`). Nothing here reorders the sampled rows:
row `i` of the batch stays row `i` (and keeps its generator) whatever the prefill shares.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Callable

import torch
from torch import nn
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import StaticLayer

# a decode step: (model, codes (R,), position (R, 1), attention mask (R, S), cache) -> logits (R, K) float32.
# The model is an argument, not a closure, so a kept compiled step never holds its model alive.
DecodeStep = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, StaticCache], torch.Tensor]

# static caches grow in steps of this many positions, so prompts of slightly different lengths reuse one
# compiled graph (torch.compile recompiles on every new shape, and gives up after a few)
STATIC_LENGTH_STEP = 128


def unique_rows(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct rows of left-padded `ids` / `mask` `(B, L)`: `(U, L)` ids, `(U, L)` mask, and `inverse` `(B,)`
    with `ids[i] == unique_ids[inverse[i]]` (the mask is part of the key: a pad id may also be a real token)."""
    length = ids.size(1)
    rows = torch.cat([ids, mask.to(ids.dtype)], dim=1)
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
    return unique[:, :length], unique[:, length:].to(mask.dtype), inverse


def resolve_sampler(name: str, model: nn.Module, device: torch.device, config=None) -> str:
    """The sampler `name` ('auto' made concrete) for `model` on `device` (`config`: its cache config, default
    `model.config`).

    'auto' compiles on CUDA only: on CPU the one-time compile (about a minute) outweighs what a short run
    saves. A static cache needs full attention in every layer (sliding-window and linear-attention layers keep
    their own state), and sharded weights (ZeRO-3's `ds_id`, FSDP2's `DTensor`) are gathered by module hooks
    that 'auto' does not hand to a compiled graph."""
    layer_types = getattr(config if config is not None else model.config, "layer_types", None) or ["full_attention"]
    static_ok = all(kind == "full_attention" for kind in layer_types)
    if name == "auto":
        sharded = any(_is_sharded(p) for p in model.parameters())
        return "compiled" if device.type == "cuda" and static_ok and not sharded else "shared"
    if name in ("static", "compiled") and not static_ok:
        raise ValueError(
            f"sampler={name!r} needs full attention in every layer; this model has layer types "
            f"{sorted(set(layer_types))}: use sampler='shared'"
        )
    return name


def _is_sharded(parameter: torch.Tensor) -> bool:
    if hasattr(parameter, "ds_id"):  # DeepSpeed ZeRO-3
        return True
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor

        return isinstance(parameter, DTensor)  # FSDP2
    return False


def static_length(needed: int) -> int:
    """`needed` positions rounded up to a multiple of `STATIC_LENGTH_STEP`."""
    return -(-needed // STATIC_LENGTH_STEP) * STATIC_LENGTH_STEP


class StaticDecoder:
    """One static KV cache and one decode step, compiled or eager.

    The compiled decoder of a model is kept (`compiled_decoder`) with its cache, reused by every rollout
    batch of the same shape: CUDA graphs are recorded against the cache's addresses, and a new cache each batch
    would make them re-record (and give up after a few). The price is that the cache's memory stays allocated
    between rollouts. An eager decoder is built per call and frees its cache with the rollout."""

    def __init__(self, step: DecodeStep, device: torch.device, compile_step: bool) -> None:
        self.step = step
        self.on_cuda = device.type == "cuda"
        self.compiled: DecodeStep | None = None
        if compile_step:  # CUDA graphs replay the step in one launch; on CPU inductor fuses its kernels
            self.compiled = torch.compile(step, dynamic=False, mode="reduce-overhead" if self.on_cuda else None)
        self.cache: StaticCache | None = None
        self._cache_key: tuple | None = None

    def start(
        self, config, prefix: DynamicCache, index: torch.Tensor, prefix_mask: torch.Tensor, num_new: int
    ) -> torch.Tensor:
        """Copy rows `index` `(R,)` of the prefilled `prefix` (length P) into the static cache, with room for
        `num_new` more tokens; returns the attention mask `(R, S)` every decode step uses: the prompt's padding
        masked, every later position open (the causal rule hides positions not yet written)."""
        prefix_length = prefix_mask.size(1)
        keys = [layer.keys.index_select(0, index) for layer in prefix.layers]  # each (R, H, P, D)
        values = [layer.values.index_select(0, index) for layer in prefix.layers]
        needed = prefix_length + num_new
        # inference-mode tensors cannot be updated in place outside inference mode (and vice versa): part of the key
        key = (
            index.numel(),
            keys[0].dtype,
            keys[0].device,
            tuple(k.shape[1:2] + k.shape[3:] for k in keys),
            torch.is_inference_mode_enabled(),
        )
        if self.cache is None or self._cache_key != key or self.cache.get_max_length() < needed:
            self.cache = StaticCache(config=config, max_cache_len=static_length(needed))
            self._cache_key = key
            if any(type(layer) is not StaticLayer for layer in self.cache.layers):
                raise ValueError("a static KV cache needs full attention in every layer: use sampler='shared'")
        else:
            self.cache.reset()
        for layer, layer_keys, layer_values in zip(self.cache.layers, keys, values):
            layer.update(layer_keys, layer_values)  # positions 0..P-1; the next token goes to P
        length = self.cache.get_max_length()
        mask = prefix_mask.new_ones(index.numel(), length)
        mask[:, :prefix_length] = prefix_mask.index_select(0, index)
        return mask

    def __call__(
        self, model: nn.Module, codes: torch.Tensor, position: torch.Tensor, mask: torch.Tensor, written: int
    ) -> torch.Tensor:
        """Logits `(R, K)` after feeding `codes` `(R,)` at `position` `(R, 1)`; `written`: positions the cache
        held before this step (restored if the compiled step fails, so the eager retry writes the same slot)."""
        if self.compiled is not None:
            try:
                if self.on_cuda:
                    torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are no longer read
                return self.compiled(model, codes, position, mask, self.cache).clone()  # graphs reuse output memory
            except Exception as error:  # noqa: BLE001 -- compile fails in many ways (no compiler, unsupported op)
                warnings.warn(
                    f"rlhf-img: torch.compile of the decode step failed ({type(error).__name__}: "
                    f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); sampling "
                    "continues with the eager static-cache step",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.compiled = None
                for layer in self.cache.layers:
                    layer.cumulative_length.fill_(written)
        return self.step(model, codes, position, mask, self.cache)


_COMPILED: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, StaticDecoder]]" = weakref.WeakKeyDictionary()


def compiled_decoder(model: nn.Module, step: DecodeStep, device: torch.device, key: tuple = ()) -> StaticDecoder:
    """The compiled `StaticDecoder` kept for `model` on `device` (and `key`, e.g. the image-code slice `step`
    reads), built the first time. Once its compile has failed it stays eager (one warning per model)."""
    decoders = _COMPILED.setdefault(model, {})
    key = (str(device), *key)
    if key not in decoders:
        decoders[key] = StaticDecoder(step, device, compile_step=True)
    return decoders[key]
