"""Text-rendering prompt files in flow_grpo's format: plain UTF-8 text, one prompt per line, each holding its
target text between double quotes (`a neon sign that reads "Open Late"`).

The same file trains (`dataset: recipes/prompts/text-rendering-train.txt`; the `ocr` reward reads the quote from
the prompt) and evaluates (`read_text_prompts` -> rows with the target in `text`, as `TextRenderingJudge` wants).
"""

from __future__ import annotations

import os

from ..rewards.text_match import normalize_text, quoted_target


def read_text_prompts(path: str) -> list[dict]:
    """Rows `{"prompt": line, "text": target}` of a prompt file; blank lines are skipped, surrounding whitespace
    stripped (as the training loader does). A line without a non-empty double-quoted target is an error naming
    `path:line`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text-rendering prompt file not found: {path}")
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                prompt = line.strip()
                if not prompt:
                    continue
                target = quoted_target(prompt)
                if target is None or not normalize_text(target):
                    raise ValueError(
                        f"{path}:{number}: no double-quoted target text in {prompt!r} "
                        '(write it as: a sign that reads "Open Late")'
                    )
                rows.append({"prompt": prompt, "text": target})
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); save it as UTF-8"
        ) from None
    if not rows:
        raise ValueError(f"{path}: no prompts")
    return rows
