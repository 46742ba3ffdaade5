"""Janus' image path as a `NextTokenAdapter` of the shared engine (`rlhf_img/sampling/engine.py`).

Image tokens enter the language model as `generation_aligner(generation_embeddings(code))` and leave it through
`generation_head` (the text `lm_head` is never used). Prompt rows enter as the text embeddings of their ids.

The unconditional prompt is Janus' own: the conditional prompt with every token except BOS and
`<begin_of_image>` replaced by the pad token, under the same attention mask (left padding stays masked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from transformers import PretrainedConfig

from ...policy import PromptBatch
from ...sampling.next_token import position_ids_from_mask
from ...sampling.prefix import PrefixRows


def unconditional_ids(prompt_ids: torch.Tensor, bos_id: int, boi_id: int, pad_id: int) -> torch.Tensor:
    """Janus' unconditional prompt `(B, L)`: every token but BOS and `<begin_of_image>` replaced by pad."""
    keep = (prompt_ids == bos_id) | (prompt_ids == boi_id)
    return torch.where(keep, prompt_ids, torch.full_like(prompt_ids, pad_id))


def image_embeddings(janus: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """Language-model inputs `(..., C)` for image codes: the generation embeddings through the generation aligner."""
    return janus.prepare_embeddings_for_image_generation(codes)


@dataclass(frozen=True)
class JanusAdapter:
    """`NextTokenAdapter` of a transformers `JanusForConditionalGeneration` (the `network`)."""

    bos_id: int
    boi_id: int
    pad_id: int

    def prompt_ids(self, prompts: PromptBatch, conditional: bool) -> torch.Tensor:
        ids = prompts.input_ids
        return ids if conditional else unconditional_ids(ids, self.bos_id, self.boi_id, self.pad_id)

    def prefix(self, network: nn.Module, prompts: PromptBatch, conditional: bool) -> PrefixRows:
        embeds = network.get_input_embeddings()(self.prompt_ids(prompts, conditional))  # (B, L, C)
        return PrefixRows(embeds, prompts.attention_mask, position_ids_from_mask(prompts.attention_mask))

    def step_inputs(self, network: nn.Module, codes: torch.Tensor) -> torch.Tensor:
        return image_embeddings(network, codes.unsqueeze(1))  # (R, 1, C)

    def forward(
        self, network: nn.Module, inputs: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache
    ) -> torch.Tensor:
        return network.model.language_model(
            inputs_embeds=inputs,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        ).last_hidden_state

    def head(self, network: nn.Module) -> nn.Module:
        return network.model.generation_head

    def cache_config(self, network: nn.Module) -> PretrainedConfig:
        return network.model.language_model.config

    def teacher_forced_hidden(
        self, model: nn.Module, network: nn.Module, prompts: PromptBatch, codes: torch.Tensor, branches: Sequence[bool]
    ) -> torch.Tensor:
        """The prompt's text embeddings followed by the image embeddings of codes 0..T-2 (the last code predicts
        nothing), every branch in one forward through `model`, asking for one position of text logits only."""
        batch, num_tokens = codes.shape
        ids = torch.cat([self.prompt_ids(prompts, conditional) for conditional in branches])  # (nB, L)
        rows = len(branches)
        embeds = torch.cat(
            [network.get_input_embeddings()(ids), image_embeddings(network, codes[:, :-1].repeat(rows, 1))], dim=1
        )
        mask = torch.cat(
            [prompts.attention_mask.repeat(rows, 1), prompts.attention_mask.new_ones(rows * batch, num_tokens - 1)],
            dim=1,
        )
        outputs = model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            output_hidden_states=True,
            logits_to_keep=1,
            use_cache=False,
        )
        return outputs.hidden_states[-1][:, -num_tokens:]
