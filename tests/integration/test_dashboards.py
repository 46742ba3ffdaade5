"""Dashboards: a wandb offline run holds the per-reward scalars and the rollout grid; TensorBoard too."""

import glob

import pytest
from conftest import grpo_args
from datasets import Dataset
from wandb_offline import history_keys

from rlhf_img import ImageGRPOTrainer, load_policy


def brightness(prompts, images, **kwargs):
    return images.mean(dim=(1, 2, 3)).tolist()


def darkness(prompts, images, **kwargs):
    return (1 - images.mean(dim=(1, 2, 3))).tolist()


def train(tmp_path, checkpoint, report_to):
    policy = load_policy(checkpoint, "causal_vq")
    args = grpo_args(
        tmp_path, max_steps=3, report_to=report_to, log_images_every=2, num_logged_images=4, run_name="dashboards-test"
    )
    dataset = Dataset.from_dict({"prompt": ["a red circle", "a blue square"]})
    trainer = ImageGRPOTrainer(policy, args, dataset, reward_funcs=[brightness, darkness])
    trainer.train()
    return trainer


@pytest.mark.timeout(180)
def test_wandb_offline_run_has_per_reward_scalars_and_images(tmp_path, tiny_checkpoint, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "rlhf-img-tests")
    train(tmp_path, tiny_checkpoint, "wandb")
    wandb.finish()
    history = history_keys(
        str(tmp_path),
        until=lambda h: len(h.get("train/rewards/brightness/mean", [])) == 3 and "rollouts/grid/_type" in h,
    )
    for key in (
        "train/rewards/brightness/mean",
        "train/rewards/darkness/std",
        "train/reward",
        "train/frac_reward_zero_std",
        "train/sampling/sampling_logp_difference/mean",
        "train/clip_ratio/region_mean",
    ):
        assert key in history, sorted(history)
    assert len(history["train/rewards/brightness/mean"]) == 3
    assert history["rollouts/grid/_type"][0] == "image-file"
    assert (
        "a red circle" in history["rollouts/grid/caption"][0] or "a blue square" in history["rollouts/grid/caption"][0]
    )
    images = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "files" / "media" / "images" / "rollouts" / "*.png"))
    assert len(images) == 2  # steps 0 and 2 with log_images_every=2


def test_tensorboard_has_per_reward_scalars_and_images(tmp_path, tiny_checkpoint):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tmp_path, tiny_checkpoint, "tensorboard")
    (event_file,) = glob.glob(str(tmp_path / "out" / "runs" / "**" / "events.out.tfevents.*"), recursive=True)
    events = EventAccumulator(event_file, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "train/rewards/brightness/mean" in scalars and "train/rewards/darkness/mean" in scalars
    assert "rollouts/grid" in events.Tags()["images"]
    assert len(events.Images("rollouts/grid")) == 2
