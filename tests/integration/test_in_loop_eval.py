"""In-loop eval (fixed prompts and seeds every eval_every steps) and the rollout monitors: what they log, that
the eval leaves training untouched, and that an offline wandb run shows the eval grid and the monitors."""

import glob
import itertools
import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import grpo_args
from datasets import Dataset
from numerics import assert_close_scaled
from PIL import Image
from tiny_models import save_tiny_open_clip
from wandb_offline import history_keys

from rlhf_img import ImageGRPOTrainer, load_policy
from rlhf_img.eval.prompts import load_prompt_set
from rlhf_img.in_loop_eval import InLoopEvaluation, load_eval_prompts
from rlhf_img.monitors import group_diversity, pixel_features, rollout_monitors
from rlhf_img.rewards import RewardSet, build_rewards

TIMING = (
    "timing/",
    "rollout/images_per_second",
    "step_time",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
)


def brightness(prompts, images, **kwargs):
    return images.mean(dim=(1, 2, 3)).tolist()


def train(tmp_path, checkpoint, reward_funcs=(brightness,), **overrides):
    args = grpo_args(tmp_path, **{"max_steps": 3, "learning_rate": 1e-2, **overrides})
    dataset = Dataset.from_dict({"prompt": ["a red circle", "a blue square"]})
    trainer = ImageGRPOTrainer(load_policy(checkpoint, "causal_vq"), args, dataset, reward_funcs=list(reward_funcs))
    trainer.train()
    return trainer


def training_steps(log_history):
    return [{k: v for k, v in entry.items() if not k.startswith(TIMING)} for entry in log_history if "loss" in entry]


@pytest.mark.timeout(180)
def test_in_loop_eval_logs_fixed_prompt_results_and_leaves_training_untouched(tmp_path, tiny_checkpoint):
    plain = train(tmp_path / "plain", tiny_checkpoint)
    evaluated = train(
        tmp_path / "eval",
        tiny_checkpoint,
        eval_every=2,
        eval_prompts="shapes-held-out",
        eval_max_prompts=5,
        eval_images_per_prompt=2,
    )
    # its own seeded generator, main process, no_grad: the training steps are bit-identical with and without it
    assert training_steps(evaluated.state.log_history) == training_steps(plain.state.log_history)

    evals = [entry for entry in evaluated.state.log_history if "eval_reward" in entry]
    assert [entry["step"] for entry in evals] == [0, 2, 3]  # before the first step, every 2 steps, the end
    callback = next(cb for cb in evaluated.callback_handler.callbacks if isinstance(cb, InLoopEvaluation))
    tags = sorted({row["tag"] for row in callback.rows})
    assert len(callback.rows) == 5 and len(tags) == 5  # one prompt of each tag in turn, not 5 of the commonest
    assert all(row in load_prompt_set("shapes-held-out") for row in callback.rows)
    for entry in evals:
        assert 0 < entry["eval_rewards/brightness/mean"] < 1
        assert entry["eval_reward"] == entry["eval_rewards/brightness/mean"]  # one reward, weight 1
        per_tag = [entry[f"eval_geneval/{tag}"] for tag in tags]
        assert sorted(k[len("eval_geneval/") :] for k in entry if k.startswith("eval_geneval/")) == sorted(
            tags + ["overall"]
        )
        assert_close_scaled(torch.tensor(entry["eval_geneval/overall"]), torch.tensor(sum(per_tag) / len(per_tag)))
    assert evals[0]["eval_reward"] != evals[-1]["eval_reward"]  # the policy moved at lr 1e-2

    folder = tmp_path / "eval" / "out" / "eval"
    assert sorted(os.listdir(folder)) == ["step_000000.png", "step_000002.png", "step_000003.png"]
    grid = Image.open(folder / "step_000000.png")
    assert grid.width == 2 * 128  # eval_images_per_prompt columns of 128-px tiles (16-px images upscaled)

    # fixed seeds: the same weights evaluated again give the very same images and numbers
    first, second = callback.evaluate(10), callback.evaluate(11)
    assert first == second and first["eval_reward"] == evals[-1]["eval_reward"]
    assert np.array_equal(
        np.asarray(Image.open(folder / "step_000010.png")), np.asarray(Image.open(folder / "step_000011.png"))
    )


def test_eval_prompt_files_and_bad_input(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("one\ntwo\nthree\nfour\n")
    assert [row["prompt"] for row in load_eval_prompts(str(text), 2)] == ["one", "three"]
    tagged = [
        {"tag": tag, "include": [], "prompt": f"{tag} {i}"}
        for tag, i in [("a", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 0), ("c", 0), ("c", 1)]
    ]
    spread = tmp_path / "spread.jsonl"
    spread.write_text("".join(json.dumps(row) + "\n" for row in tagged))
    assert [row["prompt"] for row in load_eval_prompts(str(spread), 4)] == ["a 0", "a 1", "b 0", "c 0"]
    geneval = tmp_path / "meta.jsonl"
    geneval.write_text(
        json.dumps({"tag": "counting", "include": [{"class": "circle", "count": 2}], "prompt": "two circles"}) + "\n"
    )
    assert load_eval_prompts(str(geneval)) == [
        {"tag": "counting", "include": [{"class": "circle", "count": 2}], "prompt": "two circles"}
    ]
    for missing in ("missing.jsonl", "missing.txt"):
        with pytest.raises(FileNotFoundError, match=f"eval_prompts: file not found: .*{missing}"):
            load_eval_prompts(str(tmp_path / missing))
    with pytest.raises(ValueError, match="neither a named set"):
        load_eval_prompts("shapes-heldout")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt key"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: no 'prompt' key"):
        load_eval_prompts(str(bad))
    with pytest.raises(ValueError, match="eval_every > 0 needs eval_prompts"):
        grpo_args(tmp_path, eval_every=5)


def test_group_diversity_matches_a_float64_reference():
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(12, 7, generator=generator)
    for group_size, metric in itertools.product((3, 4), ("rms", "cosine")):
        x = features.double().numpy()
        group_means = []
        for start in range(0, 12, group_size):
            pairs = list(itertools.combinations(range(start, start + group_size), 2))
            if metric == "rms":
                distances = [np.sqrt(np.mean((x[i] - x[j]) ** 2)) for i, j in pairs]
            else:
                distances = [1 - x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j]) for i, j in pairs]
            group_means.append(np.mean(distances))
        expected = torch.tensor(np.mean(group_means))
        assert_close_scaled(torch.tensor(group_diversity(features, group_size, metric), dtype=torch.float64), expected)
    same = features[:3].repeat_interleave(4, dim=0)  # three groups of four identical rows: collapsed
    assert group_diversity(same, 4, "rms") == 0.0
    assert abs(group_diversity(same, 4, "cosine")) < 1e-12  # float64 rounding at cosine's scale (1)
    assert math.isnan(group_diversity(features, 1, "rms"))
    assert pixel_features(torch.rand(2, 3, 256, 128)).shape == (2, 3 * 64 * 32)  # compared at most at 64 px
    assert pixel_features(torch.rand(2, 3, 16, 16)).shape == (2, 3 * 16 * 16)


def clip_reward(root):
    clip_dir = save_tiny_open_clip(os.path.join(root, "clip"))
    return {"name": "clip_score", "kwargs": {"model": f"local-dir:{clip_dir}", "pretrained": None, "device": "cpu"}}


def test_clip_diversity_reuses_the_rewards_embeddings(tmp_path):
    rewards = RewardSet.build([brightness, clip_reward(str(tmp_path))])
    embed_images = rewards.image_embedder()  # the CLIP reward's public capability, found past the first reward
    clip = rewards[1].fn.clip
    assert embed_images == rewards[1].fn.embed_images
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rewards.score(["a dog"] * 8, images, {})
    cached = clip.cached_image_features(images)
    assert cached is not None and clip.cached_image_features(images.clone()) is None  # only that very tensor
    assert embed_images(images) is cached  # no second CLIP pass for the batch just scored
    assert_close_scaled(embed_images(images.clone()), cached)  # another tensor: embedded afresh, same values
    metrics = rollout_monitors(images, 4, lambda tensor: tensor, embed_images)
    assert metrics["monitors/clip_diversity"] == group_diversity(cached, 4, "cosine")
    assert metrics["monitors/image_diversity"] == group_diversity(images.flatten(1), 4, "rms")


@pytest.mark.timeout(240)
def test_wandb_offline_run_shows_eval_grid_and_monitors(tmp_path, tiny_checkpoint, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "rlhf-img-tests")
    wandb.teardown()  # wandb keeps its settings (WANDB_DIR) from the first run in this process: start afresh
    trainer = train(
        tmp_path,
        tiny_checkpoint,
        reward_funcs=build_rewards([clip_reward(str(tmp_path))]),
        report_to="wandb",
        run_name="in-loop-eval-test",
        log_images_every=0,
        eval_every=2,
        eval_prompts="shapes-held-out",
        eval_max_prompts=3,
        eval_images_per_prompt=2,
    )
    wandb.finish()
    wandb.teardown()  # and leave none behind for a later test
    history = history_keys(
        str(tmp_path),
        until=lambda h: len(h.get("eval/grid/_type", [])) == 3 and len(h.get("train/monitors/clip_diversity", [])) == 3,
    )
    assert history["eval/grid/_type"] == ["image-file"] * 3  # steps 0, 2 and 3
    assert len(history["eval/rewards/clip_score/mean"]) == 3 and len(history["eval/geneval/overall"]) == 3
    assert "a photo of" in history["eval/grid/caption"][0]
    grids = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "files" / "media" / "images" / "eval" / "*.png"))
    assert len(grids) == 3
    for key in (
        "train/monitors/image_diversity",
        "train/monitors/clip_diversity",
        "train/entropy",
        "train/frac_reward_zero_std",
        "train/sampling/sampling_logp_difference/mean",
    ):
        assert len(history.get(key, [])) == 3, (key, sorted(history))
    codes = trainer.policy.config.image_code_count
    assert all(0 < value <= math.log(codes) for value in history["train/entropy"])  # nats per image token
    assert all(0 < value <= 1 for value in history["train/monitors/image_diversity"])
    assert all(0 <= value <= 2 for value in history["train/monitors/clip_diversity"])
