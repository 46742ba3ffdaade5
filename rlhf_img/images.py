"""Conversions of image batches `(B, 3, H, W)` float in [0, 1] (the policy's output, the rewards' input)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """`(B, 3, H, W)` float in [0, 1] -> `(B, H, W, 3)` uint8 on the CPU."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """`(B, 3, H, W)` float in [0, 1] -> RGB PIL images."""
    return [Image.fromarray(array, mode="RGB") for array in to_uint8(images)]
