"""Sampling math shared by every family: guidance, temperature, top-k/top-p and log-probs (`guidance`), the
KV-cached, CFG-batched next-token sampler (`image_code_sampler`, on `kv_cache`: shared prefill, static cache,
compiled decode step) and teacher-forced scorer (`next_token`) that next-token families reuse,
and per-sample random streams that make rollouts independent of how the batch is split (`generators`)."""

from .generators import SampleGenerators
from .guidance import guide, sample_actions, scored_logprobs, truncation_mask
from .image_code_sampler import sample_image_codes
from .next_token import score_image_codes, unwrap_causal_lm

__all__ = ["SampleGenerators", "guide", "sample_actions", "sample_image_codes", "score_image_codes", "scored_logprobs",
           "truncation_mask", "unwrap_causal_lm"]
