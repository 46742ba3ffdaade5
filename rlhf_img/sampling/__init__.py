"""Sampling machinery shared by every family: guidance, temperature, top-k/top-p and log-probs (`guidance`), the one
engine of next-token families (`engine`: a guided KV-cached sampler and a guided teacher-forced scorer over a
family's small `NextTokenAdapter`, on `kv_cache`: shared prefill, static cache, compiled decode step), the adapter
of causal LMs with an image-code block (`next_token`), chunked log-probs (`chunked_logprobs`), and per-sample
random streams that make rollouts independent of how the batch is split (`generators`)."""

from .engine import NextTokenAdapter, NextTokenPolicy, guided_draw, sample_guided, score_guided
from .generators import SampleGenerators
from .guidance import guide, sample_actions, scored_logprobs, truncation_mask
from .next_token import CausalLMAdapter, unwrap_causal_lm
from .prefix import PrefixRows, stack_prefixes

__all__ = [
    "CausalLMAdapter",
    "NextTokenAdapter",
    "NextTokenPolicy",
    "PrefixRows",
    "SampleGenerators",
    "guide",
    "guided_draw",
    "sample_actions",
    "sample_guided",
    "score_guided",
    "scored_logprobs",
    "stack_prefixes",
    "truncation_mask",
    "unwrap_causal_lm",
]
