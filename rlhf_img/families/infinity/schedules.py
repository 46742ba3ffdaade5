"""Infinity's scale schedules: which token grids a next-scale model predicts, coarse to fine.

An image is generated scale by scale; scale `k` is an `(h_k, w_k)` grid of tokens, each token `d` bits.
Infinity trains 15 aspect-ratio templates (height / width), each with a 13-scale schedule ending at the
1024-pixel grid (VAE stride 16). Lower resolutions use a prefix of the same schedule: 7 scales (~256²),
10 (~512²), 12 (~768²) or 13 (~1024²). The grids below are the published ones (FoundationVision/Infinity,
`infinity/utils/dynamic_resolution.py`), stated as data; the transposed ratios are derived.
"""

from __future__ import annotations

VAE_STRIDE = 16

# height/width ratio >= 1 -> the 13 (h, w) grids; ratio < 1 templates are the transposes
_TALL_GRIDS: dict[float, list[tuple[int, int]]] = {
    1.000: [
        (1, 1),
        (2, 2),
        (4, 4),
        (6, 6),
        (8, 8),
        (12, 12),
        (16, 16),
        (20, 20),
        (24, 24),
        (32, 32),
        (40, 40),
        (48, 48),
        (64, 64),
    ],
    1.250: [
        (1, 1),
        (2, 2),
        (3, 3),
        (5, 4),
        (10, 8),
        (15, 12),
        (20, 16),
        (25, 20),
        (30, 24),
        (35, 28),
        (45, 36),
        (55, 44),
        (70, 56),
    ],
    1.333: [
        (1, 1),
        (2, 2),
        (4, 3),
        (8, 6),
        (12, 9),
        (16, 12),
        (20, 15),
        (24, 18),
        (28, 21),
        (36, 27),
        (48, 36),
        (60, 45),
        (72, 54),
    ],
    1.500: [
        (1, 1),
        (2, 2),
        (3, 2),
        (6, 4),
        (9, 6),
        (15, 10),
        (21, 14),
        (27, 18),
        (33, 22),
        (39, 26),
        (48, 32),
        (63, 42),
        (78, 52),
    ],
    1.750: [
        (1, 1),
        (2, 2),
        (3, 3),
        (7, 4),
        (11, 6),
        (14, 8),
        (21, 12),
        (28, 16),
        (35, 20),
        (42, 24),
        (56, 32),
        (70, 40),
        (84, 48),
    ],
    2.000: [
        (1, 1),
        (2, 2),
        (4, 2),
        (6, 3),
        (10, 5),
        (16, 8),
        (22, 11),
        (30, 15),
        (38, 19),
        (46, 23),
        (60, 30),
        (74, 37),
        (90, 45),
    ],
    2.500: [
        (1, 1),
        (2, 2),
        (5, 2),
        (10, 4),
        (15, 6),
        (20, 8),
        (25, 10),
        (30, 12),
        (40, 16),
        (50, 20),
        (65, 26),
        (80, 32),
        (100, 40),
    ],
    3.000: [
        (1, 1),
        (2, 2),
        (6, 2),
        (9, 3),
        (15, 5),
        (21, 7),
        (27, 9),
        (36, 12),
        (45, 15),
        (54, 18),
        (72, 24),
        (90, 30),
        (111, 37),
    ],
}

# resolution name -> number of scales (a prefix of the 13-scale schedule)
RESOLUTIONS: dict[str, int] = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}


def _all_templates() -> dict[float, list[tuple[int, int]]]:
    grids = dict(_TALL_GRIDS)
    for ratio, tall in _TALL_GRIDS.items():
        if ratio != 1.0:
            grids[int(1 / ratio * 1000) / 1000] = [(w, h) for h, w in tall]  # 0.8, 0.75, 0.666, ...
    return grids


ASPECT_RATIO_GRIDS = _all_templates()
ASPECT_RATIOS = sorted(ASPECT_RATIO_GRIDS)


def nearest_aspect_ratio(height_over_width: float) -> float:
    """The trained template closest to `height_over_width` (Infinity snaps any request to one of 15)."""
    return min(ASPECT_RATIOS, key=lambda ratio: abs(ratio - height_over_width))


def full_schedule(aspect_ratio: float = 1.0) -> list[tuple[int, int]]:
    """All 13 grids of the template nearest `aspect_ratio`; RoPE positions are laid on its last grid."""
    return list(ASPECT_RATIO_GRIDS[nearest_aspect_ratio(aspect_ratio)])


def scale_schedule(
    aspect_ratio: float = 1.0, resolution: str = "1M", num_scales: int | None = None
) -> list[tuple[int, int]]:
    """The `(h, w)` grids for a template and resolution name (or an explicit scale count)."""
    if num_scales is None:
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {sorted(RESOLUTIONS)}, got {resolution!r}")
        num_scales = RESOLUTIONS[resolution]
    grids = full_schedule(aspect_ratio)
    if not 1 <= num_scales <= len(grids):
        raise ValueError(f"num_scales must be in [1, {len(grids)}], got {num_scales}")
    return grids[:num_scales]


def num_tokens(schedule: list[tuple[int, int]]) -> int:
    """Tokens over all scales, e.g. 10,521 for the 13-scale square schedule."""
    return sum(h * w for h, w in schedule)
