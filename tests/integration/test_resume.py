"""Kill and resume: a run SIGKILLed while saving a checkpoint resumes from the last complete one (by path and
with `true`) and logs the same steps as a run that was never interrupted; the half-written checkpoint is
never picked."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO

from rlhf_img.resume import MARKER, checkpoints, resolve_resume

RECIPE = os.path.join(REPO, "recipes", "tiny-random-jpeg.yaml")
OVERRIDES = [
    "--max_steps",
    "6",
    "--per_device_train_batch_size",
    "16",
    "--num_generations",
    "4",
    "--save_strategy",
    "steps",
    "--save_steps",
    "2",
    "--logging_steps",
    "1",
    "--log_images_every",
    "0",
    "--disable_tqdm",
    "true",
    "--report_to",
    "none",
    # in-loop eval on too: its entries must match as well, and it must not disturb the training's RNG
    "--eval_every",
    "2",
    "--eval_prompts",
    os.path.join(REPO, "recipes", "prompts", "simple-objects.txt"),
    "--eval_max_prompts",
    "2",
    "--eval_images_per_prompt",
    "2",
]
# wall-clock figures differ between any two runs; everything else must not
TIMING = (
    "timing/",
    "rollout/images_per_second",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "step_time",
)

# Runs the CLI with the trainer's RNG-state save blocked at step `stop_in_save`: the checkpoint folder then
# holds the model and optimizer but not the RNG/trainer state -- a save cut short. The test kills it there.
BLOCKING_RUN = """
import os, sys, time
import transformers
from rlhf_img.cli import main
save_rng = transformers.Trainer._save_rng_state
def blocking(self, output_dir):
    if self.state.global_step == int(os.environ["STOP_IN_SAVE"]):
        open(os.environ["SENTINEL"], "w").close()
        time.sleep(600)
    return save_rng(self, output_dir)
transformers.Trainer._save_rng_state = blocking
sys.exit(main(sys.argv[1:]))
"""


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def train(output_dir, *extra) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "rlhf_img", "train", RECIPE, *OVERRIDES, "--output_dir", str(output_dir), *extra]
    return subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)


def history(output_dir, kind: str = "loss") -> dict[int, dict]:
    """Logged training steps (`kind='loss'`) or in-loop evals (`'eval_reward'`) by step number, without
    wall-clock figures and the end-of-run summary."""
    with open(os.path.join(output_dir, "trainer_state.json")) as f:
        entries = json.load(f)["log_history"]
    return {
        entry["step"]: {k: v for k, v in entry.items() if not k.startswith(TIMING)}
        for entry in entries
        if kind in entry
    }


def killed_in_save(output_dir, stop_in_save: int) -> None:
    """Start a run, wait until it is inside the save of checkpoint-`stop_in_save`, SIGKILL it."""
    sentinel = os.path.join(os.path.dirname(str(output_dir)), "in-save")
    command = [sys.executable, "-c", BLOCKING_RUN, "train", RECIPE, *OVERRIDES, "--output_dir", str(output_dir)]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**env(), "STOP_IN_SAVE": str(stop_in_save), "SENTINEL": sentinel},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not os.path.exists(sentinel):
        if process.poll() is not None:
            pytest.fail(f"run ended before the save it should be killed in:\n{process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("run did not reach the save in time")
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.slow  # two real training commands, one SIGKILLed inside a save (~25 s)
@pytest.mark.timeout(600)
def test_killed_run_resumes_identically_and_skips_the_half_written_checkpoint(tmp_path):
    full = tmp_path / "full"
    done = train(full)
    assert done.returncode == 0, done.stderr[-3000:]
    expected, expected_evals = history(full), history(full, "eval_reward")
    assert sorted(expected) == [1, 2, 3, 4, 5, 6] and sorted(expected_evals) == [0, 2, 4, 6]

    killed = tmp_path / "killed"
    killed_in_save(killed, stop_in_save=4)
    found = {os.path.basename(path): complete for _, path, complete in checkpoints(str(killed))}
    assert found == {"checkpoint-2": True, "checkpoint-4": False}  # 4 was cut short: model on disk, no marker
    assert os.listdir(killed / "checkpoint-4") and not (killed / "checkpoint-4" / "trainer_state.json").exists()
    assert resolve_resume(True, str(killed)) == str(killed / "checkpoint-2")

    # an explicit path to the half-written checkpoint is refused in one line naming it
    refused = train(tmp_path / "refused", "--resume_from_checkpoint", str(killed / "checkpoint-4"))
    assert refused.returncode != 0
    assert "checkpoint-4 is incomplete" in refused.stderr and "checkpoint-2" in refused.stderr
    assert "Traceback" not in refused.stderr

    by_path = tmp_path / "by-path"
    shutil.copytree(killed, by_path)
    resumed = train(by_path, "--resume_from_checkpoint", str(by_path / "checkpoint-2"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    resumed_latest = train(killed, "--resume_from_checkpoint", "true")
    assert resumed_latest.returncode == 0, resumed_latest.stderr[-3000:]
    assert "skipping" in resumed_latest.stderr and "checkpoint-4: incomplete" in resumed_latest.stderr

    for run in (by_path, killed):
        steps = history(run)
        assert sorted(steps) == [1, 2, 3, 4, 5, 6]  # steps 1-2 from the checkpoint's state, 3-6 after resuming
        for step in (3, 4, 5, 6):
            # exact: the same data order, RNG state and weights give bit-identical rollouts and updates on CPU
            assert steps[step] == expected[step], (run, step)
        assert history(run, "eval_reward") == expected_evals  # 0, 2 before the kill; 4, 6 after resuming
        # the re-saved checkpoint-4 is complete now, with nothing left of the killed save
        assert (run / "checkpoint-4" / MARKER).exists() and (run / "checkpoint-6" / MARKER).exists()


def test_rotation_still_keeps_the_newest_checkpoints_all_marked(tmp_path, tiny_checkpoint):
    from conftest import grpo_args
    from datasets import Dataset

    from rlhf_img import ImageGRPOTrainer, load_policy

    args = grpo_args(tmp_path, save_strategy="steps", save_steps=1, max_steps=3, save_total_limit=2)
    trainer = ImageGRPOTrainer(
        load_policy(tiny_checkpoint, "causal_vq"),
        args,
        Dataset.from_dict({"prompt": ["a", "b"]}),
        reward_funcs=[lambda prompts, images, **kw: images.mean(dim=(1, 2, 3)).tolist()],
    )
    trainer.train()
    found = [(os.path.basename(path), complete) for _, path, complete in checkpoints(args.output_dir)]
    assert found == [("checkpoint-2", True), ("checkpoint-3", True)]


def test_resolve_resume_values_and_errors(tmp_path):
    assert resolve_resume(None, str(tmp_path)) is None and resolve_resume("false", str(tmp_path)) is None
    with pytest.raises(ValueError, match=r"no complete checkpoint-N folder in .* \(none\)"):
        resolve_resume("true", str(tmp_path))
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(ValueError, match=r"only incomplete ones \(checkpoint-3\)"):
        resolve_resume(True, str(tmp_path))
    with pytest.raises(ValueError, match="is not a folder"):
        resolve_resume(str(tmp_path / "checkpoint-9"), str(tmp_path))
    (tmp_path / "checkpoint-1").mkdir()
    (tmp_path / "checkpoint-1" / MARKER).write_text("{}")
    assert resolve_resume("latest", str(tmp_path)) == str(tmp_path / "checkpoint-1")
