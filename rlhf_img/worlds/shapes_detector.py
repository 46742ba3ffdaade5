"""The exact detector of the shapes world: pixels -> nearest palette colour -> connected components per
colour -> shape by geometry -> GenEval-style detections, judged by `rlhf_img/geneval_rules.py`.

Robust to VQ reconstructions: each pixel takes the nearest of the background and palette colours,
components are hole-filled and tiny ones dropped as noise, and the shape is read from the component's
geometry in its bounding box (see `shape_of`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..geneval_rules import Detection, Judgement, evaluate, select_detections
from .shapes import ANY_SHAPE, BACKGROUND, COLORS

PALETTE = np.array([BACKGROUND, *COLORS.values()], dtype=np.float32)  # index 0 = background
PALETTE_NAMES = ["background", *COLORS]
MIN_AREA = 6  # pixels; smaller components are VQ noise


def classify_pixels(image: np.ndarray) -> np.ndarray:
    """`(H, W, 3)` uint8 -> `(H, W)` palette index (0 = background) by nearest colour."""
    distances = ((image[:, :, None, :].astype(np.float32) - PALETTE[None, None]) ** 2).sum(-1)
    return distances.argmin(-1)


def shape_features(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(fill, aspect, bottom/top width ratio, disc-likeness) of one component in its bounding box.

    Disc-likeness = IoU with the ellipse inscribed in the box minus the box fill: about +0.13 for circles,
    -0.24 for squares, ~0 for triangles.
    """
    ys, xs = np.nonzero(mask)
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(bool)
    height, width = box.shape
    fill = float(box.mean())
    aspect = min(height, width) / max(height, width)
    rows = box.sum(1)
    third = max(1, height // 3)
    bottom_over_top = float(rows[-third:].mean() / max(rows[:third].mean(), 0.5))
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    disc = ((xx - width / 2) / (width / 2)) ** 2 + ((yy - height / 2) / (height / 2)) ** 2 <= 1.0
    disc_likeness = float((box & disc).sum() / (box | disc).sum()) - fill
    return fill, aspect, bottom_over_top, disc_likeness


def shape_of(mask: np.ndarray) -> tuple[str, float]:
    """(shape name, confidence) of one component from its geometry.

    Thresholds were read off the feature distributions of rendered and VQ-reconstructed objects: a triangle
    is several times wider at the bottom than at the top (>= 3 reconstructed, <= 2.2 for the others); a
    circle is more disc-like than box-like, a square the reverse.
    """
    fill, aspect, bottom_over_top, disc_likeness = shape_features(mask)
    if aspect < 0.6:
        return "unknown", 0.0
    if bottom_over_top > 2.5:
        return "triangle", 1.0
    if disc_likeness > -0.07 and fill >= 0.55:
        return "circle", 1.0
    if fill >= 0.8:
        return "square", 1.0
    return "unknown", 0.0


def detect(image: np.ndarray) -> dict[str, list[Detection]]:
    """GenEval-style detections `{class: [Detection(box, score, color)]}` of one `(H, W, 3)` uint8 image, each
    class's list in reverse scan order (see the end)."""
    labels = classify_pixels(image)
    found: dict[str, list[Detection]] = {}
    for color_index in range(1, len(PALETTE)):
        components, count = ndimage.label(labels == color_index)
        for component in range(1, count + 1):
            mask = ndimage.binary_fill_holes(components == component)
            area = int(mask.sum())
            if area < MIN_AREA:
                continue
            shape, confidence = shape_of(mask)
            if shape == "unknown":
                continue
            ys, xs = np.nonzero(mask)
            box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
            found.setdefault(shape, []).append(Detection(box, confidence, PALETTE_NAMES[color_index]))
    # Every detection has the same confidence, so GenEval's ranking (`np.argsort(scores)[::-1]`) puts the
    # last-listed first among them. List them last-found first, so that its ranking is scan order: palette
    # colour, then connected-component label -- the order the world's rewards and published scores used.
    return {shape: items[::-1] for shape, items in found.items()}


def with_any_shape(detections: dict[str, list[Detection]], metadata: dict) -> dict[str, list[Detection]]:
    """`detections` plus the class of the shape-free counts (`shapes.ANY_SHAPE`: every detection, whatever its
    shape) when a clause of `metadata` names it; otherwise `detections` as they are."""
    clauses = metadata.get("include", []) + metadata.get("exclude", [])
    if not any(clause["class"] == ANY_SHAPE for clause in clauses):
        return detections
    return {**detections, ANY_SHAPE: [d for name, items in detections.items() if name != ANY_SHAPE for d in items]}


def judge(image: np.ndarray, metadata: dict, mode: str = "strict") -> Judgement:
    """Detect, select with GenEval's thresholds, and evaluate one image against its prompt's metadata."""
    return evaluate(with_any_shape(select_detections(detect(image), metadata["tag"]), metadata), metadata, mode)
