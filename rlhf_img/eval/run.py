"""`rlhf-img eval`: one `EvalConfig` (an eval file and/or flags) -> one call of the evaluation path."""

from __future__ import annotations

import os

from ..config import EvalConfig
from ..rewards.clip import default_device
from ..rewards.geneval import build_scorer
from .evaluate import evaluate_policy, load_for_eval
from .geneval_folder import score_image_folder, write_results
from .judges import GenEvalJudge
from .prompts import load_prompt_set
from .protocol import ImageJudge


def build_judge(config: EvalConfig, device: str) -> ImageJudge:
    """The judge of `config.metric` (`eval/judges.py`), built before any image is sampled so a missing detector,
    OCR engine or VQA server fails first."""
    if config.metric == "ocr":
        from .text_rendering import TextRenderingJudge

        return TextRenderingJudge()
    if config.metric == "vqa":
        from .vqa import ShapesAnswerer, VlmAnswerer, VqaJudge

        if config.vqa_answerer == "vlm":
            answerer = VlmAnswerer(
                base_url=config.judge_base_url, model=config.judge_model, api_key_env=config.judge_api_key_env
            )
        else:
            answerer = ShapesAnswerer()
        return VqaJudge(answerer)
    return GenEvalJudge(
        build_scorer(
            config.detector,
            config.detector_model,
            config.clip_model,
            config.clip_pretrained,
            device,
            config.batch_size,
            config.class_names,
        )
    )


def run_evaluation(config: EvalConfig) -> tuple[dict[str, float], str, list[str]]:
    """(table, a title for it, paths written) for `config`. Everything that can fail on user input (checkpoint,
    prompts, judge) fails before any image is sampled."""
    if bool(config.checkpoint) == bool(config.images):
        raise ValueError(
            "give a checkpoint to sample from (CHECKPOINT or --checkpoint), or --images DIR to score, not both"
        )
    device = config.device or default_device()
    if config.checkpoint:
        if not config.prompts:
            raise ValueError(
                "prompts (--prompts / --metadata: a prompt set name or a prompt file) is needed with a checkpoint"
            )
        rows = load_prompt_set(config.prompts, config.metric)
        policy = load_for_eval(
            config.checkpoint,
            config.model_family,
            device=device,
            dtype=config.dtype,
            family_config=config.family_config,
            visual_tokenizer=config.visual_tokenizer,
        )
    judge = build_judge(config, device)
    label = {"geneval": "GenEval (strict)", "ocr": "Text rendering (OCR)", "vqa": "VQA (Soft-TIFA)"}[config.metric]
    if config.checkpoint:
        image_dir = os.path.join(config.output_dir, "images") if config.output_dir else None
        table, records, _ = evaluate_policy(
            policy,
            rows,
            judge,
            config.images_per_prompt,
            config.sampling,
            config.seed,
            batch_prompts=config.batch_prompts,
            image_dir=image_dir,
        )
        title = (
            f"{label} on {len(rows)} prompts ({config.prompts}) x {config.images_per_prompt} images, "
            f"seed {config.seed}:"
        )
    else:
        records = score_image_folder(judge, config.images, config.batch_size)
        table = judge.table(records)
        title = f"{label} on {len(records)} images from {config.images}:"
    written = list(write_results(records, table, config.output_dir)) if config.output_dir else []
    if config.checkpoint and config.output_dir:
        written.insert(0, image_dir)
    return table, title, written
