"""The `llamagen` policy: LlamaGen's GPT (trainable), a frozen Flan-T5 encoder and the frozen VQ-16 (its decoder turns
actions into pixels, its encoder turns given images into actions).

Actions are the image codes of a `grid x grid` token grid (16x16 at 256 px, 32x32 at 512 px), raster order.
The family config (`LlamaGenFamilyConfig`, saved as `llamagen.json`) says how the policy is assembled.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import JanusVQVAE

from ...checkpoints import CheckpointError
from ...policy import PromptBatch
from ...sampling import NextTokenPolicy, unwrap_causal_lm
from ..image_checks import check_image_size, pool_to_raster
from ..shared_loading import config_for_saved_model
from .adapter import LlamaGenAdapter, caption_features
from .configuration import LlamaGenFamilyConfig
from .gpt import LlamaGenGPT
from .vq import quantize_images, set_grid


def vq_stride(vq: JanusVQVAE) -> int:
    return 2 ** (len(vq.config.channel_multiplier) - 1)


class LlamaGenPolicy(NextTokenPolicy):
    """The `llamagen` implementation of the policy interface (`rlhf_img/policy.py`): prompts, T5 features and
    decoding are its own; sampling and scoring are the engine's, through `LlamaGenAdapter`.

    Prompt ids are T5 ids padded on the right to the caption length (120), as LlamaGen's T5 embedder
    tokenises; `text_features` moves the valid features to the end (left padding) as its sampler does.
    """

    def __init__(
        self, model: LlamaGenGPT, tokenizer, text_encoder: nn.Module, vq: JanusVQVAE, config: LlamaGenFamilyConfig
    ) -> None:
        self.model, self.processing_class, self.text_encoder, self.vq, self.config = (
            model,
            tokenizer,
            text_encoder,
            vq,
            config,
        )
        gpt = unwrap_causal_lm(model).config
        stride = vq_stride(vq)
        if config.image_size is None or config.image_size % stride:
            raise CheckpointError(
                f"llamagen: image_size {config.image_size} is not a multiple of the VQ stride {stride}"
            )
        self.grid_size = config.image_size // stride
        set_grid(vq, self.grid_size)
        self.num_actions = self.grid_size**2
        self.adapter = LlamaGenAdapter(grid_size=self.grid_size, text_encoder=text_encoder)
        self.caption_length = gpt.cls_token_num
        if gpt.vocab_size != vq.config.num_embeddings:
            raise CheckpointError(
                f"llamagen: the GPT predicts {gpt.vocab_size} codes, the VQ has {vq.config.num_embeddings}"
            )
        if gpt.uncond_token_num != gpt.cls_token_num:
            raise CheckpointError(
                f"llamagen: null caption of {gpt.uncond_token_num} tokens != cls_token_num {gpt.cls_token_num}"
            )
        width = getattr(text_encoder.config, "d_model", None)
        if width is not None and width != gpt.caption_dim:
            raise CheckpointError(f"llamagen: T5 width {width} != GPT caption_dim {gpt.caption_dim}")

    @property
    def image_size(self) -> tuple[int, int]:
        return self.config.image_size, self.config.image_size

    def encode_prompts(self, prompts: list[str], device: torch.device | str = "cpu") -> PromptBatch:
        texts = [p.lower().strip() if self.config.lowercase_prompts else p for p in prompts]
        encoded = self.processing_class(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.caption_length,
            padding_side="right",
            return_tensors="pt",
        )
        return PromptBatch(encoded.input_ids.to(device), encoded.attention_mask.to(device))

    def text_features(self, prompts: PromptBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen T5 features `(B, P, Ccap)` float32, left-padded and zero on padding, and their bool mask `(B, P)`."""
        return caption_features(self.text_encoder, prompts)

    def pool_to_actions(self, maps: torch.Tensor) -> torch.Tensor:
        """Pixel maps `(B, H, W)` -> `(B, T)`: each code's mean over its patch (for `object_credit`)."""
        return pool_to_raster(maps, (self.grid_size, self.grid_size), self.image_size, "llamagen")

    @torch.no_grad()
    def decode(self, actions: torch.Tensor) -> torch.Tensor:
        """Codes `(B, grid²)` -> pixels `(B, 3, H, W)` in [0, 1] (the VQ decodes to about [-1, 1])."""
        device = next(self.vq.parameters()).device
        pixels = self.vq.decode(actions.to(device).long()).float()
        return ((pixels + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels `(B, 3, H, W)` in [0, 1] at `image_size` -> codes `(B, grid²)` long on the VQ's device, row-major:
        the layout `decode` takes and the GPT predicts, so given images can be teacher-forced (SFT, DPO).

        The VQ's encoder, then LlamaGen's L2-normalised nearest-code lookup (`vq.quantize_images`), as the
        reference's `extract_codes_t2i.py` does. Any other size is refused (`check_image_size`), not resized: the
        GPT was trained on this grid, and resizing belongs to the caller's data pipeline."""
        check_image_size(images, self.image_size, "llamagen")
        return quantize_images(self.vq, images).codes

    def to(self, device: torch.device | str) -> "LlamaGenPolicy":
        self.text_encoder.to(device)
        self.vq.to(device)
        return self

    def save_pretrained(self, output_dir: str, model: nn.Module | None = None) -> None:
        """Write `llamagen.json` and `vq/` next to a saved GPT (full) or adapter (LoRA)."""
        model = self.model if model is None else model
        config_for_saved_model(self.config, model, "gpt", ("size", "num_heads"), vq="vq").save(output_dir)
        self.vq.save_pretrained(os.path.join(output_dir, "vq"))
