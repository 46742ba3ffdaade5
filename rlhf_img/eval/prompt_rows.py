"""Reading JSONL prompt files: one JSON object a line, each with a `prompt` string. Shared by GenEval's metadata
file (`eval/geneval_folder.py`), the `ocr` prompt rows (`eval/prompts.py`) and the VQA prompt files
(`eval/vqa/files.py`); imports nothing else of `eval`, so all of them can use it."""

from __future__ import annotations

import json
import os
from typing import Callable


def read_prompt_rows(path: str, check: Callable[[dict], object] | None = None, what: str = "prompt file") -> list[dict]:
    """The rows of `path`; blank lines are skipped. ValueError naming `path:line` for a line that is not a JSON object
    with a `prompt` string, or that `check(row)` rejects (ValueError, KeyError or TypeError); FileNotFoundError naming
    `what` when there is no file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f"{path}:{number}: each line must be an object with a 'prompt' string")
            if check is not None:
                try:
                    check(row)
                except (ValueError, KeyError, TypeError) as error:
                    raise ValueError(f"{path}:{number}: {error}") from None
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no prompts")
    return rows
