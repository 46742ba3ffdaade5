"""The one sampling/scoring engine of next-token image families: a guided sampler and a guided scorer.

A family does not write a sampling loop. It declares a `NextTokenAdapter` (how its prompt rows are built, how one
decode step's inputs are embedded, one cached forward, its image head, its teacher-forced hidden states), and this
module does the rest, the same way for every family:

    sample_guided:  distinct prompts -> conditional (+ unconditional) prefix rows, prefilled once
                    -> cache rows copied to every sample -> per step: guide -> sample -> log-prob -> one decode
                    step for both halves (DynamicCache, StaticCache, or a compiled static step)
    score_guided:   the one `cfg_mode` dispatch (none / guided / guided_detached_uncond) over teacher-forced
                    hidden states, the head applied a chunk of positions at a time

`Sampling.sampler` therefore means the same thing in every family (all draw the same tokens for a seed):
  - `plain`: the reference. Every row (conditional and unconditional) is prefilled; a `DynamicCache` grows.
  - `shared`: each distinct prompt row, and each distinct unconditional row, is prefilled once and its cache rows
    are copied to every sample that uses it; decoding as `plain`.
  - `static`: `shared`, then decoding on a preallocated `StaticCache` (no per-step concatenation).
  - `compiled`: `static` with the decode step `torch.compile`d (CUDA graphs on GPU), eager if compile fails.
Next-scale families (Infinity) keep their own scale loop but draw with `guided_draw` and score with
`score_guided`, so the guidance / sampling / log-prob path is one piece of code for every family.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import torch
from torch import nn
from transformers import DynamicCache, PretrainedConfig

from ..policy import PromptBatch, Rollout, Sampling
from .chunked_logprobs import Head, chunked_scored_logprobs
from .guidance import guide, sample_actions, scored_logprobs
from .kv_cache import (
    DecodeStep,
    StaticDecoder,
    compiled_decoder,
    resolve_sampler,
    unique_rows,
)
from .next_token import unwrap_causal_lm
from .prefix import PrefixRows, stack_prefixes

if TYPE_CHECKING:
    from .generators import SampleGenerators

# teacher-forced hidden states for the stacked branches: (True,) conditional rows, (False,) unconditional rows,
# (True, False) both in one forward -> (len(branches) * B, T, C)
BranchHiddenStates = Callable[[Sequence[bool]], torch.Tensor]


class NextTokenAdapter(Protocol):
    """What a next-token family declares so the engine can sample and score it.

    Every method takes the `network` (the family's unwrapped module: LoRA layers injected, no DDP/peft wrapper)
    as an argument; an adapter holds only plain settings (code offsets, grid size), never a module, so a kept
    compiled decode step never keeps a model alive. Adapters are frozen dataclasses (hashable: they key the
    compiled-step cache)."""

    def prefix(self, network: nn.Module, prompts: PromptBatch, conditional: bool) -> PrefixRows:
        """Rows to prefill for `prompts`: the conditional rows (one per prompt), or the unconditional rows
        (one per prompt, or ONE row when the family's unconditional prompt does not depend on the prompt)."""
        ...

    def step_inputs(self, network: nn.Module, codes: torch.Tensor) -> torch.Tensor:
        """Image codes `(R,)` -> the inputs of one decode step `(R, 1)` ids or `(R, 1, C)` embeddings."""
        ...

    def forward(
        self, network: nn.Module, inputs: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache
    ) -> torch.Tensor:
        """Final hidden states `(R, n, C)` of `inputs` `(R, n[, C])` at `positions` `(R, n)`, attending to the
        `mask` `(R, S)` of every cache slot (S = slots after this step's write); writes `cache`."""
        ...

    def head(self, network: nn.Module) -> Head:
        """Hidden states `(N, C)` -> image-code logits `(N, K)`."""
        ...

    def cache_config(self, network: nn.Module) -> PretrainedConfig:
        """The config a transformers `DynamicCache` / `StaticCache` is built from (layer count and types)."""
        ...

    def teacher_forced_hidden(
        self, model: nn.Module, network: nn.Module, prompts: PromptBatch, codes: torch.Tensor, branches: Sequence[bool]
    ) -> torch.Tensor:
        """Final hidden states `(len(branches) * B, T, C)` at the positions that predict `codes` `(B, T)`, for the
        conditional (True) / unconditional (False) rows stacked in `branches` order, in ONE forward through
        `model` itself (the possibly wrapped module: peft / DDP / FSDP hooks must fire)."""
        ...

    # Optional: `forced_after(index: int) -> tuple[int, ...]`, the step inputs (values `step_inputs` takes that the
    # head never scores, e.g. Emu3's end-of-line) written after action `index` without being sampled or scored.
    # Not declared here so that adapters without structural tokens need not define it (`forced_inputs`).


def decode_step(adapter: NextTokenAdapter) -> DecodeStep:
    """The decode step of every loop: one code per row through the cached forward, then the head's logits."""

    def step(
        network: nn.Module, codes: torch.Tensor, position: torch.Tensor, mask: torch.Tensor, cache
    ) -> torch.Tensor:
        hidden = adapter.forward(network, adapter.step_inputs(network, codes), mask, position, cache)[:, -1]  # (R, C)
        return adapter.head(network)(hidden).float()  # (R, K)

    return step


def forced_inputs(adapter: NextTokenAdapter, num_tokens: int) -> list[tuple[int, ...]]:
    """Per action `t < num_tokens`: the step inputs the adapter's `forced_after(t)` writes after it (a structural
    token such as Emu3's end-of-line: fed through the same decode step, never drawn, never given a log-prob);
    empty tuples for an adapter that declares none."""
    declared = getattr(adapter, "forced_after", None)
    return [tuple(declared(t)) if declared is not None else () for t in range(num_tokens)]


def guided_draw(
    logits: torch.Tensor,
    batch: int,
    with_uncond: bool,
    sampling: Sampling,
    generator: torch.Generator | SampleGenerators | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Actions and their log-probs from the logits `(R, ..., K)` of all rows (conditional rows first, then as many
    unconditional rows when `with_uncond`): guide -> temperature / truncation -> draw -> log-prob.

    Returns actions and log-probs `(B, ...)`; the rows handed to `sample_actions` are grouped by sample,
    batch-major (what `SampleGenerators` needs): one per sample for next-token families, `tokens * bits` per
    sample for a next-scale bitwise family."""
    cond, uncond = (logits[:batch], logits[batch:]) if with_uncond else (logits, None)
    guided = guide(cond, uncond, sampling.cfg_scale)
    actions = sample_actions(guided.reshape(-1, guided.size(-1)), sampling, generator).view(guided.shape[:-1])
    return actions, scored_logprobs(guided, actions, sampling)[0]


def _prefill_rows(
    adapter: NextTokenAdapter, network: nn.Module, prompts: PromptBatch, with_uncond: bool, share: bool
) -> tuple[PrefixRows, torch.Tensor | None]:
    """The rows to prefill and `index` `(R,)`: decode row i reads prefill row `index[i]` (None: identity).

    Decode rows are the B conditional rows, then (with guidance) the B unconditional rows. `share`: each distinct
    prompt (ids and mask; a group may be split across ranks, so row order proves nothing) is prefilled once."""
    batch = prompts.input_ids.size(0)
    if share:
        ids, mask, inverse = unique_rows(prompts.input_ids, prompts.attention_mask)
        prompts = PromptBatch(ids, mask)
    else:
        inverse = torch.arange(batch, device=prompts.input_ids.device)
    blocks, indices = [adapter.prefix(network, prompts, conditional=True)], [inverse]
    if with_uncond:
        uncond = adapter.prefix(network, prompts, conditional=False)
        if uncond.rows == 1 and not share:
            uncond = uncond.expand(batch)  # plain: every row prefilled
        indices.append((torch.zeros_like(inverse) if uncond.rows == 1 else inverse) + blocks[0].rows)
        blocks.append(uncond)
    return stack_prefixes(blocks), (torch.cat(indices) if share else None)


@torch.no_grad()
def sample_guided(
    adapter: NextTokenAdapter,
    network: nn.Module,
    prompts: PromptBatch,
    *,
    num_tokens: int,
    sampling: Sampling,
    generator: torch.Generator | SampleGenerators | None = None,
) -> Rollout:
    """Sample `num_tokens` image codes per prompt row `(B, L)` with a KV cache, CFG rows batched with the
    conditional rows (batch 2B, conditional first, one decode step for both halves).

    Returns codes `(B, T)` and their log-probs under the distribution they were drawn from (guided when CFG is
    on), so `|sampling logp - scored logp|` shows numerical drift and `sample_only`'s off-policy gap.
    `generator` goes unchanged to `sample_actions` each step, with the batch's rows in their given order (the
    shared prefill copies cache rows; it never reorders samples). An adapter's `forced_after` tokens (see
    `NextTokenAdapter`) are fed after their action through the same decode step, so every sampler keeps them."""
    batch, device = prompts.input_ids.size(0), prompts.input_ids.device
    config = adapter.cache_config(network)
    sampler = resolve_sampler(sampling.sampler, network, device, config)
    with_uncond = sampling.uses_uncond_when_sampling
    prefix, index = _prefill_rows(adapter, network, prompts, with_uncond, share=sampler != "plain")

    cache = DynamicCache(config=config)
    hidden = adapter.forward(network, prefix.inputs, prefix.mask, prefix.positions, cache)[:, -1]  # (prefill rows, C)
    logits = adapter.head(network)(hidden).float()  # (prefill rows, K)
    next_position = prefix.positions[:, -1:] + 1  # (prefill rows, 1)
    mask = prefix.mask
    if index is not None:
        logits, next_position, mask = logits[index], next_position[index], mask[index]  # (R, ...)

    step = decode_step(adapter)
    forced = forced_inputs(adapter, num_tokens - 1)  # structural tokens fed after an action, never drawn
    num_fed = num_tokens - 1 + sum(map(len, forced))  # decode steps after the prefill
    static: StaticDecoder | None = None
    if sampler in ("static", "compiled") and num_fed > 0:
        if sampler == "compiled":
            static = compiled_decoder(network, step, device, key=(adapter,))
        else:
            static = StaticDecoder(step, device, compile_step=False)
        mask = static.start(config, cache, index, prefix.mask, num_fed)  # (R, S), fixed for all steps
        del cache  # the prefix now lives in the static cache
    elif index is not None:
        cache.reorder_cache(index)  # copy each prefilled row to the samples that use it (index_select on dim 0)

    codes = torch.empty(batch, num_tokens, dtype=torch.long, device=device)
    logprobs = torch.empty(batch, num_tokens, dtype=torch.float32, device=device)
    written = prefix.mask.size(1)  # cache positions holding a token
    for t in range(num_tokens):
        code, logprobs[:, t] = guided_draw(logits, batch, with_uncond, sampling, generator)
        codes[:, t] = code
        if t == num_tokens - 1:
            break
        # the drawn code, then any forced token: one decode step each; the logits after the last one are drawn from
        for fed in (code, *(torch.full_like(code, value) for value in forced[t])):
            rows = torch.cat([fed, fed]) if with_uncond else fed  # (R,)
            if static is not None:
                logits = static(network, rows, next_position, mask, written=written)
            else:
                mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
                logits = step(network, rows, next_position, mask, cache)
            next_position = next_position + 1
            written += 1
    return Rollout(actions=codes, logprobs=logprobs)


def score_guided(
    hidden_states: BranchHiddenStates,
    head: Head,
    actions: torch.Tensor,
    sampling: Sampling,
    *,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log-probs and entropies `(B, T)` of `actions` under `sampling.cfg_mode`: the one dispatch.

    `hidden_states(branches)` gives the stacked branches' hidden states (see `BranchHiddenStates`); `head` maps them
    to logits a chunk of positions at a time (`chunk_size`, default `sampling.logprob_chunk_size`), so `(B, T, K)`
    logits never exist at once. A family whose forward already returns per-action logits passes an identity head.
      - no unconditional branch scored (`none`, `sample_only`, or scale 1): the conditional rows only;
      - `guided_detached_uncond`: the unconditional rows under `no_grad` (no activations kept for backward);
      - `guided`: both branches in one forward, gradients through both; at `cfg_scale` 0 (the unconditional
        distribution, which the upstream stages score for dropped captions) the unconditional branch alone."""
    batch = actions.size(0)
    if not sampling.uses_uncond_when_scoring:
        return chunked_scored_logprobs(head, hidden_states((True,)), actions, sampling, chunk_size=chunk_size)
    if sampling.cfg_scale == 0.0 and sampling.cfg_mode == "guided":  # u + 0 * (c - u): the unconditional branch alone
        return chunked_scored_logprobs(head, hidden_states((False,)), actions, sampling, chunk_size=chunk_size)
    if sampling.cfg_mode == "guided_detached_uncond":
        cond = hidden_states((True,))
        with torch.no_grad():
            uncond = hidden_states((False,))
        return chunked_scored_logprobs(head, cond, actions, sampling, uncond, detach_uncond=True, chunk_size=chunk_size)
    both = hidden_states((True, False))  # (2B, T, C)
    return chunked_scored_logprobs(head, both[:batch], actions, sampling, both[batch:], chunk_size=chunk_size)


class NextTokenPolicy:
    """`sample` and `logprobs` of the policy interface for a next-token family, from its `adapter`.

    A family policy subclasses this, sets `adapter` (a `NextTokenAdapter`) and `num_actions`, and writes only what
    is its own: prompts, decoding, saving."""

    adapter: NextTokenAdapter
    num_actions: int

    def sample(
        self,
        model: nn.Module,
        prompts: PromptBatch,
        sampling: Sampling,
        generator: torch.Generator | SampleGenerators | None = None,
    ) -> Rollout:
        return sample_guided(
            self.adapter,
            unwrap_causal_lm(model),
            prompts,
            num_tokens=self.num_actions,
            sampling=sampling,
            generator=generator,
        )

    def logprobs(
        self, model: nn.Module, prompts: PromptBatch, actions: torch.Tensor, sampling: Sampling
    ) -> tuple[torch.Tensor, torch.Tensor]:
        network = unwrap_causal_lm(model)
        return score_guided(
            lambda branches: self.adapter.teacher_forced_hidden(model, network, prompts, actions, branches),
            self.adapter.head(network),
            actions,
            sampling,
        )
