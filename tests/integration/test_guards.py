"""Silent-failure guards (rlhf_img/guards.py): each warns once after its patience, keeps a streak counter on the
dashboards, can be turned off, and resumes where it was; in a real run a constant reward trips all three
warnings (zero spread, constant reward, zero grad norm) once each."""

import json
import logging
import math

import pytest
import torch
from conftest import grpo_args
from datasets import Dataset

from rlhf_img import ImageGRPOTrainer, load_policy
from rlhf_img.guards import NoScoreError, TrainingGuards
from rlhf_img.rewards import RewardError

NAN = math.nan


def warnings_of(caplog, text):
    return [r.getMessage() for r in caplog.records if r.name == "rlhf_img.guards" and text in r.getMessage()]


def batch(*columns):
    """Rewards `(N, R)` from per-reward columns."""
    return torch.tensor(list(zip(*columns)), dtype=torch.float32)


SPREAD = torch.tensor([False, False, False, False])
NO_SPREAD = torch.tensor([True, True, True, True])


def test_zero_spread_warns_once_after_patience_and_counts_the_streak(caplog):
    guards = TrainingGuards(["a"], zero_spread_patience=3)
    rewards = batch([1.0, 1.0, 2.0, 2.0])  # two groups of 2, each constant inside
    with caplog.at_level(logging.WARNING, logger="rlhf_img"):
        streaks = [guards.check_rollouts(rewards, NO_SPREAD, step)["guards/zero_spread_streak"] for step in range(5)]
        assert streaks == [1, 2, 3, 4, 5]
        assert len(warnings_of(caplog, "zero reward spread")) == 1
        assert "step 2" in warnings_of(caplog, "zero reward spread")[0]
        assert "zero_spread_patience" in warnings_of(caplog, "zero reward spread")[0]
        assert guards.check_rollouts(rewards, SPREAD, 5)["guards/zero_spread_streak"] == 0  # a spread resets it
        for step in range(6, 10):
            guards.check_rollouts(rewards, NO_SPREAD, step)
    assert len(warnings_of(caplog, "zero reward spread")) == 1  # once per run


def test_constant_reward_names_the_reward_and_its_value(caplog):
    guards = TrainingGuards(["varies", "stuck"], constant_reward_patience=2)
    rewards = batch([0.1, 0.2, 0.3, 0.4], [0.5, 0.5, NAN, 0.5])  # NaN (no score) does not break the tie
    with caplog.at_level(logging.WARNING, logger="rlhf_img"):
        first = guards.check_rollouts(rewards, SPREAD, 0)
        second = guards.check_rollouts(rewards, SPREAD, 1)
    assert first["guards/constant_reward_streak/stuck"] == 1 and second["guards/constant_reward_streak/stuck"] == 2
    assert second["guards/constant_reward_streak/varies"] == 0
    assert second["rewards/stuck/unscored"] == 1 and second["rewards/varies/unscored"] == 0
    (message,) = warnings_of(caplog, "cannot rank images")
    assert "reward 'stuck' gave the same value (0.5)" in message and "step 1" in message
    assert "'varies'" not in message


def test_a_reward_that_never_scores_counts_as_constant(caplog):
    guards = TrainingGuards(["judge", "other"], constant_reward_patience=1)
    with caplog.at_level(logging.WARNING, logger="rlhf_img"):
        metrics = guards.check_rollouts(batch([NAN, NAN], [1.0, 2.0]), torch.tensor([False, False]), 0)
    assert metrics["rewards/judge/unscored"] == 2
    (message,) = warnings_of(caplog, "cannot rank images")
    assert "reward 'judge' gave no score" in message


def test_zero_grad_norm_streak_from_the_logs(caplog):
    guards = TrainingGuards(["a"], zero_grad_norm_patience=2)
    with caplog.at_level(logging.WARNING, logger="rlhf_img"):
        assert guards.check_log({"loss": 0.0}, 1) == {}  # no grad norm (evaluation logs): nothing counted
        streaks = [
            guards.check_log({"grad_norm": value}, step)["guards/zero_grad_norm_streak"]
            for step, value in enumerate([0.0, 0.5, 0.0, 0.0, 0.0])
        ]
    assert streaks == [1, 0, 1, 2, 3]
    (message,) = warnings_of(caplog, "grad_norm was 0")
    assert "step 3" in message and "zero_grad_norm_patience" in message


def test_patience_0_turns_the_warnings_off(caplog):
    guards = TrainingGuards(
        ["a"], no_score_patience=0, zero_spread_patience=0, constant_reward_patience=0, zero_grad_norm_patience=0
    )
    with caplog.at_level(logging.WARNING, logger="rlhf_img"):
        for step in range(10):
            guards.check_rollouts(batch([1.0, 1.0]), torch.tensor([True, True]), step)
            guards.check_log({"grad_norm": 0.0}, step)
    assert not [r for r in caplog.records if r.name == "rlhf_img.guards"]
    assert guards.zero_spread_streak == 10 and guards.zero_grad_norm_streak == 10  # still counted


def test_no_score_stops_with_a_reward_error_naming_every_reward():
    guards = TrainingGuards(["a", "b"])
    with pytest.raises(NoScoreError) as info:
        guards.check_rollouts(batch([NAN, NAN], [NAN, NAN]), torch.tensor([False, False]), 7)
    assert isinstance(info.value, RewardError)  # what `rlhf-img train` turns into one line and exit 1
    message = str(info.value)
    assert message.startswith("step 7: no image was scored by any reward ('a', 'b' returned NaN/None/inf for all 2")
    assert "\n" not in message


def test_only_the_main_process_prints(caplog):
    guards = TrainingGuards(["a"], zero_grad_norm_patience=1, is_main_process=False)
    with caplog.at_level(logging.WARNING, logger="rlhf_img"):
        assert guards.check_log({"grad_norm": 0.0}, 0)["guards/zero_grad_norm_streak"] == 1
    assert not warnings_of(caplog, "grad_norm")


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_bad_patience_is_refused(value):
    with pytest.raises(ValueError, match="zero_spread_patience"):
        TrainingGuards(["a"], zero_spread_patience=value)


def constant(prompts, images, **kwargs):
    return [0.5] * len(prompts)


@pytest.mark.timeout(180)
def test_a_constant_reward_run_trips_each_warning_once_and_resumes_its_streaks(tmp_path, tiny_checkpoint, caplog):
    dataset = Dataset.from_dict({"prompt": ["a red apple", "a dog"]})
    patience = dict(zero_spread_patience=2, constant_reward_patience=2, zero_grad_norm_patience=2)
    args = grpo_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, logging_steps=1, **patience)
    with caplog.at_level(logging.WARNING, logger="rlhf_img"):
        ImageGRPOTrainer(load_policy(tiny_checkpoint, "causal_vq"), args, dataset, reward_funcs=[constant]).train()
    # rollout batches count from global step 0 (before the update), logged steps from 1 (after it)
    for text, step in (
        ("zero reward spread", 1),
        ("reward 'constant' gave the same value (0.5)", 1),
        ("grad_norm was 0", 2),
    ):
        found = warnings_of(caplog, text)
        assert len(found) == 1 and f"step {step}:" in found[0], (text, [r.getMessage() for r in caplog.records])
    with open(tmp_path / "out" / "checkpoint-4" / "trainer_state.json") as f:
        history = [h for h in json.load(f)["log_history"] if "reward" in h]
    assert [h["guards/zero_spread_streak"] for h in history] == [1, 2, 3, 4]
    assert [h["guards/constant_reward_streak/constant"] for h in history] == [1, 2, 3, 4]
    assert [h["grad_norm"] for h in history] == [0.0] * 4  # all advantages 0: the update is exactly 0
    assert [h["guards/zero_grad_norm_streak"] for h in history] == [1, 2, 3, 4]

    # resume from step 2: the streaks continue from the checkpoint (3, 4), as in the uninterrupted run
    resumed_args = grpo_args(tmp_path, max_steps=4, save_strategy="no", logging_steps=1, **patience)
    resumed = ImageGRPOTrainer(
        load_policy(tiny_checkpoint, "causal_vq"), resumed_args, dataset, reward_funcs=[constant]
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    after = [h for h in resumed.state.log_history if "reward" in h and h["step"] > 2]
    assert [h["guards/zero_spread_streak"] for h in after] == [3, 4]
    assert [h["guards/zero_grad_norm_streak"] for h in after] == [3, 4]
    assert [h["guards/constant_reward_streak/constant"] for h in after] == [3, 4]


def brightness(prompts, images, **kwargs):
    return images.mean(dim=(1, 2, 3)).tolist()


@pytest.mark.timeout(180)
def test_a_healthy_run_warns_nothing(tmp_path, tiny_checkpoint, caplog):
    dataset = Dataset.from_dict({"prompt": ["a red apple", "a dog"]})
    args = grpo_args(
        tmp_path, max_steps=3, zero_spread_patience=1, constant_reward_patience=1, zero_grad_norm_patience=1
    )
    with caplog.at_level(logging.WARNING, logger="rlhf_img"):
        trainer = ImageGRPOTrainer(load_policy(tiny_checkpoint, "causal_vq"), args, dataset, reward_funcs=[brightness])
        trainer.train()
    assert not [r.getMessage() for r in caplog.records if r.name == "rlhf_img.guards"]
    history = [h for h in trainer.state.log_history if "reward" in h]
    assert all(h["guards/zero_spread_streak"] == 0 and h["guards/zero_grad_norm_streak"] == 0 for h in history)
    assert all(h["rewards/brightness/unscored"] == 0 for h in history)
