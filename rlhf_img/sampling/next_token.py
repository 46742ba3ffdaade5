"""The engine adapter of causal LMs whose vocabulary holds a block of image codes (`causal_vq`, SimpleAR).

Image code `c` is token id `code_offset + c`. Logits are computed only for the `code_count` image-code rows of the
LM head, so a rollout always has exactly `num_tokens` valid image codes (no early EOS, no text token in the grid)
and the softmax is over image codes only, in sampling and in scoring alike. The unconditional prompt is one
constant row (the family's template filled with an empty caption), prefilled once per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from ..policy import PromptBatch
from .prefix import PrefixRows


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


@dataclass(frozen=True)
class CausalLMAdapter:
    """`NextTokenAdapter` (`rlhf_img/sampling/engine.py`) of a transformers causal LM with an image-code block.

    `unconditional_ids` / `unconditional_mask`: the one unconditional prompt row, as a tuple (hashable)."""

    code_offset: int
    code_count: int
    pad_id: int
    unconditional_ids: tuple[int, ...]
    unconditional_mask: tuple[int, ...]

    def _unconditional(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor([self.unconditional_ids], dtype=torch.long, device=device)
        return ids, torch.tensor([self.unconditional_mask], dtype=torch.long, device=device)

    def prefix(self, network: nn.Module, prompts: PromptBatch, conditional: bool) -> PrefixRows:
        if conditional:
            ids, mask = prompts.input_ids, prompts.attention_mask
        else:
            ids, mask = self._unconditional(prompts.input_ids.device)  # one row, whatever the prompts
        return PrefixRows(ids, mask, position_ids_from_mask(mask), pad_value=self.pad_id)

    def step_inputs(self, network: nn.Module, codes: torch.Tensor) -> torch.Tensor:
        return (codes + self.code_offset).unsqueeze(1)  # (R, 1) token ids

    def forward(
        self, network: nn.Module, inputs: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache
    ) -> torch.Tensor:
        return network.get_decoder()(
            input_ids=inputs, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
        ).last_hidden_state

    def head(self, network: nn.Module):
        return lambda hidden: image_code_logits(network, hidden, self.code_offset, self.code_count)

    def cache_config(self, network: nn.Module) -> PretrainedConfig:
        return network.config

    def teacher_forced_hidden(
        self, model: nn.Module, network: nn.Module, prompts: PromptBatch, codes: torch.Tensor, branches: Sequence[bool]
    ) -> torch.Tensor:
        """Prompt rows (conditional, or the unconditional row per sample) + all codes as tokens, left-padded
        together; one forward through `model`, asking for one position of full-vocabulary logits only."""
        batch, num_tokens = codes.shape
        tokens = codes + self.code_offset
        ones = prompts.attention_mask.new_ones(batch, num_tokens)
        ids, masks = [], []
        for conditional in branches:
            if conditional:
                prompt_ids, prompt_mask = prompts.input_ids, prompts.attention_mask
            else:
                prompt_ids, prompt_mask = (x.expand(batch, -1) for x in self._unconditional(codes.device))
            ids.append(torch.cat([prompt_ids, tokens], 1))
            masks.append(torch.cat([prompt_mask, ones], 1))
        ids, mask = left_pad_stack(ids, masks, self.pad_id)
        outputs = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            output_hidden_states=True,
            logits_to_keep=1,
            use_cache=False,
        )
        return outputs.hidden_states[-1][:, -num_tokens - 1 : -1]
