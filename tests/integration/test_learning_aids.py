"""The learning aids, each a recipe key off by default: dynamic sampling refills zero-spread groups (and says
when it cannot), keep_best saves the best in-loop eval step's weights (and names it), and transformers' lr
schedules reach the run from a recipe."""

import json
import os

import pytest
import torch
from conftest import REPO, grpo_args, write_recipe
from datasets import Dataset
from peft import LoraConfig
from safetensors.torch import load_file
from transformers import TrainerCallback, get_scheduler

from rlhf_img import ImageGRPOTrainer, load_policy
from rlhf_img.advantages import zero_spread_groups
from rlhf_img.best_weights import KeepBestError
from rlhf_img.dynamic_sampling import RolloutRows, refill_zero_spread_groups
from rlhf_img.recipes import UsageError, parse_recipe

G = 4  # num_generations


def flat_or_bright(prompts, images, **kwargs):
    """1.0 for every 'flat' prompt (zero spread in its group), the image's brightness for the others."""
    return [1.0 if prompt.startswith("flat") else image.mean().item() for prompt, image in zip(prompts, images)]


def rollout(tmp_path, checkpoint, prompts, dataset_prompts, **overrides):
    """One training rollout step on groups of `prompts` (G rows each): (output, trainer's metrics, records)."""
    args = grpo_args(
        tmp_path, per_device_train_batch_size=len(prompts) * G, num_generations=G, save_rollouts=True, **overrides
    )
    trainer = ImageGRPOTrainer(
        load_policy(checkpoint, "causal_vq"),
        args,
        Dataset.from_dict({"prompt": dataset_prompts}),
        reward_funcs=[flat_or_bright],
    )
    trainer.model.train()
    output = trainer._generate_and_score_completions([{"prompt": p} for p in prompts for _ in range(G)])
    records = [json.loads(line) for line in (tmp_path / "out" / "rollouts" / "rollouts.jsonl").open()]
    return output, {key: values[-1] for key, values in trainer._metrics["train"].items()}, records


@pytest.mark.timeout(120)
def test_dynamic_sampling_refills_zero_spread_groups_and_reports_the_drops(tmp_path, tiny_checkpoint):
    dataset = ["flat 0", "bright 0", "bright 1", "bright 2", "bright 3", "bright 4"]
    batch = ["flat 0", "bright 0"]  # group 0: zero spread; group 1: brightness varies
    plain, plain_metrics, _ = rollout(tmp_path / "off", tiny_checkpoint, batch, dataset)
    assert not plain["advantages"][:G].any() and plain_metrics["frac_reward_zero_std"] == 0.5
    assert not any(key.startswith("dynamic_sampling/") for key in plain_metrics)  # off: nothing new logged

    output, metrics, records = rollout(
        tmp_path / "on", tiny_checkpoint, batch, dataset, dynamic_sampling=True, max_resample_rounds=3
    )
    assert metrics["dynamic_sampling/dropped_groups"] >= 1 and metrics["dynamic_sampling/unfilled_groups"] == 0
    assert 1 <= metrics["dynamic_sampling/resample_rounds"] <= 3
    assert metrics["frac_reward_zero_std"] == 0.0  # `reward` & co describe the trained batch
    assert metrics["dynamic_sampling/reward_before_refill"] == pytest.approx(plain_metrics["reward"])
    # the trained batch: the flat group was replaced by a group of one new prompt, and every group has spread
    prompts = [record["prompt"] for record in records]
    assert len(prompts) == 2 * G and prompts[G:] == ["bright 0"] * G
    assert prompts[0].startswith("bright") and len(set(prompts[:G])) == 1
    for group in range(2):
        rewards = [record["reward"] for record in records[group * G : (group + 1) * G]]
        assert max(rewards) - min(rewards) > 1e-4
        assert output["advantages"][group * G : (group + 1) * G].abs().max() > 0.1
    # the group that had spread is untouched: same images, rewards and advantages as with the key off
    assert torch.equal(output["completion_ids"][G:], plain["completion_ids"][G:])
    assert torch.equal(output["advantages"][G:], plain["advantages"][G:])
    assert not torch.equal(output["completion_ids"][:G], plain["completion_ids"][:G])
    assert output["prompt_ids"].size(0) == output["completion_ids"].size(0) == 2 * G


@pytest.mark.timeout(120)
def test_dynamic_sampling_keeps_groups_it_cannot_fill_and_counts_them(tmp_path, tiny_checkpoint):
    output, metrics, _ = rollout(
        tmp_path,
        tiny_checkpoint,
        ["flat 0", "flat 1"],
        ["flat 0", "flat 1", "flat 2"],
        dynamic_sampling=True,
        max_resample_rounds=2,
    )
    assert metrics["dynamic_sampling/resample_rounds"] == 2
    assert metrics["dynamic_sampling/dropped_groups"] == 4  # both groups, in each of the two rounds
    assert metrics["dynamic_sampling/unfilled_groups"] == 2  # the last candidates stay: the batch is never short
    assert output["completion_ids"].size(0) == 2 * G and not output["advantages"].any()


def test_zero_spread_groups_and_an_unscored_batch_left_to_the_guards():
    nan = float("nan")
    rewards = torch.tensor(
        [
            [0.5, 1.0],
            [0.5, 1.0],  # equal totals
            [0.5, nan],
            [nan, 0.5],  # equal totals, from different rewards
            [0.2, 1.0],
            [0.3, 1.0],  # spread
            [0.9, 0.0],
            [nan, nan],
        ]
    )  # one scored image: nothing to rank
    assert zero_spread_groups(rewards, torch.tensor([1.0, 1.0]), 2).tolist() == [True, True, False, True]
    # the weighted total decides (TRL's nansum): weights 1, 2 give group 1 the totals 0.5 and 1.0
    assert zero_spread_groups(rewards, torch.tensor([1.0, 2.0]), 2).tolist() == [True, False, False, True]

    def never(*args):
        raise AssertionError("an unscored batch must not be resampled")

    rows = RolloutRows(
        ["p"] * 4, {}, torch.zeros(4, 3, dtype=torch.long), None, torch.zeros(4, 3, 2, 2), torch.full((4, 1), nan)
    )
    metrics = refill_zero_spread_groups(rows, ["p"], never, never, never, torch.ones(1), 2, 3, 0, 0, 0)
    assert metrics["dynamic_sampling/resample_rounds"] == 0 and metrics["dynamic_sampling/unfilled_groups"] == 2


@pytest.mark.timeout(120)
def test_dynamic_sampling_trains_through_trl_buffering(tmp_path, tiny_checkpoint):
    """steps_per_generation 2 x gradient accumulation 2 x num_iterations 2: the refilled generation batch is what
    TRL splits and reuses; every logged step trained on groups with spread."""
    args = grpo_args(
        tmp_path,
        per_device_train_batch_size=8,
        num_generations=G,
        max_steps=2,
        steps_per_generation=2,
        gradient_accumulation_steps=2,
        num_iterations=2,
        learning_rate=1e-2,
        dynamic_sampling=True,
    )
    dataset = Dataset.from_dict({"prompt": ["flat 0", "flat 1", "bright 0", "bright 1", "bright 2", "bright 3"]})
    trainer = ImageGRPOTrainer(load_policy(tiny_checkpoint, "causal_vq"), args, dataset, reward_funcs=[flat_or_bright])
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(steps) == 2 and all(entry["grad_norm"] > 0 for entry in steps)
    # one generation batch (16 rows per step x 2 steps per generation... reused for num_iterations) per 2 steps
    rollouts = [entry for entry in steps if "dynamic_sampling/dropped_groups" in entry]
    assert len(rollouts) == 1 and rollouts[0]["dynamic_sampling/dropped_groups"] >= 1  # a 'flat' prompt was drawn
    assert rollouts[0]["dynamic_sampling/unfilled_groups"] == 0 and rollouts[0]["frac_reward_zero_std"] == 0


def scripted_eval_reward(eval_rows: int, values: list[float]):
    """Brightness on training batches; on the in-loop eval's batch (`eval_rows` images), the next scripted value."""
    remaining = list(values)

    def scripted(prompts, images, **kwargs):
        if len(prompts) == eval_rows:
            return [remaining.pop(0)] * len(prompts)
        return images.mean(dim=(1, 2, 3)).tolist()

    return scripted


class WeightsAtEachStep(TrainerCallback):
    """The trainable weights after each optimizer step (runs before the in-loop eval of that step)."""

    def __init__(self):
        self.trainer, self.weights = None, {}

    def on_step_end(self, args, state, control, **kwargs):
        self.weights[state.global_step] = {
            name: p.detach().clone() for name, p in self.trainer.model.named_parameters() if p.requires_grad
        }


def train_keeping_best(tmp_path, checkpoint, values, use_peft, **overrides):
    eval_prompts = tmp_path / "eval_prompts.txt"
    eval_prompts.write_text("a red circle\na blue square\na green triangle\n")
    args = grpo_args(
        tmp_path,
        max_steps=len(values) - 1,
        learning_rate=1e-2,
        eval_every=1,
        eval_prompts=str(eval_prompts),
        eval_images_per_prompt=2,
        keep_best=True,
        **overrides,
    )
    recorder = WeightsAtEachStep()
    peft_config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear") if use_peft else None
    trainer = ImageGRPOTrainer(
        load_policy(checkpoint, "causal_vq"),
        args,
        Dataset.from_dict({"prompt": ["a red circle", "a blue square"]}),
        reward_funcs=[scripted_eval_reward(3 * 2, values)],
        peft_config=peft_config,
        callbacks=[recorder],
    )
    recorder.trainer = trainer
    trainer.train()
    trainer.save_model(args.output_dir)  # what `rlhf-img train` does next
    return trainer, recorder.weights


def assert_model_holds(trainer, expected):
    trainable = {name: p for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable.keys() == expected.keys()
    for name, p in trainable.items():
        assert torch.equal(p, expected[name]), name


@pytest.mark.timeout(180)
def test_keep_best_saves_the_lora_adapter_of_the_best_eval_step_and_names_it(tmp_path, tiny_checkpoint, capsys):
    # in-loop evals at steps 0..4; the peak at step 2, tied at step 4 (a tie keeps the earlier step)
    trainer, weights = train_keeping_best(
        tmp_path, tiny_checkpoint, [0.2, 0.5, 0.9, 0.4, 0.9], use_peft=True, lr_scheduler_type="cosine", warmup_steps=1
    )
    assert not all(torch.equal(weights[2][name], weights[4][name]) for name in weights[2])  # the run moved on
    assert_model_holds(trainer, weights[2])
    logged = {entry["step"]: entry["eval_reward"] for entry in trainer.state.log_history if "eval_reward" in entry}
    best = json.loads((tmp_path / "out" / "best_step.json").read_text())
    assert (best["metric"], best["best_step"], best["best_value"], best["last_step"]) == (
        "eval_reward",
        2,
        logged[2],
        4,
    )
    assert best["evals"] == [{"step": step, "value": value} for step, value in logged.items()]
    assert (trainer.state.best_global_step, trainer.state.best_metric) == (2, logged[2])
    assert "keep_best: the weights of step 2 (eval_reward 0.9" in capsys.readouterr().out
    # the written adapter is step 2's (peft's file names drop the adapter name)
    saved = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert len(saved) == len(weights[2])
    for name, tensor in weights[2].items():
        assert torch.equal(saved[name.replace(".default", "")], tensor), name

    # the lr schedule of the recipe key: one warmup step, then cosine decay to 0 at max_steps; each logged
    # learning_rate is the one its step used (0 during warmup, 1e-2, 7.5e-3, 2.5e-3)
    logged = [entry["learning_rate"] for entry in trainer.state.log_history if "loss" in entry]
    optimizer = torch.optim.SGD([torch.zeros(1)], lr=1e-2)
    reference = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=4)
    expected = []
    for _ in range(4):
        expected.append(reference.get_last_lr()[0])
        optimizer.step()
        reference.step()
    assert logged == pytest.approx(expected) and logged[1] == pytest.approx(1e-2)
    assert logged[1] > logged[2] > logged[3] > 0


@pytest.mark.timeout(180)
def test_keep_best_under_full_finetuning_restores_every_trained_weight(tmp_path, tiny_checkpoint):
    # best_metric_mode min: the lowest reading (step 1) wins
    trainer, weights = train_keeping_best(
        tmp_path, tiny_checkpoint, [0.5, 0.1, 0.3], use_peft=False, best_metric_mode="min"
    )
    assert_model_holds(trainer, weights[1])
    assert not all(torch.equal(weights[1][name], weights[2][name]) for name in weights[1])
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert saved.keys() == weights[1].keys()
    assert all(torch.equal(saved[name], tensor) for name, tensor in weights[1].items())
    assert json.loads((tmp_path / "out" / "best_step.json").read_text())["best_step"] == 1


def test_learning_aid_keys_are_off_by_default_and_checked(tmp_path, tiny_checkpoint):
    args = grpo_args(tmp_path)
    assert (args.dynamic_sampling, args.keep_best, args.best_metric) == (False, False, None)
    for overrides, message in [
        (dict(max_resample_rounds=0), "max_resample_rounds must be an int >= 1"),
        (dict(keep_best=True), "keep_best needs the in-loop eval"),
        (dict(best_metric="reward"), "best_metric must be an in-loop eval key"),
        (dict(best_metric_mode="highest"), "best_metric_mode must be 'max' or 'min'"),
    ]:
        with pytest.raises(ValueError, match=message):
            grpo_args(tmp_path, **overrides)
    assert grpo_args(tmp_path, best_metric="eval/geneval/overall").best_metric == "eval_geneval/overall"

    # a metric the in-loop eval does not log: refused when the trainer is built, naming what it does log
    policy = load_policy(tiny_checkpoint, "causal_vq")
    args = grpo_args(
        tmp_path,
        eval_every=1,
        eval_prompts="shapes-held-out",
        eval_max_prompts=2,
        keep_best=True,
        best_metric="eval_rewards/clip/mean",
    )
    with pytest.raises(
        KeepBestError, match="logs eval_reward, eval_rewards/flat_or_bright/mean, .*eval_geneval/overall"
    ):
        ImageGRPOTrainer(policy, args, Dataset.from_dict({"prompt": ["p"]}), reward_funcs=[flat_or_bright])
    iterable = Dataset.from_dict({"prompt": ["p"] * 8}).to_iterable_dataset()
    with pytest.raises(ValueError, match="dynamic_sampling .* map-style dataset"):
        ImageGRPOTrainer(policy, grpo_args(tmp_path, dynamic_sampling=True), iterable, reward_funcs=[flat_or_bright])


def test_recipes_reach_the_new_keys_and_transformers_lr_schedules(tmp_path):
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        dynamic_sampling=True,
        max_resample_rounds=2,
        keep_best=True,
        best_metric="eval/geneval/overall",
        best_metric_tolerance=0.045,
        eval_every=25,
        eval_prompts="shapes-held-out",
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        warmup_steps=0.1,
        learning_rate=7e-4,
        max_steps=100,
    )
    args = parse_recipe(recipe, [])[0]
    assert (args.dynamic_sampling, args.max_resample_rounds, args.keep_best) == (True, 2, True)
    assert (args.best_metric, args.best_metric_tolerance) == ("eval_geneval/overall", 0.045)
    assert parse_recipe(recipe, ["--best_metric_tolerance", "0.09"])[0].best_metric_tolerance == 0.09
    assert (args.lr_scheduler_type, args.lr_scheduler_kwargs) == ("cosine_with_min_lr", {"min_lr_rate": 0.1})
    assert args.get_warmup_steps(100) == 10  # transformers 5: a warmup_steps below 1 is a ratio (no warmup_ratio)
    with pytest.raises(UsageError, match="max_resample_rounds must be an int >= 1"):
        parse_recipe(recipe, ["--max_resample_rounds", "0"])
    with pytest.raises(UsageError, match="best_metric_tolerance must be a number >= 0"):
        parse_recipe(recipe, ["--best_metric_tolerance", "-1"])


def _shapes_rollout(tmp_path, rows, object_credit, **extra):
    from rlhf_img.rewards.shapes_geneval import ShapesGenEval

    args = grpo_args(
        tmp_path, per_device_train_batch_size=len(rows) * 8, num_generations=8, object_credit=object_credit, **extra
    )
    trainer = ImageGRPOTrainer(
        load_policy(os.path.join(REPO, "checkpoints", "shapes-tiny")), args, Dataset.from_list(rows), [ShapesGenEval()]
    )
    trainer.model.train()
    output = trainer._generate_and_score_completions([row for row in rows for _ in range(8)])
    return trainer, output, {key: values[-1] for key, values in trainer._metrics["train"].items()}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scale_rewards", ["group", "none"])
def test_object_credit_gives_each_clause_its_own_advantage_inside_its_boxes(tmp_path, scale_rewards):
    """Under `scale_rewards: none` the clause credits are only centred, as the image advantages are."""
    from rlhf_img.object_credit import clause_advantages
    from rlhf_img.worlds import shapes

    rows = [row for row in shapes.split_prompts()[0] if row["tag"] == "color_attr"][:2]
    _, plain, plain_metrics = _shapes_rollout(tmp_path / "off", rows, 0.0, scale_rewards=scale_rewards)
    trainer, output, metrics = _shapes_rollout(tmp_path / "on", rows, 1.0, scale_rewards=scale_rewards)
    assert plain["advantages"].shape == (16,) and "object_credit/box_share" not in plain_metrics
    assert torch.equal(output["completion_ids"], plain["completion_ids"])  # the same rollouts, scored per token
    advantages = output["advantages"]
    assert advantages.shape == output["completion_ids"].shape == (16, 64)
    assert 0.05 < metrics["object_credit/box_share"] < 0.5

    # recompute from the reward's own clause judgements: inside a single clause's boxes (beta 1) a token's
    # advantage is that clause's credit centred in its group and scaled as the image's, outside every box the image's
    images = trainer.policy.decode(output["completion_ids"])
    columns = {key: [row[key] for row in rows for _ in range(8)] for key in rows[0] if key != "prompt"}
    objects = trainer.image_rewards[0].fn.object_credits(
        [r["prompt"] for r in rows for _ in range(8)], images, **columns
    )
    per_clause = clause_advantages([[o.credit for o in items] for items in objects], 8, scale_rewards)
    checked_inside = checked_outside = 0
    for i, items in enumerate(objects):
        for y in range(8):
            for x in range(8):  # the token's pixels: [4x, 4x + 4) x [4y, 4y + 4)
                touched = {
                    k
                    for k, item in enumerate(items)
                    for x1, y1, x2, y2 in item.boxes
                    if x1 < 4 * x + 4 and x2 > 4 * x and y1 < 4 * y + 4 and y2 > 4 * y
                }
                within = {
                    k
                    for k, item in enumerate(items)
                    for x1, y1, x2, y2 in item.boxes
                    if x1 <= 4 * x and x2 >= 4 * x + 4 and y1 <= 4 * y and y2 >= 4 * y + 4
                }
                if not touched:
                    assert advantages[i, 8 * y + x].item() == pytest.approx(plain["advantages"][i].item(), abs=1e-5)
                    checked_outside += 1
                elif len(touched) == 1 and touched == within:
                    assert advantages[i, 8 * y + x].item() == pytest.approx(per_clause[i][touched.pop()], abs=1e-4)
                    checked_inside += 1
    assert checked_inside > 10 and checked_outside > 500


def test_object_credit_is_refused_without_a_reward_that_locates_clauses(tmp_path, tiny_checkpoint):
    from rlhf_img.object_credit import ObjectCreditError

    with pytest.raises(ObjectCreditError, match="object_credit needs a reward that says where each clause"):
        ImageGRPOTrainer(
            load_policy(tiny_checkpoint, "causal_vq"),
            grpo_args(tmp_path, object_credit=0.5),
            Dataset.from_dict({"prompt": ["a"]}),
            reward_funcs=[flat_or_bright],
        )
    with pytest.raises(ValueError, match=r"object_credit must be a number in \[0, 1\]"):
        grpo_args(tmp_path, object_credit=1.5)


def test_a_recipe_with_object_credit_but_no_locating_reward_stops_in_one_line(tmp_path, capsys):
    from rlhf_img.cli import main

    code = main(
        [
            "train",
            os.path.join(REPO, "recipes", "shapes-grpo.yaml"),
            "--rewards",
            '[{"name": "jpeg_compressibility"}]',
            "--output_dir",
            str(tmp_path / "out"),
            "--eval_every",
            "0",
            "--keep_best",
            "false",
        ]
    )
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlhf-img")]  # not the bars
    assert code == 2 and len(said) == 1
    assert said[0].startswith("rlhf-img: error: object_credit needs a reward that says where each clause was judged")
    assert not (tmp_path / "out").exists()  # nothing written


class LeftHalfCredit:
    """A reward that locates one clause: the image's brightness is its score, and the clause is judged on the left
    half of the image with the left half's brightness as its credit (so clause and image advantages differ)."""

    __name__ = "left_half_credit"

    def __call__(self, prompts, images, **columns):
        return images.mean(dim=(1, 2, 3)).tolist()

    def object_credits(self, prompts, images, **columns):
        from rlhf_img.geneval_rules import ObjectCredit

        width, height = images.shape[-1], images.shape[-2]
        left = images[..., : width // 2].mean(dim=(1, 2, 3)).tolist()
        return [[ObjectCredit(credit, [(0.0, 0.0, width / 2, float(height))])] for credit in left]


@pytest.mark.timeout(120)
def test_object_credit_reaches_infinitys_bits_scale_by_scale(tmp_path):
    """Infinity (bits over scales) takes object_credit: the bits of the finest scale's tokens inside the clause's
    box learn from the mix, those outside from the image's advantage; a coarse token straddling the box edge
    gets its cell's share of each."""
    from rlhf_img.families import FAMILIES

    tiny = FAMILIES["infinity"].stand_in(str(tmp_path / "stand-in"))
    policy = load_policy(tiny.checkpoint, "infinity", **tiny.load_kwargs)
    args = grpo_args(tmp_path, per_device_train_batch_size=2 * G, num_generations=G, object_credit=0.5)
    trainer = ImageGRPOTrainer(policy, args, Dataset.from_dict({"prompt": ["a", "b"]}), reward_funcs=[LeftHalfCredit()])
    trainer.model.train()
    output = trainer._generate_and_score_completions([{"prompt": p} for p in ("a", "b") for _ in range(G)])
    advantages = output["advantages"]
    assert advantages.shape == (2 * G, policy.num_actions)
    box_share = trainer._metrics["train"]["object_credit/box_share"][-1]
    assert box_share == pytest.approx(0.5)  # the left half
    scales = policy.codes.split(advantages)
    h, w = policy.codes.grids[-1]
    finest = scales[-1][..., 0]  # (B, h, w): one value per token
    outside, inside = finest[:, :, w // 2 :], finest[:, :, : w // 2]
    assert torch.equal(outside, outside[:, :1, :1].expand_as(outside))  # the image's advantage, everywhere right
    assert (inside - outside[:, :, :1]).abs().max() > 1e-3  # the clause's own advantage mixed in on the left
    coarsest = scales[0][:, 0, 0, 0]  # one cell over the whole image: half inside the box
    torch.testing.assert_close(coarsest, (inside.mean(dim=(1, 2)) + outside.mean(dim=(1, 2))) / 2)
