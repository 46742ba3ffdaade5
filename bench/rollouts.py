"""Rollout throughput: rlhf-img's sampler vs transformers `generate` with a CFG logits processor.

Same random `causal_vq` model, same prompts, batch, group size, CFG scale and temperature. The baseline is
how peers sample with transformers: `generate(..., guidance_scale=s, negative_prompt_ids=...)` (the
`UnbatchedClassifierFreeGuidanceLogitsProcessor`, a second forward per step for the unconditional
branch) plus a logits processor that keeps only image-code ids, so both produce exactly h*w image codes.
Ours batches the unconditional rows with the conditional ones in one KV-cached forward and computes
logits only for the image-code rows of the LM head.

    python bench/rollouts.py [--batch 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.utils import logging

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from rlhf_img import Sampling, load_policy  # noqa: E402
from rlhf_img.families.causal_vq.tiny import save_tiny_causal_vq  # noqa: E402


class KeepImageCodes(LogitsProcessor):
    """Mask every id outside [offset, offset + count): the baseline's equivalent of our restricted head."""

    def __init__(self, offset: int, count: int) -> None:
        self.offset, self.count = offset, count

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        masked = torch.full_like(scores, float("-inf"))
        masked[:, self.offset : self.offset + self.count] = scores[:, self.offset : self.offset + self.count]
        return masked


def build_model(args: argparse.Namespace, directory: str):
    save_tiny_causal_vq(
        directory,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        grid=(args.grid, args.grid),
        codebook_size=args.codebook_size,
        seed=0,
    )
    policy = load_policy(directory, "causal_vq")
    if args.text_vocab > policy.config.image_code_offset:
        # Give the LM a realistic text vocabulary in front of the image codes (Qwen2.5: 151,665 ids, as in
        # SimpleAR); the extra text ids are never sampled but the baseline's full-vocabulary head pays for them.
        old_offset = policy.config.image_code_offset
        model = policy.model
        vocab = args.text_vocab + args.codebook_size
        old_in, old_out = model.get_input_embeddings().weight.data, model.get_output_embeddings().weight.data
        model.resize_token_embeddings(vocab, mean_resizing=False)
        new_in, new_out = model.get_input_embeddings().weight.data, model.get_output_embeddings().weight.data
        new_in[args.text_vocab :] = old_in[old_offset : old_offset + args.codebook_size]
        new_out[args.text_vocab :] = old_out[old_offset : old_offset + args.codebook_size]
        policy.config.image_code_offset = args.text_vocab
    return policy


def time_it(fn, repeats: int, num_tokens: int) -> float:
    fn(min(4, num_tokens))  # short warm-up: allocator, kernels, lazy imports
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(num_tokens)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="images per rollout batch")
    parser.add_argument("--group", type=int, default=8, help="images per prompt (num_generations)")
    parser.add_argument("--grid", type=int, default=16, help="image tokens per side (16 -> 256 tokens)")
    parser.add_argument("--codebook_size", type=int, default=4096)
    parser.add_argument("--text_vocab", type=int, default=151665, help="text ids before the image codes")
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--num_heads", type=int, default=8)
    parser.add_argument("--cfg_scale", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per method (best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="write the figures to this path")
    args = parser.parse_args()
    logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch % args.group:
        parser.error("--batch must be a multiple of --group")

    with tempfile.TemporaryDirectory() as directory:
        policy = build_model(args, directory)
    model = policy.model.to(args.device).eval()
    policy.to(args.device)
    prompts = [f"prompt number {i // args.group}" for i in range(args.batch)]
    batch = policy.encode_prompts(prompts, args.device)
    uncond_ids = policy._uncond.input_ids.to(args.device)
    num_tokens = policy.num_actions
    sampling = Sampling(cfg_mode="guided", cfg_scale=args.cfg_scale, temperature=1.0)
    cfg = policy.config

    def ours(n: int) -> None:
        policy.num_actions = n
        with torch.inference_mode():
            rollout = policy.sample(model, batch, sampling)
        policy.num_actions = num_tokens
        assert rollout.actions.shape == (args.batch, n)

    def hf_generate(n: int) -> None:
        with torch.inference_mode():
            out = model.generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                max_new_tokens=n,
                min_new_tokens=n,
                guidance_scale=args.cfg_scale,
                negative_prompt_ids=uncond_ids.expand(args.batch, -1),
                negative_prompt_attention_mask=torch.ones_like(uncond_ids).expand(args.batch, -1),
                logits_processor=LogitsProcessorList([KeepImageCodes(cfg.image_code_offset, cfg.image_code_count)]),
                pad_token_id=policy.pad_token_id,
                eos_token_id=None,
            )
        assert out.shape[1] - batch.input_ids.shape[1] == n

    tokens = args.batch * num_tokens
    ours_s = time_it(ours, args.repeats, num_tokens)
    hf_s = time_it(hf_generate, args.repeats, num_tokens)
    result = {
        "ours_tok_s": tokens / ours_s,
        "hf_generate_tok_s": tokens / hf_s,
        "ratio": hf_s / ours_s,
        "batch": args.batch,
        "group": args.group,
        "image_tokens": num_tokens,
        "cfg_scale": args.cfg_scale,
        "vocab": model.get_output_embeddings().weight.shape[0],
        "image_codes": cfg.image_code_count,
        "device": args.device,
        "threads": torch.get_num_threads(),
    }
    print(f"rollouts: batch {args.batch} (group {args.group}), {num_tokens} image tokens each, CFG {args.cfg_scale}, "
          f"vocab {result['vocab']} ({cfg.image_code_count} image codes), {args.device}, {result['threads']} threads")
    print(f"{'sampler':<34}{'seconds':>10}{'image tok/s':>14}{'vs HF':>8}")
    print(f"{'transformers generate + CFG proc.':<34}{hf_s:>10.2f}{result['hf_generate_tok_s']:>14.0f}{1.0:>8.2f}")
    print(f"{'rlhf-img (batched CFG, KV cache)':<34}{ours_s:>10.2f}{result['ours_tok_s']:>14.0f}{result['ratio']:>8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
