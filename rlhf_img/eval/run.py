"""`rlhf-img eval`: one `EvalConfig` (an eval file and/or flags) -> one call of the evaluation path."""

from __future__ import annotations

import os

from ..config import EvalConfig
from ..rewards.clip import default_device
from ..rewards.geneval import build_scorer
from .evaluate import evaluate_policy, load_for_eval
from .geneval_folder import results_table, score_image_folder, write_results
from .prompts import load_prompt_set


def run_evaluation(config: EvalConfig) -> tuple[dict[str, float], str, list[str]]:
    """(table, a title for it, paths written) for `config`. Everything that can fail on user input (checkpoint,
    prompts, detector) fails before any image is sampled."""
    if bool(config.checkpoint) == bool(config.images):
        raise ValueError("give a checkpoint to sample from (CHECKPOINT or --checkpoint), or --images DIR to score, "
                         "not both")
    device = config.device or default_device()
    if config.checkpoint:
        if not config.prompts:
            raise ValueError("prompts (--prompts / --metadata: a prompt set name or GenEval's "
                             "evaluation_metadata.jsonl) is needed with a checkpoint")
        rows = load_prompt_set(config.prompts)
        policy = load_for_eval(config.checkpoint, config.model_family, device=device, dtype=config.dtype,
                               family_config=config.family_config, visual_tokenizer=config.visual_tokenizer)
    scorer = build_scorer(config.detector, config.detector_model, config.clip_model, config.clip_pretrained,
                          device, config.batch_size, config.class_names)
    if config.checkpoint:
        image_dir = os.path.join(config.output_dir, "images") if config.output_dir else None
        table, records, _ = evaluate_policy(policy, rows, scorer, config.images_per_prompt, config.sampling,
                                            config.seed, batch_prompts=config.batch_prompts, image_dir=image_dir)
        title = (f"GenEval (strict) on {len(rows)} prompts ({config.prompts}) x {config.images_per_prompt} images, "
                 f"seed {config.seed}:")
    else:
        records = score_image_folder(scorer, config.images, config.batch_size)
        table = results_table(records)
        title = f"GenEval on {len(records)} images from {config.images}:"
    written = list(write_results(records, table, config.output_dir)) if config.output_dir else []
    if config.checkpoint and config.output_dir:
        written.insert(0, image_dir)
    return table, title, written
