"""Soft-TIFA and the VQA judge: atom probabilities -> a score per image -> a table.

GenEval 2 (facebookresearch/GenEval2, `evaluation.py` and `soft_tifa_analysis.py`): each atom's soft score is
the VQA model's probability of the correct answer; per prompt, Soft-TIFA AM is their arithmetic mean (the
atom-level estimate, used per skill) and Soft-TIFA GM their geometric mean (the prompt-level estimate, used per
atomicity; one atom at 0 makes it 0); the benchmark score is the mean over prompts. TIFA (Hu et al., 2023) is the
share of questions answered correctly; `strict` asks every atom to be answered correctly (GenEval's pass/fail).
An atom counts as answered correctly when its probability is above 0.5.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .answerers import Answerer, VqaAnswerError
from .atoms import COUNT_MODES, Atom, atoms_for_row

YES_THRESHOLD = 0.5


def soft_tifa_am(probabilities: Sequence[float]) -> float:
    """Arithmetic mean of the atoms' probabilities (GenEval 2's atom-level estimate)."""
    return sum(probabilities) / len(probabilities)


def soft_tifa_gm(probabilities: Sequence[float]) -> float:
    """Geometric mean of the atoms' probabilities (GenEval 2's prompt-level estimate); 0 if any atom is 0."""
    if min(probabilities) <= 0.0:
        return 0.0
    return math.exp(sum(math.log(p) for p in probabilities) / len(probabilities))


def tifa(probabilities: Sequence[float]) -> float:
    """Share of atoms answered correctly (TIFA's per-prompt score, answers read as p > 0.5)."""
    return sum(p > YES_THRESHOLD for p in probabilities) / len(probabilities)


def strict(probabilities: Sequence[float]) -> float:
    """1.0 when every atom is answered correctly (p > 0.5), else 0.0."""
    return float(all(p > YES_THRESHOLD for p in probabilities))


AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "soft_tifa": soft_tifa_gm,  # GenEval 2's prompt-level Soft-TIFA
    "soft_tifa_gm": soft_tifa_gm,
    "soft_tifa_am": soft_tifa_am,
    "tifa": tifa,
    "strict": strict,
}


def aggregate(probabilities: Sequence[float], aggregation: str = "soft_tifa") -> float | None:
    """One image's score from its atoms' probabilities; None when an answer was masked (NaN)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"vqa: aggregation must be one of {tuple(AGGREGATIONS)}, got {aggregation!r}")
    if not probabilities:
        raise ValueError("vqa: an image with no atoms has no score")
    if any(math.isnan(p) for p in probabilities):
        return None
    return AGGREGATIONS[aggregation](probabilities)


def answer_rows(
    answerer: Answerer, images: torch.Tensor, rows: Sequence[dict], counts: str = "geneval2"
) -> tuple[list[list[Atom]], list[list[float]]]:
    """(atoms, probabilities) per image, `rows[b]` being image b's prompt row; a failed answer's error names the
    prompt."""
    if len(rows) != len(images):
        raise ValueError(f"vqa: {len(rows)} prompt rows for {len(images)} images")
    atoms = [atoms_for_row(row, counts) for row in rows]
    try:
        probabilities = answerer.yes_probabilities(images, atoms)
    except VqaAnswerError as error:
        if error.prompt is not None or not 0 <= error.image_index < len(rows):
            raise
        raise VqaAnswerError(
            error.image_index, error.question, error.reason, rows[error.image_index].get("prompt")
        ) from None
    if len(probabilities) != len(atoms) or any(len(p) != len(a) for p, a in zip(probabilities, atoms)):
        raise RuntimeError(f"vqa: answerer {type(answerer).__name__} did not answer one probability per question")
    return atoms, [[float(p) for p in image] for image in probabilities]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


class VqaJudge:
    """GenEval 2-style evaluation: atoms per prompt row, answered by `answerer`, scored by Soft-TIFA.

    `aggregation` picks each record's `score` (default GenEval 2's prompt-level Soft-TIFA GM); every record also
    carries both Soft-TIFA means, TIFA and the strict verdict. `counts` decides count atoms of GenEval metadata
    rows ("geneval2": every object counted exactly; "geneval": only as the metadata demands).
    """

    name = "vqa"

    def __init__(self, answerer: Answerer, aggregation: str = "soft_tifa", counts: str = "geneval2") -> None:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"vqa: aggregation must be one of {tuple(AGGREGATIONS)}, got {aggregation!r}")
        if counts not in COUNT_MODES:
            raise ValueError(f"vqa: counts must be one of {COUNT_MODES}, got {counts!r}")
        self.answerer, self.aggregation, self.counts = answerer, aggregation, counts

    def judge(self, images: torch.Tensor, rows: Sequence[dict]) -> list[dict]:
        """One JSON-able record per image: prompt, tag, atoms (type, question, expected answer, p), the scores,
        `correct` (strict) and `masked` (an answer was masked: no scores)."""
        atoms, probabilities = answer_rows(self.answerer, images, rows, self.counts)
        records = []
        for row, image_atoms, image_probabilities in zip(rows, atoms, probabilities):
            masked = any(math.isnan(p) for p in image_probabilities)
            record = {
                "prompt": row.get("prompt"),
                "tag": row.get("tag"),
                "atoms": [
                    {
                        "type": atom.type,
                        "question": atom.question,
                        "answer": atom.answer,
                        "p": None if math.isnan(p) else p,
                    }
                    for atom, p in zip(image_atoms, image_probabilities)
                ],
                "masked": masked,
            }
            if row.get("atom_count") is not None:
                record["atom_count"] = int(row["atom_count"])
            for name in ("soft_tifa_am", "soft_tifa_gm", "tifa"):
                record[name] = aggregate(image_probabilities, name)
            record["score"] = aggregate(image_probabilities, self.aggregation)
            record["correct"] = None if masked else bool(strict(image_probabilities))
            records.append(record)
        return records

    def table(self, records: Sequence[dict]) -> dict[str, float]:
        """`overall` (mean `score` over scored images, GenEval 2's mean over prompts), the same for each
        aggregation, `tag/<tag>` (mean score per tag), `atom/<type>` (Soft-TIFA AM per atom type, GenEval 2's
        per-skill figure), `atomicity/<n>` (Soft-TIFA GM per `atom_count`, GenEval 2's per-atomicity figure),
        `images` and `masked` (counts)."""
        scored = [r for r in records if not r["masked"]]
        table: dict[str, float] = {"images": float(len(records)), "masked": float(len(records) - len(scored))}
        if not scored:
            return table
        table["overall"] = _mean([r["score"] for r in scored])
        for name in ("soft_tifa_gm", "soft_tifa_am", "tifa"):
            table[name] = _mean([r[name] for r in scored])
        table["strict"] = _mean([float(r["correct"]) for r in scored])
        for tag in dict.fromkeys(r["tag"] for r in scored if r.get("tag") is not None):
            table[f"tag/{tag}"] = _mean([r["score"] for r in scored if r.get("tag") == tag])
        by_type: dict[str, list[float]] = {}
        for record in scored:
            for atom in record["atoms"]:
                by_type.setdefault(atom["type"], []).append(atom["p"])
        for atom_type, values in by_type.items():
            table[f"atom/{atom_type}"] = _mean(values)
        for count in sorted({r["atom_count"] for r in scored if r.get("atom_count") is not None}):
            table[f"atomicity/{count}"] = _mean([r["soft_tifa_gm"] for r in scored if r.get("atom_count") == count])
        return table
