"""JPEG (in)compressibility, DDPO's weight-free rewards (Black et al., 2023): file size at quality 95."""

from __future__ import annotations

import io

import torch
from PIL import Image

from ..images import to_pil
from .registry import register_reward


def jpeg_size_kb(image: Image.Image, quality: int) -> float:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000.0


@register_reward("jpeg_compressibility")
class JpegCompressibility:
    """Reward = -(JPEG size in kB) at `quality`: favours smooth, simple images."""

    sign = -1.0

    def __init__(self, quality: int = 95) -> None:
        self.quality = quality

    def __call__(self, prompts: list[str], images: torch.Tensor, **kwargs) -> list[float]:
        return [self.sign * jpeg_size_kb(image, self.quality) for image in to_pil(images)]


@register_reward("jpeg_incompressibility")
class JpegIncompressibility(JpegCompressibility):
    """Reward = +(JPEG size in kB) at `quality`: favours detailed, high-frequency images."""

    sign = 1.0
