"""OCR reward latency and accuracy on rendered text: the `ocr` reward's engine (rapidocr, PP-OCRv4) through the
`ocr` eval judge, on 512x512 signs drawn with PIL from the targets of `recipes/prompts/text-rendering-test.txt`.

The images vary background colour, font size and layout (one line, two lines), and a few carry Gaussian noise or
a small rotation. Each image is read `--repeats` times and its fastest read kept (the machine may be shared);
the table gives CVTG-2K's word accuracy and NED, the mean OCR reward, the exact-match rate and the per-image
latency. `--compare` adds a second row with other engine settings (default: rapidocr's own detection limit,
736 px on the shorter side, which upscales 512 px images).

    python bench/ocr_reward.py [--images 20] [--threads 1] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from rlhf_img.eval.text_prompts import read_text_prompts  # noqa: E402
from rlhf_img.eval.text_rendering import TextRenderingJudge  # noqa: E402

PROMPTS = os.path.join(os.path.dirname(__file__), "..", "recipes", "prompts", "text-rendering-test.txt")
BACKGROUNDS = [(40, 90, 160), (180, 40, 40), (30, 120, 60), (90, 60, 120), (200, 160, 40), (60, 60, 60)]


def render(text: str, index: int, size: int = 512) -> torch.Tensor:
    """`(3, size, size)` in [0, 1]: `text` on a light sign; every 4th image on two lines, every 7th noisy, every
    9th rotated by 8 degrees."""
    rng = np.random.default_rng(index)
    image = Image.new("RGB", (size, size), BACKGROUNDS[index % len(BACKGROUNDS)])
    draw = ImageDraw.Draw(image)
    words = text.split()
    if index % 4 == 3 and len(words) > 1:
        half = (len(words) + 1) // 2
        text = " ".join(words[:half]) + "\n" + " ".join(words[half:])
    font_size = int(rng.integers(40, 68))
    font = ImageFont.load_default(size=font_size)
    while max(draw.textlength(line, font=font) for line in text.split("\n")) > size * 0.8 and font_size > 20:
        font_size -= 4
        font = ImageFont.load_default(size=font_size)
    draw.rounded_rectangle((size // 16, size // 3, size - size // 16, 2 * size // 3), radius=20, fill=(250, 245, 230))
    draw.multiline_text((size // 2, size // 2), text, fill=(20, 20, 20), font=font, anchor="mm", align="center")
    if index % 9 == 8:
        image = image.rotate(8, resample=Image.BICUBIC, fillcolor=BACKGROUNDS[0])
    array = np.asarray(image.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
    if index % 7 == 6:
        array = array + rng.normal(0, 25, array.shape)
    return torch.from_numpy(np.clip(array, 0, 255) / 255).permute(2, 0, 1).float()


def measure(judge: TextRenderingJudge, images: torch.Tensor, rows: list[dict], repeats: int) -> tuple[dict, list]:
    """The judge's table and records, with each image's latency the minimum over `repeats` reads."""
    runs = [judge.judge(images, rows) for _ in range(repeats)]
    records = runs[0]
    for index, record in enumerate(records):
        assert all(run[index]["ocr_text"] == record["ocr_text"] for run in runs), "OCR is not deterministic"
        record["latency_s"] = min(run[index]["latency_s"] for run in runs)
    table = judge.table(records)
    latencies = [record["latency_s"] for record in records]
    table.update(
        latency_min_s=min(latencies), latency_median_s=statistics.median(latencies), latency_max_s=max(latencies)
    )
    return table, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--compare", default="det_limit_side_len=736", help="a second engine setting, KEY=INT[,KEY=INT]; 'none' to skip"
    )
    parser.add_argument("--show", action="store_true", help="print every image's target and what was read")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    rows = read_text_prompts(PROMPTS)[: args.images]
    images = torch.stack([render(row["text"], index) for index, row in enumerate(rows)])
    settings = {"native size": {"threads": args.threads}}
    if args.compare != "none":
        extra = dict(item.split("=") for item in args.compare.split(","))
        settings[args.compare] = {"threads": args.threads, **{key: int(value) for key, value in extra.items()}}

    figures = {}
    print(
        f"{len(rows)} rendered {images.shape[-1]}x{images.shape[-2]} images, {args.threads} thread(s), "
        f"fastest of {args.repeats} reads per image, torch threads {torch.get_num_threads()}"
    )
    print(
        f"{'setting':<28s} {'exact':>6s} {'reward':>7s} {'word acc':>8s} {'NED':>7s} {'min ms':>7s} "
        f"{'median ms':>9s} {'max ms':>7s}"
    )
    for label, kwargs in settings.items():
        table, records = measure(TextRenderingJudge(**kwargs), images, rows, args.repeats)
        figures[label] = {"kwargs": kwargs, **table}
        print(
            f"{label:<28s} {table['exact_match']:6.3f} {table['reward']:7.3f} {table['word_accuracy']:8.3f} "
            f"{table['ned']:7.3f} {1000 * table['latency_min_s']:7.0f} {1000 * table['latency_median_s']:9.0f} "
            f"{1000 * table['latency_max_s']:7.0f}"
        )
        if args.show or label == "native size":
            for record in records:
                if args.show or not record["exact_match"]:
                    print(f"    {record['target']!r:<24s} read {record['ocr_text']!r} (reward {record['reward']:.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
