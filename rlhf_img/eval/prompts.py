"""Prompt sets evaluation runs on: the shapes world's splits by name, or a prompt file of the metric's format."""

from __future__ import annotations

from ..worlds import shapes
from .geneval_folder import read_metadata
from .prompt_rows import read_prompt_rows

PROMPT_SETS = {
    "shapes-held-out": lambda: shapes.split_prompts()[1],
    "shapes-train": lambda: shapes.split_prompts()[0],
}


def load_prompt_set(source: str, metric: str = "geneval") -> list[dict]:
    """Rows of a named set or a file, as `metric` reads them: GenEval metadata rows (`tag`, `include`, `exclude`,
    `prompt`) for `geneval`; rows with a `text` target for `ocr` (a flow_grpo `.txt` file, or `.jsonl` rows with
    `prompt` and `text`); rows with `atoms` or GenEval metadata for `vqa` (`eval/vqa/`)."""
    if metric == "ocr":
        if source in PROMPT_SETS:
            raise ValueError(
                f"metric ocr: {source!r} has no text to render; give a text-rendering prompt file "
                '(.txt, one prompt with one "quoted" target per line), e.g. '
                "recipes/prompts/text-rendering-test.txt"
            )
        if source.endswith(".jsonl"):
            return read_prompt_rows(source)  # `text` optional per row: the quote of the prompt otherwise
        from .text_prompts import read_text_prompts

        return read_text_prompts(source)
    if metric == "vqa" and source not in PROMPT_SETS:
        from .vqa.files import read_prompt_file

        return read_prompt_file(source)
    if source in PROMPT_SETS:
        return PROMPT_SETS[source]()
    return read_metadata(source)
