"""`ocr` judge for `rlhf-img eval`: text rendering read back by PP-OCRv4 (the `ocr` reward's engine).

Per image it records the target, what the OCR read, flow_grpo's OCR reward, CVTG-2K's word accuracy and NED for
that image, and the OCR time. The table pools words as CVTG-2K does (`text_match.cvtg_summary`): word accuracy
= correct target words / all target words, NED = the mean per-word similarity over all target words (higher is
better), so images with longer targets weigh more there; `reward`, `exact_match` and `latency_s` are means over
images. `exact_match` is normalised equality (case and spaces ignored, nothing extra read).

CVTG-2K reads its targets from single-quoted spans and runs PaddleOCR's English models with the angle
classifier; here the target is the row's (the prompt's double-quoted text, else its `text` column) and the
engine is the reward's, so the numbers are CVTG-2K's metrics on our prompts, not its benchmark.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from ..rewards.ocr import OcrReward, to_bgr_arrays
from ..rewards.text_match import WordScores, cvtg_summary, cvtg_word_scores, exact_match, ocr_reward, words


class TextRenderingJudge:
    """Judges text rendering with an `OcrReward` built from `ocr_kwargs` (the `ocr` reward's kwargs)."""

    name = "ocr"

    def __init__(self, **ocr_kwargs: Any) -> None:
        self.reward = OcrReward(**ocr_kwargs)

    def judge(self, images: torch.Tensor, rows: Sequence[dict]) -> list[dict]:
        """`(B, 3, H, W)` in [0, 1] and B rows -> one JSON-able record per image: prompt, target, ocr_text, reward,
        word_accuracy, ned, exact_match, latency_s (OCR seconds for that image), and the word counts
        (words_total, words_correct, word_similarities) the table pools."""
        if len(rows) != images.shape[0]:
            raise ValueError(f"ocr judge: {images.shape[0]} images but {len(rows)} prompt rows")
        prompts = [row["prompt"] for row in rows]
        columns = {self.reward.text_column: [row.get(self.reward.text_column) for row in rows]}
        targets = self.reward.targets(prompts, columns)
        records = []
        for prompt, target, array in zip(prompts, targets, to_bgr_arrays(images)):
            start = time.perf_counter()
            text = self.reward.read(array)
            latency = time.perf_counter() - start
            scores = cvtg_word_scores(words(target), words(text))
            records.append(
                {
                    "prompt": prompt,
                    "target": target,
                    "ocr_text": text,
                    "reward": ocr_reward(text, target),
                    "word_accuracy": scores.accuracy,
                    "ned": scores.ned,
                    "exact_match": exact_match(text, target),
                    "latency_s": latency,
                    "words_total": scores.total,
                    "words_correct": scores.correct,
                    "word_similarities": scores.similarities,
                }
            )
        return records

    def table(self, records: Sequence[dict]) -> dict[str, float]:
        """Records -> word_accuracy and ned (pooled over words, CVTG-2K's way), mean reward, exact-match rate,
        mean latency_s, and the number of images."""
        if not records:
            return {"images": 0}
        word_accuracy, ned = cvtg_summary(
            WordScores(record["words_total"], record["words_correct"], list(record["word_similarities"]))
            for record in records
        )
        count = len(records)
        return {
            "word_accuracy": word_accuracy,
            "ned": ned,
            "reward": sum(record["reward"] for record in records) / count,
            "exact_match": sum(bool(record["exact_match"]) for record in records) / count,
            "latency_s": sum(record["latency_s"] for record in records) / count,
            "images": count,
        }
