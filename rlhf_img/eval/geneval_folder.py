"""GenEval's on-disk formats: its prompt metadata, its image-folder layout and its results file.

GenEval's layout (djghosh13/geneval, `generation/` and `evaluation/evaluate_images.py`): one folder per
prompt, `IMAGEDIR/<index:05d>/metadata.jsonl` (that prompt's metadata as one JSON object) and
`IMAGEDIR/<index:05d>/samples/<k:04d>.png`. Results are one JSON line per image with GenEval's fields
(`filename`, `tag`, `prompt`, `correct`, `reason`, `metadata`, `details`); the table is accuracy per tag
and `overall` = the unweighted mean over tags.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..geneval_rules import summarize
from ..images import to_pil
from .prompt_rows import read_prompt_rows

if TYPE_CHECKING:
    from .protocol import ImageJudge


def read_metadata(path: str) -> list[dict]:
    """GenEval's `evaluation_metadata.jsonl`: one object per line with `tag`, `include`, (`exclude`), `prompt`."""

    def check(row: dict) -> None:
        missing = {"tag", "include", "prompt"} - set(row)
        if missing:
            raise ValueError(f"missing GenEval key(s) {sorted(missing)}")

    return read_prompt_rows(path, check, what="GenEval metadata")


def save_image_folder(
    images: torch.Tensor, rows: Sequence[dict], image_dir: str, images_per_prompt: int, first_prompt_index: int = 0
) -> list[str]:
    """Save `images` `(len(rows) * images_per_prompt, 3, H, W)` in GenEval's layout, prompt `i` of `rows` as folder
    `first_prompt_index + i`; returns each image's path relative to `image_dir`."""
    names = []
    for index, image in enumerate(to_pil(images)):
        prompt_index = first_prompt_index + index // images_per_prompt
        folder = os.path.join(image_dir, f"{prompt_index:05d}")
        os.makedirs(os.path.join(folder, "samples"), exist_ok=True)
        if index % images_per_prompt == 0:
            with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
                json.dump(rows[index // images_per_prompt], f)
        name = os.path.join(f"{prompt_index:05d}", "samples", f"{index % images_per_prompt:04d}.png")
        image.save(os.path.join(image_dir, name))
        names.append(name)
    return names


def list_image_folder(image_dir: str) -> list[tuple[str, dict]]:
    """(image path, metadata) for every `NNNNN/samples/NNNN.png` of a GenEval image folder, in order."""
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"GenEval image folder not found: {image_dir}")
    items = []
    for sub in sorted(os.listdir(image_dir)):
        folder = os.path.join(image_dir, sub)
        if not (sub.isdigit() and os.path.isdir(folder)):
            continue
        meta_path = os.path.join(folder, "metadata.jsonl")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"GenEval image folder: {meta_path} is missing")
        with open(meta_path) as f:
            metadata = json.load(f)
        samples = os.path.join(folder, "samples")
        for name in sorted(os.listdir(samples)) if os.path.isdir(samples) else []:
            if re.fullmatch(r"\d+\.png", name):
                items.append((os.path.join(samples, name), metadata))
    if not items:
        raise FileNotFoundError(f"GenEval image folder {image_dir} has no NNNNN/samples/NNNN.png images")
    return items


def load_image(path: str) -> torch.Tensor:
    """`(3, H, W)` float in [0, 1]."""
    with Image.open(path) as image:
        array = np.array(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255


def score_image_folder(judge: "ImageJudge", image_dir: str, batch_size: int = 8) -> list[dict]:
    """One record per image of a folder in GenEval's layout (images batched by size), by `judge`
    (`eval/judges.py`; GenEval's results lines for `GenEvalJudge`)."""
    items = list_image_folder(image_dir)
    records = []
    for start in tqdm(range(0, len(items), batch_size), desc=f"{judge.name}: scoring", dynamic_ncols=True):
        chunk = items[start : start + batch_size]
        images = [load_image(path) for path, _ in chunk]
        if len({tuple(image.shape) for image in images}) == 1:
            groups = [(chunk, torch.stack(images))]
        else:  # mixed sizes: one image at a time
            groups = [([item], image[None]) for item, image in zip(chunk, images)]
        for group, batch in groups:
            judged = judge.judge(batch, [meta for _, meta in group])
            records.extend({"filename": path, **record} for (path, _), record in zip(group, judged))
    return records


def result_record(filename: str, metadata: dict, judgement, detections: dict) -> dict:
    """One line of GenEval's results file."""
    return {
        "filename": filename,
        "tag": metadata["tag"],
        "prompt": metadata.get("prompt", ""),
        "correct": judgement.correct,
        "reason": "\n".join(judgement.reasons),
        "metadata": json.dumps(metadata),
        "details": json.dumps({name: [list(d.box) + [d.score] for d in items] for name, items in detections.items()}),
    }


def results_table(records: Sequence[dict]) -> dict[str, float]:
    return summarize([(record["tag"], bool(record["correct"])) for record in records])


def write_results(records: Sequence[dict], table: dict[str, float], output_dir: str) -> tuple[str, str]:
    os.makedirs(output_dir, exist_ok=True)
    results_path, table_path = os.path.join(output_dir, "results.jsonl"), os.path.join(output_dir, "table.json")
    with open(results_path, "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)
    with open(table_path, "w") as f:
        json.dump(table, f, indent=2)
    return results_path, table_path
