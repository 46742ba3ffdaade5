"""Latency of the `vlm_judge` path: one request at a time (min / median), and one batch through the reward.

Without `--base_url` it builds the tiny random LLaVA of the tests (tests/vlm_server.py) and serves it with
`transformers serve --device cpu`, offline: the numbers are then the framework's overhead (HTTP, PNG encoding,
the server's image processing and a 160k-parameter model), not a real judge's. Pass a real server to measure it:

    python bench/vlm_judge_latency.py                                       # tiny local server, 10 requests
    python bench/vlm_judge_latency.py --base_url http://127.0.0.1:8000/v1 --model unifiedreward --max_tokens 64

Each request sends a different image (no cache hits); the batch goes through `VlmJudgeReward` with `max_concurrency`
requests in flight, as a training step would.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def noise_image(seed: int, size: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def measure(
    base_url: str, model: str, requests: int, max_tokens: int, image_size: int, batch: int, concurrency: int
) -> dict:
    from rlhf_img.rewards.vlm_client import VlmClient
    from rlhf_img.rewards.vlm_judge import VlmJudgeReward

    client = VlmClient(base_url, model, cache=False)
    client.check()
    client.ask([(noise_image(10**6, image_size), "warm-up")], max_tokens=max_tokens)
    seconds = []
    for index in range(requests):
        image = noise_image(index, image_size)
        start = time.perf_counter()
        (answer,) = client.ask([(image, "Rate the image from 1 to 5.")], max_tokens=max_tokens)
        seconds.append(time.perf_counter() - start)
        if not hasattr(answer, "text"):
            raise SystemExit(f"request {index} failed: {answer}")
    judge = VlmJudgeReward(
        base_url,
        model,
        template="Rate {prompt}.",
        parser=r"([0-9])",
        max_tokens=max_tokens,
        max_concurrency=concurrency,
        cache=False,
        on_failure="mask",
    )
    images = torch.rand(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    judge(prompts=[f"prompt {index}" for index in range(batch)], images=images)
    batch_seconds = time.perf_counter() - start
    return {
        "requests": requests,
        "max_tokens": max_tokens,
        "image_size": image_size,
        "request_ms_min": round(min(seconds) * 1000, 1),
        "request_ms_median": round(statistics.median(seconds) * 1000, 1),
        "batch": batch,
        "max_concurrency": concurrency,
        "batch_s": round(batch_seconds, 2),
        "batch_ms_per_image": round(batch_seconds / batch * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_url", help="an OpenAI-compatible server; default: serve the tiny LLaVA locally")
    parser.add_argument("--model", help="the served model name (with --base_url)")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--max_tokens", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=512, help="side of the square images sent (flow_grpo: 512)")
    parser.add_argument("--batch", type=int, default=8, help="images in the batch sent through the reward")
    parser.add_argument("--max_concurrency", type=int, default=8)
    parser.add_argument("--json", help="also write the result here")
    options = parser.parse_args()
    settings = dict(
        requests=options.requests,
        max_tokens=options.max_tokens,
        image_size=options.image_size,
        batch=options.batch,
        concurrency=options.max_concurrency,
    )
    if options.base_url:
        if not options.model:
            parser.error("--model is needed with --base_url")
        result = measure(options.base_url, options.model, **settings)
    else:
        sys.path.insert(0, os.path.join(REPO, "tests"))
        from vlm_server import build_tiny_llava, serve_tiny_vlm

        with tempfile.TemporaryDirectory() as folder:
            model = build_tiny_llava(os.path.join(folder, "tiny-llava"))
            with serve_tiny_vlm(model, os.path.join(folder, "serve.log")) as server:
                result = measure(server.base_url, server.model, **settings)
        result["server"] = "transformers serve, tiny random LLaVA, --device cpu"
    print(json.dumps(result, indent=1))
    if options.json:
        with open(options.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
