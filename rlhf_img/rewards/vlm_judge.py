"""`vlm_judge`: a VLM served behind any OpenAI-compatible endpoint scores each image against its prompt.

The judge runs in its own process, on its own GPU, under vLLM / SGLang / `transformers serve` (docs/rewards.md, "vlm_judge");
this reward asks it one question per image (`vlm_client.VlmClient`: bounded concurrency, timeouts, retries, cache)
and turns each answer into a number:

- mode "score": the parser reads a number from the answer text; reward = number / scale.
- mode "yes_no": reward = P(yes) / (P(yes) + P(no)) from the first answer token's top logprobs when the server
  gives them (vLLM, SGLang); else the answer's first word: "yes" -> 1, "no" -> 0.

Presets (`template` picks the question and, unless given, the parser, scale, mode and max_tokens). The texts are
our own; each asks for the answer format of a public judge, so that judge's trained output is what gets parsed.
Trained judges can be sensitive to wording: paste the public prompt as a custom `template` to use it verbatim.

- `unifiedreward_point`: UnifiedReward 1.0's point score as flow_grpo sends it
  (`flow_grpo/rewards.py::unifiedreward_score_sglang`); parses `Final Score: x`; scale 5.
- `unifiedreward2_acs`: UnifiedReward 2.0's point score
  (`UnifiedReward/inference_qwen/UnifiedReward-2.0-inference/point_score_ACS_image_generation.py`); parses the
  mean of `Alignment / Coherence / Style Score (1-5): x` (all three required); scale 5.
- `score_tag`: the answer format of flow_grpo's Qwen2.5-VL scorer (`flow_grpo/qwenvl.py`: a 1-5 rubric
  Bad..Excellent, the score in a tag); our question names the prompt as well; parses `<Score>x</Score>`; scale 5.
- `yes_no`: a VQAScore / TIFA-style question ("Does this image match the description ...? Answer yes or no.");
  mode "yes_no".

A regex parser takes the LAST match (judges that reason first give their verdict at the end); a number that does
not parse, a request that fails after retries, never becomes a silent 0: `on_failure: raise` (default) stops the run
with one line naming the endpoint, the prompt and what came back; `on_failure: mask` gives those images no score
(the trainer's `rewards/<name>/unscored`) and logs one warning per call.
"""

from __future__ import annotations

import logging
import math
import re
import string
from dataclasses import dataclass
from typing import Any, Callable

import torch
from PIL import Image

from ..images import to_pil
from .loading import RewardConfigError
from .registry import register_reward
from .vlm_client import ChatAnswer, VlmCallError, VlmClient, shorten, yes_probability

logger = logging.getLogger(__name__)

NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
FINAL_SCORE_REGEX = r"Final Score:\s*" + NUMBER
SCORE_TAG_REGEX = r"<Score>\s*" + NUMBER + r"\s*</Score>"
ACS_REGEX = re.compile(r"(Alignment|Coherence|Style)\s+Score\s*(?:\(1-5\))?\s*:\s*" + NUMBER, re.IGNORECASE)
DEFAULT_TOP_LOGPROBS = 5  # yes_no: "yes" and "no" are near the top when the judge answers either

UNIFIEDREWARD_POINT_TEMPLATE = (
    "You are shown an image generated from a text caption. Judge it on two things:\n"
    "1. Caption alignment: does it show the objects the caption names, with their attributes and their relations "
    "to each other as described?\n"
    "2. Image quality: is it sharp and detailed, with natural colours, and pleasing as a whole?\n"
    "Weighing both, give one score from 1 (poor) to 5 (excellent), written after 'Final Score:'.\n"
    "Text Caption: [{prompt}]"
)
UNIFIEDREWARD2_ACS_TEMPLATE = (
    "You are shown a generated image and the text caption it was generated from. Rate the image from 1 to 5 on "
    "each of these axes:\n"
    "- Alignment Score: how well the content of the image matches the caption.\n"
    "- Coherence Score: how logically consistent the image is (no visual glitches, no distorted objects).\n"
    "- Style Score: how aesthetically pleasing the image is, whatever the caption says.\n\n"
    "Answer in exactly this format:\n\n"
    "Alignment Score (1-5): X\n"
    "Coherence Score (1-5): Y\n"
    "Style Score (1-5): Z\n\n"
    "Text Caption: [{prompt}]"
)
SCORE_TAG_TEMPLATE = (
    'This image was generated for the prompt "{prompt}". Rate it on a five-point scale: 1 Bad, 2 Poor, 3 Fair, '
    "4 Good, 5 Excellent, judging how faithfully it depicts the prompt and its visual quality (sharpness, detail, "
    "composition, colour). Think briefly, then give your rating as <Score>N</Score>."
)
YES_NO_TEMPLATE = 'Does this image match the description "{prompt}"? Answer yes or no.'


def parse_last_match(pattern: re.Pattern) -> Callable[[str], float | None]:
    """A parser reading the number in the one group of the last match of `pattern`; None when nothing matches."""

    def parse(text: str) -> float | None:
        matches = pattern.findall(text)
        if not matches:
            return None
        try:
            return float(matches[-1])
        except ValueError:  # a custom group that captured something else than a number
            return None

    return parse


def parse_acs(text: str) -> float | None:
    """The mean of UnifiedReward 2.0's three scores (the last of each); None unless all three are there."""
    scores = {name.lower(): float(value) for name, value in ACS_REGEX.findall(text)}
    if len(scores) < 3:
        return None
    return sum(scores.values()) / 3


def parse_yes_no(text: str) -> float | None:
    """The answer's first word: "yes" -> 1, "no" -> 0 (case-folded, punctuation ignored); None otherwise."""
    word = re.match(r"\W*([^\W\d_]+)", text)
    verdict = word.group(1).casefold() if word else ""
    return {"yes": 1.0, "no": 0.0}.get(verdict)


@dataclass(frozen=True)
class Preset:
    template: str
    parse: Callable[[str], float | None]
    expects: str  # shown when an answer does not parse
    scale: float
    mode: str
    max_tokens: int


PRESETS: dict[str, Preset] = {
    "unifiedreward_point": Preset(
        UNIFIEDREWARD_POINT_TEMPLATE,
        parse_last_match(re.compile(FINAL_SCORE_REGEX)),
        "'Final Score: <number>'",
        5.0,
        "score",
        256,
    ),
    "unifiedreward2_acs": Preset(
        UNIFIEDREWARD2_ACS_TEMPLATE,
        parse_acs,
        "'Alignment/Coherence/Style Score (1-5): <number>' lines",
        5.0,
        "score",
        256,
    ),
    "score_tag": Preset(
        SCORE_TAG_TEMPLATE, parse_last_match(re.compile(SCORE_TAG_REGEX)), "'<Score>N</Score>'", 5.0, "score", 512
    ),
    "yes_no": Preset(YES_NO_TEMPLATE, parse_yes_no, "'yes' or 'no' first", 1.0, "yes_no", 8),
}


def _template_fields(template: str) -> list[str]:
    """The placeholder names of a custom template (`{prompt}`, `{column}`); RewardConfigError for bad syntax."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise RewardConfigError(
            f"reward 'vlm_judge': 'template' is not a valid format string ({error}); "
            "write literal braces as {{ and }}"
        ) from None
    fields = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        root = re.split(r"[.\[]", name, maxsplit=1)[0]
        if not root or root.isdigit():
            raise RewardConfigError(
                f"reward 'vlm_judge': 'template' placeholders must be named ({{prompt}} or a "
                f"dataset column), got {{{name}}}"
            )
        fields.append(root)
    return fields


@register_reward("vlm_judge")
class VlmJudgeReward:
    """A VLM judge behind an OpenAI-compatible endpoint (see the module docstring for presets and formulas).

    Args (the recipe's `kwargs`):
        base_url: the server's OpenAI root, e.g. "http://127.0.0.1:8000/v1". model: the served model name.
        api_key_env: environment variable holding the key (default OPENAI_API_KEY; keyless servers need none).
        template: a preset name or a custom question with `{prompt}` and optionally `{column}` placeholders
            (dataset columns; literal braces as `{{ }}`).
        parser: a preset name (its answer format and default scale) or a regex with one group capturing the
            number; default: the template preset's. Required with a custom template in mode "score".
        scale: the parsed number is divided by it (5 for the 1-5 presets). mode: "score" or "yes_no".
        system: an optional system message. max_tokens: answer length limit (default: the preset's).
        top_logprobs: candidates asked per token in mode "yes_no" (0: use the answer text only).
        image_size: resize images to this square size before sending (flow_grpo: 512); None sends them as they are.
        timeout, retries, max_concurrency, cache: the client's (`VlmClient`); timeout is per attempt.
        on_failure: "raise" stops the run on a failed request or an unparsed answer; "mask" scores those images
            as no score. health_check: GET /models now, so a missing judge fails before training starts.
    """

    handles_timeout = True  # bounds each request itself: the trainer's per-call watchdog would cut retries short

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        template: str = "unifiedreward_point",
        parser: str | None = None,
        scale: float | None = None,
        mode: str | None = None,
        system: str | None = None,
        timeout: float = 60.0,
        retries: int = 2,
        max_concurrency: int = 8,
        max_tokens: int | None = None,
        top_logprobs: int = DEFAULT_TOP_LOGPROBS,
        image_size: int | None = None,
        on_failure: str = "raise",
        cache: bool = True,
        health_check: bool = True,
    ) -> None:
        if not isinstance(template, str) or not template:
            raise RewardConfigError(
                f"reward 'vlm_judge': 'template' must be a preset ({', '.join(PRESETS)}) or a "
                f"question with {{prompt}}, got {template!r}"
            )
        preset = PRESETS.get(template)
        if preset is None and not _template_fields(template):
            raise RewardConfigError(
                f"reward 'vlm_judge': 'template' {shorten(template, 60)!r} is no preset "
                f"({', '.join(PRESETS)}) and has no {{prompt}} placeholder"
            )
        self.template = preset.template if preset else template
        self.fields = _template_fields(self.template)

        self.mode = mode if mode is not None else (preset.mode if preset else "score")
        if self.mode not in ("score", "yes_no"):
            raise RewardConfigError(f"reward 'vlm_judge': 'mode' must be 'score' or 'yes_no', got {mode!r}")
        self.parser_name, self.parse, self.expects, default_scale = self._resolve_parser(parser, template, preset)
        if self.mode == "yes_no" and scale is not None:
            raise RewardConfigError("reward 'vlm_judge': 'scale' applies to mode 'score'; mode 'yes_no' gives P(yes)")
        self.scale = default_scale if scale is None else scale
        if (
            isinstance(self.scale, bool)
            or not isinstance(self.scale, (int, float))
            or self.scale == 0
            or not math.isfinite(self.scale)
        ):
            raise RewardConfigError(f"reward 'vlm_judge': 'scale' must be a non-zero number, got {scale!r}")

        if max_tokens is None:
            max_tokens = preset.max_tokens if preset else (8 if self.mode == "yes_no" else 512)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise RewardConfigError(f"reward 'vlm_judge': 'max_tokens' must be an int >= 1, got {max_tokens!r}")
        if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= 20:
            raise RewardConfigError(f"reward 'vlm_judge': 'top_logprobs' must be an int in 0..20, got {top_logprobs!r}")
        if image_size is not None and (
            isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
        ):
            raise RewardConfigError(
                f"reward 'vlm_judge': 'image_size' must be a positive int or null, got {image_size!r}"
            )
        if on_failure not in ("raise", "mask"):
            raise RewardConfigError(f"reward 'vlm_judge': 'on_failure' must be 'raise' or 'mask', got {on_failure!r}")
        if system is not None and not isinstance(system, str):
            raise RewardConfigError(f"reward 'vlm_judge': 'system' must be a string, got {system!r}")
        self.max_tokens, self.image_size, self.on_failure, self.system = max_tokens, image_size, on_failure, system
        self.top_logprobs = top_logprobs if self.mode == "yes_no" else 0
        try:
            self.client = VlmClient(
                base_url,
                model,
                api_key_env=api_key_env,
                timeout=timeout,
                retries=retries,
                max_concurrency=max_concurrency,
                cache=cache,
            )
            if health_check:
                self.client.check()
        except RewardConfigError as error:
            raise RewardConfigError(f"reward 'vlm_judge': {error}") from None

    def _resolve_parser(
        self, parser: str | None, template: str, preset: Preset | None
    ) -> tuple[str, Callable[[str], float | None], str, float]:
        """(name, parse, what it expects, default scale) for `parser`, defaulting to the template preset's."""
        if parser is None:
            if self.mode == "yes_no":
                return "yes_no", parse_yes_no, PRESETS["yes_no"].expects, 1.0
            if preset is None:
                raise RewardConfigError(
                    "reward 'vlm_judge': a custom 'template' needs a 'parser': a preset "
                    f"({', '.join(PRESETS)}) or a regex with one group capturing the number"
                )
            return template, preset.parse, preset.expects, preset.scale
        if not isinstance(parser, str) or not parser:
            raise RewardConfigError(f"reward 'vlm_judge': 'parser' must be a preset name or a regex, got {parser!r}")
        if self.mode == "yes_no" and parser != "yes_no":
            raise RewardConfigError(
                f"reward 'vlm_judge': mode 'yes_no' reads yes/no itself; drop 'parser' ({parser!r}) or use mode 'score'"
            )
        if parser in PRESETS:
            chosen = PRESETS[parser]
            return parser, chosen.parse, chosen.expects, chosen.scale
        try:
            pattern = re.compile(parser)
        except re.error as error:
            raise RewardConfigError(
                f"reward 'vlm_judge': 'parser' {parser!r} is no preset ({', '.join(PRESETS)}) "
                f"and not a valid regex ({error})"
            ) from None
        if pattern.groups != 1:
            raise RewardConfigError(
                f"reward 'vlm_judge': the 'parser' regex {parser!r} must have exactly one group "
                f"(the number), it has {pattern.groups}"
            )
        return f"regex {parser!r}", parse_last_match(pattern), f"a match of {parser!r}", 1.0

    # ------------------------------------------------------------------------------------------ scoring
    def question(self, index: int, prompt: str, columns: dict[str, Any]) -> str:
        """The template filled for sample `index`: `{prompt}` and `{column}` from the dataset row."""
        values: dict[str, Any] = {"prompt": prompt}
        for field in self.fields:
            if field == "prompt":
                continue
            if field not in columns:
                raise RuntimeError(
                    f"vlm_judge: the template's {{{field}}} is not a dataset column (columns: "
                    f"{sorted(columns)}); add the column or change the template"
                )
            values[field] = columns[field][index]
        return self.template.format_map(values)

    def score(self, answer: ChatAnswer) -> float | None:
        """The reward of one answer; None when it does not parse."""
        if self.mode == "yes_no":
            probability = yes_probability(answer)
            return probability if probability is not None else self.parse(answer.text)
        value = self.parse(answer.text)
        return None if value is None else value / self.scale

    def _failure(self, answer: ChatAnswer | VlmCallError) -> str:
        if isinstance(answer, VlmCallError):
            return f"request failed: {answer}"
        cut = (
            f"; the answer was cut at max_tokens={self.max_tokens} (finish_reason=length): raise max_tokens"
            if answer.finish_reason == "length"
            else ""
        )
        return (
            f"the answer did not parse with {self.parser_name} (expected {self.expects}): {shorten(answer.text)!r}{cut}"
        )

    def __call__(self, prompts: list[str], images: torch.Tensor, **columns: Any) -> list[float | None]:
        questions = [self.question(index, prompt, columns) for index, prompt in enumerate(prompts)]
        pictures = to_pil(images)
        if self.image_size is not None:
            side = self.image_size
            pictures = [
                picture if picture.size == (side, side) else picture.resize((side, side), Image.Resampling.BICUBIC)
                for picture in pictures
            ]
        answers = self.client.ask(
            list(zip(pictures, questions)),
            max_tokens=self.max_tokens,
            top_logprobs=self.top_logprobs,
            system=self.system,
        )
        scores: list[float | None] = []
        failures: list[tuple[str, str]] = []
        for prompt, answer in zip(prompts, answers):
            value = None if isinstance(answer, VlmCallError) else self.score(answer)
            if value is None:
                failures.append((prompt, self._failure(answer)))
            scores.append(value)
        if failures:
            prompt, reason = failures[0]
            summary = (
                f"vlm_judge: {len(failures)} of {len(prompts)} images got no score from "
                f"{self.client.base_url} (model {self.client.model!r}); first, prompt {shorten(prompt, 80)!r}: "
                f"{reason}"
            )
            if self.on_failure == "raise":
                raise RuntimeError(summary + "; set on_failure: mask to give such images no score instead")
            logger.warning("%s; they count as no score (on_failure: mask)", summary)
        return scores

    def __repr__(self) -> str:
        return (
            f"VlmJudgeReward({self.client.base_url!r}, model={self.client.model!r}, parser={self.parser_name}, "
            f"mode={self.mode!r})"
        )
