"""Teacher-forced log-likelihood of given actions, through the family's own scorer (`Policy.logprobs`).

The upstream stages (SFT / pretraining, DPO) score actions that were not sampled: encoded images, or a DPO pair.
They call the scorer GRPO uses, so every family's scoring path (KV-free teacher forcing, chunked head, ZeRO-3
gathering) is the same code in every stage. Two distributions matter:

- conditional, `p(actions | caption)`: `cfg_mode: none`, temperature 1, no truncation;
- unconditional, `p(actions | the family's null prompt)`, which classifier-free guidance needs the model to have
  learnt (caption dropout): the guided scorer with `cfg_scale 0`, whose guided logits `u + 0 * (c - u)` are the
  unconditional branch's, exactly, with no gradient into the conditional one. Every family builds its own null
  prompt there (an empty template, pad tokens, a learned null embedding), so no family code is needed here.
"""

from __future__ import annotations

import torch
from torch import nn

from ..policy import Policy, PromptBatch, Sampling

CONDITIONAL = Sampling(cfg_mode="none")
UNCONDITIONAL = Sampling(cfg_mode="guided", cfg_scale=0.0)


def select_rows(prompts: PromptBatch, rows: torch.Tensor) -> PromptBatch:
    """The prompt rows `rows` (indices or a boolean mask) of a batch."""
    return PromptBatch(prompts.input_ids[rows], prompts.attention_mask[rows])


def action_logprobs(
    policy: Policy,
    model: nn.Module,
    prompts: PromptBatch,
    actions: torch.Tensor,
    conditional: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Per-action log-probs `(B, T)` of `actions` `(B, T)` under `model`: rows where `conditional` `(B,)` is True
    (all rows when None) given their caption, the others under the family's unconditional prompt.

    `model` is what the caller trains (peft- / DeepSpeed-wrapped: its hooks must fire); `chunk_size` overrides
    the scorer's `logprob_chunk_size`."""

    def sampling(base: Sampling) -> Sampling:
        if chunk_size is None:
            return base
        return Sampling(cfg_mode=base.cfg_mode, cfg_scale=base.cfg_scale, logprob_chunk_size=chunk_size)

    if conditional is None or bool(conditional.all()):
        return policy.logprobs(model, prompts, actions, sampling(CONDITIONAL))[0]
    if not bool(conditional.any()):
        return policy.logprobs(model, prompts, actions, sampling(UNCONDITIONAL))[0]
    logps = actions.new_zeros(actions.shape, dtype=torch.float32)
    for mask, base in ((conditional, CONDITIONAL), (~conditional, UNCONDITIONAL)):
        rows = mask.nonzero().squeeze(1)
        logps = logps.index_put(
            (rows,), policy.logprobs(model, select_rows(prompts, rows), actions[rows], sampling(base))[0].float()
        )
    return logps
