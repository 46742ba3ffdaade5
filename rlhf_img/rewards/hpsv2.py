"""`hpsv2`: Human Preference Score v2 / v2.1 (Wu et al., 2023), an open_clip ViT-H-14 fine-tuned on HPD v2.

The released checkpoints (`HPS_v2_compressed.pt`, `HPS_v2.1_compressed.pt` in the hub repo `xswu/HPSv2`) are
dicts whose `state_dict` holds the whole CLIP model, so the architecture is built without pretrained weights and
the file is loaded strictly. Score = cos(image, text) of the L2-normalised embeddings, which is what `hpsv2.score`
returns; HPSv2's benchmark tables report 100x that.

HPSv2's evaluation transform letterboxes: the longer side is resized to the model's input size (bicubic, on
the tensor) and the shorter side is padded with black, then OpenAI's mean/std are applied. `letterbox_images`
does the same here; for square images it is a plain resize.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .clip import load_open_clip, load_state_dict_file, normalize_pixels
from .loading import RewardConfigError
from .registry import register_reward

WEIGHTS_HINT = "HPS_v2.1_compressed.pt or HPS_v2_compressed.pt from https://huggingface.co/xswu/HPSv2"


def letterbox_images(images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """`(B, 3, H, W)` in [0, 1] -> `(B, 3, size, size)`: longer side to `size` (bicubic, antialiased), shorter
    side padded with zeros (black) split evenly, then normalised."""
    images = images.float()
    height, width = images.shape[-2:]
    scale = size / max(height, width)
    new_height, new_width = round(height * scale), round(width * scale)
    if (new_height, new_width) != (height, width):
        images = F.interpolate(
            images, size=(new_height, new_width), mode="bicubic", align_corners=False, antialias=True
        )
    pad_height, pad_width = size - new_height, size - new_width
    if pad_height or pad_width:
        images = F.pad(
            images, (pad_width // 2, pad_width - pad_width // 2, pad_height // 2, pad_height - pad_height // 2)
        )
    return normalize_pixels(images, mean, std)


def hps_state_dict(path: str, owner: str) -> dict[str, torch.Tensor]:
    """The CLIP state dict in an HPS checkpoint (`{'state_dict': ...}`) or a bare state dict, without DDP's
    `module.` prefix."""
    checkpoint = load_state_dict_file(path, owner)
    state_dict = checkpoint.get("state_dict", checkpoint)
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    return state_dict


@register_reward("hpsv2")
class HPSv2:
    """`weights`: an HPS v2 / v2.1 checkpoint, or a `.safetensors` / `.pt` state dict of the same model;
    `clip_model`: its open_clip architecture (`ViT-H-14`, or `local-dir:DIR` holding an `open_clip_config.json`)."""

    def __init__(
        self,
        weights: str | None = None,
        clip_model: str = "ViT-H-14",
        device: str | None = None,
        batch_size: int = 32,
        precision: str = "fp32",
    ) -> None:
        owner = "reward 'hpsv2'"
        if not weights:
            raise RewardConfigError(f"{owner} needs kwargs.weights: a local path to {WEIGHTS_HINT}")
        state_dict = hps_state_dict(weights, owner)  # before building the model: a bad path fails fast
        self.clip = load_open_clip(clip_model, None, device, precision)
        try:
            result = self.clip.model.load_state_dict(state_dict, strict=False)
        except RuntimeError as error:  # shape mismatches
            raise ValueError(
                f"{owner}: {weights} does not fit open_clip {clip_model!r}: {str(error).splitlines()[-1].strip()}"
            ) from None
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{owner}: {weights} does not fit open_clip {clip_model!r}: "
                f"{len(result.missing_keys)} missing keys {result.missing_keys[:3]}, "
                f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:3]}"
            )
        size = self.clip.size
        if not isinstance(size, int):
            if size[0] != size[1]:
                raise ValueError(f"{owner}: letterboxing needs a square model input, {clip_model} takes {size}")
            size = size[0]
        self.size, self.batch_size = size, batch_size

    def letterbox(self, images: torch.Tensor) -> torch.Tensor:
        """HPS v2's preprocessing (letterbox to the model's square input) instead of CLIP's centre crop."""
        return letterbox_images(images, self.size, self.clip.mean, self.clip.std)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """`(B, D)` L2-normalised image embeddings of HPS v2's CLIP, float32 (the last call's, for the same
        tensor): the image-embedding capability the diversity monitor uses (`RewardSet.image_embedder`)."""
        return self.clip.embed_images(images, self.batch_size, preprocess=self.letterbox)

    @torch.no_grad()
    def __call__(self, prompts: list[str], images: torch.Tensor, **columns) -> list[float]:
        if len(prompts) != len(images):
            raise ValueError(f"hpsv2: {len(prompts)} prompts for {len(images)} images")
        image_features = self.clip.image_features(images, self.batch_size, preprocess=self.letterbox)
        text_features = self.clip.text_features(prompts)  # (B, D), L2-normalised
        return (image_features * text_features).sum(-1).tolist()
