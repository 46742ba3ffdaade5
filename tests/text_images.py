"""Rendered text images for the OCR tests: a sign with text on a coloured background, made with PIL.

The font is Pillow's own scalable default (Aileron, bundled since Pillow 10.1 and drawn through FreeType, which
every Pillow wheel carries), so the images are the same on any machine without system fonts."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def font(size: int) -> ImageFont.FreeTypeFont:
    loaded = ImageFont.load_default(size=size)
    assert isinstance(loaded, ImageFont.FreeTypeFont), "this Pillow has no FreeType: no scalable default font"
    return loaded


def render_sign(
    text: str,
    size: int = 512,
    font_size: int = 56,
    background: tuple[int, int, int] = (40, 90, 160),
    ink: tuple[int, int, int] = (20, 20, 20),
) -> torch.Tensor:
    """`(3, size, size)` float in [0, 1]: `text` (may hold newlines) centred on a light rounded sign."""
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    margin = size // 16
    draw.rounded_rectangle((margin, size // 3, size - margin, 2 * size // 3), radius=size // 25, fill=(250, 245, 230))
    draw.multiline_text((size // 2, size // 2), text, fill=ink, font=font(font_size), anchor="mm", align="center")
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


def blank(size: int = 512, value: float = 1.0) -> torch.Tensor:
    """`(3, size, size)` of one grey level: nothing to read."""
    return torch.full((3, size, size), value)
