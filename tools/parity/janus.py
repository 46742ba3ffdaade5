"""Parity figures of the `janus` family against transformers' own `JanusForConditionalGeneration.generate(...,
generation_mode="image")`, on a tiny random Janus saved in the released on-disk format (the same stand-in the
tests use). The reference is the installed transformers, so nothing is downloaded and no data file is written:

    python tools/parity/janus.py [--seeds 8]

Prints, for greedy decoding and for seeded sampling under three rules (plain; temperature 0.7 + top-k 16;
temperature 1.3 + top-p 0.9), how many image tokens our KV-cached sampler reproduces, and the largest difference
between our teacher-forced log-probs and log-softmax of generate's processed scores (guided modes) or of its
conditional raw scores through transformers' own warpers (conditional modes). `tests/test_janus_parity.py`
asserts the same comparisons; its docstring says how the two samplers are aligned.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import (
    AutoProcessor,
    JanusForConditionalGeneration,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rlhf_img import Sampling, load_policy
from rlhf_img.families.janus.tiny import save_tiny_janus

PROMPTS = ["a red apple on a table", "x"]
RULES = {
    "plain": dict(temperature=1.0, top_k=0, top_p=1.0),
    "temperature 0.7 + top-k 16": dict(temperature=0.7, top_k=16, top_p=1.0),
    "temperature 1.3 + top-p 0.9": dict(temperature=1.3, top_k=0, top_p=0.9),
}


class Recorder(LogitsProcessor):
    def __init__(self):
        self.scores = []

    def __call__(self, input_ids, scores):
        self.scores.append(scores.detach().clone())
        return scores


def generate(reference, processor, seed, **kwargs):
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": p}]}], add_generation_prompt=True
        )
        for p in PROMPTS
    ]
    inputs = processor(text=texts, generation_mode="image", padding=True, return_tensors="pt")
    raw, processed = Recorder(), Recorder()
    build = reference._get_logits_processor
    reference._get_logits_processor = lambda *a, **k: LogitsProcessorList([*build(*a, **k), processed])
    try:
        torch.manual_seed(seed)
        tokens = reference.generate(
            inputs.input_ids,
            attention_mask=inputs.attention_mask,
            generation_mode="image",
            logits_processor=LogitsProcessorList([raw]),
            **kwargs,
        )
    finally:
        del reference._get_logits_processor
    return inputs, tokens, torch.stack(raw.scores, 1), torch.stack(processed.scores, 1)


def gathered(scores, tokens):
    return torch.log_softmax(scores.double(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--cfg_scale", type=float, default=5.0)
    args = parser.parse_args()
    path = save_tiny_janus(tempfile.mkdtemp() + "/janus", seed=0)
    reference = JanusForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    policy = load_policy(path, dtype="float32")
    batch = policy.encode_prompts(PROMPTS)
    scale = args.cfg_scale

    for cfg in (2.0, scale):
        _, tokens, _, _ = generate(reference, processor, 0, do_sample=False, guidance_scale=cfg)
        ours = policy.sample(policy.model, batch, Sampling("guided", cfg, top_k=1)).actions
        print(f"greedy, CFG {cfg:g}: {int((ours == tokens).sum())}/{tokens.numel()} tokens identical")

    for name, rule in RULES.items():
        same = total = 0
        worst = {"guided": 0.0, "conditional": 0.0}
        largest = 0.0
        for seed in range(args.seeds):
            kwargs = dict(
                do_sample=True,
                guidance_scale=scale,
                temperature=rule["temperature"],
                top_k=rule["top_k"] or None,
                top_p=rule["top_p"],
            )
            inputs, tokens, raw, processed = generate(reference, processor, seed, **kwargs)
            ours = policy.sample(
                policy.model, batch, Sampling("guided", scale, **rule), generator=torch.Generator().manual_seed(seed)
            ).actions
            same, total = same + int((ours == tokens).sum()), total + tokens.numel()
            warpers = [TemperatureLogitsWarper(rule["temperature"])]
            warpers += [TopKLogitsWarper(rule["top_k"])] if rule["top_k"] else []
            warpers += [TopPLogitsWarper(rule["top_p"])] if rule["top_p"] < 1 else []
            cond = raw[: len(PROMPTS)]
            warped = torch.stack(
                [LogitsProcessorList(warpers)(inputs.input_ids, cond[:, t]) for t in range(cond.size(1))], 1
            )
            taken = tokens.unsqueeze(-1)  # our scorer keeps the taken code in the support (docs/concepts/cfg-modes.md)
            warped = warped.scatter(-1, taken, cond.gather(-1, taken) / rule["temperature"])
            with torch.no_grad():
                for kind, mode, expected in (
                    ("guided", "guided", gathered(processed, tokens)),
                    ("conditional", "none", gathered(warped, tokens)),
                ):
                    logps, _ = policy.logprobs(policy.model, batch, tokens, Sampling(mode, scale, **rule))
                    worst[kind] = max(worst[kind], float((logps.double() - expected).abs().max()))
                    largest = max(largest, float(expected.abs().max()))
        print(
            f"sampling, {name}, CFG {scale:g}, {args.seeds} seeds: {same}/{total} tokens identical; "
            f"max |log-prob difference| guided {worst['guided']:.1e}, conditional {worst['conditional']:.1e} "
            f"(log-probs up to {largest:.1f} in magnitude)"
        )


if __name__ == "__main__":
    main()
