"""`vqa`: GenEval 2-style VQA reward: a prompt's atoms asked as yes/no (or "How many") questions, the answers'
probabilities combined by Soft-TIFA (`rlhf_img/eval/vqa/`).

Reads each row's `atoms` column (our prompt-file format), GenEval 2's `vqa_list` + `skills`, or GenEval's
metadata columns (`tag`, `include`, `exclude`), in that order. `answerer: shapes` answers exactly from the
shapes world's detector; `answerer: vlm` asks an OpenAI-compatible VLM server (`base_url`, `model`, ...).
`aggregation`: soft_tifa (= soft_tifa_gm, GenEval 2's prompt-level score) | soft_tifa_am (partial credit per
atom) | tifa | strict. `on_failure`: raise (a VLM reply that is no answer stops the run naming the question and
the prompt) | mask (that image gets no score; the count is logged).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .loading import RewardConfigError
from .registry import register_reward

logger = logging.getLogger(__name__)
ANSWERERS = ("shapes", "vlm")


@register_reward("vqa")
class VqaReward:
    """Soft-TIFA over a prompt's atoms, answered by the shapes world's detector or a VLM."""

    def __init__(
        self,
        answerer: str = "shapes",
        aggregation: str = "soft_tifa",
        on_failure: str = "raise",
        counts: str = "geneval2",
        base_url: str | None = None,
        model: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        retries: int = 2,
        max_concurrency: int = 8,
        question_suffix: str | None = None,
        top_logprobs: int = 20,
        max_tokens: int = 8,
        system: str | None = None,
        min_image_side: int = 0,
    ) -> None:
        # imported here: `rlhf_img.rewards` is imported by every run, the VQA machinery only by runs that use it
        from ..eval.vqa import AGGREGATIONS, ShapesAnswerer, VlmAnswerer
        from ..eval.vqa.atoms import COUNT_MODES

        if answerer not in ANSWERERS:
            raise RewardConfigError(f"vqa: answerer must be one of {ANSWERERS}, got {answerer!r}")
        if aggregation not in AGGREGATIONS:
            raise RewardConfigError(f"vqa: aggregation must be one of {tuple(AGGREGATIONS)}, got {aggregation!r}")
        if counts not in COUNT_MODES:
            raise RewardConfigError(f"vqa: counts must be one of {COUNT_MODES}, got {counts!r}")
        if on_failure not in ("raise", "mask"):
            raise RewardConfigError(f"vqa: on_failure must be 'raise' or 'mask', got {on_failure!r}")
        self.aggregation, self.counts, self.on_failure = aggregation, counts, on_failure
        if answerer == "shapes":
            if base_url is not None or model is not None:
                raise RewardConfigError("vqa: base_url and model apply to answerer: vlm, not answerer: shapes")
            self.answerer: Any = ShapesAnswerer()
        else:
            extra = {} if question_suffix is None else {"question_suffix": question_suffix}
            try:
                self.answerer = VlmAnswerer(
                    base_url=base_url,
                    model=model,
                    api_key_env=api_key_env,
                    timeout=timeout,
                    retries=retries,
                    max_concurrency=max_concurrency,
                    top_logprobs=top_logprobs,
                    max_tokens=max_tokens,
                    system=system,
                    min_image_side=min_image_side,
                    on_failure=on_failure,
                    **extra,
                )
            except ValueError as error:
                raise RewardConfigError(str(error)) from None
        self.masked_images = 0  # images left unscored by `on_failure: mask`, over the reward's life

    def __call__(self, prompts: list[str], images: torch.Tensor, **columns: Any) -> list[float | None]:
        from ..eval.vqa.atoms import rows_from_columns
        from ..eval.vqa.scoring import aggregate, answer_rows

        rows = rows_from_columns(prompts, columns)
        _, probabilities = answer_rows(self.answerer, images, rows, self.counts)
        scores = [aggregate(image, self.aggregation) for image in probabilities]
        masked = sum(score is None for score in scores)
        if masked:
            self.masked_images += masked
            logger.warning(
                "vqa: %d of %d images unscored (a VLM answer was masked; %d so far)",
                masked,
                len(scores),
                self.masked_images,
            )
        return scores
