"""Process-count invariance on CPU (gloo): 1 process x batch 12 and 2 processes x batch 6 (same seed, same global
batch, groups of 4 so one group spans both ranks) sample the same images and log the same rewards, advantages,
loss and gradient norm; so does a run resumed from a checkpoint. Both launchers that work on CPU are run:
`torchrun --nproc_per_node 2 $(which rlhf-img) ...` and `accelerate launch --config_file
recipes/accelerate/ddp.yaml -m rlhf_img.cli ...`. The end-of-run summary prints once, on the main process."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, write_recipe
from numerics import assert_close_scaled
from PIL import Image

pytestmark = pytest.mark.slow  # several processes over gloo (torchrun / accelerate launch), seconds each

GLOBAL_BATCH, STEPS = 12, 2
REWARD_FILE = "def brightness(prompts, images, **kwargs):\n    return images.mean(dim=(1, 2, 3)).tolist()\n"
# every per-step scalar that depends on the sampled images, the rewards, the advantages or the gradient
COMPARED = (
    "reward",
    "reward_std",
    "frac_reward_zero_std",
    "rewards/{b}/mean",
    "rewards/{b}/std",
    "rewards/jpeg_compressibility/mean",
    "rewards/jpeg_compressibility/std",
    "grad_norm",
    "kl",
    "entropy",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(command: list[str], cwd) -> str:
    """Run a training command with one thread per process and no network; its stdout + stderr."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "TOKENIZERS_PARALLELISM": "false",
    }
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{output[-4000:]}"
    return output


def _train(recipe: str, output_dir, batch: int, *extra: str) -> list[str]:
    return ["train", recipe, "--output_dir", str(output_dir), "--per_device_train_batch_size", str(batch), *extra]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny causal_vq checkpoint, 12 prompts, two rewards (one from a user file), and the 1-process reference
    run (which also saves a checkpoint after step 1 for the resume test)."""
    from rlhf_img.families.causal_vq.tiny import save_tiny_causal_vq

    root = tmp_path_factory.mktemp("invariance")
    checkpoint = save_tiny_causal_vq(str(root / "tiny-qwen2"), arch="qwen2", seed=0)
    (root / "prompts.txt").write_text("\n".join(f"prompt number {i}" for i in range(GLOBAL_BATCH)))
    (root / "my_rewards.py").write_text(REWARD_FILE)
    brightness = f"{root / 'my_rewards.py'}:brightness"
    recipe = write_recipe(
        root / "recipe.yaml",
        model_family="causal_vq",
        model_name_or_path=checkpoint,
        dtype="float32",
        use_peft=True,
        lora_r=8,
        lora_alpha=16,
        lora_target_modules="all-linear",
        dataset=str(root / "prompts.txt"),
        rewards=[{"name": brightness, "weight": 1.0}, {"name": "jpeg_compressibility", "weight": 0.5}],
        num_generations=4,
        max_steps=STEPS,
        learning_rate=1e-2,
        beta=0.04,
        loss_type="dapo",
        cfg_mode="none",
        temperature=1.0,
        use_cpu=True,
        seed=0,
        logging_steps=1,
        report_to="none",
        save_strategy="steps",
        save_steps=1,
        save_rollouts=True,
        disable_tqdm=True,
        activation_checkpointing=False,
        # in-loop eval: every process samples in lockstep, the main one scores; the same numbers on any count
        eval_every=1,
        eval_prompts=str(root / "prompts.txt"),
        eval_max_prompts=2,
        eval_images_per_prompt=2,
    )
    output = _run([sys.executable, "-m", "rlhf_img", *_train(recipe, root / "one", GLOBAL_BATCH)], root)
    return {"root": root, "recipe": recipe, "brightness": brightness, "reference": root / "one", "output": output}


def _history(output_dir) -> list[dict]:
    with open(os.path.join(output_dir, "trainer_state.json")) as f:
        return [entry for entry in json.load(f)["log_history"] if "reward" in entry]


def _eval_history(output_dir) -> list[dict]:
    with open(os.path.join(output_dir, "trainer_state.json")) as f:
        return [entry for entry in json.load(f)["log_history"] if "eval_reward" in entry]


def _rollouts(output_dir) -> dict[tuple[int, int], dict]:
    """Rollout records by (step, global sample index): rank r's row i is global index r * local batch + i."""
    folder = os.path.join(output_dir, "rollouts")
    records = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".jsonl"):
            rows = [json.loads(line) for line in open(os.path.join(folder, name))]
            local = sum(1 for row in rows if row["step"] == rows[0]["step"])
            for row in rows:
                records[(row["step"], row["rank"] * local + row["index"])] = row
    return records


def _pixels(output_dir, record) -> np.ndarray:
    return np.asarray(Image.open(os.path.join(output_dir, "rollouts", record["image"])), dtype=np.int16)


def assert_same_run(actual_dir, expected_dir, brightness: str, steps=range(1, STEPS + 1)) -> None:
    """Same images (pixels within one 8-bit level: float32 decoding of the same codes), same per-image rewards
    and advantages, and the same logged scalars per step (scaled float tolerances)."""
    actual, expected = _rollouts(actual_dir), _rollouts(expected_dir)
    wanted = sorted(key for key in expected if key[0] + 1 in steps)
    assert wanted and all(key in actual for key in wanted), sorted(set(wanted) - set(actual))
    advantages = torch.tensor([expected[key]["advantage"] for key in wanted])
    assert advantages.abs().max() > 0.1  # the comparison below is not vacuous: the groups' rewards differ
    for key in wanted:
        a, e = actual[key], expected[key]
        assert a["prompt"] == e["prompt"], key
        assert np.abs(_pixels(actual_dir, a) - _pixels(expected_dir, e)).max() <= 1, f"image {key} differs"
        for name, value in e["rewards"].items():
            assert_close_scaled(torch.tensor(a["rewards"][name]), torch.tensor(value))
    # advantages are z-scores (scale ~1): compared relative to their largest magnitude
    assert_close_scaled(torch.tensor([actual[key]["advantage"] for key in wanted]), advantages)

    history_a = {h["step"]: h for h in _history(actual_dir)}
    history_e = {h["step"]: h for h in _history(expected_dir)}
    for step in steps:
        a, e = history_a[step], history_e[step]
        for key in (k.format(b=brightness) for k in COMPARED):
            assert_close_scaled(torch.tensor(a[key]), torch.tensor(e[key])), (step, key)
        # the loss sums advantage-weighted ratios over a group (~0 at ratio 1): its scale is the advantages'
        assert_close_scaled(
            torch.tensor([a["loss"], advantages.abs().max()]), torch.tensor([e["loss"], advantages.abs().max()])
        )
    evals_a = {h["step"]: h["eval_reward"] for h in _eval_history(actual_dir)}
    evals_e = {h["step"]: h["eval_reward"] for h in _eval_history(expected_dir)}
    assert set(evals_a) >= {step for step in steps if step in evals_e} and evals_e
    for step in evals_a:
        assert_close_scaled(torch.tensor(evals_a[step]), torch.tensor(evals_e[step])), step


@pytest.mark.timeout(300)
def test_two_torchrun_processes_sample_and_log_what_one_process_does(setup, tmp_path):
    rlhf_img_script = os.path.join(os.path.dirname(sys.executable), "rlhf-img")
    output = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            rlhf_img_script,
            *_train(setup["recipe"], tmp_path / "two", GLOBAL_BATCH // 2, "--save_strategy", "no"),
        ],
        tmp_path,
    )
    assert os.path.exists(tmp_path / "two" / "rollouts" / "rollouts_rank1.jsonl")  # two ranks did sample
    assert_same_run(tmp_path / "two", setup["reference"], setup["brightness"])
    # the end-of-run summary: once, from the main process
    assert output.count("rlhf-img: trained") == 1 and output.count("rlhf-img: reward") == 1, output[-3000:]
    assert setup["output"].count("rlhf-img: trained") == 1


@pytest.mark.timeout(300)
def test_accelerate_launch_with_the_ddp_config_matches_one_process(setup, tmp_path):
    """The shipped DDP config (recipes/accelerate/ddp.yaml) on CPU: accelerate starts torchrun, the recipe's
    `use_cpu: true` makes it gloo; the module form `-m rlhf_img.cli` works as the script."""
    config = os.path.join(REPO, "recipes", "accelerate", "ddp.yaml")
    _run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            config,
            "--num_processes",
            "2",
            "--main_process_port",
            str(_free_port()),
            "-m",
            "rlhf_img.cli",
            *_train(setup["recipe"], tmp_path / "ddp", GLOBAL_BATCH // 2, "--save_strategy", "no"),
        ],
        tmp_path,
    )
    assert os.path.exists(tmp_path / "ddp" / "rollouts" / "rollouts_rank1.jsonl")
    assert_same_run(tmp_path / "ddp", setup["reference"], setup["brightness"])


@pytest.mark.timeout(300)
def test_a_resumed_run_samples_what_the_uninterrupted_run_did(setup, tmp_path):
    """Step 2 after resuming from checkpoint-1 uses the same per-image streams as step 2 of the unbroken run."""
    checkpoint = setup["reference"] / "checkpoint-1"
    assert checkpoint.is_dir()
    _run(
        [
            sys.executable,
            "-m",
            "rlhf_img",
            *_train(
                setup["recipe"],
                tmp_path / "resumed",
                GLOBAL_BATCH,
                "--save_strategy",
                "no",
                "--resume_from_checkpoint",
                str(checkpoint),
            ),
        ],
        tmp_path,
    )
    assert_same_run(tmp_path / "resumed", setup["reference"], setup["brightness"], steps=[2])
