"""A run whose reward scores no image (NaN, None or inf for every image) stops at the first such rollout batch
with one line naming the reward (exit 1, no traceback). With `no_score_patience: 0` it trains to the end
instead, warns once on the console naming the reward, and says in its summary that no image was scored (no
crash formatting the None TRL logs as the mean reward of such a step)."""

import json
import logging
import os
import subprocess
import sys

import pytest
from conftest import REPO

from rlhf_img.cli import main
from rlhf_img.training import reward_summary

RECIPE = os.path.join(REPO, "recipes", "tiny-random-jpeg.yaml")
REWARDS = """\
import math

def nan_for_all(prompts, images, **kwargs):
    return [math.nan] * len(prompts)

def none_for_all(prompts, images, **kwargs):
    return [None] * len(prompts)

def inf_for_all(prompts, images, **kwargs):
    return [math.inf] * len(prompts)

def first_only(prompts, images, **kwargs):
    return [1.0] + [None] * (len(prompts) - 1)
"""
WARNING = "no image was scored by any reward"


def _overrides(tmp_path, tiny_checkpoint, function):
    rewards = tmp_path / "no_score_rewards.py"
    rewards.write_text(REWARDS)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple\na dog on a beach\n")
    name = f"{rewards}:{function}"
    return name, [
        "--model_name_or_path",
        tiny_checkpoint,
        "--rewards",
        json.dumps([{"name": name}]),
        "--dataset",
        str(prompts),
        "--max_steps",
        "2",
        "--logging_steps",
        "1",
        "--per_device_train_batch_size",
        "8",
        "--num_generations",
        "4",
        "--output_dir",
        str(tmp_path / "out"),
        "--disable_tqdm",
        "true",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
    ]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("function", ["nan_for_all", "none_for_all", "inf_for_all"])
def test_no_score_run_stops_at_the_first_batch_with_one_line_naming_the_reward(
    tmp_path, tiny_checkpoint, capsys, function
):
    name, overrides = _overrides(tmp_path, tiny_checkpoint, function)
    assert main(["train", RECIPE, *overrides]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("rlhf-img: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith("rlhf-img: error: step 0: no image was scored by any reward"), lines[0]
    assert f"{name!r} returned NaN/None/inf for all 8 images" in lines[0]
    assert "no_score_patience" in lines[0] and "no checkpoint was saved" in lines[0]
    assert "trained" not in out  # stopped: no summary, no final save
    assert not os.path.exists(tmp_path / "out" / "trainer_state.json")


@pytest.mark.timeout(180)
def test_no_score_patience_2_stops_at_the_second_batch(tmp_path, tiny_checkpoint, capsys, caplog):
    name, overrides = _overrides(tmp_path, tiny_checkpoint, "none_for_all")
    with caplog.at_level(logging.WARNING, logger="rlhf_img"):
        assert main(["train", RECIPE, *overrides, "--max_steps", "3", "--no_score_patience", "2"]) == 1
    err = capsys.readouterr().err
    assert "rlhf-img: error: step 1: no image was scored by any reward" in err
    assert "in 2 consecutive rollout batches" in err
    warnings = [r for r in caplog.records if WARNING in r.getMessage()]
    assert len(warnings) == 1 and "step 0" in warnings[0].getMessage()  # the first batch only warned


@pytest.mark.timeout(180)
@pytest.mark.parametrize("function", ["nan_for_all", "none_for_all"])
def test_no_score_run_with_patience_0_finishes_warns_once_and_says_so(
    tmp_path, tiny_checkpoint, capsys, caplog, function
):
    name, overrides = _overrides(tmp_path, tiny_checkpoint, function)
    overrides += ["--no_score_patience", "0"]
    with caplog.at_level(logging.WARNING, logger="rlhf_img"):
        assert main(["train", RECIPE, *overrides]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    summary = [line for line in out.splitlines() if line.startswith("rlhf-img: ") and "trained" not in line]
    assert len(summary) == 1 and "no image was scored in any of the 2 logged steps" in summary[0], out
    assert repr(name) in summary[0]
    warnings = [r for r in caplog.records if r.name.startswith("rlhf_img") and WARNING in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]  # once, though both steps scored nothing
    assert warnings[0].levelno == logging.WARNING and repr(name) in warnings[0].getMessage()
    assert "step 0" in warnings[0].getMessage()
    with open(tmp_path / "out" / "trainer_state.json") as f:
        steps = [entry for entry in json.load(f)["log_history"] if "reward" in entry]
    assert [entry["reward"] for entry in steps] == [None, None]  # what TRL logs for a step with no score
    assert [entry[f"rewards/{name}/unscored"] for entry in steps] == [8.0, 8.0]  # the per-reward counter


@pytest.mark.timeout(180)
def test_a_run_that_scores_some_images_does_not_warn(tmp_path, tiny_checkpoint, capsys, caplog):
    name, overrides = _overrides(tmp_path, tiny_checkpoint, "first_only")
    with caplog.at_level(logging.WARNING, logger="rlhf_img"):
        assert main(["train", RECIPE, *overrides]) == 0
    out, _ = capsys.readouterr()
    assert not [r for r in caplog.records if WARNING in r.getMessage()]
    assert "rlhf-img: reward 1 (step 1) -> 1 (step 2)" in out
    with open(tmp_path / "out" / "trainer_state.json") as f:
        steps = [entry for entry in json.load(f)["log_history"] if "reward" in entry]
    assert [entry[f"rewards/{name}/unscored"] for entry in steps] == [7.0, 7.0]  # 1 of 8 images scored


@pytest.mark.slow  # a real training command in a subprocess
@pytest.mark.timeout(180)
def test_the_warning_reaches_the_console_of_a_real_command(tmp_path, tiny_checkpoint):
    """The command as a user runs it (no logging set up by anyone): the warning is on stderr, once."""
    name, overrides = _overrides(tmp_path, tiny_checkpoint, "none_for_all")
    overrides += ["--no_score_patience", "0"]
    done = subprocess.run(
        [sys.executable, "-m", "rlhf_img", "train", RECIPE, *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.count(WARNING) == 1 and repr(name) in done.stderr, done.stderr[-3000:]
    assert "rlhf-img: no image was scored in any of the 2 logged steps" in done.stdout


def test_reward_summary_counts_none_nan_and_missing_rewards_as_unscored():
    history = [
        {"reward": None, "step": 1, "rewards/a/mean": None},
        {"reward": float("nan"), "step": 2},
        {"loss": 0.0, "step": 3},
        {"train_runtime": 1.0, "step": 3},
    ]
    assert reward_summary(history).startswith("no image was scored in any of the 2 logged steps (every reward ('a')")
    assert reward_summary([{"loss": 0.0, "step": 1}]) == "no reward was logged"
    assert reward_summary(history + [{"reward": 0.5, "step": 4}]) == (
        "reward 0.5 (step 4) -> 0.5 (step 4); 2 logged step(s) had no scored image"
    )
