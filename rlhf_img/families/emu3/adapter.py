"""Emu3's image path as a `NextTokenAdapter` of the shared engine (`rlhf_img/sampling/engine.py`).

Emu3 writes an image as text tokens: `h` rows of `w` visual tokens, each row closed by the end-of-line token
`<|extra_200|>`, then end-of-frame, end-of-image, EOS. BAAI's sampler and transformers' documented one force the
structural tokens with a prefix constraint and draw visual tokens over the visual block only. Here the actions are
the `h * w` visual codes alone: the engine draws and scores them over the visual rows of the LM head (the same
subset in sampling and scoring), and the adapter declares the end-of-line token as forced after the last code of a
row (`forced_after`), so it is fed through the same decode step, never drawn and never in the loss. The trailing
end-of-frame / end-of-image / EOS tokens predict nothing the image needs, so they are never fed.

Visual code `c` is token `visual_offset + c` (the released tokenizer and this family's stand-in hold the 32,768
visual tokens as one contiguous block, in code order; the policy checks it). CFG's unconditional prompt is one
constant row (BAAI's negative prompt with the image header), prefilled once per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from transformers import PretrainedConfig

from ...policy import PromptBatch
from ...sampling.next_token import (
    image_code_logits,
    left_pad_stack,
    position_ids_from_mask,
)
from ...sampling.prefix import PrefixRows


@dataclass(frozen=True)
class Emu3Adapter:
    """`NextTokenAdapter` of a transformers `Emu3ForConditionalGeneration` (the `network`).

    `width`: visual codes per row (the end-of-line token follows each row). Step inputs are codes `0..K-1` and
    `K = code_count`, which stands for the end-of-line token. `unconditional_ids`: CFG's one unconditional row."""

    visual_offset: int
    code_count: int
    end_of_line_id: int
    width: int
    pad_id: int
    unconditional_ids: tuple[int, ...]

    def forced_after(self, index: int) -> tuple[int, ...]:
        """The end-of-line step input after the last code of each row (codes counted from 0, raster order)."""
        return (self.code_count,) if (index + 1) % self.width == 0 else ()

    def image_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `(B, h * w)` -> the token ids Emu3 writes for them `(B, h * (w + 1))`: each row's visual tokens,
        then the end-of-line token."""
        rows = (codes + self.visual_offset).view(codes.size(0), -1, self.width)  # (B, h, w)
        end_of_line = rows.new_full((*rows.shape[:2], 1), self.end_of_line_id)
        return torch.cat([rows, end_of_line], dim=2).flatten(1)

    def _unconditional(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor([self.unconditional_ids], dtype=torch.long, device=device)
        return ids, torch.ones_like(ids)

    def prefix(self, network: nn.Module, prompts: PromptBatch, conditional: bool) -> PrefixRows:
        if conditional:
            ids, mask = prompts.input_ids, prompts.attention_mask
        else:
            ids, mask = self._unconditional(prompts.input_ids.device)  # one row, whatever the prompts
        return PrefixRows(ids, mask, position_ids_from_mask(mask), pad_value=self.pad_id)

    def step_inputs(self, network: nn.Module, codes: torch.Tensor) -> torch.Tensor:
        tokens = torch.where(
            codes == self.code_count, torch.full_like(codes, self.end_of_line_id), codes + self.visual_offset
        )
        return tokens.unsqueeze(1)  # (R, 1) token ids

    def forward(
        self, network: nn.Module, inputs: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache
    ) -> torch.Tensor:
        return network.model.text_model(
            input_ids=inputs,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        ).last_hidden_state

    def head(self, network: nn.Module):
        return lambda hidden: image_code_logits(network, hidden, self.visual_offset, self.code_count)

    def cache_config(self, network: nn.Module) -> PretrainedConfig:
        return network.model.text_model.config

    def teacher_forced_hidden(
        self, model: nn.Module, network: nn.Module, prompts: PromptBatch, codes: torch.Tensor, branches: Sequence[bool]
    ) -> torch.Tensor:
        """Every branch's prompt rows, then the image's tokens with their end-of-line tokens up to the one before
        the last code, left-padded together; one forward through `model` (one position of full-vocabulary logits
        asked for); the hidden states `(nB, T, C)` at the position before each visual token."""
        batch, num_tokens = codes.shape
        tokens = self.image_tokens(codes)[:, :-2]  # (B, n): the last code and the last end-of-line predict no code
        ones = prompts.attention_mask.new_ones(tokens.shape)
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
        # visual token (r, c) sits at (first image position) + r * (w + 1) + c; the position before it predicts it
        height = num_tokens // self.width
        first = ids.size(1) - tokens.size(1)
        rows = torch.arange(height, device=codes.device).unsqueeze(1) * (self.width + 1)
        index = (first - 1 + rows + torch.arange(self.width, device=codes.device)).flatten()  # (T,)
        return outputs.hidden_states[-1][:, index]
