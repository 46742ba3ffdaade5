"""The `infinity` policy: the Infinity transformer (trainable), a frozen Flan-T5 encoder and a frozen BSQ-VAE.

Actions are bits: for each scale of the schedule, for each token, `d` two-way choices. The family config
(`InfinityFamilyConfig`, saved as `infinity.json`) says how the policy is assembled and run.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ...checkpoints import CheckpointError
from ...policy import PromptBatch, Rollout, Sampling
from ...sampling import SampleGenerators, unwrap_causal_lm
from ..image_checks import pool_to_raster
from ..shared_loading import config_for_saved_model
from .bsq_vae import BSQVAE
from .codes import ScaleCodes
from .configuration import InfinityFamilyConfig
from .sampler import sample_bits, score_bits
from .schedules import nearest_aspect_ratio, scale_schedule
from .transformer import InfinityTransformer


class InfinityPolicy:
    """The `infinity` implementation of the policy interface (see `models/policy.py`).

    Prompt ids are T5 ids, right-padded (T5's convention; the trainer never looks inside them).
    """

    def __init__(
        self, model: InfinityTransformer, tokenizer, text_encoder: nn.Module, vae: BSQVAE, config: InfinityFamilyConfig
    ) -> None:
        self.model, self.processing_class, self.text_encoder, self.vae, self.config = (
            model,
            tokenizer,
            text_encoder,
            vae,
            config,
        )
        self.aspect_ratio = nearest_aspect_ratio(config.aspect_ratio)
        self.grids = scale_schedule(self.aspect_ratio, config.resolution, config.num_scales)
        patchify = bool(config.patchify) if config.patchify is not None else False
        self.codes = ScaleCodes(self.grids, vae.codebook_dim, patchify)
        self.num_actions = self.codes.num_actions
        self._check()

    def _check(self) -> None:
        bits = self.model.config.bits_per_token
        if bits != self.codes.bits_per_token:
            raise CheckpointError(
                f"infinity: the transformer predicts {bits} bits per token, the VAE gives {self.codes.bits_per_token} "
                f"(codebook_dim {self.vae.codebook_dim}, patchify {self.codes.patchify})"
            )
        width = getattr(self.text_encoder.config, "d_model", None)
        if width is not None and width != self.model.config.text_channels:
            raise CheckpointError(
                f"infinity: T5 width {width} != transformer text_channels {self.model.config.text_channels}"
            )

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.codes.vae_grids[-1]
        return h * self.vae.config.patch_size, w * self.vae.config.patch_size

    def encode_prompts(self, prompts: list[str], device: torch.device | str = "cpu") -> PromptBatch:
        encoded = self.processing_class(
            prompts,
            padding=True,
            truncation=True,
            max_length=self.model.config.text_maxlen,
            padding_side="right",
            return_tensors="pt",
        )
        return PromptBatch(encoded.input_ids.to(device), encoded.attention_mask.to(device))

    @torch.no_grad()
    def text_features(self, prompts: PromptBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen T5 features `(B, Lt, Ct5)` float32 and the bool mask, trimmed to the longest prompt."""
        mask = prompts.attention_mask.bool()
        length = max(int(mask.sum(1).max()), 1)
        ids, mask = prompts.input_ids[:, :length], mask[:, :length]
        features = self.text_encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return features.float(), mask

    def sample(
        self,
        model: nn.Module,
        prompts: PromptBatch,
        sampling: Sampling,
        generator: torch.Generator | SampleGenerators | None = None,
    ) -> Rollout:
        text, mask = self.text_features(prompts)
        return sample_bits(unwrap_causal_lm(model), text, mask, self.codes, sampling, self.aspect_ratio, generator)

    def logprobs(
        self, model: nn.Module, prompts: PromptBatch, actions: torch.Tensor, sampling: Sampling
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text, mask = self.text_features(prompts)
        return score_bits(model, text, mask, actions, self.codes, sampling, self.aspect_ratio)

    def pool_to_actions(self, maps: torch.Tensor) -> torch.Tensor:
        """Pixel maps `(B, H, W)` at `image_size` -> `(B, T)` in the actions' order (for `object_credit`): at each
        scale, each token's mean over its cell of that scale's token grid (`pool_to_raster`), repeated over the
        token's `bits_per_token` bits. Coarse scales give a clause's box to the few large cells it overlaps, in
        proportion; fine scales follow the box."""
        bits = self.codes.bits_per_token
        per_scale = [
            pool_to_raster(maps, grid, self.image_size, "infinity").repeat_interleave(bits, dim=1)
            for grid in self.codes.grids
        ]
        return torch.cat(per_scale, dim=1)

    @torch.no_grad()
    def decode(self, actions: torch.Tensor) -> torch.Tensor:
        weight = next(self.vae.parameters())
        summed = self.codes.summed_codes(actions.to(weight.device))
        return (self.vae.decode(summed.to(weight.dtype)).float() + 1) / 2

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels `(B, 3, H, W)` in [0, 1] at `image_size` -> the bits Infinity trains on `(B, T)` (for SFT)."""
        device = next(self.vae.parameters()).device
        bits = self.vae.multiscale_bits(images.to(device) * 2 - 1, self.codes.vae_grids)
        return self.codes.actions_from_latent_bits(bits)

    def to(self, device: torch.device | str) -> "InfinityPolicy":
        self.text_encoder.to(device)
        self.vae.to(device)
        return self

    def save_pretrained(self, output_dir: str, model: nn.Module | None = None) -> None:
        """Write `infinity.json` and `vae/` next to a saved transformer (full) or adapter (LoRA)."""
        model = self.model if model is None else model
        config = config_for_saved_model(
            self.config, model, "transformer", ("size",), vae="vae", patchify=self.codes.patchify
        )
        config.save(output_dir)
        self.vae.save_pretrained(os.path.join(output_dir, "vae"))
