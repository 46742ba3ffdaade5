"""Evaluation: sample a checkpoint on a prompt set (or read a GenEval image folder), detect, judge with
GenEval's rules, and write GenEval's `results.jsonl` and a per-tag `table.json` (`rlhf-img eval`)."""

from .evaluate import evaluate_policy, format_table, generate_images, load_for_eval, sample_chunks, write_records
from .geneval_folder import read_metadata, results_table, score_image_folder, write_results
from .prompts import PROMPT_SETS, load_prompt_set

__all__ = [
    "PROMPT_SETS",
    "evaluate_policy",
    "format_table",
    "generate_images",
    "load_for_eval",
    "load_prompt_set",
    "read_metadata",
    "results_table",
    "sample_chunks",
    "score_image_folder",
    "write_records",
    "write_results",
]
