"""`rlhf-img eval`: resolve the command's options into one call of the evaluation path."""

from __future__ import annotations

import argparse
import os

from ..config import SamplingOptions, parse_structured
from ..rewards.clip import default_device
from ..rewards.geneval import build_scorer
from .evaluate import evaluate_policy, load_for_eval
from .geneval_folder import results_table, score_image_folder, write_results
from .prompts import load_prompt_set


def run_evaluation(options: argparse.Namespace) -> tuple[dict[str, float], str, list[str]]:
    """(table, a title for it, paths written) for the parsed `rlhf-img eval` options. Everything that can fail on
    user input (checkpoint, prompts, detector) fails before any image is sampled."""
    checkpoint = options.checkpoint or options.checkpoint_option
    if bool(checkpoint) == bool(options.images):
        raise ValueError("give a checkpoint to sample from, or --images DIR to score, not both")
    sampling = SamplingOptions(cfg_mode=options.cfg_mode, cfg_scale=options.cfg_scale, temperature=options.temperature,
                               top_k=options.top_k, top_p=options.top_p, sampler=options.sampler).sampling
    device = options.device or default_device()
    if checkpoint:
        if not options.prompts:
            raise ValueError("--prompts (a prompt set name or GenEval's evaluation_metadata.jsonl) is needed with a checkpoint")
        rows = load_prompt_set(options.prompts)
        family_config = parse_structured(options.family_config, "--family_config")
        if family_config is not None and not isinstance(family_config, dict):
            raise ValueError("--family_config must be a mapping")
        policy = load_for_eval(checkpoint, options.model_family, device=device, dtype=options.dtype,
                               family_config=family_config, visual_tokenizer=options.visual_tokenizer)
    scorer = build_scorer(options.detector, options.detector_model, options.clip_model, options.clip_pretrained,
                          device, options.batch_size, options.class_names)
    if checkpoint:
        image_dir = os.path.join(options.output_dir, "images") if options.output_dir else None
        table, records, _ = evaluate_policy(policy, rows, scorer, options.images_per_prompt, sampling, options.seed,
                                            batch_prompts=options.batch_prompts, image_dir=image_dir)
        title = (f"GenEval (strict) on {len(rows)} prompts ({options.prompts}) x {options.images_per_prompt} images, "
                 f"seed {options.seed}:")
    else:
        records = score_image_folder(scorer, options.images, options.batch_size)
        table = results_table(records)
        title = f"GenEval on {len(records)} images from {options.images}:"
    written = list(write_results(records, table, options.output_dir)) if options.output_dir else []
    if checkpoint and options.output_dir:
        written.insert(0, image_dir)
    return table, title, written
