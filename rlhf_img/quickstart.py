"""`rlhf-img quickstart`: the main job on the embedded default.

Evaluates `checkpoints/shapes-tiny` on the held-out prompts, GRPO-trains it with `recipes/shapes-grpo.yaml`,
evaluates the result with the same seeds, prints GenEval's table before and after, and writes
`summary.json`, `reward_curve.png` and before/after sample grids to the output folder.
"""

from __future__ import annotations

import json
import os
import time

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


def sample_grid(images, rows, images_per_prompt: int, path: str, limit: int = 16) -> None:
    picks = list(range(0, len(images), images_per_prompt))[:limit]
    captioned_grid(images[picks], [rows[i // images_per_prompt]["prompt"] for i in picks], columns=4).save(path)


def run_quickstart(checkpoint: str, recipe: str, output_dir: str, images_per_prompt: int, seed: int,
                   overrides: list[str]) -> dict:
    os.makedirs(output_dir, exist_ok=True)
    _, held_out = shapes.split_prompts()
    args, _, rewards, dataset, policy, peft_config = prepare_training(
        recipe, ["--model_name_or_path", checkpoint, "--output_dir", os.path.join(output_dir, "grpo"), *overrides]
    )
    eval_sampling = Sampling(cfg_mode="none", temperature=args.temperature, top_k=args.top_k or 0, top_p=args.top_p)
    # the policy about to be trained, scored before the trainer wraps it
    before, _, before_images = evaluate_policy(policy, held_out, None, images_per_prompt, eval_sampling, seed,
                                               keep_images=True)
    print(format_table(before, "held-out, before GRPO (strict):"))

    trainer = ImageGRPOTrainer(policy, args, dataset, reward_funcs=rewards, peft_config=peft_config)
    start = time.time()
    trainer.train()
    grpo_seconds = time.time() - start
    trainer.save_model(args.output_dir)
    trainer.save_state()

    after_policy = load_policy(args.output_dir)
    after, records, after_images = evaluate_policy(after_policy, held_out, None, images_per_prompt, eval_sampling, seed,
                                                   keep_images=True)
    print(format_table(after, "held-out, after GRPO (strict):"))
    print(f"  {'delta overall':<14s} {after['overall'] - before['overall']:+.4f}   (GRPO {grpo_seconds:.0f}s)")

    summary = {"before": before, "after": after, "grpo_seconds": round(grpo_seconds, 1),
               "images_per_prompt": images_per_prompt, "eval_seed": seed, "train_seed": args.seed,
               "held_out_prompts": len(held_out)}
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(output_dir, "after_results.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    plot_reward_curve(trainer.state.log_history, os.path.join(output_dir, "reward_curve.png"))
    sample_grid(before_images, held_out, images_per_prompt, os.path.join(output_dir, "samples_before.png"))
    sample_grid(after_images, held_out, images_per_prompt, os.path.join(output_dir, "samples_after.png"))
    return summary
