"""GRPO raises a simple reward on a tiny random causal_vq model (LoRA and full), and the other trainer paths
(KL to a reference, num_iterations > 1, guidance) run and log what they should."""

import json
import os
import statistics

import pytest
import torch
from conftest import grpo_args, write_recipe
from datasets import Dataset
from trl import get_peft_config

from rlhf_img import ImageGRPOConfig, ImageGRPOTrainer, load_policy
from rlhf_img.cli import main
from rlhf_img.config import ImageModelConfig


def brightness(prompts, images, **kwargs):
    return images.mean(dim=(1, 2, 3)).tolist()


def assert_reward_rises(rewards: list[float], window: int = 5) -> None:
    """Last steps beat the first by a margin well outside the step-to-step noise.

    The noise is the spread of the last steps (the first ones may already be climbing, which is trend, not
    noise); a run that learns nothing has a gain of about 0 +- that spread."""
    first, last = rewards[:window], rewards[-window:]
    noise = max(statistics.stdev(last), 1e-4)
    gain = statistics.mean(last) - statistics.mean(first)
    assert gain > 5 * noise and gain > 0.005, f"gain {gain:.4f}, noise {noise:.4f}, rewards {rewards}"


@pytest.mark.timeout(120)
def test_lora_recipe_with_custom_reward_file_raises_the_reward(tmp_path, tiny_checkpoint, brightness_reward_file):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"prompt {i}" for i in range(32)))
    recipe = write_recipe(
        tmp_path / "lora.yaml",
        model_name_or_path=tiny_checkpoint,
        use_peft=True,
        lora_r=16,
        lora_alpha=32,
        lora_target_modules=["all-linear"],
        dataset=str(prompts),
        rewards=[{"name": f"{brightness_reward_file}:brightness", "weight": 1.0}],
        num_generations=8,
        per_device_train_batch_size=128,
        max_steps=40,
        learning_rate=1e-2,
        beta=0.0,
        use_cpu=True,
        seed=0,
        report_to="none",
        save_strategy="no",
        output_dir=str(tmp_path / "out"),
        disable_tqdm=True,
    )
    assert main(["train", recipe]) == 0
    with open(tmp_path / "out" / "trainer_state.json") as f:
        history = [h for h in json.load(f)["log_history"] if f"rewards/{brightness_reward_file}:brightness/mean" in h]
    assert len(history) == 40
    assert_reward_rises([h["reward"] for h in history])
    assert max(h["sampling/sampling_logp_difference/mean"] for h in history) < 1e-4  # cfg_mode none: drift ~0
    # the output folder is a loadable causal_vq checkpoint: base + adapter merged on load
    assert os.path.exists(tmp_path / "out" / "adapter_config.json")
    reloaded = load_policy(str(tmp_path / "out"), "causal_vq")
    batch = reloaded.encode_prompts(["prompt 1"] * 64)
    images = reloaded.decode(reloaded.sample(reloaded.model, batch, ImageGRPOConfig("x").sampling).actions)
    assert images.mean().item() > history[0]["reward"] + 0.005  # the merged model keeps what it learned


@pytest.mark.timeout(120)
def test_full_finetune_raises_the_reward(tmp_path, tiny_checkpoint):
    policy = load_policy(tiny_checkpoint, "causal_vq")
    args = grpo_args(tmp_path, per_device_train_batch_size=128, num_generations=8, max_steps=40, learning_rate=3e-3)
    dataset = Dataset.from_dict({"prompt": [f"prompt {i}" for i in range(32)]})
    trainer = ImageGRPOTrainer(policy, args, dataset, reward_funcs=[brightness])
    trainer.train()
    history = [h for h in trainer.state.log_history if "rewards/brightness/mean" in h]
    assert_reward_rises([h["reward"] for h in history])
    trainer.save_model(str(tmp_path / "out"))
    reloaded = load_policy(str(tmp_path / "out"), "causal_vq")
    for name, param in reloaded.model.state_dict().items():
        torch.testing.assert_close(param, policy.model.state_dict()[name])


@pytest.mark.parametrize(
    "use_peft, cfg_mode, extra",
    [
        (True, "guided", dict(beta=0.04, num_iterations=2)),
        (False, "guided_detached_uncond", dict(beta=0.04)),
        (False, "sample_only", dict(beta=0.0, gradient_accumulation_steps=2, steps_per_generation=1)),
    ],
)
def test_kl_reference_iterations_and_guidance_paths(tmp_path, tiny_checkpoint, use_peft, cfg_mode, extra):
    policy = load_policy(tiny_checkpoint, "causal_vq")
    args = grpo_args(tmp_path, learning_rate=1e-3, cfg_mode=cfg_mode, cfg_scale=3.0, **extra)
    model_args = ImageModelConfig(model_name_or_path=tiny_checkpoint, use_peft=use_peft, lora_target_modules=["q_proj"])
    dataset = Dataset.from_dict({"prompt": ["a", "b", "c", "d"], "tag": ["t1", "t2", "t3", "t4"]})
    seen_tags = []

    def tagged(prompts, images, tag, **kwargs):
        seen_tags.extend(tag)
        return [float(p == "a") + images.mean().item() for p in prompts]

    trainer = ImageGRPOTrainer(policy, args, dataset, reward_funcs=[tagged], peft_config=get_peft_config(model_args))
    if use_peft:
        assert trainer.ref_model is None  # the adapter-disabled policy is the reference: no second copy
    else:
        assert (trainer.ref_model is not None) == (args.beta > 0)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert logs and all("entropy" in h for h in logs)
    if args.beta > 0:
        assert all("kl" in h for h in logs)
    drift = [h["sampling/sampling_logp_difference/mean"] for h in logs if "sampling/sampling_logp_difference/mean" in h]
    assert drift
    if cfg_mode == "sample_only":
        assert min(drift) > 1e-2  # the bias of sample_only is visible on the dashboard
    else:
        assert max(drift) < 1e-4
    assert set(seen_tags) <= {"t1", "t2", "t3", "t4"} and seen_tags  # dataset columns reach the rewards


def test_save_rollouts_writes_png_and_jsonl(tmp_path, tiny_checkpoint):
    policy = load_policy(tiny_checkpoint, "causal_vq")
    args = grpo_args(tmp_path, save_rollouts=True)
    trainer = ImageGRPOTrainer(policy, args, Dataset.from_dict({"prompt": ["a", "b"]}), reward_funcs=[brightness])
    trainer.train()
    lines = (tmp_path / "out" / "rollouts" / "rollouts.jsonl").read_text().splitlines()
    assert len(lines) == 16
    record = json.loads(lines[0])
    assert set(record) >= {"step", "prompt", "rewards", "reward", "advantage", "image"}
    assert set(record["rewards"]) == {"brightness"}
    from PIL import Image

    image = Image.open(tmp_path / "out" / "rollouts" / record["image"])
    assert image.size == (16, 16)
    steps = {json.loads(line)["step"] for line in lines}
    assert steps == {0, 1}


def test_checkpoints_are_loadable_causal_vq_folders_and_resume(tmp_path, tiny_checkpoint):
    policy = load_policy(tiny_checkpoint, "causal_vq")
    dataset = Dataset.from_dict({"prompt": ["a", "b"]})
    args = grpo_args(tmp_path, save_strategy="steps", save_steps=2, max_steps=2)
    ImageGRPOTrainer(policy, args, dataset, reward_funcs=[brightness]).train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / "causal_vq.json").exists() and (checkpoint / "visual_tokenizer" / "model.safetensors").exists()
    assert load_policy(str(checkpoint), "causal_vq").num_actions == policy.num_actions
    resumed = ImageGRPOTrainer(
        load_policy(tiny_checkpoint, "causal_vq"), grpo_args(tmp_path, max_steps=3), dataset, reward_funcs=[brightness]
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 3
