"""`ocr`: how well an image renders the prompt's quoted text, read back by PP-OCRv4 (flow_grpo's OCR reward).

Formula (yifan123/flow_grpo `flow_grpo/rewards.py::ocr_score`, pure functions in `text_match.py`):

- target = the text between the first pair of double quotes of the prompt, `prompt.split('"')[1]` when the
  prompt holds at least two `"` characters (ASCII only). A prompt without one reads the row's `text_column`
  (default `text`); neither is an error naming the prompt.
- recognised = the OCR lines with confidence >= `min_confidence`, joined in reading order.
- both lower-cased, spaces removed; distance = 0 when the target is a substring of the recognised text, else
  their Levenshtein distance capped at len(target); reward = 1 - distance / len(target), in [0, 1]. Nothing
  recognised (a blank image) scores 0.

One difference from flow_grpo, on purpose: flow_grpo joins PaddleOCR's boxes in the engine's order. rapidocr's
own sort (`RapidOCR.sorted_boxes`) orders by the top-left corner's y and swaps neighbours only when their y
differ by less than 10 px, so on a two-line sign the second word of the first line ("Big", drawn a few px higher
than "Dream") comes out first: "Big Dream Gate 7" scores 0.54 against "Dream Big Gate 7". Here boxes are grouped
into lines by centre-y overlap, lines top to bottom, boxes left to right (`reading_order`).

Engine: rapidocr-onnxruntime (Apache-2.0) with the PP-OCRv4 detection and recognition ONNX weights it ships
(Chinese+English recognition; flow_grpo uses PaddleOCR's English models), CPU only, offline. It reads one
image per call, so a batch is a loop; detection is ~90% of the time. Defaults, measured on 512x512 images
(`bench/ocr_reward.py`): one ONNX thread per session (more spin-wait on a shared machine and ran slower), and
detection at the image's own size: rapidocr's default raises the shorter side to 736 px, about 2x slower on
512 px images, and on 50 rendered signs it read no better (49/50 exact either way; each missed a different one:
native size dropped a lone "9", 736 px read "Ivy" as "lvy").
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..images import to_uint8
from .loading import RewardConfigError
from .registry import register_reward
from .text_match import normalize_text, ocr_reward, quoted_target

INSTALL_HINT = "reward 'ocr' needs rapidocr-onnxruntime: pip install 'rlhf-img[ocr]'"
# rapidocr shrinks any image over 2000 px (its `max_side_len`) before detection; a `max`-type limit at that size
# therefore never resizes: detection runs at the image's own size (rounded to a multiple of 32, as the net needs)
NATIVE_DETECTION_LIMIT = 2000

Box = Sequence[Sequence[float]]  # 4 corner points (x, y) in image pixels, clockwise from top-left


def reading_order(boxes: Sequence[Box]) -> list[int]:
    """Indices of `boxes` in reading order: boxes sorted by centre y are grouped into lines, lines top to bottom,
    boxes left to right within a line by their leftmost x. A box joins the current line when their centre-y
    overlap: the box's centre y lies within the line's vertical extent (the union of its boxes' extents), or the
    line's centre y within the box's. Words of one line drawn at slightly different heights stay together; lines
    set apart by their own height do not."""
    tops = [min(point[1] for point in box) for box in boxes]
    bottoms = [max(point[1] for point in box) for box in boxes]
    lefts = [min(point[0] for point in box) for box in boxes]
    centres = [(top + bottom) / 2 for top, bottom in zip(tops, bottoms)]
    lines: list[list[int]] = []
    line_top = line_bottom = 0.0
    for index in sorted(range(len(boxes)), key=lambda i: (centres[i], lefts[i])):
        line_centre = (line_top + line_bottom) / 2
        if lines and (line_top <= centres[index] <= line_bottom or tops[index] <= line_centre <= bottoms[index]):
            lines[-1].append(index)
            line_top, line_bottom = min(line_top, tops[index]), max(line_bottom, bottoms[index])
        else:
            lines.append([index])
            line_top, line_bottom = tops[index], bottoms[index]
    return [index for line in lines for index in sorted(line, key=lambda i: lefts[i])]


def join_in_reading_order(boxes: Sequence[Box], texts: Sequence[str]) -> str:
    """The recognised texts joined by spaces in `reading_order` (the reward removes the spaces again)."""
    return " ".join(texts[index] for index in reading_order(boxes))


def to_bgr_arrays(images: torch.Tensor) -> list[np.ndarray]:
    """`(B, 3, H, W)` float in [0, 1] -> B contiguous `(H, W, 3)` uint8 BGR arrays: rapidocr takes a 3-channel
    array as BGR (OpenCV's order) and does not convert it; a float array reads as nothing at all."""
    return [np.ascontiguousarray(array[..., ::-1]) for array in to_uint8(images)]


@register_reward("ocr")
class OcrReward:
    """flow_grpo's OCR reward on rapidocr's PP-OCRv4 (see the module docstring for the formula).

    `threads`: ONNX Runtime intra- and inter-op threads per session (rapidocr uses its default, every core, when
    the number exceeds the machine's). `det_limit_side_len`: None detects at the image's own size; a number is
    rapidocr's own limit (the shorter side is raised to at least that many px; its default is 736).
    `use_cls`: run the 180-degree text-direction classifier (flow_grpo: off). `text_column`: the dataset column
    holding the target for prompts without double-quoted text. `min_confidence`: lines read with a lower mean
    character confidence are dropped (rapidocr's `text_score`)."""

    def __init__(
        self,
        threads: int = 1,
        det_limit_side_len: int | None = None,
        use_cls: bool = False,
        text_column: str = "text",
        min_confidence: float = 0.5,
    ) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise RewardConfigError(f"reward 'ocr': 'threads' must be a whole number >= 1, got {threads!r}")
        if det_limit_side_len is not None and (
            isinstance(det_limit_side_len, bool) or not isinstance(det_limit_side_len, int) or det_limit_side_len < 32
        ):
            raise RewardConfigError(
                f"reward 'ocr': 'det_limit_side_len' must be null or a whole number of pixels "
                f">= 32, got {det_limit_side_len!r}"
            )
        if (
            isinstance(min_confidence, bool)
            or not isinstance(min_confidence, (int, float))
            or not 0 <= min_confidence <= 1
        ):
            raise RewardConfigError(
                f"reward 'ocr': 'min_confidence' must be a number in [0, 1], got {min_confidence!r}"
            )
        if not isinstance(text_column, str) or not text_column:
            raise RewardConfigError(f"reward 'ocr': 'text_column' must be a column name, got {text_column!r}")
        try:
            import rapidfuzz  # noqa: F401  (text_match's Levenshtein)
            from rapidocr_onnxruntime import RapidOCR
        except ImportError:
            raise RewardConfigError(INSTALL_HINT) from None
        self.threads, self.det_limit_side_len, self.use_cls = threads, det_limit_side_len, bool(use_cls)
        self.text_column, self.min_confidence = text_column, float(min_confidence)
        self._engine_class: Callable[..., Any] = RapidOCR
        self._engine: Any = None  # built on first use: ONNX sessions neither pickle nor survive a fork well

    def engine(self) -> Any:
        """The `RapidOCR` instance, built once per reward on first use (about 0.1-0.3 s)."""
        if self._engine is None:
            if self.det_limit_side_len is None:
                detection = {"det_limit_type": "max", "det_limit_side_len": NATIVE_DETECTION_LIMIT}
            else:
                detection = {"det_limit_type": "min", "det_limit_side_len": self.det_limit_side_len}
            self._engine = self._engine_class(
                intra_op_num_threads=self.threads,
                inter_op_num_threads=self.threads,
                use_cls=self.use_cls,
                text_score=self.min_confidence,
                **detection,
            )
        return self._engine

    def read(self, image_bgr: np.ndarray) -> str:
        """The text on one `(H, W, 3)` uint8 BGR image, lines in reading order joined by spaces; '' for none."""
        # no call kwargs: rapidocr resets `text_score` to 0.5 whenever any are passed
        result, _ = self.engine()(image_bgr)
        if not result:
            return ""
        boxes = [line[0] for line in result]
        texts = [line[1] for line in result]
        return join_in_reading_order(boxes, texts)

    def read_texts(self, images: torch.Tensor) -> list[str]:
        """`(B, 3, H, W)` float in [0, 1] -> the recognised text of each image (one engine call per image)."""
        return [self.read(array) for array in to_bgr_arrays(images)]

    def targets(self, prompts: Sequence[str], columns: dict[str, Any]) -> list[str]:
        """Each row's target text: the prompt's first double-quoted span, else the row's `text_column` value."""
        column = columns.get(self.text_column)
        targets = []
        for index, prompt in enumerate(prompts):
            target = quoted_target(prompt)
            if target is None or not normalize_text(target):
                value = column[index] if column is not None and index < len(column) else None
                target = value if isinstance(value, str) else None
            if target is None or not normalize_text(target):
                raise ValueError(
                    f"prompt {prompt!r} has no double-quoted text and no {self.text_column!r} "
                    "column value to compare the image's text with"
                )
            targets.append(target)
        return targets

    def __call__(self, prompts: list[str], images: torch.Tensor, **columns: Any) -> list[float]:
        targets = self.targets(prompts, columns)  # before OCR: a bad row fails fast
        return [ocr_reward(text, target) for text, target in zip(self.read_texts(images), targets)]
