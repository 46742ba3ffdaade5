"""Rollout throughput: rlhf-img's samplers vs transformers `generate` + CFG and a peer-style hand loop.

Same random `causal_vq` model, same prompts, batch, group size, CFG scale and temperature. Baselines:
  - transformers `generate(..., guidance_scale=s, negative_prompt_ids=...)` (the
    `UnbatchedClassifierFreeGuidanceLogitsProcessor`: a second forward per step for the unconditional branch)
    plus a logits processor keeping only image-code ids, so it produces exactly h*w image codes;
  - the peer-style loop, as T2I-R1 and AR-GRPO sample: conditional and unconditional rows in one batch, a
    `DynamicCache`, the LM head over the whole vocabulary each step, then the image codes sliced out, CFG,
    softmax, multinomial (every row prefilled, no log-probs kept).
Ours (`--samplers`, `Sampling.sampler`) also batches CFG rows in one KV-cached forward, computes logits only for
the image-code rows of the LM head, prefills each distinct prompt once (a group shares it), and with
`static` / `compiled` decodes on a static cache (compiled: `torch.compile`, CUDA graphs on GPU).

The same run then times every `sampler` of the shared engine on a Janus-shaped (transformers'
`JanusForConditionalGeneration`: image embeddings -> aligner -> Llama -> generation head), a LlamaGen-shaped
(GPT with 2D RoPE over a 120-token caption prefix) and an Emu3-shaped (transformers' `Emu3ForConditionalGeneration`:
visual tokens in the text vocabulary, an end-of-line token forced after each row of the grid, BAAI's ~200-token
negative prompt as the unconditional row) random model (`--families`): plain vs shared vs static vs compiled, the
tokens each draws for one seed checked identical to plain's, time as a ratio to plain. Image tok/s counts the
sampled codes (Emu3 also feeds one end-of-line token per row: `grid + 1` decode steps per row).

Each decode step must read every weight once plus the KV cache so far; the benchmark prints those bytes per
step (the bandwidth bound of a decode step) and the bandwidth each sampler achieved; with `--hbm_gbps` (e.g.
4800 for an H200) also the fraction of that bound reached.

    python bench/rollouts.py [--batch 32] [--json out.json] [--families janus,llamagen,emu3|none]
    python bench/rollouts.py --device cuda --dtype bfloat16 --grid 32 --hbm_gbps 4800   # 1,024-token grid
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

import torch
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList
from transformers.utils import logging

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from rlhf_img import Sampling, load_policy  # noqa: E402
from rlhf_img.families.causal_vq.tiny import save_tiny_causal_vq  # noqa: E402
from rlhf_img.families.emu3.tiny import save_tiny_emu3  # noqa: E402
from rlhf_img.families.janus.tiny import save_tiny_janus  # noqa: E402
from rlhf_img.families.llamagen.tiny import save_tiny_llamagen, tiny_llamagen_family_config  # noqa: E402
from rlhf_img.policy import SAMPLERS  # noqa: E402
from rlhf_img.sampling.kv_cache import resolve_sampler  # noqa: E402
from rlhf_img.sampling.next_token import left_pad_stack  # noqa: E402


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


@torch.no_grad()
def peer_style_sample(
    model,
    ids,
    mask,
    uncond_ids,
    uncond_mask,
    num_tokens: int,
    cfg_scale: float,
    code_offset: int,
    code_count: int,
    pad_id: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Image codes `(B, T)` sampled as T2I-R1 / AR-GRPO do: cond + uncond rows `(2B, L)` in one batch, a
    `DynamicCache`, full-vocabulary logits each step, then the image codes sliced out, CFG, softmax, multinomial."""
    batch = ids.size(0)
    rows, rows_mask = left_pad_stack([ids, uncond_ids.expand(batch, -1)], [mask, uncond_mask.expand(batch, -1)], pad_id)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=rows, attention_mask=rows_mask, cache=cache, use_cache=True, logits_to_keep=1)
    codes = []
    for t in range(num_tokens):
        logits = out.logits[:, -1, code_offset : code_offset + code_count].float()  # (2B, K) of (2B, V) computed
        guided = logits[batch:] + cfg_scale * (logits[:batch] - logits[batch:])
        code = torch.multinomial(torch.softmax(guided / temperature, dim=-1), 1)  # (B, 1)
        codes.append(code)
        if t == num_tokens - 1:
            break
        rows_mask = torch.cat([rows_mask, rows_mask.new_ones(2 * batch, 1)], dim=1)
        out = model(
            input_ids=torch.cat([code, code]) + code_offset,
            attention_mask=rows_mask,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    return torch.cat(codes, dim=1)


def decode_step_bytes(model, rows: int, prefix_length: int, num_tokens: int, code_count: int) -> dict[str, float]:
    """Bytes a decode step must read at least, averaged over the T - 1 decode steps: every decoder weight once,
    the image-code rows of the LM head (the input embedding only for the fed tokens: negligible), and the keys
    and values of every layer for all `rows` over the positions so far (the left-padded prompt included)."""
    config = model.config
    decoder = model.get_decoder()
    embedding = model.get_input_embeddings().weight
    decoder_bytes = sum(p.numel() * p.element_size() for p in decoder.parameters())
    decoder_bytes -= embedding.numel() * embedding.element_size()  # only the fed tokens' rows are read
    head = model.get_output_embeddings().weight
    head_bytes = code_count * head.size(1) * head.element_size()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_per_position = 2 * config.num_hidden_layers * rows * config.num_key_value_heads * head_dim * head.element_size()
    steps = max(num_tokens - 1, 1)
    mean_positions = prefix_length + (steps + 1) / 2  # step t (1..T-1) attends over prefix + t positions
    kv_bytes = kv_per_position * mean_positions
    return {
        "weight_bytes": decoder_bytes + head_bytes,
        "kv_bytes_per_step": kv_bytes,
        "bytes_per_step": decoder_bytes + head_bytes + kv_bytes,
        "decode_steps": steps,
    }


def build_family_model(family: str, args: argparse.Namespace, directory: str):
    """A random model of `family` at the benchmark's width, depth and grid (a `grid x grid` image)."""
    if family == "janus":
        path = save_tiny_janus(
            directory,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            grid=args.grid,
            codebook_size=args.codebook_size,
            seed=0,
        )
        return load_policy(path, "janus", dtype="float32")
    if family == "emu3":
        path = save_tiny_emu3(
            directory,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            num_heads=args.num_heads,
            codebook_size=args.codebook_size,
            seed=0,
        )
        side = args.grid * 8  # the stand-in's VQ: 8x, as released
        return load_policy(path, "emu3", dtype="float32", family_config={"image_area": side * side})
    path = save_tiny_llamagen(
        directory,
        dim=args.hidden_size,
        n_layer=args.num_layers,
        n_head=args.num_heads,
        codebook_size=args.codebook_size,
        seed=0,
    )
    stride = 2  # the stand-in's VQ: two resolutions
    return load_policy(
        path,
        "llamagen",
        dtype="float32",
        family_config={
            **tiny_llamagen_family_config(path),
            "num_heads": args.num_heads,
            "image_size": args.grid * stride,
        },
    )


FAMILY_SAMPLERS = ("plain", "shared", "static", "compiled")
FAMILY_MODELS = ("janus", "llamagen", "emu3")  # what `build_family_model` builds


def family_table(family: str, args: argparse.Namespace, dtype: torch.dtype) -> dict:
    """Seconds per rollout batch for every sampler on one family's model, the tokens checked against `plain`."""
    with tempfile.TemporaryDirectory() as directory:
        policy = build_family_model(family, args, directory)
    model = policy.model.to(args.device, dtype).eval()
    policy.to(args.device)
    batch = policy.encode_prompts([f"prompt number {i // args.group}" for i in range(args.batch)], args.device)
    num_tokens = policy.num_actions
    rows, reference, reference_logprobs = {}, None, None
    for sampler in ["plain", *(name for name in args.family_samplers if name != "plain")]:
        sampling = Sampling(cfg_mode="guided", cfg_scale=args.cfg_scale, temperature=1.0, sampler=sampler)
        drawn = {}

        def run(n: int) -> None:
            policy.num_actions = n
            generator = torch.Generator(args.device).manual_seed(0)
            with torch.inference_mode():
                drawn[n] = policy.sample(model, batch, sampling, generator=generator)
            policy.num_actions = num_tokens

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            seconds = time_it(
                run, args.repeats, num_tokens, args.device, num_tokens if sampler == "compiled" else min(4, num_tokens)
            )
        fell_back = any("torch.compile of the decode step failed" in str(w.message) for w in caught)
        actions, logprobs = drawn[num_tokens].actions, drawn[num_tokens].logprobs
        if reference is None:
            reference, reference_logprobs = actions, logprobs
        differs = actions != reference  # (B, T)
        first = int(differs.any(0).nonzero()[0]) if bool(differs.any()) else num_tokens  # first column that differs
        rows[sampler] = {
            "seconds": seconds,
            "tok_s": args.batch * num_tokens / seconds,
            "same_tokens_as_plain": not bool(differs.any()),
            "identical_images": int((~differs.any(1)).sum()),
            "images": args.batch,
            # the float32 rounding that can flip a near-tie draw: |logp - plain's| over the tokens before any differ
            "max_logp_difference_before_divergence": float(
                (logprobs[:, :first] - reference_logprobs[:, :first]).abs().max()
            )
            if first > 0
            else 0.0,
            "compile_fell_back": fell_back,
        }
    for figures in rows.values():
        figures["speedup_vs_plain"] = rows["plain"]["seconds"] / figures["seconds"]
    return {"image_tokens": num_tokens, "samplers": rows, "parameters": sum(p.numel() for p in model.parameters())}


def time_it(fn, repeats: int, num_tokens: int, device: str, warmup_tokens: int) -> float:
    def run(n: int) -> None:
        fn(n)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    run(warmup_tokens)  # warm-up: allocator, kernels, lazy imports (and, for `compiled`, the compile)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(num_tokens)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32, help="images per rollout batch")
    parser.add_argument("--group", type=int, default=8, help="images per prompt (num_generations)")
    parser.add_argument("--grid", type=int, default=16, help="image tokens per side (16 -> 256 tokens, 32 -> 1,024)")
    parser.add_argument("--codebook_size", type=int, default=4096)
    parser.add_argument("--text_vocab", type=int, default=151665, help="text ids before the image codes")
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--num_heads", type=int, default=8)
    parser.add_argument("--cfg_scale", type=float, default=4.0)
    parser.add_argument(
        "--samplers",
        default="auto,static",
        help=f"comma-separated `Sampling.sampler` values to time, from {SAMPLERS}; the first is 'ours' "
        "in the JSON (auto: compiled on CUDA, shared elsewhere)",
    )
    parser.add_argument(
        "--baselines",
        default="generate,peer_loop",
        help="comma-separated baselines to time: "
        "generate (transformers generate + CFG), peer_loop (T2I-R1 / AR-GRPO style loop)",
    )
    parser.add_argument(
        "--families",
        default="janus,llamagen,emu3",
        help="comma-separated families whose random model also gets a sampler table (janus, llamagen, emu3), or 'none'",
    )
    parser.add_argument(
        "--family_samplers",
        default=",".join(FAMILY_SAMPLERS),
        help="comma-separated samplers timed on those families (plain is always timed: the reference)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per method (best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="model dtype (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument(
        "--hbm_gbps",
        type=float,
        default=None,
        help="peak memory bandwidth in GB/s (H200: 4800): report the fraction of the decode-step bound",
    )
    parser.add_argument("--json", default=None, help="write the figures to this path")
    args = parser.parse_args()
    logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch % args.group:
        parser.error("--batch must be a multiple of --group")
    samplers = [name.strip() for name in args.samplers.split(",") if name.strip()]
    unknown = [name for name in samplers if name not in SAMPLERS]
    if unknown or not samplers:
        parser.error(f"--samplers: {unknown or 'none given'}; choose from {SAMPLERS}")
    baselines = [name.strip() for name in args.baselines.split(",") if name.strip()]
    if set(baselines) - {"generate", "peer_loop"}:
        parser.error(
            f"--baselines: unknown {sorted(set(baselines) - {'generate', 'peer_loop'})}; "
            "choose from generate, peer_loop"
        )
    families = [name.strip() for name in args.families.split(",") if name.strip() and name.strip() != "none"]
    if set(families) - set(FAMILY_MODELS):
        parser.error(
            f"--families: unknown {sorted(set(families) - set(FAMILY_MODELS))}; choose from {', '.join(FAMILY_MODELS)}"
        )
    args.family_samplers = [name.strip() for name in args.family_samplers.split(",") if name.strip()]
    if set(args.family_samplers) - set(FAMILY_SAMPLERS):
        parser.error(
            f"--family_samplers: unknown {sorted(set(args.family_samplers) - set(FAMILY_SAMPLERS))}; "
            f"choose from {FAMILY_SAMPLERS}"
        )
    dtype_name = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype):
        parser.error(f"--dtype: {dtype_name!r} is not a torch dtype")

    with tempfile.TemporaryDirectory() as directory:
        policy = build_model(args, directory)
    model = policy.model.to(args.device, dtype).eval()
    policy.to(args.device)
    prompts = [f"prompt number {i // args.group}" for i in range(args.batch)]
    batch = policy.encode_prompts(prompts, args.device)
    uncond_ids = torch.tensor([policy.adapter.unconditional_ids], device=args.device)
    uncond_mask = torch.tensor([policy.adapter.unconditional_mask], device=args.device)
    num_tokens = policy.num_actions
    cfg = policy.config

    def ours(sampler: str):
        sampling = Sampling(cfg_mode="guided", cfg_scale=args.cfg_scale, temperature=1.0, sampler=sampler)

        def run(n: int) -> None:
            policy.num_actions = n
            with torch.inference_mode():
                rollout = policy.sample(model, batch, sampling)
            policy.num_actions = num_tokens
            assert rollout.actions.shape == (args.batch, n)

        return run

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
                negative_prompt_attention_mask=uncond_mask.expand(args.batch, -1),
                logits_processor=LogitsProcessorList([KeepImageCodes(cfg.image_code_offset, cfg.image_code_count)]),
                pad_token_id=policy.pad_token_id,
                eos_token_id=None,
            )
        assert out.shape[1] - batch.input_ids.shape[1] == n

    def peer_loop(n: int) -> None:
        with torch.inference_mode():
            codes = peer_style_sample(
                model,
                batch.input_ids,
                batch.attention_mask,
                uncond_ids,
                uncond_mask,
                n,
                args.cfg_scale,
                cfg.image_code_offset,
                cfg.image_code_count,
                policy.pad_token_id,
            )
        assert codes.shape == (args.batch, n)

    tokens = args.batch * num_tokens
    short = min(4, num_tokens)
    seconds: dict[str, float] = {}
    labels: dict[str, str] = {}
    if "generate" in baselines:
        seconds["hf_generate"] = time_it(hf_generate, args.repeats, num_tokens, args.device, short)
        labels["hf_generate"] = "transformers generate + CFG proc."
    if "peer_loop" in baselines:
        seconds["peer_loop"] = time_it(peer_loop, args.repeats, num_tokens, args.device, short)
        labels["peer_loop"] = "peer-style loop (batched CFG, full V)"
    resolved = {}
    for sampler in samplers:
        name = resolve_sampler(sampler, model, torch.device(args.device))
        if name in resolved.values():
            continue  # 'auto' resolved to a sampler already listed
        resolved[sampler] = name
        # a compiled step is warmed at full length: a longer static cache would be a new shape (a recompile)
        warmup = num_tokens if name == "compiled" else short
        seconds[f"ours_{name}"] = time_it(ours(sampler), args.repeats, num_tokens, args.device, warmup)
        labels[f"ours_{name}"] = f"rlhf-img, sampler={name}" + (" (auto)" if sampler == "auto" else "")

    prefix_length = max(batch.input_ids.size(1), uncond_ids.size(1))
    bound = decode_step_bytes(model, 2 * args.batch, prefix_length, num_tokens, cfg.image_code_count)
    first_ours = f"ours_{next(iter(resolved.values()))}"
    result = {
        "ours_sampler": first_ours.removeprefix("ours_"),
        "ours_tok_s": tokens / seconds[first_ours],
        "methods": {
            key: {
                "label": labels[key],
                "seconds": value,
                "tok_s": tokens / value,
                "achieved_gb_s": bound["bytes_per_step"] * bound["decode_steps"] / value / 1e9,
            }
            for key, value in seconds.items()
        },
        **bound,
        "hbm_gbps": args.hbm_gbps,
        "batch": args.batch,
        "group": args.group,
        "image_tokens": num_tokens,
        "cfg_scale": args.cfg_scale,
        "vocab": model.get_output_embeddings().weight.shape[0],
        "image_codes": cfg.image_code_count,
        "device": args.device,
        "dtype": dtype_name,
        "threads": torch.get_num_threads(),
    }
    if "hf_generate" in seconds:
        result["hf_generate_tok_s"] = tokens / seconds["hf_generate"]
        result["ratio"] = seconds["hf_generate"] / seconds[first_ours]
    if "peer_loop" in seconds:
        result["peer_loop_tok_s"] = tokens / seconds["peer_loop"]
        result["ratio_vs_peer_loop"] = seconds["peer_loop"] / seconds[first_ours]
    if args.hbm_gbps:
        for figures in result["methods"].values():
            figures["hbm_fraction"] = figures["achieved_gb_s"] / args.hbm_gbps

    print(
        f"rollouts: batch {args.batch} (group {args.group}), {num_tokens} image tokens each, CFG {args.cfg_scale}, "
        f"vocab {result['vocab']} ({cfg.image_code_count} image codes), {args.device} {dtype_name}, "
        f"{result['threads']} threads"
    )
    print(
        f"decode-step bound: {bound['bytes_per_step'] / 1e6:.2f} MB read per step (weights "
        f"{bound['weight_bytes'] / 1e6:.2f} MB + KV cache {bound['kv_bytes_per_step'] / 1e6:.2f} MB on average over "
        f"{bound['decode_steps']} steps, {2 * args.batch} rows)"
    )
    header = f"{'sampler':<40}{'seconds':>9}{'image tok/s':>13}{'vs generate':>13}{'vs peer loop':>14}{'GB/s':>9}"
    if args.hbm_gbps:
        header += f"{'of HBM bound':>14}"
    print(header)
    for key, figures in result["methods"].items():
        versus = [
            f"{seconds[base] / seconds[key]:>{width}.2f}" if base in seconds else f"{'-':>{width}}"
            for base, width in (("hf_generate", 13), ("peer_loop", 14))
        ]
        line = (
            f"{figures['label']:<40}{figures['seconds']:>9.2f}{figures['tok_s']:>13.0f}{''.join(versus)}"
            f"{figures['achieved_gb_s']:>9.2f}"
        )
        if args.hbm_gbps:
            line += f"{figures['hbm_fraction']:>14.1%}"
        print(line)
    if families:
        result["families"] = {family: family_table(family, args, dtype) for family in families}
        print(
            f"\nevery sampler on other families' random models ({args.hidden_size} wide, {args.num_layers} layers, "
            f"batch {args.batch}, CFG {args.cfg_scale}); one seed: images identical to plain's, and the largest "
            "log-prob difference before any token differs (float32 rounding, which can flip a near-tie draw)"
        )
        print(
            f"{'family':<10}{'sampler':<10}{'seconds':>9}{'image tok/s':>13}{'vs plain':>10}{'identical':>11}"
            f"{'max |dlogp|':>13}"
        )
        for family, table in result["families"].items():
            for sampler, figures in table["samplers"].items():
                note = " (compile failed: eager)" if figures["compile_fell_back"] else ""
                identical = f"{figures['identical_images']}/{figures['images']}"
                print(
                    f"{family:<10}{sampler:<10}{figures['seconds']:>9.2f}{figures['tok_s']:>13.0f}"
                    f"{figures['speedup_vs_plain']:>10.2f}{identical:>11}"
                    f"{figures['max_logp_difference_before_divergence']:>13.1e}{note}"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
