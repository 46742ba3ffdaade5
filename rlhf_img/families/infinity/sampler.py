"""KV-cached, CFG-batched next-scale sampling and teacher-forced scoring of bits (Infinity-style families).

Each scale is one forward pass over all of its tokens; every token predicts `bits_per_token`
independent two-way choices. The scale loop is this family's own; each scale draws with the engine's
`guided_draw` and teacher-forced scoring is the engine's `score_guided` dispatch
(`rlhf_img/sampling/engine.py`), so guidance, temperature, top-p and log-probs are the code every family runs. Top-p on a
two-way choice keeps only the likelier bit when the other has probability <= 1 - top_p: such a bit is
deterministic, its log-prob is 0 and it carries no gradient.
"""

from __future__ import annotations

import torch

from ...policy import Rollout, Sampling
from ...sampling.engine import guided_draw, score_guided
from ...sampling.generators import SampleGenerators
from .codes import ScaleCodes


@torch.no_grad()
def sample_bits(
    transformer,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    codes: ScaleCodes,
    sampling: Sampling,
    aspect_ratio: float = 1.0,
    generator: torch.Generator | SampleGenerators | None = None,
) -> Rollout:
    """Sample every scale's bits for `text` `(B, Lt, Ct5)` -> actions `(B, T)` and their log-probs.

    With guidance the unconditional rows (the learned null text over each row's length) ride in the
    same forward as the conditional rows (batch 2B) and share one KV cache per block.
    """
    batch = text.size(0)
    with_uncond = sampling.uses_uncond_when_sampling
    if with_uncond:
        text = torch.cat([text, transformer.unconditional_text(text_mask).to(text.dtype)])
        text_mask = torch.cat([text_mask, text_mask])
    state = transformer.prepare_text(text, text_mask)
    caches = [[] for _ in transformer.blocks]
    x = transformer.start_tokens(state[0])
    summed, actions, logprobs = None, [], []
    for index, (h, w) in enumerate(codes.grids):
        logits = transformer.forward_scale(x, index, codes.grids, state, text_mask, caches, aspect_ratio)
        logits = logits.view(logits.size(0), h * w * codes.bits_per_token, 2)  # (R, tokens * bits, 2)
        bits, bit_logprobs = guided_draw(logits, batch, with_uncond, sampling, generator)  # (B, tokens * bits)
        actions.append(bits)
        logprobs.append(bit_logprobs)
        if index == len(codes.grids) - 1:
            break
        summed = codes.accumulate(summed, bits.view(batch, h, w, codes.bits_per_token), index)
        x = transformer.word_embed(codes.scale_input(summed, index + 1).to(transformer.word_embed.weight.dtype))
        if with_uncond:
            x = torch.cat([x, x])
    return Rollout(actions=torch.cat(actions, dim=1), logprobs=torch.cat(logprobs, dim=1))


def score_bits(
    model,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    actions: torch.Tensor,
    codes: ScaleCodes,
    sampling: Sampling,
    aspect_ratio: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced per-bit log-probs and entropies `(B, T)` of `actions` under `sampling.cfg_mode`, in one
    forward (two for `guided_detached_uncond`). `model` is called (peft / DDP / DeepSpeed hooks fire); the
    unconditional rows get the learned null text inside its forward."""
    batch = actions.size(0)
    inputs = codes.teacher_inputs(actions)  # (B, L - 1, bits): depends on the actions only

    def branch_logits(branches) -> torch.Tensor:  # (nB, T, 2): the learned null text for unconditional rows
        rows = len(branches)
        null = torch.tensor([not conditional for conditional in branches], device=text.device).repeat_interleave(batch)
        logits = model(
            text_features=text.repeat(rows, 1, 1),
            text_mask=text_mask.repeat(rows, 1),
            scale_inputs=inputs.repeat(rows, 1, 1),
            schedule=codes.grids,
            aspect_ratio=aspect_ratio,
            null_text_rows=null,
        )
        return logits.reshape(rows * batch, -1, 2)

    # the forward already ends in the bit logits: an identity head, unchunked (two logits per action)
    return score_guided(branch_logits, lambda logits: logits, actions, sampling, chunk_size=0)
