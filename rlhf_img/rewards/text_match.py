"""Text matching for text-rendering rewards and evaluation: pure string functions, no OCR engine.

Two families of numbers live here, kept apart because they answer different questions:

- flow_grpo's OCR reward (`ocr_reward`, yifan123/flow_grpo `flow_grpo/rewards.py::ocr_score`): one number per
  image for RL. Target = the text between the first pair of double quotes of the prompt; both strings
  lower-cased with spaces removed; distance 0 if the target is a substring of the recognised text, else their
  Levenshtein distance, capped at the target's length; reward = 1 - distance / len(target), in [0, 1].
- CVTG-2K's word metrics (`cvtg_word_scores`; TextCrafter, Du et al. 2025, arXiv:2503.23461; its evaluation
  script `UnifiedMetricsEvaluator`, the one whose output NJU-PCALab/TextCrafter issue #9 shows): per target
  word, computed over the words the OCR read.
  - Word Accuracy: a target word counts as correct when it appears verbatim (lower-cased, punctuation kept)
    among the recognised words; pooled over all target words of all images.
  - NED: for each target word, the recognised word `difflib.get_close_matches` ranks closest (cutoff 0), and
    the similarity 1 - Levenshtein(target, match) / (max(len) + 1e-5); pooled mean over all target words. It is
    a similarity despite the name: higher is better, 1.0 for a perfect read.

Levenshtein distances come from `rapidfuzz` (MIT; never the GPL `Levenshtein` package). It is imported on first
use, so importing this module (and the reward registry) does not need the `ocr` extra.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

# CVTG-2K's evaluation divides by max(len) + 1e-5 (kept: our NED matches its printed 4 digits, even for misses)
CVTG_NED_EPSILON = 1e-5


def levenshtein(first: str, second: str) -> int:
    """Unit-cost edit distance (insertions, deletions, substitutions) by rapidfuzz."""
    from rapidfuzz.distance import Levenshtein

    return Levenshtein.distance(first, second)


def quoted_target(prompt: str) -> str | None:
    """The text between the first pair of double quotes (flow_grpo: `prompt.split('"')[1]`), or None when the
    prompt has fewer than two `"` characters. Only ASCII double quotes count, as in flow_grpo's prompt files."""
    if prompt.count('"') < 2:
        return None
    return prompt.split('"')[1]


def normalize_text(text: str) -> str:
    """flow_grpo's normalisation: spaces removed, lower-cased (so "Open  Late" == "openlate")."""
    return text.replace(" ", "").lower()


def capped_distance(recognised: str, target: str) -> int:
    """flow_grpo's distance on normalised strings: 0 when the target is a substring of the recognised text
    (extra text on the image costs nothing), else the Levenshtein distance capped at len(target)."""
    recognised, target = normalize_text(recognised), normalize_text(target)
    if target in recognised:
        return 0
    return min(levenshtein(recognised, target), len(target))


def ocr_reward(recognised: str, target: str) -> float:
    """1 - capped_distance / len(normalised target), in [0, 1]; nothing recognised scores 0. Computed as
    (len - distance) / len: one rounding, so the value is the exact fraction rounded once (flow_grpo's
    `1 - d / len` can be one unit in the last place lower)."""
    length = len(normalize_text(target))
    if length == 0:
        raise ValueError(f"OCR reward target {target!r} is empty once spaces are removed")
    return (length - capped_distance(recognised, target)) / length


def exact_match(recognised: str, target: str) -> bool:
    """Normalised equality (no extra text allowed), stricter than the reward's substring rule."""
    return normalize_text(recognised) == normalize_text(target)


def words(text: str) -> list[str]:
    """CVTG-2K's tokenisation: lower-cased, split on whitespace, punctuation kept."""
    return text.lower().split()


def cvtg_quoted_words(prompt: str) -> list[str]:
    """CVTG-2K's target words: every single-quoted span of the prompt (`'(.*?)'`, non-greedy, so an apostrophe
    inside a word ends a span, as in its script), each split by `words`, in order, duplicates kept."""
    return [word for span in re.findall(r"'(.*?)'", prompt) for word in words(span)]


def word_similarity(target_word: str, recognised_word: str) -> float:
    """CVTG-2K's per-word NED term: 1 - Levenshtein / (max(len) + 1e-5)."""
    distance = levenshtein(target_word, recognised_word)
    return 1.0 - distance / (max(len(target_word), len(recognised_word)) + CVTG_NED_EPSILON)


@dataclass
class WordScores:
    """One image's CVTG-2K word counts; `similarities` has one entry per target word (pooled later)."""

    total: int = 0
    correct: int = 0
    similarities: list[float] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.total, 1)

    @property
    def ned(self) -> float:
        return math.fsum(self.similarities) / len(self.similarities) if self.similarities else 0.0


def cvtg_word_scores(target_words: Sequence[str], recognised_words: Sequence[str]) -> WordScores:
    """CVTG-2K's counts for one image. Nothing recognised counts as one empty word (its script's `['']`), so every
    target word of n letters then gets similarity 1 - n / (n + 1e-5), about 2e-6, not exactly 0. The closest word
    is difflib's choice (SequenceMatcher ratio, ties to the later string), as in the script, not necessarily the
    one with the smallest edit distance."""
    candidates = list(recognised_words) or [""]
    scores = WordScores(total=len(target_words))
    for target_word in target_words:
        scores.correct += target_word in candidates
        closest = difflib.get_close_matches(target_word, candidates, n=1, cutoff=0)
        scores.similarities.append(word_similarity(target_word, closest[0]) if closest else 0.0)
    return scores


def cvtg_summary(per_image: Iterable[WordScores]) -> tuple[float, float]:
    """`(word_accuracy, ned)` pooled as CVTG-2K pools them: correct words over all target words, and the mean
    similarity over all target words (an image with more words weighs more). `(0.0, 0.0)` without words."""
    total = correct = 0
    similarities: list[float] = []
    for scores in per_image:
        total += scores.total
        correct += scores.correct
        similarities.extend(scores.similarities)
    ned = math.fsum(similarities) / len(similarities) if similarities else 0.0
    return correct / max(total, 1), ned
