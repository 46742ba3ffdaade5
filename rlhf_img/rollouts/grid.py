"""A captioned grid of rollouts (prompt + reward under each image) for dashboards and READMEs."""

from __future__ import annotations

import textwrap

import torch
from PIL import Image, ImageDraw, ImageFont

from ..images import to_pil


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
