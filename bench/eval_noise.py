"""How noisy is the in-loop eval? The spread of GenEval `overall` across eval seeds on the same weights.

The in-loop eval (`eval_every`, rlhf_img/in_loop_eval.py) scores `eval_max_prompts` held-out prompts (each tag in
turn) x `eval_images_per_prompt` images with fixed seeds. On fixed weights, its number still depends on which
images the seed draws: the std of `overall` over seeds is the standard error of one eval (how far one reading
sits from what the weights would score on infinitely many images of those prompts). Two readings with
independent seeds differ by sqrt(2) x that; the in-loop eval keeps its seeds fixed across steps, which
correlates consecutive readings, so its step-to-step noise is smaller than sqrt(2) x SE but not zero (the
weights, hence the images, change under the same seeds). `keep_best` picks the best of several readings, so a
gap smaller than ~2 SE between two steps is not evidence that one is better.

Each size is sampled exactly as the in-loop eval samples it (`evaluate_policy`, same prompt choice, chunks of
`per_device_eval_batch_size` images, the shapes world's exact detector), at seeds 0..N-1.

    python bench/eval_noise.py [--checkpoint checkpoints/shapes-tiny] [--sizes 8x4,16x4,8x8,49x4] [--seeds 8]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rlhf_img.eval import evaluate_policy  # noqa: E402
from rlhf_img.families import load_policy  # noqa: E402
from rlhf_img.in_loop_eval import load_eval_prompts  # noqa: E402
from rlhf_img.policy import Sampling  # noqa: E402
from rlhf_img.rewards.geneval import build_scorer  # noqa: E402


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'8x4,16x4' -> [(8, 4), (16, 4)]: (prompts, images per prompt)."""
    sizes = []
    for item in text.split(","):
        prompts, images = item.lower().split("x")
        sizes.append((int(prompts), int(images)))
    return sizes


def measure(policy, prompts: int, images_per_prompt: int, seeds: int, eval_batch: int, source: str) -> dict:
    """`overall` at each seed, its mean and std over seeds (the standard error of one eval), seconds per eval."""
    rows = load_eval_prompts(source, prompts)
    scorer = build_scorer("shapes")
    sampling = Sampling(cfg_mode="none", temperature=1.0)  # the quickstart recipe's rollouts and evals
    batch_prompts = max(1, eval_batch // images_per_prompt)  # what the in-loop eval does
    values, seconds = [], []
    for seed in range(seeds):
        start = time.perf_counter()
        table, _, _ = evaluate_policy(
            policy, rows, scorer, images_per_prompt, sampling, seed, batch_prompts=batch_prompts, progress=False
        )
        seconds.append(time.perf_counter() - start)
        values.append(table["overall"])
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return {
        "prompts": len(rows),
        "images_per_prompt": images_per_prompt,
        "images": len(rows) * images_per_prompt,
        "mean": statistics.fmean(values),
        "standard_error": std,
        "standard_error_uncertainty": std / math.sqrt(2 * (len(values) - 1)) if len(values) > 1 else float("nan"),
        "seconds": statistics.median(seconds),
        "values": values,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/shapes-tiny")
    parser.add_argument("--prompts", default="shapes-held-out", help="eval_prompts of the in-loop eval")
    parser.add_argument("--sizes", default="8x4,16x4,8x8,49x4", help="prompts x images per prompt, comma-separated")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--eval_batch", type=int, default=32, help="per_device_eval_batch_size (images per call)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = load_policy(args.checkpoint)
    results = []
    print(f"in-loop eval noise: {args.checkpoint}, {args.prompts}, GenEval strict overall, seeds 0..{args.seeds - 1}")
    print(f"{'prompts x images':>17s} {'images':>6s} {'mean':>7s} {'std err':>8s} {'(+-)':>6s} {'sec/eval':>8s}")
    for prompts, images_per_prompt in parse_sizes(args.sizes):
        row = measure(policy, prompts, images_per_prompt, args.seeds, args.eval_batch, args.prompts)
        results.append(row)
        print(
            f"{row['prompts']:>8d} x {row['images_per_prompt']:<6d} {row['images']:>6d} {row['mean']:>7.3f} "
            f"{row['standard_error']:>8.3f} {row['standard_error_uncertainty']:>6.3f} {row['seconds']:>8.1f}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "checkpoint": args.checkpoint,
                    "prompts": args.prompts,
                    "seeds": args.seeds,
                    "torch_threads": torch.get_num_threads(),
                    "rows": results,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
