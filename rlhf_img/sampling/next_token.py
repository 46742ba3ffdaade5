"""Teacher-forced scoring, and the helpers the sampler shares, for causal LMs with an image-code block.

Used by every next-token family (`causal_vq`, SimpleAR, LlamaGen-style checkpoints): the LM's vocabulary
holds `code_count` image codes starting at id `code_offset`. Logits are computed only for those rows of
the LM head, so a rollout always has exactly `num_tokens` valid image codes (no early EOS, no text token
in the grid) and the softmax is over image codes only, in sampling and in scoring alike. The KV-cached,
CFG-batched sampler is `image_code_sampler.sample_image_codes`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..policy import Sampling
from .guidance import guide, scored_logprobs
from .chunked_logprobs import chunked_scored_logprobs


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

    def head(hidden: torch.Tensor) -> torch.Tensor:
        return image_code_logits(lm, hidden, code_offset, code_count)

    # logits are built a chunk of positions at a time (`sampling.logprob_chunk_size`), never (B, T, K) at once
    if not sampling.uses_uncond_when_scoring:
        hidden = _action_hidden_states(model, cond_ids, cond_mask, num_tokens)
        return chunked_scored_logprobs(head, hidden, codes, sampling)
    if sampling.cfg_mode == "guided_detached_uncond":
        cond = _action_hidden_states(model, cond_ids, cond_mask, num_tokens)
        with torch.no_grad():  # detached branch: no activations kept for backward
            uncond = _action_hidden_states(model, unc_ids, unc_mask, num_tokens)
        return chunked_scored_logprobs(head, cond, codes, sampling, uncond, detach_uncond=True)
    # guided: both branches in one forward, gradients through both
    ids, mask = left_pad_stack([cond_ids, unc_ids], [cond_mask, unc_mask], pad_id)
    both = _action_hidden_states(model, ids, mask, num_tokens)  # (2B, T, C)
    return chunked_scored_logprobs(head, both[:batch], codes, sampling, both[batch:])
