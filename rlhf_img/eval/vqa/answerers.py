"""Who answers the atoms: the `Answerer` protocol, the shapes world's exact answerer and a VLM answerer.

An answerer returns, per image and per question, the probability that the answer is the atom's expected one:
P(yes) for yes/no atoms (a plain string question is one, expecting "yes"), P("three") for GenEval 2's "How many"
count atoms. That is GenEval 2's soft score (`evaluation.py`, `soft_tifa`): the VQA model's probability of the
correct answer's first token, summed over its spellings ("Yes", "yes", " yes", " Yes"; for counts the number
word, capitalised or not, and its digits).
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any, Protocol, Sequence

import torch

from ...geneval_rules import Detection, relative_position, select_detections
from ...images import to_pil, to_uint8
from .atoms import NUMBER_WORDS, Atom

ON_FAILURE = ("raise", "mask")
YES_NO = ("yes", "no")
DIGITS = {word: str(number) for number, word in enumerate(NUMBER_WORDS)}
# GenEval 2 appends this to every question (facebookresearch/GenEval2, evaluation.py)
QUESTION_SUFFIX = " Answer in one word."


class Answerer(Protocol):
    def yes_probabilities(self, images: torch.Tensor, questions: Sequence[Sequence[str | Atom]]) -> list[list[float]]:
        """`images` `(B, 3, H, W)` in [0, 1]; `questions[b]` the questions of image b. Per image, per question, the
        probability of the expected answer in [0, 1] (NaN only for an answer masked by `on_failure="mask"`)."""
        ...


class VqaAnswerError(RuntimeError):
    """No usable answer to one question; the scorer adds the prompt before it reaches the user."""

    def __init__(self, image_index: int, question: str, reason: str, prompt: str | None = None) -> None:
        self.image_index, self.question, self.reason, self.prompt = image_index, question, reason, prompt
        where = f" for prompt {prompt!r}" if prompt is not None else f" (image {image_index})"
        super().__init__(
            f"vqa: no usable answer to {question!r}{where}: {reason}; set on_failure: mask to score "
            "such images as missing instead"
        )


def _as_atom(question: str | Atom) -> Atom:
    return question if isinstance(question, Atom) else Atom("question", str(question))


# ------------------------------------------------------------------------------------------------ shapes world
class ShapesAnswerer:
    """Answers structured atoms exactly (1.0 / 0.0) from the shapes world's detector.

    Detections are filtered as GenEval filters them (confidence above 0.3, at most 16 per class). Each atom is
    one fact, checked on its own: an object is present; the count of a class is exactly / at least / fewer than
    `count`; at least `count` objects of the class have the colour; `count` of the subjects are each `relation`
    of the same `target_count` targets (GenEval's box rule). Where GenEval judges only its most confident
    detections, this asks whether the image holds such objects at all (see the agreement figures in docs/rewards.md, "vqa").
    """

    name = "shapes"

    def yes_probabilities(self, images: torch.Tensor, questions: Sequence[Sequence[str | Atom]]) -> list[list[float]]:
        from ...worlds.shapes_detector import detect

        if len(questions) != len(images):
            raise ValueError(f"vqa: {len(questions)} question lists for {len(images)} images")
        answers = []
        for pixels, atoms in zip(to_uint8(images), questions):
            detections = select_detections(detect(pixels), tag="vqa")
            answers.append([float(self.holds(_as_atom(atom), detections)) for atom in atoms])
        return answers

    @staticmethod
    def holds(atom: Atom, detections: dict[str, list[Detection]]) -> bool:
        """Whether the fact that makes `atom`'s expected answer right holds for these detections."""
        if atom.subject is None:
            raise ValueError(f"vqa: the shapes answerer needs structured atoms; {atom.question!r} has no 'subject'")
        found = detections.get(atom.subject, [])
        count = atom.count if atom.count is not None else 1
        if atom.type == "count":  # the quantifier states the fact, whatever the question's wording
            quantifier = atom.quantifier or "exactly"
            return {"exactly": len(found) == count, "at least": len(found) >= count, "fewer than": len(found) < count}[
                quantifier
            ]
        if atom.type == "object":
            fact = len(found) >= 1
        elif atom.type == "color":
            if atom.color is None:
                raise ValueError(f"vqa: colour atom {atom.question!r} has no 'color'")
            fact = sum(detection.color == atom.color for detection in found) >= count
        elif atom.type == "position":
            if atom.relation is None or atom.target is None:
                raise ValueError(f"vqa: position atom {atom.question!r} needs 'relation' and 'target'")
            targets = detections.get(atom.target, [])
            fact = _related(
                found, targets, atom.relation, count, atom.target_count if atom.target_count is not None else 1
            )
        else:
            raise ValueError(f"vqa: the shapes answerer cannot answer {atom.type!r} atoms ({atom.question!r})")
        return fact if atom.answer != "no" else not fact


def _related(subjects: list[Detection], targets: list[Detection], relation: str, count: int, target_count: int) -> bool:
    """Whether some `count` subjects are each `relation` of the same `target_count` targets."""
    if len(subjects) < count or len(targets) < target_count:
        return False
    satisfied = [
        {j for j, target in enumerate(targets) if relation in relative_position(subject, target)}
        for subject in subjects
    ]
    return any(
        len(set.intersection(*(satisfied[i] for i in chosen))) >= target_count
        for chosen in itertools.combinations(range(len(subjects)), count)
    )


# --------------------------------------------------------------------------------------------------------- VLM
def _first_word(text: str) -> str | None:
    match = re.search(r"[a-z0-9]+", text.lower())
    return match.group(0) if match else None


def _is_yes_no(word: str) -> bool:
    return word in YES_NO


def _is_number(word: str) -> bool:
    """A count answer: a number word up to ten or any digits ("12" is a wrong count, not a non-answer)."""
    return word in NUMBER_WORDS or (word.isascii() and word.isdigit())


def _spellings(expected: str) -> set[str]:
    if expected in DIGITS:
        return {expected, DIGITS[expected]}
    if expected in DIGITS.values():
        return {expected, NUMBER_WORDS[int(expected)]}
    return {expected}


def answer_probability(reply: Any, expected: str = "yes") -> float | None:
    """Probability that `reply` (a `ChatAnswer`: `text`, `top_logprobs`) gives the `expected` answer, or None when
    the reply is not an answer to the question at all (never a silent 0).

    The reply's first word must be an answer of the question's kind (yes/no, or a number, for those expected
    answers); otherwise None. With first-token log-probabilities that mostly (>= 0.5) fall on answers of that
    kind, the probability is GenEval 2's: the summed probabilities of the expected answer's spellings (case and
    leading space ignored, number words and digits alike). Without them (or when the first token is not the
    answer, e.g. markdown), the first word decides: 1.0 if it is the expected answer, else 0.0.
    """
    expected = expected.strip().lower()
    spellings = _spellings(expected)
    kind = _is_yes_no if expected in YES_NO else _is_number if _is_number(expected) else None
    first = _first_word(reply.text or "")
    if first is None or (kind is not None and not kind(first)):
        return None
    if kind is not None and reply.top_logprobs:
        first_token = reply.top_logprobs[0]
        mass = {token: math.exp(logprob) for token, logprob in first_token.items()}
        on_kind = sum(p for token, p in mass.items() if kind(token.strip().lower()))
        if on_kind >= 0.5:
            return min(1.0, sum(p for token, p in mass.items() if token.strip().lower() in spellings))
    return 1.0 if first in spellings else 0.0


class VlmAnswerer:
    """Asks each question of a VLM through `rlhf_img.rewards.vlm_client.VlmClient` (an OpenAI-compatible server)
    and reads the expected answer's probability from the first token's log-probabilities (`answer_probability`).

    GenEval 2 asks Qwen3-VL-8B-Instruct "{question} Answer in one word." and reads one greedy token; the same
    suffix is the default here. `client`: anything with the client's `ask(items, *, max_tokens, top_logprobs,
    system)`; built from `base_url`/`model`/... when not given. `min_image_side`: small images (the shapes world's
    32 px) are upscaled (nearest) so their shorter side is at least this many pixels. `on_failure`: "raise" (a
    failed call or a reply that is no answer stops with one line naming the question) or "mask" (that answer is
    NaN; the scorer leaves the image unscored and counts it).
    """

    name = "vlm"

    def __init__(
        self,
        client: Any = None,
        *,
        base_url: str | None = None,
        model: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        retries: int = 2,
        max_concurrency: int = 8,
        cache: bool = True,
        question_suffix: str = QUESTION_SUFFIX,
        top_logprobs: int = 20,
        max_tokens: int = 8,
        system: str | None = None,
        min_image_side: int = 0,
        on_failure: str = "raise",
    ) -> None:
        if on_failure not in ON_FAILURE:
            raise ValueError(f"vqa: on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
        if client is None:
            if not base_url or not model:
                raise ValueError("vqa: the vlm answerer needs 'base_url' and 'model' (an OpenAI-compatible server)")
            from ...rewards.vlm_client import VlmClient

            client = VlmClient(
                base_url,
                model,
                api_key_env=api_key_env,
                timeout=timeout,
                retries=retries,
                max_concurrency=max_concurrency,
                cache=cache,
            )
        self.client, self.on_failure = client, on_failure
        self.question_suffix, self.top_logprobs, self.max_tokens = question_suffix, top_logprobs, max_tokens
        self.system, self.min_image_side = system, min_image_side

    def _images(self, images: torch.Tensor) -> list:
        pictures = to_pil(images)
        if self.min_image_side and pictures:
            scale = math.ceil(self.min_image_side / min(pictures[0].size))
            if scale > 1:
                from PIL import Image

                pictures = [p.resize((p.width * scale, p.height * scale), Image.NEAREST) for p in pictures]
        return pictures

    def yes_probabilities(self, images: torch.Tensor, questions: Sequence[Sequence[str | Atom]]) -> list[list[float]]:
        if len(questions) != len(images):
            raise ValueError(f"vqa: {len(questions)} question lists for {len(images)} images")
        pictures = self._images(images)
        atoms = [[_as_atom(q) for q in image_questions] for image_questions in questions]
        items = [(pictures[b], atom.question + self.question_suffix) for b in range(len(atoms)) for atom in atoms[b]]
        replies = (
            list(self.client.ask(items, max_tokens=self.max_tokens, top_logprobs=self.top_logprobs, system=self.system))
            if items
            else []
        )
        if len(replies) != len(items):
            raise RuntimeError(f"vqa: the VLM client returned {len(replies)} answers for {len(items)} questions")
        answers, position = [], 0
        for index, image_atoms in enumerate(atoms):
            row = []
            for atom in image_atoms:
                reply = replies[position]
                position += 1
                if isinstance(reply, BaseException):
                    row.append(
                        self._failure(
                            index, atom, f"the call failed ({type(reply).__name__}: {' '.join(str(reply).split())})"
                        )
                    )
                    continue
                probability = answer_probability(reply, atom.answer)
                if probability is None:
                    text = " ".join(str(reply.text or "").split())
                    kind = (
                        "yes/no answer" if atom.answer in YES_NO else "number" if _is_number(atom.answer) else "answer"
                    )
                    row.append(self._failure(index, atom, f"the VLM replied {text[:80]!r}, not a {kind}"))
                else:
                    row.append(probability)
            answers.append(row)
        return answers

    def _failure(self, image_index: int, atom: Atom, reason: str) -> float:
        if self.on_failure == "mask":
            return math.nan
        raise VqaAnswerError(image_index, atom.question, reason)
