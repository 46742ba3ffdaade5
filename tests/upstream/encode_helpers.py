"""Shared helpers of the `rlhf-img encode` tests: rendered shapes images written as the inputs users have, the
shipped shapes checkpoint, and the actions `policy.encode_images` gives for the same fitted images."""

from __future__ import annotations

import io
import json
import os
import random

import numpy as np
import torch
from conftest import REPO  # tests/conftest.py: offline environment
from PIL import Image

CHECKPOINT = os.path.join(REPO, "checkpoints", "shapes-tiny")


def render_pairs(count: int, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """`count` (caption, image) pairs of the shapes world, the same for a seed."""
    from rlhf_img.worlds import shapes

    prompts, rng = shapes.all_prompts(), random.Random(seed)
    pairs = []
    for _ in range(count):
        row = prompts[rng.randrange(len(prompts))]
        pairs.append((row["prompt"], Image.fromarray(shapes.render_prompt(row, rng.randrange(2**31)))))
    return pairs


def write_image_folder(folder, pairs, *, captions: str = "txt") -> list[str]:
    """Write `pairs` as `NNNN.png` + `NNNN.txt` (or one `metadata.jsonl` when `captions="metadata"`); the keys."""
    os.makedirs(folder, exist_ok=True)
    keys = [f"{index:04d}" for index in range(len(pairs))]
    for key, (caption, image) in zip(keys, pairs):
        image.save(os.path.join(folder, f"{key}.png"))
        if captions == "txt":
            with open(os.path.join(folder, f"{key}.txt"), "w") as f:
                f.write(caption)
    if captions == "metadata":
        with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
            for key, (caption, _) in zip(keys, pairs):
                f.write(json.dumps({"file_name": f"{key}.png", "caption": caption}) + "\n")
    return keys


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def load_shapes_policy():
    from rlhf_img.families import load_policy

    return load_policy(CHECKPOINT)


def expected_actions(policy, images: list[Image.Image]) -> np.ndarray:
    """What `policy.encode_images` returns for `images` fitted to its image size: `(N, T)` int."""
    from rlhf_img.upstream.image_rows import fit_image

    pixels = np.stack([fit_image(image.copy(), policy.image_size) for image in images])  # (N, H, W, 3)
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    return policy.encode_images(batch).cpu().numpy()


def encode(dataset: str, output_dir, **keys):
    """`run_encode` in this process (CPU, small shards, two loader threads)."""
    from rlhf_img.upstream.encode import EncodeConfig, run_encode

    options = dict(
        model_name_or_path=CHECKPOINT,
        dataset=str(dataset),
        output_dir=str(output_dir),
        shard_size=8,
        batch_size=4,
        num_workers=2,
        use_cpu=True,
    )
    return run_encode(EncodeConfig(**{**options, **keys}))
