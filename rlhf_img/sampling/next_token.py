"""KV-cached, CFG-batched sampling and teacher-forced scoring for causal LMs with an image-code block.

Used by every next-token family (`causal_vq`, SimpleAR, LlamaGen-style checkpoints): the LM's vocabulary
holds `code_count` image codes starting at id `code_offset`. Logits are computed only for those rows of
the LM head, so a rollout always has exactly `num_tokens` valid image codes (no early EOS, no text token
in the grid) and the softmax is over image codes only, in sampling and in scoring alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from ..policy import Rollout, Sampling
from .guidance import guide, sample_actions, scored_logprobs


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers causal LM under peft / DDP wrappers (LoRA layers stay injected and active)."""
    while hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):
        model = model.module  # DDP / DeepSpeed engines
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()  # peft
    return model


def image_code_logits(lm: nn.Module, hidden: torch.Tensor, code_offset: int, code_count: int) -> torch.Tensor:
    """Logits `(..., code_count)` for the image-code rows of the LM head only."""
    head = lm.get_output_embeddings()
    # A plain head: slice the weight, never build the full-vocabulary logits. A LoRA-wrapped head, or a
    # ZeRO-3-partitioned weight (`ds_id`; its module hook gathers it), goes through the module instead.
    if type(head) is nn.Linear and not hasattr(head.weight, "ds_id"):
        weight = head.weight[code_offset : code_offset + code_count]
        bias = None if head.bias is None else head.bias[code_offset : code_offset + code_count]
        return F.linear(hidden.to(weight.dtype), weight, bias)
    return head(hidden)[..., code_offset : code_offset + code_count]  # e.g. a LoRA-wrapped head


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding, identical in sampling and in scoring."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad_stack(
    ids: list[torch.Tensor], masks: list[torch.Tensor], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack left-padded `(B_i, L_i)` blocks into one left-padded `(sum B_i, max L_i)` batch."""
    length = max(x.size(1) for x in ids)
    out_ids, out_masks = [], []
    for x, m in zip(ids, masks):
        pad = length - x.size(1)
        out_ids.append(F.pad(x, (pad, 0), value=pad_id))
        out_masks.append(F.pad(m, (pad, 0), value=0))
    return torch.cat(out_ids), torch.cat(out_masks)


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
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample `num_tokens` image codes per row of `prompt_ids` `(B, L)`.

    With guidance the unconditional rows ride in the same forward as the conditional rows (batch 2B) and
    share one KV cache. `uncond_ids` is `(1, Lu)`, broadcast to the batch. Returns codes `(B, T)` in
    `[0, code_count)` and their log-probs under the distribution they were drawn from (guided when CFG is
    on), so `|sampling logp - scored logp|` shows both numerical drift and `sample_only`'s off-policy gap.
    """
    batch = prompt_ids.size(0)
    with_uncond = sampling.uses_uncond_when_sampling
    if with_uncond:
        ids, mask = left_pad_stack(
            [prompt_ids, uncond_ids.expand(batch, -1)], [prompt_mask, uncond_mask.expand(batch, -1)], pad_id
        )
    else:
        ids, mask = prompt_ids, prompt_mask
    decoder = lm.get_decoder()
    cache = DynamicCache(config=lm.config)
    positions = position_ids_from_mask(mask)
    hidden = decoder(
        input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
    ).last_hidden_state[:, -1]  # (R, C)
    next_position = positions[:, -1:] + 1  # (R, 1)

    codes = torch.empty(batch, num_tokens, dtype=torch.long, device=ids.device)
    logprobs = torch.empty(batch, num_tokens, dtype=torch.float32, device=ids.device)
    for t in range(num_tokens):
        logits = image_code_logits(lm, hidden, code_offset, code_count).float()  # (R, K)
        cond, uncond = (logits[:batch], logits[batch:]) if with_uncond else (logits, None)
        guided = guide(cond, uncond, sampling.cfg_scale)
        code = sample_actions(guided, sampling, generator)  # (B,)
        logprobs[:, t] = scored_logprobs(guided, code, sampling)[0]
        codes[:, t] = code
        if t == num_tokens - 1:
            break
        token = (code + code_offset).unsqueeze(1)  # (B, 1)
        if with_uncond:
            token = torch.cat([token, token])
        mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
        hidden = decoder(
            input_ids=token, attention_mask=mask, position_ids=next_position, past_key_values=cache, use_cache=True
        ).last_hidden_state[:, -1]
        next_position = next_position + 1
    return Rollout(actions=codes, logprobs=logprobs)


def _action_hidden_states(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Final-layer hidden states `(B, T, C)` at the positions that predict the last `num_tokens` tokens.

    Goes through `model` itself (peft / DDP / FSDP wrappers included) so training hooks fire; asks the
    model for one position of full-vocabulary logits only.
    """
    outputs = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),
        output_hidden_states=True,
        logits_to_keep=1,
        use_cache=False,
    )
    return outputs.hidden_states[-1][:, -num_tokens - 1 : -1]


def score_image_codes(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    uncond_ids: torch.Tensor,
    uncond_mask: torch.Tensor,
    codes: torch.Tensor,
    *,
    code_offset: int,
    code_count: int,
    pad_id: int,
    sampling: Sampling,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log-probs and entropies `(B, T)` of `codes` under `sampling.cfg_mode`."""
    batch, num_tokens = codes.shape
    lm = unwrap_causal_lm(model)
    tokens = codes + code_offset
    ones = prompt_mask.new_ones(batch, num_tokens)
    cond_ids, cond_mask = torch.cat([prompt_ids, tokens], 1), torch.cat([prompt_mask, ones], 1)
    unc_ids = torch.cat([uncond_ids.expand(batch, -1), tokens], 1)
    unc_mask = torch.cat([uncond_mask.expand(batch, -1), ones], 1)

    if not sampling.uses_uncond_when_scoring:
        hidden = _action_hidden_states(model, cond_ids, cond_mask, num_tokens)
        logits = image_code_logits(lm, hidden, code_offset, code_count)
    elif sampling.cfg_mode == "guided_detached_uncond":
        cond = image_code_logits(lm, _action_hidden_states(model, cond_ids, cond_mask, num_tokens), code_offset, code_count)
        with torch.no_grad():  # detached branch: no activations kept for backward
            uncond = image_code_logits(
                lm, _action_hidden_states(model, unc_ids, unc_mask, num_tokens), code_offset, code_count
            )
        logits = guide(cond.float(), uncond.float(), sampling.cfg_scale)
    else:  # guided: both branches in one forward, gradients through both
        ids, mask = left_pad_stack([cond_ids, unc_ids], [cond_mask, unc_mask], pad_id)
        both = image_code_logits(lm, _action_hidden_states(model, ids, mask, num_tokens), code_offset, code_count)
        logits = guide(both[:batch].float(), both[batch:].float(), sampling.cfg_scale)
    return scored_logprobs(logits, codes, sampling)
