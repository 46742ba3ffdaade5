"""Prompt sets evaluation runs on: the shapes world's splits by name, or any GenEval `evaluation_metadata.jsonl`."""

from __future__ import annotations

from ..worlds import shapes
from .geneval_folder import read_metadata

PROMPT_SETS = {
    "shapes-held-out": lambda: shapes.split_prompts()[1],
    "shapes-train": lambda: shapes.split_prompts()[0],
}


def load_prompt_set(source: str) -> list[dict]:
    """GenEval metadata rows (`tag`, `include`, `exclude`, `prompt`) of a named set or a `.jsonl` file."""
    if source in PROMPT_SETS:
        return PROMPT_SETS[source]()
    return read_metadata(source)
