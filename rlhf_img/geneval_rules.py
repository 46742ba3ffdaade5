"""GenEval's scoring rules (Ghosh et al., 2023; djghosh13/geneval `evaluation/evaluate_images.py`), written
once and shared by every detector: the shapes world's exact detector and real-image detectors alike.

A detector produces, per class, `Detection`s (box in pixels, confidence, and a colour name when it knows
one). `select_detections` applies GenEval's confidence threshold (0.3; 0.9 for counting prompts), keeps at
most 16 per class, most confident first; `evaluate` applies the metadata clauses:

- include {class, count}: at least `count` detections of the class;
- ... with `color`: the `count` most confident of them all have that colour;
- ... with `position: [relation, group]`: each of those is `relation` of every object matched by include
  clause `group` (box centres, with a margin of 0.1 x the summed box sizes);
- exclude {class, count}: fewer than `count` detections of the class.

`strict` is GenEval's pass/fail. `dense` gives partial credit per clause for RL (mean over clauses of the
share of each clause satisfied); dense is 1.0 exactly when strict passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_THRESHOLD = 0.1
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")


@dataclass
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    score: float = 1.0
    color: str | None = None  # set by detectors that know colours (the shapes world)
    mask: Any = None  # (H, W) bool tensor, for detectors with masks (colour is then read from the masked crop)


@dataclass
class ObjectCredit:
    """One `include` clause's dense credit in [0, 1] and the boxes of the detections it was judged on (none when
    nothing of its class was found): where in the image that clause's success or failure was drawn."""

    credit: float
    boxes: list[tuple[float, float, float, float]]


@dataclass
class Judgement:
    correct: bool
    score: float  # 1.0/0.0 in strict mode, partial credit in [0, 1] in dense mode
    reasons: list[str] = field(default_factory=list)
    objects: list[ObjectCredit] = field(default_factory=list)  # one per include clause, in order


def select_detections(
    detections: dict[str, list[Detection]],
    tag: str,
    threshold: float = THRESHOLD,
    counting_threshold: float = COUNTING_THRESHOLD,
    max_objects: int = MAX_OBJECTS,
) -> dict[str, list[Detection]]:
    """GenEval's filtering: confidence above the tag's threshold, most confident first, at most `max_objects`.

    Done as GenEval does it, on mmdet's float32 score column: `np.argsort(scores)[::-1]` orders the detections
    (so among equal scores the later detection comes first, where GenEval's numpy sorts ties stably), then
    `scores > threshold` in float32 (a score of float32(0.3) is not above 0.3), then the first `max_objects`.
    """
    cutoff = counting_threshold if tag == "counting" else threshold
    selected = {}
    for name, items in detections.items():
        if not items:
            continue
        scores = np.array([d.score for d in items], dtype=np.float32)
        ordering = np.argsort(scores)[::-1]
        ordering = ordering[scores[ordering] > np.float32(cutoff)][:max_objects]
        if len(ordering):
            selected[name] = [items[i] for i in ordering.tolist()]
    return selected


def relative_position(a: Detection, b: Detection, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of `a` to `b` (image y grows downwards), GenEval's rule with its box-size margin.

    GenEval's arithmetic, operation for operation, on float32 boxes (mmdet's dtype): centres and sizes from the
    (2, 2, 2) box array, offset = centre a - centre b, the offset less the margin divided by
    `np.linalg.norm(offset)`, compared with 0.5 -- so verdicts on the 0.5 edge are GenEval's bit for bit.
    """
    boxes = np.array([a.box, b.box], dtype=np.float32)[:, :4].reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - np.float32(threshold) * (dim_a + dim_b), np.float32(0)) * np.sign(offset)
    if np.all(np.abs(revised) < np.float32(1e-3)):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


ColorClassifier = Callable[[str, list[Detection]], list[str]]


def _detection_colors(classname: str, items: list[Detection]) -> list[str]:
    return [d.color or "" for d in items]


def evaluate(
    detections: dict[str, list[Detection]],
    metadata: dict,
    mode: str = "strict",
    classify_colors: ColorClassifier = _detection_colors,
) -> Judgement:
    """Judge one image's (already selected) detections against GenEval metadata.

    `classify_colors(class, detections)` names the colour of each detection; by default the detector's own
    `Detection.color` (a real-image detector plugs in a CLIP colour classifier here).
    """
    if mode not in ("strict", "dense"):
        raise ValueError(f"mode must be 'strict' or 'dense', got {mode!r}")
    correct, reasons, credits, objects = True, [], [], []
    matched_groups: list[list[Detection] | None] = []
    for clause in metadata.get("include", []):
        name, count = clause["class"], clause["count"]
        found = detections.get(name, [])[:count]
        parts = [min(len(found), count) / count]
        matched = len(found) >= count
        if not matched:
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        if "color" in clause:
            colors = classify_colors(name, found) if found else []
            hits = colors.count(clause["color"])
            parts.append(hits / count)
            if matched and hits < count:
                matched = False
                reasons.append(f"expected {clause['color']} {name}>={count}, found {hits} {clause['color']}")
        if "position" in clause:
            relation, group = clause["position"]
            targets = matched_groups[group] if group < len(matched_groups) else None
            if not targets:
                parts.append(0.0)
                if matched:
                    matched = False
                    reasons.append(f"no target for {name} to be {relation}")
            else:
                satisfied = [relation in relative_position(obj, target) for obj in found for target in targets]
                parts.append(sum(satisfied) / (count * len(targets)))
                if matched and not all(satisfied):
                    matched = False
                    reasons.append(f"expected {name} {relation} target")
        credits.append(sum(parts) / len(parts))
        objects.append(ObjectCredit(credits[-1], [d.box for d in found]))
        correct &= matched
        matched_groups.append(found if matched else None)
    for clause in metadata.get("exclude", []):
        name, count = clause["class"], clause["count"]
        present = len(detections.get(name, []))
        if present >= count:
            correct = False
            reasons.append(f"expected {name}<{count}, found {present}")
            credits.append((count - 1) / present)  # one too many keeps some credit, more keeps less
        else:
            credits.append(1.0)
    if mode == "strict":
        return Judgement(correct, float(correct), reasons, objects)
    dense = 1.0 if correct else min(sum(credits) / max(len(credits), 1), 1.0 - 1e-6)
    return Judgement(correct, dense, reasons, objects)


def summarize(results: list[tuple[str, bool]]) -> dict[str, float]:
    """GenEval's table: accuracy per tag, and `overall` = unweighted mean over the tags present."""
    table = {}
    for tag in TAGS:
        values = [ok for t, ok in results if t == tag]
        if values:
            table[tag] = sum(values) / len(values)
    table["overall"] = sum(table.values()) / len(table) if table else 0.0
    return table
