"""What `rlhf-img eval` judges images with: one small protocol, one implementation per metric.

A judge turns images and their prompt rows into one JSON-able record per image, and records into a table of
numbers. The sampling, the image folder layout, the results file and the printing are shared (`evaluate.py`,
`geneval_folder.py`), so a new metric is a judge, not a new evaluation path:

- `geneval` (`GenEvalJudge`): GenEval's rules on detections (the shapes world's exact detector or Mask2Former);
  records are GenEval's results lines, the table its per-tag accuracies.
- `ocr` (`eval/text_rendering.py`): text rendering read back by PP-OCRv4; CVTG-2K's word accuracy and
  normalised edit distance.
- `vqa` (`eval/vqa/`): GenEval 2-style atom questions answered by a VQA model (a VLM server or the shapes
  world's detector), Soft-TIFA scores.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..rewards.geneval import GenEvalScorer
from .geneval_folder import result_record, results_table
from .protocol import ImageJudge


class GenEvalJudge:
    """GenEval's strict rules on a `GenEvalScorer`'s detections; records are GenEval's results lines."""

    name = "geneval"

    def __init__(self, scorer: GenEvalScorer) -> None:
        self.scorer = scorer

    def judge(self, images: torch.Tensor, rows: Sequence[dict]) -> list[dict]:
        judgements, detections = self.scorer.judge(images, list(rows), "strict")
        records = [
            result_record("", row, judgement, found) for row, judgement, found in zip(rows, judgements, detections)
        ]
        for record in records:
            del record["filename"]  # the caller knows where the image lives
        return records

    def table(self, records: Sequence[dict]) -> dict[str, float]:
        return results_table(records)


def as_judge(judge: ImageJudge | GenEvalScorer) -> ImageJudge:
    """A `GenEvalScorer` (what the in-loop eval and older callers hold) as a judge; a judge as it is."""
    return GenEvalJudge(judge) if isinstance(judge, GenEvalScorer) else judge
