"""Sampling math shared by every family: guidance, temperature, top-k/top-p and log-probs (`guidance`), and the
KV-cached, CFG-batched next-token sampler and teacher-forced scorer that next-token families reuse (`next_token`)."""

from .guidance import guide, sample_actions, scored_logprobs, truncation_mask
from .next_token import sample_image_codes, score_image_codes, unwrap_causal_lm

__all__ = ["guide", "sample_actions", "sample_image_codes", "score_image_codes", "scored_logprobs",
           "truncation_mask", "unwrap_causal_lm"]
