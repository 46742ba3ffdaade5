"""KV-cached, CFG-batched sampling of image codes from a causal LM: the rollout loop of next-token families.

Used by `causal_vq` and SimpleAR: the LM's vocabulary holds `code_count` image codes starting at id
`code_offset`, and logits are computed only for those rows of the LM head (`next_token.image_code_logits`),
so a rollout always has exactly `num_tokens` image codes. `Sampling.sampler` picks the loop; all of them
sample the same distribution and, for a seed, the same tokens up to float rounding
(`tests/test_fast_sampler.py`):
  - `plain`: the reference. Every row (conditional and unconditional) is prefilled; a `DynamicCache` grows.
  - `shared`: each distinct prompt row, and the one unconditional row, is prefilled once and its cache rows
    are copied to every sample that uses it (`kv_cache.unique_rows`); decoding as `plain`.
  - `static`: `shared`, then decoding on a preallocated `StaticCache` (no per-step concatenation).
  - `compiled`: `static` with the decode step `torch.compile`d (CUDA graphs on GPU), eager if compile fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import DynamicCache

from ..policy import Rollout, Sampling
from .guidance import guide, sample_actions, scored_logprobs
from .kv_cache import DecodeStep, StaticDecoder, compiled_decoder, resolve_sampler, unique_blocks
from .next_token import image_code_logits, left_pad_stack, position_ids_from_mask

if TYPE_CHECKING:
    from .generators import SampleGenerators


def image_code_step(code_offset: int, code_count: int) -> DecodeStep:
    """The decode step of the static loops: one token per row through the decoder, then image-code logits."""

    def step(lm: nn.Module, token: torch.Tensor, position: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor:
        hidden = lm.get_decoder()(
            input_ids=token, attention_mask=mask, position_ids=position, cache=cache, use_cache=True
        ).last_hidden_state[:, -1]  # (R, C)
        return image_code_logits(lm, hidden, code_offset, code_count).float()  # (R, K)

    return step


def _draw(
    logits: torch.Tensor, batch: int, with_uncond: bool, sampling: Sampling,
    generator: torch.Generator | SampleGenerators | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One code per sample `(B,)` and its log-prob `(B,)` from the logits `(R, K)` of all rows (cond rows first)."""
    cond, uncond = (logits[:batch], logits[batch:]) if with_uncond else (logits, None)
    guided = guide(cond, uncond, sampling.cfg_scale)
    code = sample_actions(guided, sampling, generator)  # (B,)
    return code, scored_logprobs(guided, code, sampling)[0]


@torch.no_grad()
def sample_image_codes(
    lm: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    uncond_ids: torch.Tensor,
    uncond_mask: torch.Tensor,
    *,
    num_tokens: int,
    code_offset: int,
    code_count: int,
    pad_id: int,
    sampling: Sampling,
    generator: torch.Generator | SampleGenerators | None = None,
) -> Rollout:
    """Sample `num_tokens` image codes per row of the left-padded `prompt_ids` `(B, L)`.

    With guidance the unconditional rows ride in the same forward as the conditional rows (batch 2B, conditional
    first) and share one KV cache. `uncond_ids` is `(1, Lu)`, broadcast to the batch (or `(B, Lu)`). Returns
    codes `(B, T)` in `[0, code_count)` and their log-probs under the distribution they were drawn from (guided
    when CFG is on), so `|sampling logp - scored logp|` shows numerical drift and `sample_only`'s off-policy gap.
    `generator` goes unchanged to `sample_actions` each step, with the batch's rows in their given order (the
    shared prefill copies cache rows; it never reorders samples)."""
    batch, device = prompt_ids.size(0), prompt_ids.device
    sampler = resolve_sampler(sampling.sampler, lm, device)
    with_uncond = sampling.uses_uncond_when_sampling
    uncond_ids, uncond_mask = uncond_ids.expand(batch, -1), uncond_mask.expand(batch, -1)
    blocks = [(prompt_ids, prompt_mask), (uncond_ids, uncond_mask)] if with_uncond else [(prompt_ids, prompt_mask)]
    index = None  # row i of the decode batch reads prefill row index[i] (None: the prefill is the decode batch)
    if sampler != "plain":
        blocks, index = unique_blocks(blocks)  # the group's prompt, and the unconditional prompt, prefilled once
    ids, mask = left_pad_stack([b[0] for b in blocks], [b[1] for b in blocks], pad_id)

    decoder = lm.get_decoder()
    cache = DynamicCache(config=lm.config)
    positions = position_ids_from_mask(mask)
    hidden = decoder(
        input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
    ).last_hidden_state[:, -1]  # (prefill rows, C)
    logits = image_code_logits(lm, hidden, code_offset, code_count).float()  # (prefill rows, K)
    next_position = positions[:, -1:] + 1  # (prefill rows, 1)
    prefix_mask = mask
    if index is not None:
        logits, next_position, mask = logits[index], next_position[index], mask[index]  # (R, ...)

    static: StaticDecoder | None = None
    if sampler in ("static", "compiled") and num_tokens > 1:
        step = image_code_step(code_offset, code_count)
        if sampler == "compiled":
            static = compiled_decoder(lm, step, device, key=(code_offset, code_count))
        else:
            static = StaticDecoder(step, device, compile_step=False)
        mask = static.start(lm.config, cache, index, prefix_mask, num_tokens - 1)  # (R, S), fixed for all steps
        del cache  # the prefix now lives in the static cache
    elif index is not None:
        cache.reorder_cache(index)  # copy each prefilled row to the samples that use it (index_select on dim 0)

    codes = torch.empty(batch, num_tokens, dtype=torch.long, device=device)
    logprobs = torch.empty(batch, num_tokens, dtype=torch.float32, device=device)
    for t in range(num_tokens):
        code, logprobs[:, t] = _draw(logits, batch, with_uncond, sampling, generator)
        codes[:, t] = code
        if t == num_tokens - 1:
            break
        token = (code + code_offset).unsqueeze(1)  # (B, 1)
        if with_uncond:
            token = torch.cat([token, token])  # (R, 1)
        if static is not None:
            logits = static(lm, token, next_position, mask, written=prefix_mask.size(1) + t)
        else:
            mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
            hidden = decoder(
                input_ids=token, attention_mask=mask, position_ids=next_position, cache=cache, use_cache=True
            ).last_hidden_state[:, -1]
            logits = image_code_logits(lm, hidden, code_offset, code_count).float()
        next_position = next_position + 1
    return Rollout(actions=codes, logprobs=logprobs)
