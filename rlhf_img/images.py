"""Conversions of image batches `(B, 3, H, W)` float in [0, 1] (the policy's output, the rewards' input)."""

from __future__ import annotations

import textwrap

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """`(B, 3, H, W)` float in [0, 1] -> `(B, H, W, 3)` uint8 on the CPU."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """`(B, 3, H, W)` float in [0, 1] -> RGB PIL images."""
    return [Image.fromarray(array, mode="RGB") for array in to_uint8(images)]


def captioned_grid(
    images: torch.Tensor, captions: list[str], columns: int = 4, min_size: int = 128, caption_lines: int = 3
) -> Image.Image:
    """`(N, 3, H, W)` in [0, 1] -> one RGB image, each tile upscaled (nearest) to at least `min_size` px."""
    tiles = to_pil(images)
    scale = max(1, -(-min_size // max(tiles[0].size)))
    tile_w, tile_h = tiles[0].width * scale, tiles[0].height * scale
    font = ImageFont.load_default()
    line_height = 12
    chars_per_line = max(8, tile_w // 6)
    cell_h = tile_h + caption_lines * line_height + 4
    rows = -(-len(tiles) // columns)
    columns = min(columns, len(tiles))
    grid = Image.new("RGB", (columns * tile_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for index, (tile, caption) in enumerate(zip(tiles, captions)):
        x, y = (index % columns) * tile_w, (index // columns) * cell_h
        grid.paste(tile.resize((tile_w, tile_h), Image.NEAREST), (x, y))
        lines = textwrap.wrap(caption, chars_per_line)[:caption_lines]
        for line_index, line in enumerate(lines):
            draw.text((x + 2, y + tile_h + 2 + line_index * line_height), line, fill="black", font=font)
    return grid
