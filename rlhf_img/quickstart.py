"""`rlhf-img quickstart`: the main job on the embedded default.

Evaluates `checkpoints/shapes-tiny` on the held-out prompts, GRPO-trains it with `recipes/shapes-grpo.yaml`,
evaluates the result with the same seeds, prints GenEval's table before and after, and writes
`summary.json`, `reward_curve.png`, before/after sample grids, `dashboard.png` (train and in-loop eval rewards,
the eval's GenEval accuracy, the collapse monitors) and `eval_progress.png` (the in-loop eval's fixed-seed grids
side by side) to the output folder.
"""

from __future__ import annotations

import json
import os
import time

from .best_weights import BEST_STEP_FILE, describe_kept
from .eval import evaluate_policy, format_table
from .families import load_policy
from .images import captioned_grid
from .policy import Sampling
from .recipes import prepare_training
from .trainer import ImageGRPOTrainer
from .worlds import shapes


def plot_reward_curve(log_history: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(entry["step"], entry["reward"]) for entry in log_history if "reward" in entry and "step" in entry]
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    axis.plot([p[0] for p in points], [p[1] for p in points], marker=".")
    axis.set_xlabel("GRPO step")
    axis.set_ylabel("mean dense reward (train prompts)")
    axis.set_title("shapes world: reward during GRPO")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_dashboard(log_history: list[dict], path: str) -> None:
    """The run's dashboard offline (the recipe reports to no service): rewards on the training batches and on
    the in-loop eval's fixed prompts, the eval's GenEval accuracy, the collapse monitors and, when the recipe has a
    KL term (`beta` > 0), TRL's logged KL to the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list, list]:
        points = [(e["step"], e[key]) for e in log_history if isinstance(e.get(key), (int, float))]
        return [p[0] for p in points], [p[1] for p in points]

    figure, axes = plt.subplots(2, 2, figsize=(11, 7), dpi=100)
    panels = [
        (axes[0, 0], "mean dense reward", [("reward", "train batches"), ("eval_reward", "in-loop eval (fixed seeds)")]),
        (
            axes[0, 1],
            "GenEval strict (in-loop eval)",
            [
                (k, k.split("/")[-1])
                for k in sorted({k for e in log_history for k in e if k.startswith("eval_geneval/")})
            ],
        ),
        (
            axes[1, 0],
            "within-group diversity / entropy",
            [("monitors/image_diversity", "image diversity (RMS px)"), ("entropy", "token entropy (nats)")],
        ),
        (
            axes[1, 1],
            "collapse and drift",
            [
                ("frac_reward_zero_std", "share of zero-spread groups"),
                ("sampling/sampling_logp_difference/mean", "log-prob drift (mean)"),
                ("kl", "KL to the reference (nats/token; beta > 0)"),
            ],
        ),
    ]
    for axis, title, keys in panels:
        for key, label in keys:
            steps, values = series(key)
            if steps:
                axis.plot(steps, values, marker=".", label=label, linewidth=2.5 if key.endswith("overall") else 1.2)
        axis.set_title(title)
        axis.set_xlabel("GRPO step")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=7)
    axes[1, 0].set_yscale("log")
    axes[1, 1].set_yscale("symlog", linthresh=1e-6)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def eval_progress(eval_dir: str, path: str) -> int:
    """The in-loop eval's grids (same prompts, same seeds) side by side, one column block per eval step; returns
    how many steps it shows."""
    from PIL import Image, ImageDraw

    files = (
        sorted(f for f in os.listdir(eval_dir) if f.startswith("step_") and f.endswith(".png"))
        if os.path.isdir(eval_dir)
        else []
    )
    if not files:
        return 0
    grids = [Image.open(os.path.join(eval_dir, f)).convert("RGB") for f in files]
    header, gap = 16, 8
    canvas = Image.new(
        "RGB", (sum(g.width for g in grids) + gap * (len(grids) - 1), header + max(g.height for g in grids)), "white"
    )
    draw, x = ImageDraw.Draw(canvas), 0
    for name, grid in zip(files, grids):
        draw.text((x + 2, 2), f"step {int(name[5:11])}", fill="black")
        canvas.paste(grid, (x, header))
        x += grid.width + gap
    canvas.save(path)
    return len(grids)


def _kept_step(output_dir: str, last_step: int, keep_best: bool) -> dict:
    """Which step's weights the run saved: keep_best's choice (its `best_step.json`) or the last step."""
    path = os.path.join(output_dir, BEST_STEP_FILE)
    if not keep_best or not os.path.exists(path):
        return {"step": last_step, "why": "the last step"}
    with open(path) as f:
        best = json.load(f)
    return {"step": best["best_step"], "why": f"keep_best: {describe_kept(best)}"}


def sample_grid(images, rows, images_per_prompt: int, path: str, limit: int = 16) -> None:
    picks = list(range(0, len(images), images_per_prompt))[:limit]
    captioned_grid(images[picks], [rows[i // images_per_prompt]["prompt"] for i in picks], columns=4).save(path)


def run_quickstart(
    checkpoint: str, recipe: str, output_dir: str, images_per_prompt: int, seed: int, overrides: list[str]
) -> dict:
    os.makedirs(output_dir, exist_ok=True)
    _, held_out = shapes.split_prompts()
    args, _, rewards, dataset, policy, peft_config = prepare_training(
        recipe, ["--model_name_or_path", checkpoint, "--output_dir", os.path.join(output_dir, "grpo"), *overrides]
    )
    eval_sampling = Sampling(cfg_mode="none", temperature=args.temperature, top_k=args.top_k or 0, top_p=args.top_p)
    # the policy about to be trained, scored before the trainer wraps it
    before, _, before_images = evaluate_policy(
        policy, held_out, None, images_per_prompt, eval_sampling, seed, keep_images=True
    )
    print(format_table(before, "held-out, before GRPO (strict):"))

    trainer = ImageGRPOTrainer(policy, args, dataset, reward_funcs=rewards, peft_config=peft_config)
    start = time.time()
    trainer.train()
    grpo_seconds = time.time() - start
    trainer.save_state()
    trainer.save_model(args.output_dir)
    trainer.create_model_card()  # README.md: rlhf-img's card (recipe, rewards, in-loop evals), not peft's template

    after_policy = load_policy(args.output_dir)
    after, records, after_images = evaluate_policy(
        after_policy, held_out, None, images_per_prompt, eval_sampling, seed, keep_images=True
    )
    print(format_table(after, "held-out, after GRPO (strict):"))
    print(f"  {'delta overall':<14s} {after['overall'] - before['overall']:+.4f}   (GRPO {grpo_seconds:.0f}s)")
    evals = [e for e in trainer.state.log_history if "eval_geneval/overall" in e]
    if evals:
        print(
            f"  in-loop eval ({args.eval_max_prompts or 'all'} held-out prompts x {args.eval_images_per_prompt}, "
            "fixed seeds): overall " + " -> ".join(f"{e['eval_geneval/overall']:.3f} (step {e['step']})" for e in evals)
        )

    kept = _kept_step(args.output_dir, trainer.state.global_step, args.keep_best)
    print(f"  saved weights: step {kept['step']} ({kept['why']})")

    summary = {
        "saved_step": kept,
        "before": before,
        "after": after,
        "grpo_seconds": round(grpo_seconds, 1),
        "images_per_prompt": images_per_prompt,
        "eval_seed": seed,
        "train_seed": args.seed,
        "held_out_prompts": len(held_out),
        "in_loop_eval": [
            {k: v for k, v in e.items() if k == "step" or k.startswith("eval_")}
            for e in trainer.state.log_history
            if "eval_reward" in e
        ],
    }
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(output_dir, "after_results.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    plot_reward_curve(trainer.state.log_history, os.path.join(output_dir, "reward_curve.png"))
    plot_dashboard(trainer.state.log_history, os.path.join(output_dir, "dashboard.png"))
    eval_progress(os.path.join(args.output_dir, "eval"), os.path.join(output_dir, "eval_progress.png"))
    sample_grid(before_images, held_out, images_per_prompt, os.path.join(output_dir, "samples_before.png"))
    sample_grid(after_images, held_out, images_per_prompt, os.path.join(output_dir, "samples_after.png"))
    return summary
