"""VQA prompt files: read ours (or GenEval's metadata, or GenEval 2's data file), and convert any of them to ours.

    python -m rlhf_img.eval.vqa.files shapes-held-out recipes/prompts/vqa-shapes-held-out.jsonl
    python -m rlhf_img.eval.vqa.files geneval2_data.jsonl geneval2-atoms.jsonl

GenEval 2's data (facebookresearch/GenEval2, `geneval2_data.jsonl`) is CC BY-NC 4.0, so it is converted on the
user's machine, never shipped here; GenEval's metadata is read as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..prompt_rows import read_prompt_rows
from .atoms import COUNT_MODES, atoms_for_row, prompt_file_row


def read_prompt_file(path: str, counts: str = "geneval2") -> list[dict]:
    """Rows of a JSONL prompt file in any of the three formats, each checked to yield atoms (errors name the line)."""
    return read_prompt_rows(path, check=lambda row: atoms_for_row(row, counts), what="vqa prompt file")


def write_prompt_file(rows: list[dict], path: str, counts: str = "geneval2") -> None:
    """`rows` in our format (each with its `atoms`), one JSON object per line."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(prompt_file_row(row, counts)) + "\n")


SHAPES_SPLITS = {"shapes-train": 0, "shapes-held-out": 1}  # the named sets of `eval/prompts.py`


def load_rows(source: str, counts: str = "geneval2") -> list[dict]:
    """The shapes world's split of that name (`shapes-held-out`, `shapes-train`) or a JSONL file. The world is
    read directly, not through `eval/prompts.py`, which reads VQA files through this module."""
    if source in SHAPES_SPLITS:
        from ...worlds import shapes

        return shapes.split_prompts()[SHAPES_SPLITS[source]]
    return read_prompt_file(source, counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlhf_img.eval.vqa.files",
        description="Write a VQA prompt file (rows with 'atoms') from a named prompt "
        "set, GenEval metadata or GenEval 2's data file.",
    )
    parser.add_argument("source", help="shapes-held-out | shapes-train | a .jsonl file")
    parser.add_argument("output", help="the .jsonl file to write")
    parser.add_argument(
        "--counts",
        choices=COUNT_MODES,
        default="geneval2",
        help="count atoms of GenEval metadata rows: geneval2 (every object counted exactly) or "
        "geneval (only where the metadata caps the count)",
    )
    args = parser.parse_args(argv)
    try:
        rows = load_rows(args.source, args.counts)
        write_prompt_file(rows, args.output, args.counts)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(rows)} prompts to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
