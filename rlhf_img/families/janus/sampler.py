"""Janus' image path as a sampler and a teacher-forced scorer.

Image tokens enter the language model as `generation_aligner(generation_embeddings(code))` and leave it through
`generation_head` (the text `lm_head` is never used), so the shared next-token sampler, which reads codes off an
LM head, does not apply; the guidance, temperature, truncation and log-prob math is the shared one
(`rlhf_img.sampling.guidance`), so sampling and scoring cannot drift apart.

The unconditional prompt is Janus' own: the conditional prompt with every token except BOS and
`<begin_of_image>` replaced by the pad token, under the same attention mask (left padding stays masked).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from ...policy import Rollout, Sampling
from ...sampling import SampleGenerators, guide, sample_actions, scored_logprobs
from ...sampling.chunked_logprobs import chunked_scored_logprobs
from ...sampling.kv_cache import unique_blocks


def unconditional_ids(prompt_ids: torch.Tensor, bos_id: int, boi_id: int, pad_id: int) -> torch.Tensor:
    """Janus' unconditional prompt `(B, L)`: every token but BOS and `<begin_of_image>` replaced by pad."""
    keep = (prompt_ids == bos_id) | (prompt_ids == boi_id)
    return torch.where(keep, prompt_ids, torch.full_like(prompt_ids, pad_id))


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding `(R, L)`, identical in sampling and in scoring."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def image_embeddings(janus: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """Language-model inputs `(..., C)` for image codes: the generation embeddings through the generation aligner."""
    return janus.prepare_embeddings_for_image_generation(codes)


@torch.no_grad()
def sample_image_tokens(
    janus: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    uncond_ids: torch.Tensor,
    *,
    num_tokens: int,
    sampling: Sampling,
    generator: torch.Generator | SampleGenerators | None = None,
) -> Rollout:
    """Sample `num_tokens` image codes per row of `prompt_ids` `(B, L)` with a KV cache.

    `janus`: a transformers `JanusForConditionalGeneration` (LoRA layers, if any, stay injected). With guidance
    the unconditional rows `uncond_ids` `(B, L)` ride in the same forward (batch 2B, cond rows first) and share
    the cache. Unless `sampling.sampler` is 'plain', each distinct prompt row (and unconditional row) is prefilled
    once and its cache rows are copied to the samples that use it; decoding always runs on a `DynamicCache` (the
    static / compiled loops are the shared next-token sampler's). Returns codes `(B, T)` and their log-probs under
    the distribution they were drawn from."""
    batch = prompt_ids.size(0)
    with_uncond = sampling.uses_uncond_when_sampling
    blocks = [(prompt_ids, prompt_mask), (uncond_ids, prompt_mask)] if with_uncond else [(prompt_ids, prompt_mask)]
    index = None  # row i of the decode batch reads prefill row index[i] (None: the prefill is the decode batch)
    if sampling.sampler != "plain":
        blocks, index = unique_blocks(blocks)  # a group's prompt prefilled once (all blocks are (., L) wide)
    ids, mask = torch.cat([b[0] for b in blocks]), torch.cat([b[1] for b in blocks])
    language_model, head = janus.model.language_model, janus.model.generation_head
    cache = DynamicCache(config=language_model.config)
    positions = positions_from_mask(mask)
    hidden = language_model(
        inputs_embeds=janus.get_input_embeddings()(ids), attention_mask=mask, position_ids=positions, cache=cache,
        use_cache=True,
    ).last_hidden_state[:, -1]  # (prefill rows, C)
    next_position = positions[:, -1:] + 1  # (prefill rows, 1)
    if index is not None:
        hidden, next_position, mask = hidden[index], next_position[index], mask[index]  # (R, ...)
        cache.reorder_cache(index)  # index_select on the batch dim of every layer

    codes = torch.empty(batch, num_tokens, dtype=torch.long, device=ids.device)
    logprobs = torch.empty(batch, num_tokens, dtype=torch.float32, device=ids.device)
    for t in range(num_tokens):
        logits = head(hidden).float()  # (R, K)
        cond, uncond = (logits[:batch], logits[batch:]) if with_uncond else (logits, None)
        guided = guide(cond, uncond, sampling.cfg_scale)
        code = sample_actions(guided, sampling, generator)  # (B,)
        logprobs[:, t] = scored_logprobs(guided, code, sampling)[0]
        codes[:, t] = code
        if t == num_tokens - 1:
            break
        step = torch.cat([code, code]) if with_uncond else code
        mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
        hidden = language_model(
            inputs_embeds=image_embeddings(janus, step.unsqueeze(1)), attention_mask=mask, position_ids=next_position,
            cache=cache, use_cache=True,
        ).last_hidden_state[:, -1]
        next_position = next_position + 1
    return Rollout(actions=codes, logprobs=logprobs)


def _code_hidden_states(model: nn.Module, janus: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                        codes: torch.Tensor) -> torch.Tensor:
    """Final hidden states `(B, T, C)` at the positions that predict each of `codes` `(B, T)`, teacher-forced.

    The input is the prompt's text embeddings followed by the image embeddings of codes 0..T-2 (the last code
    predicts nothing). The forward goes through `model` itself (peft / DDP / DeepSpeed wrappers included) so
    their hooks fire; it asks for one position of text logits only."""
    num_tokens = codes.size(1)
    embeds = torch.cat([janus.get_input_embeddings()(prompt_ids), image_embeddings(janus, codes[:, :-1])], dim=1)
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(codes.size(0), num_tokens - 1)], dim=1)
    outputs = model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask), output_hidden_states=True,
        logits_to_keep=1, use_cache=False,
    )
    return outputs.hidden_states[-1][:, -num_tokens:]


def score_image_tokens(
    model: nn.Module,
    janus: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    uncond_ids: torch.Tensor,
    codes: torch.Tensor,
    sampling: Sampling,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log-probs and entropies `(B, T)` of `codes` under `sampling.cfg_mode`.

    `model` is what the trainer holds (possibly wrapped); `janus` the `JanusForConditionalGeneration` inside it."""
    head = janus.model.generation_head  # logits a chunk of positions at a time (`sampling.logprob_chunk_size`)
    if not sampling.uses_uncond_when_scoring:
        hidden = _code_hidden_states(model, janus, prompt_ids, prompt_mask, codes)
        return chunked_scored_logprobs(head, hidden, codes, sampling)
    if sampling.cfg_mode == "guided_detached_uncond":
        cond = _code_hidden_states(model, janus, prompt_ids, prompt_mask, codes)
        with torch.no_grad():  # detached branch: no activations kept for backward
            uncond = _code_hidden_states(model, janus, uncond_ids, prompt_mask, codes)
        return chunked_scored_logprobs(head, cond, codes, sampling, uncond, detach_uncond=True)
    # guided: both branches in one forward, gradients through both
    batch = codes.size(0)
    both = _code_hidden_states(model, janus, torch.cat([prompt_ids, uncond_ids]), torch.cat([prompt_mask, prompt_mask]),
                               torch.cat([codes, codes]))  # (2B, T, C)
    return chunked_scored_logprobs(head, both[:batch], codes, sampling, both[batch:])
