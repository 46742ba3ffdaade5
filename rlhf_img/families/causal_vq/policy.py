"""`causal_vq`: any transformers causal LM whose vocabulary holds a contiguous block of image codes, plus a
VQ decoder that turns an `(h, w)` grid of codes into pixels.

On disk a checkpoint is a transformers model folder (or hub repo) with two additions:

    causal_vq.json        the family config (`CausalVQConfig` below)
    visual_tokenizer/     the VQ tokenizer (config.json + model.safetensors), unless the config names another

Image code `c` is token id `image_code_offset + c` (SimpleAR's layout: offset = len(text tokenizer)).
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch
from torch import nn

from ...checkpoints import CheckpointError, parameter_shape
from ...policy import PromptBatch
from ...sampling import CausalLMAdapter, NextTokenPolicy
from ..image_checks import check_image_size, pool_to_raster
from .configuration import CausalVQConfig


class CausalVQPolicy(NextTokenPolicy):
    """The `causal_vq` implementation of the policy interface (see `rlhf_img/policy.py`): prompts, decoding and
    saving are its own; sampling and scoring are the engine's, through `CausalLMAdapter`."""

    def __init__(self, model: nn.Module, tokenizer, visual_tokenizer: nn.Module, config: CausalVQConfig) -> None:
        self.model, self.processing_class, self.visual_tokenizer, self.config = (
            model,
            tokenizer,
            visual_tokenizer,
            config,
        )
        self.num_actions = config.num_tokens
        self._check()
        uncond = config.uncond_prompt if config.uncond_prompt is not None else config.prompt_template.format(prompt="")
        uncond_row = self._tokenize([uncond])
        if uncond_row.input_ids.numel() == 0:
            raise CheckpointError("causal_vq: the unconditional prompt tokenizes to nothing; set `uncond_prompt`")
        self.adapter = CausalLMAdapter(
            code_offset=config.image_code_offset,
            code_count=config.image_code_count,
            pad_id=self.pad_token_id,
            unconditional_ids=tuple(uncond_row.input_ids[0].tolist()),
            unconditional_mask=tuple(uncond_row.attention_mask[0].tolist()),
        )

    def _check(self) -> None:
        cfg, tok = self.config, self.processing_class
        vocab = parameter_shape(self.model.get_output_embeddings().weight)[0]  # ZeRO-3: partitioned at load
        if cfg.image_code_offset + cfg.image_code_count > vocab:
            raise CheckpointError(
                f"causal_vq: image codes [{cfg.image_code_offset}, {cfg.image_code_offset + cfg.image_code_count}) "
                f"exceed the LM head's {vocab} rows"
            )
        for token in cfg.special_tokens:
            ids = tok(token, add_special_tokens=False).input_ids
            if len(ids) != 1:
                raise CheckpointError(f"causal_vq: special token {token!r} is not a single token of the tokenizer")
        codebook = getattr(self.visual_tokenizer, "codebook_size", None)
        if codebook is not None and codebook != cfg.image_code_count:
            raise CheckpointError(
                f"causal_vq: image_code_count {cfg.image_code_count} != visual tokenizer codebook size {codebook}"
            )

    @property
    def pad_token_id(self) -> int:
        tok = self.processing_class
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def _tokenize(self, texts: list[str]) -> PromptBatch:
        encoded = self.processing_class(
            texts,
            padding=True,
            padding_side="left",
            return_tensors="pt",
            add_special_tokens=self.config.add_special_tokens,
        )
        return PromptBatch(encoded.input_ids, encoded.attention_mask)

    def encode_prompts(self, prompts: list[str], device: torch.device | str = "cpu") -> PromptBatch:
        batch = self._tokenize([self.config.prompt_template.format(prompt=p) for p in prompts])
        return PromptBatch(batch.input_ids.to(device), batch.attention_mask.to(device))

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.config.grid
        factor = self.visual_tokenizer.downsample_factor  # the VQ's `2**levels`, Cosmos' 16
        return h * factor, w * factor

    @torch.no_grad()
    def decode(self, actions: torch.Tensor) -> torch.Tensor:
        h, w = self.config.grid
        device = next(self.visual_tokenizer.parameters()).device
        return self.visual_tokenizer.decode(actions.view(-1, h, w).to(device))

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels `(B, 3, H, W)` in [0, 1] at `image_size` -> codes `(B, h*w)` in `[0, image_code_count)`, raster
        order: the actions themselves, not token ids (the engine adds `image_code_offset` when it embeds a code;
        SFT sequences add it themselves). Any registered visual tokenizer (`vq`, `cosmos`) maps [0, 1] pixels to an
        `(B, h, w)` grid of codes with `encode`."""
        check_image_size(images, self.image_size, self.config.family)
        device = next(self.visual_tokenizer.parameters()).device
        return self.visual_tokenizer.encode(images.to(device)).flatten(1).long()

    def pool_to_actions(self, maps: torch.Tensor) -> torch.Tensor:
        """Pixel maps `(B, H, W)` -> `(B, T)`: each code's mean over its patch (for `object_credit`)."""
        return pool_to_raster(maps, tuple(self.config.grid), self.image_size, self.config.family)

    def to(self, device: torch.device | str) -> "CausalVQPolicy":
        self.visual_tokenizer.to(device)
        return self

    def save_pretrained(self, output_dir: str, model: nn.Module | None = None) -> None:
        """Write `causal_vq.json` and the visual tokenizer so `output_dir` loads as a `causal_vq` checkpoint."""
        replace(self.config, visual_tokenizer="visual_tokenizer").save(output_dir)
        self.visual_tokenizer.save_pretrained(os.path.join(output_dir, "visual_tokenizer"))
