"""One GRPO step of a SimpleAR-0.5B-shaped random policy, split into stages, with time and peak memory.

The real `ImageGRPOTrainer` runs (TRL's loop, our rollout and log-prob overrides); the bench only wraps what
the trainer calls, on the instance: `policy.sample` (sample), `policy.decode` (decode), the reward scoring
(reward), `policy.logprobs` without gradient (old + ref log-probs), `compute_loss` + `accelerator.backward`
(forward-backward) and the optimizer step (optimizer, from TRL's callbacks).

The model is SimpleAR's layout with random weights: a Qwen2 LM of Qwen2.5-0.5B's dimensions (hidden 896,
24 layers, 14 heads, 2 KV heads, MLP 4864, tied embeddings) whose vocabulary is Qwen2.5's 151,672 text ids
(151,665 + SimpleAR's 7 special tokens) followed by Cosmos' 64,000 image codes (215,672 rows), and a random
Cosmos decoder (narrow by default; `--cosmos dv8x16x16` for the released width). The grid is G x G codes
(G = resolution / 16; 1024 px is 64 x 64 = 4,096 tokens). Every flag shrinks or grows it.

Peak memory per stage: on CUDA `torch.cuda.max_memory_allocated` (reset before each stage); on CPU the
process' resident high-water mark (VmHWM), reset before each stage through /proc/self/clear_refs (falls back to
the never-reset `ru_maxrss` where that file is not writable). With `--warmup 1` (default) the step timed is a
second generation step, after one generation and one reuse step (`num_iterations` 2 computes old log-probs).

    python bench/step.py --grids 4,8 --groups 2,4 --modes lora,full        # CPU, full size: ~11 GB for full FT
    python bench/step.py --hidden_size 64 --num_layers 2 --num_heads 2 --num_kv_heads 1 --intermediate_size 128
    python bench/step.py --device cuda --dtype bfloat16 --grids 32 --groups 8   # 1,024 tokens per image
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import sys
import tempfile
import time

import torch
from transformers import PrinterCallback, Qwen2Config, Qwen2ForCausalLM, TrainerCallback
from transformers.utils import logging as hf_logging

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from rlhf_img import ImageGRPOConfig, ImageGRPOTrainer, load_policy  # noqa: E402
from rlhf_img.families.causal_vq.tiny import byte_level_tokenizer  # noqa: E402
from rlhf_img.families.simplear.cosmos import CosmosConfig, CosmosDiscreteTokenizer  # noqa: E402
from rlhf_img.families.simplear.loading import COSMOS_CODES, COSMOS_DOWNSAMPLE, SPECIAL_TOKENS  # noqa: E402
from rlhf_img.policy import CFG_MODES, Policy  # noqa: E402

STAGES = ("sample", "decode", "reward", "old_ref_logprobs", "forward_backward", "optimizer")
QWEN25_TEXT_IDS = 151_672  # len(Qwen2.5 tokenizer) 151,665 + SimpleAR's 7 special tokens


# ------------------------------------------------------------------------------------------- memory meter
class PeakMemory:
    """Peak memory of a stretch of code, in MiB: CUDA allocator peak, or the process' RSS high-water mark."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.resettable = False
        if not self.cuda:
            try:
                self._clear_rss_peak()
                self.resettable = True
            except OSError:
                pass
        self.kind = (
            "cuda_max_memory_allocated"
            if self.cuda
            else "rss_high_water"
            if self.resettable
            else "ru_maxrss (process lifetime, never reset)"
        )

    @staticmethod
    def _clear_rss_peak() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif self.resettable:
            self._clear_rss_peak()

    def peak_mib(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        if self.resettable:
            with open("/proc/self/status") as f:
                return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def current_mib(self) -> float:
        if self.cuda:
            return torch.cuda.memory_allocated() / 2**20
        with open("/proc/self/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


class StageMeter:
    """Seconds and peak MiB per stage, one record per optimizer step (a stage met twice in a step adds up)."""

    def __init__(self, memory: PeakMemory) -> None:
        self.memory = memory
        self.steps: list[dict[str, dict[str, float]]] = [{}]
        self._active = False

    def new_step(self) -> None:
        self.steps.append({})

    @contextlib.contextmanager
    def stage(self, name: str):
        if self._active:  # a stage nested in another (e.g. log-probs inside compute_loss) counts for the outer one
            yield
            return
        self._active = True
        self.memory.reset()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.memory.cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            record = self.steps[-1].setdefault(name, {"seconds": 0.0, "peak_mib": 0.0, "calls": 0})
            record["seconds"] += seconds
            record["peak_mib"] = max(record["peak_mib"], self.memory.peak_mib())
            record["calls"] += 1
            self._active = False

    def wrap(self, function, name_of_call):
        def timed(*args, **kwargs):
            with self.stage(name_of_call(*args, **kwargs)):
                return function(*args, **kwargs)

        return timed


class OptimizerStage(TrainerCallback):
    """Times `optimizer.step()` between TRL's pre- and post-optimizer callbacks; closes the step's record."""

    def __init__(self, meter: StageMeter) -> None:
        self.meter, self._context = meter, None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._context = self.meter.stage("optimizer")
        self._context.__enter__()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._context.__exit__(None, None, None)

    def on_step_end(self, args, state, control, **kwargs):
        self.meter.new_step()


# ------------------------------------------------------------------------------------------- the model
def save_random_simplear(args: argparse.Namespace, directory: str) -> tuple[str, str]:
    """A random SimpleAR-layout checkpoint in its on-disk format (Qwen2 LM folder with `text_vocab + 64,000` rows
    and SimpleAR's special tokens, plus a random Cosmos tokenizer folder); returns (LM folder, Cosmos folder).

    Saved rather than kept in memory because TRL builds the full fine-tuning reference model from the path."""
    torch.manual_seed(args.seed)
    tokenizer = byte_level_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    config = Qwen2Config(
        vocab_size=max(args.text_vocab, len(tokenizer)) + COSMOS_CODES,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    lm_path, cosmos_path = os.path.join(directory, "lm"), os.path.join(directory, "cosmos")
    Qwen2ForCausalLM(config).to(getattr(torch, args.dtype)).save_pretrained(lm_path)
    tokenizer.save_pretrained(lm_path)
    cosmos = (
        CosmosConfig.dv8x16x16() if args.cosmos == "dv8x16x16" else CosmosConfig.tiny(channels=args.cosmos_channels)
    )
    CosmosDiscreteTokenizer(cosmos).save_pretrained(cosmos_path)
    return lm_path, cosmos_path


def load_random_simplear(args: argparse.Namespace, paths: tuple[str, str], grid: int) -> Policy:
    """The saved checkpoint through the `simplear` family loader, at G*16 px, image codes after `text_vocab` ids."""
    lm_path, cosmos_path = paths
    text_vocab = Qwen2Config.from_pretrained(lm_path).vocab_size - COSMOS_CODES
    return load_policy(
        lm_path,
        "simplear",
        visual_tokenizer=cosmos_path,
        dtype=args.dtype,
        family_config={"resolution": grid * COSMOS_DOWNSAMPLE, "image_code_offset": text_vocab},
    )


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    return (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.parameters() if p.requires_grad))


# ------------------------------------------------------------------------------------------- one run
def run_one(
    args: argparse.Namespace, paths: tuple[str, str], mode: str, grid: int, group: int, device: torch.device
) -> dict:
    """Train `1 + 2 * warmup` steps (num_iterations 2: a generation every other step); the last step's stages."""
    from datasets import Dataset
    from peft import LoraConfig

    dtype = getattr(torch, args.dtype)
    policy = load_random_simplear(args, paths, grid)
    memory = PeakMemory(device)
    meter = StageMeter(memory)
    batch = args.prompts * group
    with tempfile.TemporaryDirectory() as output_dir:
        config = ImageGRPOConfig(
            output_dir=output_dir,
            per_device_train_batch_size=batch,
            num_generations=group,
            max_steps=1 + 2 * args.warmup,
            num_iterations=2,
            beta=args.beta,
            learning_rate=1e-5,
            use_cpu=device.type == "cpu",
            bf16=dtype == torch.bfloat16 and device.type == "cuda",
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            logging_steps=1,
            seed=args.seed,
            activation_checkpointing=not args.no_activation_checkpointing,
            cfg_mode=args.cfg_mode,
            cfg_scale=args.cfg_scale,
            logprob_chunk_size=args.logprob_chunk_size,
            rewards=json.dumps([{"name": "jpeg_compressibility"}]),
        )
        peft_config = None
        if mode == "lora":
            peft_config = LoraConfig(
                r=args.lora_rank, lora_alpha=2 * args.lora_rank, target_modules="all-linear", task_type="CAUSAL_LM"
            )
        prompts = Dataset.from_dict({"prompt": [f"a photo of object {i}" for i in range(max(8, args.prompts))]})
        trainer = ImageGRPOTrainer(policy, config, prompts, peft_config=peft_config)
        trainer.add_callback(OptimizerStage(meter))
        trainer.remove_callback(PrinterCallback)  # TRL's per-step log dicts: the table below replaces them

        # wrap what the trainer calls, on this instance only
        policy.sample = meter.wrap(policy.sample, lambda *a, **k: "sample")
        policy.decode = meter.wrap(policy.decode, lambda *a, **k: "decode")
        policy.logprobs = meter.wrap(
            policy.logprobs, lambda *a, **k: "forward_backward" if torch.is_grad_enabled() else "old_ref_logprobs"
        )
        trainer.compute_loss = meter.wrap(trainer.compute_loss, lambda *a, **k: "forward_backward")
        trainer.accelerator.backward = meter.wrap(trainer.accelerator.backward, lambda *a, **k: "forward_backward")
        reward_set = trainer.image_rewards  # the trainer's RewardSet: wrap its scoring on this instance only
        reward_set.score = meter.wrap(reward_set.score, lambda *a, **k: "reward")
        total, trainable = parameter_counts(trainer.model)
        baseline_mib = memory.current_mib()
        try:
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
        finally:
            del reward_set.score
    steps = [step for step in meter.steps if "sample" in step]
    last = steps[-1]
    return {
        "mode": mode,
        "grid": grid,
        "tokens": grid * grid,
        "group": group,
        "batch": batch,
        "resolution": grid * COSMOS_DOWNSAMPLE,
        "parameters": total,
        "trainable_parameters": trainable,
        "baseline_mib": round(baseline_mib, 1),
        "memory_kind": memory.kind,
        "train_seconds": round(seconds, 3),
        "stages": {name: last.get(name, {"seconds": 0.0, "peak_mib": 0.0, "calls": 0}) for name in STAGES},
        "step_seconds": round(sum(last.get(name, {}).get("seconds", 0.0) for name in STAGES), 4),
    }


# ------------------------------------------------------------------------------------------- report
def scaling_exponents(results: list[dict], key: str, fixed: str) -> dict[str, dict[str, float]]:
    """Per mode and stage, the log-log slope of seconds against `key` ('tokens' or 'group') between the smallest
    and the largest value, at the smallest value of `fixed`: 1.0 is linear, 2.0 quadratic."""
    exponents: dict[str, dict[str, float]] = {}
    for mode in sorted({r["mode"] for r in results}):
        rows = [r for r in results if r["mode"] == mode]
        anchor = min(r[fixed] for r in rows)
        rows = sorted((r for r in rows if r[fixed] == anchor), key=lambda r: r[key])
        if len(rows) < 2 or rows[0][key] == rows[-1][key]:
            continue
        low, high = rows[0], rows[-1]
        ratio = math.log(high[key] / low[key])
        exponents[mode] = {}
        for name in (*STAGES, "step"):
            a = low["step_seconds"] if name == "step" else low["stages"][name]["seconds"]
            b = high["step_seconds"] if name == "step" else high["stages"][name]["seconds"]
            if a > 0 and b > 0:
                exponents[mode][name] = round(math.log(b / a) / ratio, 2)
    return exponents


def print_table(results: list[dict], exponents_tokens: dict, exponents_group: dict) -> None:
    head = (
        f"{'mode':<5} {'grid':>5} {'T':>6} {'group':>5} "
        + " ".join(f"{s[:14]:>16}" for s in STAGES)
        + f" {'step s':>8}"
    )
    print(head)
    print(" " * 25 + " ".join(f"{'s / peak MiB':>16}" for _ in STAGES))
    for r in results:
        cells = " ".join(f"{r['stages'][s]['seconds']:>7.3f}/{r['stages'][s]['peak_mib']:>8.0f}" for s in STAGES)
        print(
            f"{r['mode']:<5} {r['grid']:>2}x{r['grid']:<2} {r['tokens']:>6} {r['group']:>5} {cells} {r['step_seconds']:>8.3f}"
        )
    for title, exponents in (("tokens T", exponents_tokens), ("group size", exponents_group)):
        for mode, stages in exponents.items():
            print(
                f"scaling with {title} ({mode}): seconds ~ x^k, k = "
                + ", ".join(f"{name} {k:.2f}" for name, k in stages.items())
            )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden_size", type=int, default=896)
    parser.add_argument("--num_layers", type=int, default=24)
    parser.add_argument("--num_heads", type=int, default=14)
    parser.add_argument("--num_kv_heads", type=int, default=2)
    parser.add_argument("--intermediate_size", type=int, default=4864)
    parser.add_argument("--text_vocab", type=int, default=QWEN25_TEXT_IDS, help="text ids before the 64,000 codes")
    parser.add_argument(
        "--cosmos",
        choices=["tiny", "dv8x16x16"],
        default="tiny",
        help="random Cosmos decoder: narrow ('tiny', --cosmos_channels wide) or the released width",
    )
    parser.add_argument("--cosmos_channels", type=int, default=16)
    parser.add_argument("--grids", default="4,8", help="comma-separated grid sides G (T = G*G tokens, G*16 px)")
    parser.add_argument("--groups", default="2,4", help="comma-separated group sizes (images per prompt)")
    parser.add_argument("--prompts", type=int, default=1, help="prompts per step (batch = prompts x group)")
    parser.add_argument("--modes", default="lora,full", help="comma-separated: lora, full")
    parser.add_argument("--lora_rank", type=int, default=16)
    parser.add_argument("--cfg_mode", default="guided", choices=list(CFG_MODES))
    parser.add_argument("--cfg_scale", type=float, default=4.0)
    parser.add_argument("--beta", type=float, default=0.04, help="KL weight (> 0: a reference log-prob pass)")
    parser.add_argument("--logprob_chunk_size", type=int, default=ImageGRPOConfig.logprob_chunk_size)
    parser.add_argument("--no_activation_checkpointing", action="store_true")
    parser.add_argument("--warmup", type=int, default=1, help="generation steps before the one measured")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write every result and the scaling exponents here")
    args = parser.parse_args(argv)
    try:
        args.grid_list = [int(x) for x in args.grids.split(",")]
        args.group_list = [int(x) for x in args.groups.split(",")]
    except ValueError:
        parser.error(f"--grids / --groups: expected comma-separated integers, got {args.grids!r} / {args.groups!r}")
    args.mode_list = [m.strip() for m in args.modes.split(",")]
    bad = [m for m in args.mode_list if m not in ("lora", "full")]
    if bad:
        parser.error(f"--modes: unknown mode(s) {bad}; use lora and/or full")
    if any(g < 1 for g in args.grid_list) or any(g < 2 for g in args.group_list):
        parser.error("--grids must be >= 1 and --groups >= 2 (GRPO needs two images per prompt)")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = torch.device(args.device)
    results = []
    with tempfile.TemporaryDirectory() as checkpoint_dir:
        paths = save_random_simplear(args, checkpoint_dir)
        for mode in args.mode_list:
            for grid in args.grid_list:
                for group in args.group_list:
                    result = run_one(args, paths, mode, grid, group, device)
                    print(f"{mode} grid {grid}x{grid} group {group}: step {result['step_seconds']:.3f}s", flush=True)
                    results.append(result)
    exponents_tokens = scaling_exponents(results, "tokens", "group")
    exponents_group = scaling_exponents(results, "group", "tokens")
    print(
        f"device {device}, dtype {args.dtype}, torch threads {torch.get_num_threads()}, "
        f"peak memory: {results[0]['memory_kind']}"
    )
    print_table(results, exponents_tokens, exponents_group)
    report = {
        "device": str(device),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "args": {k: v for k, v in vars(args).items() if not k.endswith("_list")},
        "results": results,
        "scaling_with_tokens": exponents_tokens,
        "scaling_with_group": exponents_group,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
