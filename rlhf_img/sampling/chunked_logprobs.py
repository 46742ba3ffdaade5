"""Teacher-forced log-probs and entropies computed a chunk of positions at a time, with bounded memory.

Scoring `B x T` actions materialises logits `(B, T, K)` in float32 several times over (guided logits, the
truncated copy, `log_softmax`, its `exp`), and autograd keeps them for the backward pass. SimpleAR at 1024 px
(T = 4,096, K = 64,000 codes) needs about 1 GB per sequence for ONE such tensor. Here the `B * T` positions
are flattened and scored `chunk_size` at a time; with gradients on, each chunk runs under a non-reentrant
`torch.utils.checkpoint`, so the forward keeps only that chunk's inputs (hidden states, actions) and the
backward recomputes one chunk's logits at a time. Peak memory then grows with the chunk, not with T or B;
the values and gradients are those of the unchunked computation (the same ops on the same rows).

Every family's scorer hands its final hidden states and its head here (SimpleAR / causal_vq: the image-code
rows of the LM head; Janus: the generation head; LlamaGen: the output layer).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from ..policy import Sampling
from .guidance import guide, scored_logprobs

Head = Callable[[torch.Tensor], torch.Tensor]  # hidden (N, C) -> logits (N, K)


def _score_rows(
    head: Head,
    hidden: torch.Tensor,
    uncond_hidden: torch.Tensor | None,
    actions: torch.Tensor,
    sampling: Sampling,
    detach_uncond: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies `(N,)` of `actions` `(N,)` from hidden states `(N, C)` (and the unconditional
    branch's `(N, C)` when guided): head -> guidance -> temperature, truncation, log-softmax."""
    cond = head(hidden)  # (N, K)
    if uncond_hidden is None:
        return scored_logprobs(cond, actions, sampling)
    if detach_uncond:
        with torch.no_grad():  # detached branch: no gradient to the head through it either
            uncond = head(uncond_hidden)
    else:
        uncond = head(uncond_hidden)
    return scored_logprobs(guide(cond.float(), uncond.float(), sampling.cfg_scale), actions, sampling)


def _zero3_enabled() -> bool:
    """Whether DeepSpeed ZeRO-3 partitions the weights. Its hooks gather a module's weights for the forward and
    release them after; a recompute in the backward (non-reentrant checkpointing) then sees the released, empty
    placeholder. Under ZeRO-3 the chunks are still scored one at a time, but their logits stay alive for the
    backward (the memory bound is then ZeRO-3's sharding, not this recompute)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


def chunked_scored_logprobs(
    head: Head,
    hidden: torch.Tensor,
    actions: torch.Tensor,
    sampling: Sampling,
    uncond_hidden: torch.Tensor | None = None,
    *,
    detach_uncond: bool = False,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies `(B, T)` float32 of `actions` `(B, T)` from final hidden states `(B, T, C)`.

    `head` maps hidden states `(N, C)` to logits `(N, K)` over the scored actions. `uncond_hidden` `(B, T, C)`:
    the unconditional branch, guided with `sampling.cfg_scale` (`detach_uncond`: no gradient through it, as
    `guided_detached_uncond` wants). `chunk_size`: positions (of the flattened `B * T`) scored at once;
    None takes `sampling.logprob_chunk_size`; 0 scores everything at once, exactly as before chunking.
    """
    batch, num_tokens = actions.shape
    if hidden.shape[:2] != actions.shape:
        raise ValueError(f"hidden states {tuple(hidden.shape)} do not match actions {tuple(actions.shape)}")
    if uncond_hidden is not None and uncond_hidden.shape != hidden.shape:
        raise ValueError(f"unconditional hidden states {tuple(uncond_hidden.shape)} != {tuple(hidden.shape)}")
    chunk_size = sampling.logprob_chunk_size if chunk_size is None else chunk_size
    if chunk_size < 0:
        raise ValueError(f"logprob_chunk_size must be >= 0 (0: unchunked), got {chunk_size}")
    if chunk_size == 0:
        logp, entropy = _score_rows(head, hidden, uncond_hidden, actions, sampling, detach_uncond)
        return logp, entropy

    rows = hidden.reshape(batch * num_tokens, -1)  # (N, C)
    uncond_rows = None if uncond_hidden is None else uncond_hidden.reshape(batch * num_tokens, -1)
    flat_actions = actions.reshape(-1)  # (N,)
    logps, entropies = [], []
    recompute = torch.is_grad_enabled() and not _zero3_enabled()
    for start in range(0, rows.size(0), chunk_size):
        piece = slice(start, start + chunk_size)
        args = (
            head,
            rows[piece],
            None if uncond_rows is None else uncond_rows[piece],
            flat_actions[piece],
            sampling,
            detach_uncond,
        )
        if recompute:
            # keep only the chunk's inputs; the backward recomputes its logits (autocast state included)
            logp, entropy = checkpoint(_score_rows, *args, use_reentrant=False)
        else:
            logp, entropy = _score_rows(*args)
        logps.append(logp)
        entropies.append(entropy)
    return torch.cat(logps).view(batch, num_tokens), torch.cat(entropies).view(batch, num_tokens)
