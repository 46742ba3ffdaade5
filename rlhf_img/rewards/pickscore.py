"""`pickscore`: PickScore (Kirstain et al., 2023), a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences.

Score of an image for its prompt = `logit_scale.exp() * cos(image, text)`, as in the PickScore README. The
model is a transformers `CLIPModel` (`yuvalkirstain/PickScore_v1`); the tokenizer and the image preprocessing
come from the processor it was trained with (`laion/CLIP-ViT-H-14-laion2B-s32B-b79K`). Images are preprocessed
on the tensor (`preprocess_images`) with that processor's sizes, mean and std, instead of a PIL round trip.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from .clip import LastEmbeddings, default_device, normalize_pixels, preprocess_images
from .registry import register_reward


def _embeddings(output: Any) -> torch.Tensor:
    """transformers < 5 returns the projected embeddings; 5.x returns an output whose `pooler_output` holds them."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _is_path(source: str) -> bool:
    """A local folder rather than a hub id (`org/name` is read as a hub id unless that folder exists)."""
    return os.path.isabs(source) or source.startswith((".", "~")) or os.path.isdir(source)


@register_reward("pickscore")
class PickScore:
    """`model`: hub id or local folder of a `CLIPModel`; `processor`: hub id or local folder holding the
    tokenizer and `preprocessor_config.json`."""

    def __init__(
        self,
        model: str = "yuvalkirstain/PickScore_v1",
        processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        device: str | None = None,
        batch_size: int = 32,
    ) -> None:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        for role, source in (("model", model), ("processor", processor)):
            if _is_path(source) and not os.path.isdir(os.path.expanduser(source)):
                raise FileNotFoundError(f"reward 'pickscore': {role} folder not found: {source}")
        model, processor = os.path.expanduser(model), os.path.expanduser(processor)
        self.device = torch.device(device) if device is not None else default_device()
        self.model = CLIPModel.from_pretrained(model).eval().requires_grad_(False).to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(processor)
        image_processor = CLIPImageProcessor.from_pretrained(processor)
        size = image_processor.size  # CLIP processors resize the shortest edge; a height/width pair is approximated
        self.resize_to = size["shortest_edge"] if "shortest_edge" in size else min(size["height"], size["width"])
        crop = image_processor.crop_size
        self.crop_size = (crop["height"], crop["width"]) if image_processor.do_center_crop else (self.resize_to,) * 2
        self.mean, self.std = tuple(image_processor.image_mean), tuple(image_processor.image_std)
        self.max_length = self.model.config.text_config.max_position_embeddings
        self.batch_size = batch_size
        self.last = LastEmbeddings()

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """`(B, 3, H, W)` in [0, 1] -> `(B, 3, crop_h, crop_w)` as `CLIPImageProcessor` would make them."""
        if self.crop_size == (self.resize_to, self.resize_to):
            return preprocess_images(images, self.resize_to, self.mean, self.std)
        # shorter side to `resize_to` (centre square kept), then the processor's own centre crop
        square = preprocess_images(images, self.resize_to, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        height, width = self.crop_size
        top, left = (self.resize_to - height) // 2, (self.resize_to - width) // 2
        return normalize_pixels(square[..., top : top + height, left : left + width], self.mean, self.std)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """`(B, D)` L2-normalised image embeddings, float32, computed in chunks of `batch_size` (and remembered)."""
        dtype = next(self.model.parameters()).dtype
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.pixel_values(images[start : start + self.batch_size].to(self.device))
            embeds = _embeddings(self.model.get_image_features(pixel_values=pixels.to(dtype)))
            chunks.append(F.normalize(embeds.float(), dim=-1))
        features = torch.cat(chunks)
        self.last.remember(images, features)
        return features

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """`(B, D)` L2-normalised image embeddings, float32 (the last call's, for the same tensor): the
        image-embedding capability the diversity monitor uses (`RewardSet.image_embedder`)."""
        cached = self.last.get(images)
        return cached if cached is not None else self.image_features(images)

    @torch.no_grad()
    def __call__(self, prompts: list[str], images: torch.Tensor, **columns) -> list[float]:
        if len(prompts) != len(images):
            raise ValueError(f"pickscore: {len(prompts)} prompts for {len(images)} images")
        image_embeds = self.image_features(images)  # (B, D)
        scores = []
        for start in range(0, len(images), self.batch_size):
            tokens = self.tokenizer(
                list(prompts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            text_embeds = F.normalize(_embeddings(self.model.get_text_features(**tokens)).float(), dim=-1)
            scores.append(
                self.model.logit_scale.exp().float()
                * (image_embeds[start : start + len(text_embeds)] * text_embeds).sum(-1)
            )
        return torch.cat(scores).tolist()
