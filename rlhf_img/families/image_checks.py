"""The input check every family's `Policy.encode_images` shares."""

from __future__ import annotations

import torch


def check_image_size(images: torch.Tensor, expected: tuple[int, int], family: str) -> None:
    """Refuse pixels that are not `(B, 3, H, W)` at the policy's `image_size`: a convolutional encoder would encode
    them anyway, into a grid of another size, and the actions would silently not be `(B, num_actions)`. Resizing
    is the caller's (its data pipeline chooses how to crop and resample)."""
    if images.dim() != 4 or images.size(1) != 3 or tuple(images.shape[-2:]) != tuple(expected):
        raise ValueError(
            f"{family}: encode_images takes pixels (B, 3, {expected[0]}, {expected[1]}) in [0, 1] "
            f"(the policy's image_size); got shape {tuple(images.shape)}"
        )


def pool_to_raster(maps: torch.Tensor, grid: tuple[int, int], image_size: tuple[int, int], family: str) -> torch.Tensor:
    """Pixel maps `(B, H, W)` at `image_size` -> `(B, h * w)`: each code's mean over the patch of pixels it decodes
    to, codes in raster order of an `(h, w)` grid (adaptive average pooling: exact patches where the grid divides
    the image; where it does not, as at Infinity's coarse scales, neighbouring cells share their boundary pixels).
    The `pool_to_actions` of every family whose actions are one code per patch (causal_vq, simplear, llamagen,
    janus, emu3), and of infinity once per scale."""
    height, width = image_size
    if maps.dim() != 3 or tuple(maps.shape[1:]) != (height, width):
        raise ValueError(f"{family}: pool_to_actions takes maps (B, {height}, {width}); got {tuple(maps.shape)}")
    return torch.nn.functional.adaptive_avg_pool2d(maps[:, None].float(), tuple(grid)).flatten(1)
