"""One input row of `rlhf-img encode` and how it becomes pixels: load, check, fit to the policy's image size.

Shared by every input kind (`image_sources.py`) and by anything else that must preprocess images exactly as the
encoded shards were (`fit_image`). A bad row never raises out of `prepare_row`: it comes back with a one-line
reason, so one corrupt file costs one row, not the shards already written.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import ExifTags, Image, ImageOps


class BadRow(Exception):
    """One row cannot be used (no caption, no image member); its message is the reason recorded for its key."""


@dataclass(frozen=True)
class SourceRow:
    """One input pair. `load()` -> `(caption, opened PIL image)`; raises (`BadRow`, `OSError`, PIL's errors) for a
    bad row. Keys name the row in the output and in the skipped list."""

    key: str
    load: Callable[[], tuple[str, Image.Image]]


@dataclass(frozen=True)
class PreparedRow:
    """A loaded row: `pixels` `(H, W, 3)` uint8 at the policy's image size, `height` / `width` of the source
    image; or, for a bad row, `pixels None` and the one-line `reason`."""

    key: str
    caption: str | None
    pixels: np.ndarray | None
    height: int
    width: int
    reason: str | None = None


TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1: as stored). Cameras store photos sideways and tag them; `datasets`' Image
    feature, browsers and viewers all show them turned, and so must the training image."""
    return int(image.getexif().get(ExifTags.Base.Orientation, 1) or 1)


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """`(width, height)` as shown, after the EXIF orientation."""
    width, height = image.size
    return (height, width) if exif_orientation(image) in TRANSPOSING_ORIENTATIONS else (width, height)


def fit_image(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """`(H, W, 3)` uint8 at `size = (H, W)`: turned upright (EXIF orientation), RGB, scaled (bicubic) to cover
    `size` keeping its aspect, then centre-cropped (for a square `size`: the shorter side to the size, as SimpleAR's
    SFT prepares images). Large JPEGs are DCT-downscaled while decoding (`Image.draft`, never below the covering
    size), which keeps a dataset of 4K photos from being decode-bound; the result differs from a full decode by
    resampling noise only."""
    height, width = size
    orientation = exif_orientation(image)
    if image.format == "JPEG":
        stored_height, stored_width = (width, height) if orientation in TRANSPOSING_ORIENTATIONS else (height, width)
        scale = max(stored_height / image.height, stored_width / image.width)
        image.draft(
            "RGB", (max(stored_width, round(image.width * scale)), max(stored_height, round(image.height * scale)))
        )
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    image = image.convert("RGB")
    scale = max(height / image.height, width / image.width)
    resized = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if resized != image.size:
        image = image.resize(resized, Image.BICUBIC)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return np.array(image.crop((left, top, left + width, top + height)), dtype=np.uint8)  # writable: torch-friendly


def one_line(message: object) -> str:
    """`message` on one line: control characters escaped (a reason is printed and stored as one line)."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in str(message))


def prepare_row(row: SourceRow, size: tuple[int, int]) -> PreparedRow:
    """Load, check and fit one row; any failure becomes a skipped row with a one-line reason, never an
    exception (a corrupt image must not cost the shards already written)."""
    try:
        caption, image = row.load()
        with image:
            width, height = displayed_size(image)  # the source size, upright, before any draft/resize
            if width == 0 or height == 0:
                raise BadRow(f"zero-size image ({width}x{height})")
            pixels = fit_image(image, size)
        return PreparedRow(row.key, caption, pixels, height, width)
    except BadRow as error:
        return PreparedRow(row.key, None, None, 0, 0, one_line(error))
    except Exception as error:  # noqa: BLE001 - PIL raises many types for corrupt files (OSError, SyntaxError, ...)
        return PreparedRow(row.key, None, None, 0, 0, one_line(f"{type(error).__name__}: {error}"))


def open_image_bytes(data: bytes) -> Image.Image:
    if not data:
        raise BadRow("empty image (0 bytes)")
    return Image.open(io.BytesIO(data))  # decoded by `fit_image`, after `draft`; errors land in `prepare_row`


def open_image_file(path: str) -> Image.Image:
    if not os.path.exists(path):
        raise BadRow(f"image file not found: {path}")
    if os.path.getsize(path) == 0:
        raise BadRow(f"empty image file (0 bytes): {path}")
    return Image.open(path)


def caption_text(value: Any, where: str) -> str:
    if value is None or (isinstance(value, float) and value != value):  # null / NaN from a table
        raise BadRow(f"no caption ({where})")
    return str(value)
