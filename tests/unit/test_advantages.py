"""`group_advantages` and what `ImageGRPOTrainer` logs, checked against TRL 1.16's own GRPOTrainer code.

For every `multi_objective_aggregation` x `scale_rewards`, a real `trl.GRPOTrainer` (the tiny random Qwen2 LM
of the `tiny_checkpoint` fixture, loaded by path, on CPU) runs its own `_generate_and_score_completions` on
one batch: it generates text completions with the LM, calls three weighted reward functions that return
prescribed values (floats, NaN and None, looked up by a `row` dataset column, so they do not depend on what
was generated), and computes the advantages and the `reward`, `reward_std` and `frac_reward_zero_std`
metrics with its own code. Our `group_advantages` / `reward_metrics` get the same `(N, R)` rewards, and an
`ImageGRPOTrainer` runs its own rollout step on the same prescribed rewards (images in place of text); both
must give TRL's advantages and TRL's logged metrics, and the rollout records' `reward` must be the weighted
raw reward TRL averages.
"""

import json
import math

import pytest
import torch
from conftest import grpo_args
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from rlhf_img import ImageGRPOTrainer, load_policy
from rlhf_img.advantages import group_advantages, reward_metrics
from rlhf_img.rewards.compose import RewardFunction
from rlhf_img.trainer import group_advantages as group_advantages_from_trainer

NAN = float("nan")
G = 4  # num_generations
WEIGHTS = (1.0, 0.5, -2.0)

# Three rewards x 16 rows (4 groups of 4); None and NaN are both "no score".
MIXED = [
    # group 0: all scored, some single rewards missing
    (0.1, 1.0, 0.2),
    (0.7, None, 0.2),
    (0.3, 3.0, 0.5),
    (0.9, 2.0, NAN),
    # group 1: one row no reward scored, another scored by one reward only
    (0.4, 0.5, 0.1),
    (None, None, NAN),
    (NAN, 2.5, NAN),
    (0.2, 0.0, 0.3),
    # group 2: the same rewards on every row (zero group std)
    (0.6, 1.0, 0.25),
    (0.6, 1.0, 0.25),
    (0.6, 1.0, 0.25),
    (0.6, 1.0, 0.25),
    # group 3: no row scored
    (None, None, None),
    (NAN, None, NAN),
    (None, NAN, None),
    (NAN, NAN, NAN),
]
_generator = torch.Generator().manual_seed(0)
SCALES = torch.tensor([20.0, 0.3, 1e-3])  # PickScore-like, cosine-like, a near-constant reward
RANDOM = [tuple(v) for v in (torch.rand(16, 3, generator=_generator) * SCALES).tolist()]
CONSTANT = [(0.5, 2.0, 1.0)] * 16  # zero std everywhere, in groups and over the batch
UNSCORED = [(None, NAN, None)] * 16  # the no-score run: nothing scored
CASES = {"mixed": MIXED, "random": RANDOM, "constant": CONSTANT, "unscored": UNSCORED}
COMBINATIONS = [
    (aggregation, scale)
    for aggregation in ("sum_then_normalize", "normalize_then_sum")
    for scale in ("group", "batch", "none")
]
METRICS = ("reward", "reward_std", "frac_reward_zero_std")


def _reward_functions(table, style):
    """One function per reward column returning `table[row][k]` for each row (TRL's or our calling style)."""
    functions = []
    for k in range(len(WEIGHTS)):
        if style == "trl":

            def function(prompts, completions, row, k=k, **kwargs):
                return [table[r][k] for r in row]
        else:

            def function(prompts, images, row, k=k, **kwargs):
                return [table[r][k] for r in row]

        function.__name__ = f"r{k}"
        functions.append(function)
    return functions


def _as_tensor(table):
    return torch.tensor([[NAN if v is None else v for v in row] for row in table], dtype=torch.float32)


def _inputs(n):
    return [{"prompt": f"prompt {r // G}", "row": r} for r in range(n)]


def _trl_rollout(checkpoint, tmp_path, aggregation, scale, table):
    """TRL's own rollout step on prescribed rewards: (advantages (N,), {metric: value})."""
    args = GRPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=len(table),
        num_generations=G,
        max_completion_length=3,
        beta=0.0,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        reward_weights=list(WEIGHTS),
        multi_objective_aggregation=aggregation,
        scale_rewards=scale,
        seed=0,
    )
    dataset = Dataset.from_dict({"prompt": ["p"] * G, "row": list(range(G))})
    trainer = GRPOTrainer(
        model=checkpoint, reward_funcs=_reward_functions(table, "trl"), args=args, train_dataset=dataset
    )
    assert trainer.multi_objective_aggregation == aggregation and trainer.scale_rewards == scale
    trainer.model.train()  # "train" mode: num_generations, metrics under _metrics["train"]
    output = trainer._generate_and_score_completions(_inputs(len(table)))
    return output["advantages"].detach().cpu(), {key: trainer._metrics["train"][key][-1] for key in METRICS}


def _assert_advantages_close(ours, theirs):
    scale = max(1.0, theirs.abs().max().item())  # advantages divide by std + 1e-4 and can reach ~1e4
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * scale)


def _assert_metrics_equal(ours, theirs):
    for key in METRICS:
        if math.isnan(theirs[key]):
            assert math.isnan(ours[key]), (key, ours[key])
        else:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6 * max(1.0, abs(theirs[key]))), key


def _weighted_raw(row):
    """TRL's logged per-row reward in float64: the weighted sum of the scored rewards, None when none scored."""
    scored = [(v, w) for v, w in zip(row, WEIGHTS) if v is not None and not math.isnan(v)]
    return sum(v * w for v, w in scored) if scored else None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("aggregation, scale", COMBINATIONS)
def test_advantages_and_logged_rewards_match_trl(tmp_path, tiny_checkpoint, aggregation, scale):
    assert group_advantages_from_trainer is group_advantages  # still importable from rlhf_img.trainer
    policy = load_policy(tiny_checkpoint, "causal_vq")
    for case, table in CASES.items():
        trl_advantages, trl_metrics = _trl_rollout(tiny_checkpoint, tmp_path / case, aggregation, scale, table)
        if case == "unscored":
            assert math.isnan(trl_metrics["reward"]) and not trl_advantages.any()

        # the function, on the same (N, R) rewards
        result = group_advantages(_as_tensor(table), torch.tensor(WEIGHTS), G, scale, aggregation)
        _assert_advantages_close(result.advantages, trl_advantages)
        _assert_metrics_equal(reward_metrics(result), trl_metrics)

        # the trainer's rollout step, on the same prescribed rewards: dashboard metrics and rollout records
        rewards = [RewardFunction(f, f.__name__, weight=w) for f, w in zip(_reward_functions(table, "ours"), WEIGHTS)]
        args = grpo_args(
            tmp_path / case,
            per_device_train_batch_size=len(table),
            num_generations=G,
            multi_objective_aggregation=aggregation,
            scale_rewards=scale,
            save_rollouts=True,
            no_score_patience=0,
        )  # the 'unscored' case is all-NaN on purpose: warn, don't stop
        dataset = Dataset.from_dict({"prompt": ["p"] * G, "row": list(range(G))})
        trainer = ImageGRPOTrainer(policy, args, dataset, reward_funcs=rewards)
        trainer.model.train()
        output = trainer._generate_and_score_completions(_inputs(len(table)))
        _assert_advantages_close(output["advantages"].detach().cpu(), trl_advantages)
        _assert_metrics_equal({key: trainer._metrics["train"][key][-1] for key in METRICS}, trl_metrics)
        records = [json.loads(line) for line in (tmp_path / case / "out" / "rollouts" / "rollouts.jsonl").open()]
        assert len(records) == len(table)
        for record, row in zip(records, table):
            expected = _weighted_raw(row)
            if expected is None:
                assert record["reward"] is None
            else:
                assert record["reward"] == pytest.approx(expected, rel=1e-6, abs=1e-6 * max(1.0, abs(expected)))


def test_unknown_settings_are_errors_and_normalize_then_sum_ignores_scale_rewards():
    """An unknown aggregation (both) or scale_rewards (sum_then_normalize) is an error, as in TRL (its ValueErrors
    in `_generate_and_score_completions`); TRL's normalize_then_sum does not read scale_rewards, nor do we."""
    rewards = _as_tensor(RANDOM)
    with pytest.raises(ValueError, match="multi_objective_aggregation"):
        group_advantages(rewards, torch.tensor(WEIGHTS), G, "group", "sum")
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(rewards, torch.tensor(WEIGHTS), G, "batchwise", "sum_then_normalize")
    reference = group_advantages(rewards, torch.tensor(WEIGHTS), G, "group", "normalize_then_sum")
    for scale in ("batch", "none", "anything"):
        result = group_advantages(rewards, torch.tensor(WEIGHTS), G, scale, "normalize_then_sum")
        assert torch.equal(result.advantages, reference.advantages)
        assert torch.equal(result.is_std_zero, reference.is_std_zero)


def test_logged_reward_is_the_weighted_raw_reward_with_per_reward_normalisation():
    """`normalize: true` rescales a reward for the advantages only; the logged reward stays the weighted raw
    sum (TRL's `reward` for these reward functions), not a batch z-score with mean ~0."""
    rewards = _as_tensor(MIXED)
    plain = group_advantages(rewards, torch.tensor(WEIGHTS), G, "group", "sum_then_normalize")
    normalized = group_advantages(
        rewards, torch.tensor(WEIGHTS), G, "group", "sum_then_normalize", torch.tensor([True, False, True])
    )
    torch.testing.assert_close(normalized.rewards, plain.rewards, equal_nan=True, rtol=0, atol=0)
    expected = torch.tensor([NAN if (v := _weighted_raw(row)) is None else v for row in MIXED], dtype=torch.float64)
    torch.testing.assert_close(plain.rewards.double(), expected, equal_nan=True, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(normalized.advantages, plain.advantages)
