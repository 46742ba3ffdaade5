"""Classifier-free guidance and the sampling transform shared by every family.

One function decides the distribution that is sampled, and one the distribution that is scored, so the
sampler and the loss cannot disagree by construction (the drift metric checks that they do not).
"""

from __future__ import annotations

import torch

from ..policy import Sampling
from .generators import SampleGenerators


def guide(cond: torch.Tensor, uncond: torch.Tensor | None, scale: float) -> torch.Tensor:
    """`uncond + scale * (cond - uncond)` on logits; `cond` when there is no unconditional branch."""
    if uncond is None or scale == 1.0:
        return cond
    return uncond + scale * (cond - uncond)


def truncation_mask(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor | None:
    """Boolean mask `(..., V)` of the actions top-k / top-p keep, or None when nothing is truncated.

    Computed without gradient: truncation picks the support, it is not a differentiable operation.
    """
    vocab = logits.size(-1)
    use_top_k = 0 < top_k < vocab
    use_top_p = top_p < 1.0
    if not (use_top_k or use_top_p):
        return None
    with torch.no_grad():
        keep = torch.ones_like(logits, dtype=torch.bool)
        if use_top_k:
            kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
            keep &= logits >= kth
        if use_top_p:
            sorted_logits, order = torch.sort(logits.masked_fill(~keep, float("-inf")), dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            # keep the smallest prefix whose mass reaches top_p: drop a token when the mass before it already does
            mass_before = probs.cumsum(-1) - probs
            sorted_keep = mass_before < top_p
            keep_p = torch.zeros_like(keep).scatter(-1, order, sorted_keep)
            keep &= keep_p
    return keep


def scored_logprobs(
    logits: torch.Tensor, actions: torch.Tensor, sampling: Sampling
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of `actions` `(...,)` and entropy under temperature + truncation of `logits` `(..., V)`.

    The taken action is always kept in the support, so a sample that sat on the truncation boundary
    can never get -inf when re-scored with slightly different numerics.
    """
    scaled = logits.float() / sampling.temperature
    keep = truncation_mask(scaled, sampling.top_k, sampling.top_p)
    if keep is not None:
        keep = keep.scatter(-1, actions.unsqueeze(-1), True)
        scaled = scaled.masked_fill(~keep, float("-inf"))
    logp_all = torch.log_softmax(scaled, dim=-1)
    logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    probs = logp_all.exp()
    entropy = -(probs * logp_all.masked_fill(probs == 0, 0.0)).sum(-1)
    return logp, entropy


def sample_actions(
    logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | SampleGenerators | None = None
) -> torch.Tensor:
    """Draw one action per row from temperature + top-k/top-p of `logits` `(N, V)`.

    `generator`: None (torch's global stream), one `torch.Generator` for the whole matrix (one multinomial,
    as reference `generate` loops draw), or `SampleGenerators` (rows grouped by sample, batch-major; each
    sample's rows drawn from its own stream, so a sample's image does not depend on the rest of its batch)."""
    scaled = logits.float() / sampling.temperature
    keep = truncation_mask(scaled, sampling.top_k, sampling.top_p)
    if keep is not None:
        scaled = scaled.masked_fill(~keep, float("-inf"))
    probs = scaled.softmax(-1)
    if isinstance(generator, SampleGenerators):
        return generator.draw(probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
