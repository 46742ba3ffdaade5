"""Dynamic sampling and keep_best take the same decisions on any process count: 1 process x batch 12 and 2 torchrun
processes x batch 6 (groups of 4, one spanning both ranks) refill the same groups with the same new prompts and
images, train on the same rewards and advantages, log the same dynamic_sampling/* counts, and save the weights of
the same best in-loop eval step."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from conftest import write_recipe
from numerics import assert_close_scaled
from safetensors.torch import load_file
from test_process_invariance import _pixels, _rollouts, _run

pytestmark = pytest.mark.slow  # two training commands, one of them on two gloo processes

GLOBAL_BATCH = 12
REWARD_FILE = (  # the in-loop eval's 10 images (never a training batch size) get scripted values: best at step 1
    "EVAL = iter([0.2, 0.9, 0.4])\n"
    "def flat_or_bright(prompts, images, **kwargs):\n"
    "    if len(prompts) == 10:\n"
    "        return [next(EVAL)] * 10\n"
    "    return [1.0 if p.startswith('flat') else image.mean().item() for p, image in zip(prompts, images)]\n"
)
KEYS = ("dynamic_sampling/dropped_groups", "dynamic_sampling/unfilled_groups", "dynamic_sampling/resample_rounds")


@pytest.mark.timeout(300)
def test_two_processes_refill_what_one_process_refills(tmp_path):
    from rlhf_img.families.causal_vq.tiny import save_tiny_causal_vq

    checkpoint = save_tiny_causal_vq(str(tmp_path / "tiny-qwen2"), arch="qwen2", seed=0)
    (tmp_path / "prompts.txt").write_text(
        "\n".join(["flat 0", "flat 1", "flat 2", "bright 0", "bright 1", "bright 2", "bright 3", "bright 4"])
    )
    (tmp_path / "my_rewards.py").write_text(REWARD_FILE)
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        model_family="causal_vq",
        model_name_or_path=checkpoint,
        dtype="float32",
        use_peft=True,
        lora_r=8,
        lora_alpha=16,
        lora_target_modules="all-linear",
        dataset=str(tmp_path / "prompts.txt"),
        rewards=[{"name": f"{tmp_path / 'my_rewards.py'}:flat_or_bright"}],
        num_generations=4,
        max_steps=2,
        learning_rate=1e-2,
        beta=0.0,
        cfg_mode="none",
        use_cpu=True,
        seed=0,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        save_rollouts=True,
        disable_tqdm=True,
        activation_checkpointing=False,
        dynamic_sampling=True,
        max_resample_rounds=3,
        keep_best=True,
        eval_every=1,
        eval_prompts=str(tmp_path / "prompts.txt"),
        eval_max_prompts=2,
        eval_images_per_prompt=5,
    )
    _run(
        [
            sys.executable,
            "-m",
            "rlhf_img",
            "train",
            recipe,
            "--output_dir",
            str(tmp_path / "one"),
            "--per_device_train_batch_size",
            str(GLOBAL_BATCH),
        ],
        tmp_path,
    )
    script = os.path.join(os.path.dirname(sys.executable), "rlhf-img")
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            script,
            "train",
            recipe,
            "--output_dir",
            str(tmp_path / "two"),
            "--per_device_train_batch_size",
            str(GLOBAL_BATCH // 2),
        ],
        tmp_path,
    )

    one, two = _rollouts(tmp_path / "one"), _rollouts(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) == 2 * GLOBAL_BATCH
    for key in one:
        assert two[key]["prompt"] == one[key]["prompt"], key
        assert np.abs(_pixels(tmp_path / "two", two[key]) - _pixels(tmp_path / "one", one[key])).max() <= 1, key
    assert_close_scaled(
        torch.tensor([two[k]["advantage"] for k in sorted(one)]),
        torch.tensor([one[k]["advantage"] for k in sorted(one)]),
    )

    def history(folder):
        with open(folder / "trainer_state.json") as f:
            return [entry for entry in json.load(f)["log_history"] if "reward" in entry]

    history_one, history_two = history(tmp_path / "one"), history(tmp_path / "two")
    assert sum(entry["dynamic_sampling/dropped_groups"] for entry in history_one) >= 1
    flat_groups = sum(one[key]["prompt"].startswith("flat") for key in one) // 4
    assert flat_groups == sum(entry["dynamic_sampling/unfilled_groups"] for entry in history_one)  # only unfilled
    for a, b in zip(history_one, history_two, strict=True):
        assert [a[key] for key in KEYS] == [b[key] for key in KEYS]
        assert_close_scaled(torch.tensor(b["reward"]), torch.tensor(a["reward"]))

    # keep_best: both saved step 1's adapter (the main process scored the eval, every replica restored the copy)
    for folder in ("one", "two"):
        assert json.loads((tmp_path / folder / "best_step.json").read_text())["best_step"] == 1
    saved_one = load_file(str(tmp_path / "one" / "adapter_model.safetensors"))
    saved_two = load_file(str(tmp_path / "two" / "adapter_model.safetensors"))
    assert saved_one.keys() == saved_two.keys()
    for name in saved_one:  # one Adam step from 0 moves a LoRA B entry by ~lr (1e-2): another step's weights
        assert_close_scaled(saved_two[name], saved_one[name], relative=1e-3)  # would be off by ~100% of the scale
