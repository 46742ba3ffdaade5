"""LlamaGen's GPT as a `NextTokenAdapter` of the shared engine (`rlhf_img/sampling/engine.py`).

The prefix is the caption: frozen T5 features of the prompt (left-padded: valid tokens last, as LlamaGen's sampler
rotates them) through the GPT's trainable `cls_embedding`, at positions 0..P-1; the unconditional prefix is the
learned null caption under the same mask. Image token s sits at position P + s, and LlamaGen's 2D RoPE reads the
grid row and column off that position (`LlamaGenGPT.forward_cached`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from transformers import PretrainedConfig

from ...policy import PromptBatch
from ...sampling.prefix import PrefixRows


@torch.no_grad()
def caption_features(text_encoder: nn.Module, prompts: PromptBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen T5 features `(B, P, Ccap)` float32, left-padded and zero on padding, and their bool mask `(B, P)`.

    As LlamaGen's sampler: features of the right-padded ids, rotated so the valid tokens come last, the mask
    flipped, the features multiplied by it."""
    mask = prompts.attention_mask.bool()
    features = text_encoder(input_ids=prompts.input_ids, attention_mask=mask.long()).last_hidden_state.float()
    length = mask.size(1)
    valid = mask.sum(1, keepdim=True)  # (B, 1)
    index = (torch.arange(length, device=mask.device).unsqueeze(0) + valid) % length  # (B, P)
    features = features.gather(1, index.unsqueeze(-1).expand(-1, -1, features.size(-1)))
    mask = caption_mask(prompts)
    return features * mask.unsqueeze(-1), mask


def caption_mask(prompts: PromptBatch) -> torch.Tensor:
    """The bool mask `(B, P)` of the left-padded caption features: the right-padded ids' mask, flipped."""
    return prompts.attention_mask.bool().flip(-1)


@dataclass(frozen=True)
class LlamaGenAdapter:
    """`NextTokenAdapter` of a `LlamaGenGPT` (the `network`). `text_encoder`: the policy's frozen T5 encoder (not
    the network: a kept compiled decode step may hold it without holding the GPT)."""

    grid_size: int
    text_encoder: nn.Module = field(compare=False)

    def _captions(self, network: nn.Module, prompts: PromptBatch, conditional: bool):
        """Caption features `(B, P, Ccap)` float32 and mask `(B, P)`: T5's for the conditional rows, the learned null
        caption under the same mask for the unconditional ones (T5 is not run for those)."""
        if conditional:
            return caption_features(self.text_encoder, prompts)
        rows = prompts.input_ids.size(0)
        return network.unconditional_captions(rows).float(), caption_mask(prompts)

    def prefix(self, network: nn.Module, prompts: PromptBatch, conditional: bool) -> PrefixRows:
        features, mask = self._captions(network, prompts, conditional)
        embeds = network.prefix(features)  # (B, P, D)
        positions = torch.arange(embeds.size(1), device=embeds.device).expand(embeds.size(0), -1)
        return PrefixRows(embeds, mask.long(), positions)

    def step_inputs(self, network: nn.Module, codes: torch.Tensor) -> torch.Tensor:
        return network.tok_embeddings(codes.unsqueeze(1))  # (R, 1, D)

    def forward(
        self, network: nn.Module, inputs: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache
    ) -> torch.Tensor:
        return network.forward_cached(inputs, mask, positions, cache, self.grid_size)

    def head(self, network: nn.Module) -> nn.Module:
        return network.get_output_embeddings()

    def cache_config(self, network: nn.Module) -> PretrainedConfig:
        return network.config

    def teacher_forced_hidden(
        self, model: nn.Module, network: nn.Module, prompts: PromptBatch, codes: torch.Tensor, branches: Sequence[bool]
    ) -> torch.Tensor:
        """Every branch's caption rows and codes 0..T-2 in one forward through `model`; the final hidden states
        `(nB, T, D)` the output layer reads (it runs chunked in the scorer)."""
        captions = [self._captions(network, prompts, conditional) for conditional in branches]
        rows = len(branches)
        return model(
            input_ids=codes[:, :-1].repeat(rows, 1),
            caption_features=torch.cat([c[0] for c in captions]),
            caption_mask=torch.cat([c[1] for c in captions]),
            grid_size=self.grid_size,
            return_hidden_states=True,
        )
