"""`rlhf-img dpo`: DPO on images, offline and online, over shapes-tiny and every registered family's stand-in."""

import json
import math
import os

import pytest
import torch
import yaml
from conftest import REPO
from datasets import Dataset
from families import toy_family  # noqa: F401  (registers the `palette` family, as the contract suite does)
from huggingface_hub import ModelCard
from numerics import assert_close_scaled
from peft import LoraConfig
from PIL import Image

from rlhf_img import Sampling, load_policy
from rlhf_img.families import FAMILIES, detect_family
from rlhf_img.images import to_pil
from rlhf_img.rewards import RewardFunction, RewardSet
from rlhf_img.sampling.generators import SampleGenerators
from rlhf_img.upstream.dpo import ImageDPOConfig, ImageDPOTrainer, dpo_losses, main
from rlhf_img.upstream.dpo_data import PreferencePairs, collate_prompts, load_image, load_pair_table, rank_groups
from rlhf_img.upstream.likelihood import action_logprobs

SHAPES_TINY = os.path.join(REPO, "checkpoints", "shapes-tiny")
STAND_INS = sorted(name for name, family in FAMILIES.items() if family.stand_in is not None)
PROMPTS = ["a red circle", "two blue squares left of a green triangle", "x", "a photo of a square"]


def _dpo_args(tmp_path, **overrides) -> ImageDPOConfig:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=len(PROMPTS),
        max_steps=1,
        learning_rate=5e-2,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    return ImageDPOConfig(**{**defaults, **overrides})


def _brightness(prompts, images, **columns):
    return images.mean(dim=(1, 2, 3)).tolist()


# ------------------------------------------------------------------------------------------------ losses
def test_sigmoid_and_ipo_losses_match_their_formulas_on_hand_computed_numbers():
    chosen, rejected = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -18.0])
    ref_chosen, ref_rejected = torch.tensor([-11.0, -20.0]), torch.tensor([-11.0, -19.0])
    # log-ratios: chosen [1, 0], rejected [-1, 1] -> delta [2, -1]; beta 0.5, T = 4 actions
    sigmoid, chosen_rewards, rejected_rewards = dpo_losses(
        chosen, rejected, ref_chosen, ref_rejected, 0.5, "sigmoid", 4
    )
    expected = torch.tensor([math.log1p(math.exp(-1.0)), math.log1p(math.exp(0.5))])  # -log sigmoid(0.5 * delta)
    assert_close_scaled(sigmoid, expected, relative=1e-6)
    ipo = dpo_losses(chosen, rejected, ref_chosen, ref_rejected, 0.5, "ipo", 4)[0]
    assert_close_scaled(ipo, torch.tensor([(2 / 4 - 1) ** 2, (-1 / 4 - 1) ** 2]), relative=1e-6)  # (delta/T - 1/2b)^2
    assert_close_scaled(chosen_rewards, torch.tensor([0.5, 0.0]), relative=1e-6)  # TRL's beta * logratio
    assert_close_scaled(rejected_rewards, torch.tensor([-0.5, 0.5]), relative=1e-6)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_losses(chosen, rejected, ref_chosen, ref_rejected, 0.5, "hinge", 4)


def test_the_loss_is_log_2_and_the_ipo_loss_its_target_when_the_policy_is_the_reference():
    logps = torch.tensor([-30.0, -7.5])
    sigmoid = dpo_losses(logps, logps - 3, logps, logps - 3, 0.1, "sigmoid", 16)[0]
    ipo = dpo_losses(logps, logps - 3, logps, logps - 3, 0.1, "ipo", 16)[0]
    assert_close_scaled(sigmoid, torch.full((2,), math.log(2.0)), relative=1e-6)
    assert_close_scaled(ipo, torch.full((2,), (1 / 0.2) ** 2), relative=1e-6)


# --------------------------------------------------------------------------------------------- ranking
def test_groups_pair_their_best_and_worst_scored_samples_and_skip_ties_and_unscored():
    nan = float("nan")
    rewards = RewardSet.build([_brightness])  # one reward of weight 1 (weights: the next test)
    scores = torch.tensor(
        [
            [0.2],
            [0.9],
            [0.5],  # group 0: best 1, worst 0
            [0.4],
            [0.4],
            [0.4],  # group 1: no spread
            [nan],
            [0.1],
            [nan],  # group 2: one scored sample only
            [nan],
            [0.7],
            [0.3],
        ]
    )  # group 3: the unscored sample is never picked
    ranked = rank_groups(scores, rewards, 3)
    assert ranked.valid.tolist() == [True, False, False, True]
    assert ranked.best[ranked.valid].tolist() == [1, 10] and ranked.worst[ranked.valid].tolist() == [0, 11]
    assert torch.isnan(ranked.totals[6]) and float(ranked.totals[1]) == pytest.approx(0.9)


def test_ranking_combines_weights_and_normalized_rewards_as_grpo_does():
    rewards = RewardSet.build(
        [
            RewardFunction(_brightness, "first", weight=1.0),
            RewardFunction(_brightness, "second", weight=2.0, normalize=True),
        ]
    )
    # raw: sample 0 wins on `first` (+0.3), sample 1 on `second` (+1000); `second` is z-scored over the batch first,
    # so its 1000-point lead is worth about one standard deviation (x weight 2), more than 0.3 of `first`
    scores = torch.tensor([[0.3, 0.0], [0.0, 1000.0], [0.0, 0.0], [0.0, 0.0]])
    ranked = rank_groups(scores, rewards, 2)
    assert ranked.best.tolist() == [1, 2] and ranked.valid.tolist() == [True, False]
    assert_close_scaled(ranked.totals, torch.tensor([0.3, 2000.0, 0.0, 0.0]))  # logged: weighted raw, as GRPO


# ------------------------------------------------------------------------------------------- families
@pytest.fixture(scope="module", params=["shapes-tiny"] + STAND_INS)
def family_case(request, tmp_path_factory):
    """(family, checkpoint, load kwargs, LoRA target modules) for shapes-tiny and each family's stand-in."""
    if request.param == "shapes-tiny":
        return "causal_vq", SHAPES_TINY, {"dtype": "float32"}, "all-linear"
    tiny = FAMILIES[request.param].stand_in(str(tmp_path_factory.mktemp(request.param) / "stand-in"))
    return request.param, tiny.checkpoint, tiny.load_kwargs, tiny.lora_target_modules


def _load(case):
    name, checkpoint, load_kwargs, _ = case
    return load_policy(checkpoint, name, **load_kwargs)


def _fixed_pairs(policy) -> Dataset:
    """Two different samples per prompt, as actions: a pair table every family can train on."""
    batch = policy.encode_prompts(PROMPTS + PROMPTS)
    with torch.no_grad():
        actions = policy.sample(policy.model, batch, Sampling(), torch.Generator().manual_seed(3)).actions
    first, second = actions.chunk(2)
    return Dataset.from_dict({"prompt": PROMPTS, "chosen": first.tolist(), "rejected": second.tolist()})


def _margins(policy, model, pairs: Dataset) -> torch.Tensor:
    """Summed log p(chosen) - log p(rejected) per pair `(P,)`."""
    batch = policy.encode_prompts(list(pairs["prompt"]))
    with torch.no_grad():
        chosen = action_logprobs(policy, model, batch, torch.tensor(pairs["chosen"])).sum(1)
        rejected = action_logprobs(policy, model, batch, torch.tensor(pairs["rejected"])).sum(1)
    return chosen - rejected


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_one_dpo_step_raises_the_margin_against_a_frozen_reference_and_reloads_as_the_family(
    family_case, tmp_path, mode
):
    name = family_case[0]
    policy = _load(family_case)
    pairs = _fixed_pairs(policy)
    before = _margins(policy, policy.model, pairs)
    base_weights = {key: value.clone() for key, value in policy.model.state_dict().items()}
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=family_case[3]) if mode == "lora" else None
    trainer = ImageDPOTrainer(policy, _dpo_args(tmp_path), pairs, peft_config=peft)
    assert (trainer.ref_model is None) == (mode == "lora")  # LoRA: the adapter-disabled policy, no copy
    trainer.train()

    first = trainer.state.log_history[0]
    # the first step is scored at the reference: policy == reference exactly, so TRL's implicit rewards are 0
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0 and first["rewards/margins"] == 0.0
    assert first["loss"] == pytest.approx(math.log(2.0), rel=1e-6)
    for key in ("rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert key in first
    after = _margins(policy, trainer.model.eval(), pairs)
    assert float((after - before).mean()) > 0.01 * float(before.abs().mean()), (before, after)

    # the reference did not move: it still scores exactly what the initial model scored
    prompts, chosen = list(pairs["prompt"]), torch.tensor(pairs["chosen"])
    reference = trainer.reference_logps(prompts, chosen, None)
    if mode == "full":
        assert all(torch.equal(base_weights[key], value) for key, value in trainer.ref_model.state_dict().items())
    fresh = _load(family_case)
    assert_close_scaled(
        reference, action_logprobs(fresh, fresh.model, fresh.encode_prompts(prompts), chosen).sum(1), relative=1e-6
    )

    out = str(tmp_path / "saved")
    trainer.save_model(out)
    assert detect_family(out) == name
    reloaded = load_policy(out, dtype="float32")
    assert type(reloaded) is type(policy)
    assert_close_scaled(_margins(reloaded, reloaded.model, pairs), after, relative=1e-4)


def test_offline_images_are_resized_cropped_and_encoded_by_the_family(family_case, tmp_path):
    name = family_case[0]
    policy = _load(family_case)
    if not hasattr(policy, "encode_images"):
        pytest.skip(f"{name}: the policy has no encode_images yet (offline image pairs need it; action pairs work)")
    height, width = policy.image_size
    with torch.no_grad():
        actions = policy.sample(
            policy.model, policy.encode_prompts(PROMPTS[:2] * 2), Sampling(), torch.Generator().manual_seed(1)
        ).actions
    images = policy.decode(actions)
    rows = []
    for index, picture in enumerate(to_pil(images)):
        # stored twice the size, so the loader must resize it back
        picture.resize((2 * width, 2 * height), Image.NEAREST).save(tmp_path / f"{index}.png")
    for index, prompt in enumerate(PROMPTS[:2]):
        rows.append({"prompt": prompt, "chosen": f"{index}.png", "rejected": f"{index + 2}.png"})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    table, base_dir = load_pair_table(str(tmp_path / "pairs.jsonl"))
    pairs = PreferencePairs(table, policy.image_size, policy.num_actions, base_dir)
    assert pairs.kind == "images" and pairs[0]["chosen"].shape == (3, height, width)

    trainer = ImageDPOTrainer(
        policy,
        _dpo_args(tmp_path, per_device_train_batch_size=2),
        pairs,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=family_case[3]),
    )
    batch = trainer._prepare_inputs(trainer.data_collator([pairs[0], pairs[1]]))
    expected = policy.encode_images(torch.stack([pairs[0]["chosen"], pairs[1]["chosen"]]))
    assert batch["chosen"].dtype == torch.long and torch.equal(batch["chosen"].cpu(), expected.cpu())
    assert batch["chosen"].shape == (2, policy.num_actions)
    trainer.train()
    assert "rewards/margins" in trainer.state.log_history[0]


def test_images_are_scaled_to_cover_the_size_then_centre_cropped(tmp_path):
    stripes = Image.new("RGB", (96, 48))
    for left, colour in ((0, (255, 0, 0)), (32, (0, 255, 0)), (64, (0, 0, 255))):
        stripes.paste(colour, (left, 0, left + 32, 48))
    stripes.save(tmp_path / "stripes.png")
    image = load_image("stripes.png", str(tmp_path), (16, 16))  # scaled to 32 x 16, the middle 16 columns kept
    assert image.shape == (3, 16, 16) and 0 <= float(image.min()) and float(image.max()) <= 1
    red, green, blue = image[:, 8, 0], image[:, 8, 8], image[:, 8, 15]  # the left, middle and right columns
    assert int(red.argmax()) == 0 and int(green.argmax()) == 1 and int(blue.argmax()) == 2


# ----------------------------------------------------------------------------------------------- online
def test_online_mode_trains_on_each_groups_brightest_vs_darkest_and_counts_groups_without_spread(tmp_path):
    def bright_unless_flat(prompts, images, **columns):  # no spread at all for the prompt "x"
        return [0.5 if prompt == "x" else value for prompt, value in zip(prompts, _brightness(prompts, images))]

    policy = load_policy(SHAPES_TINY, dtype="float32")
    dataset = Dataset.from_dict({"prompt": PROMPTS, "tag": ["t0", "t1", "t2", "t3"]})
    args = _dpo_args(tmp_path, mode="online", num_generations=4, learning_rate=1e-3)
    trainer = ImageDPOTrainer(
        policy,
        args,
        dataset,
        rewards=[bright_unless_flat],
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )
    batch = trainer._prepare_inputs(collate_prompts([dataset[i] for i in range(len(PROMPTS))]))

    # the same per-image streams, sampled independently: every image of every group
    generators = SampleGenerators.for_samples(0, "dpo", 0, range(4 * len(PROMPTS)), "cpu")
    repeated = [prompt for prompt in PROMPTS for _ in range(4)]
    with torch.no_grad():
        everything = policy.sample(policy.model, policy.encode_prompts(repeated), args.sampling, generators).actions
    brightness = torch.tensor(_brightness(None, policy.decode(everything))).view(len(PROMPTS), 4)
    expected_prompts = [prompt for prompt in PROMPTS if prompt != "x"]
    assert batch["prompt"] == expected_prompts and batch["weight"].tolist() == [1.0] * 3
    chosen = torch.tensor(_brightness(None, policy.decode(batch["chosen"]))).cpu()
    rejected = torch.tensor(_brightness(None, policy.decode(batch["rejected"]))).cpu()
    kept = [PROMPTS.index(prompt) for prompt in expected_prompts]
    assert_close_scaled(chosen, brightness[kept].max(dim=1).values)
    assert_close_scaled(rejected, brightness[kept].min(dim=1).values)
    assert bool((chosen > rejected).all())
    assert trainer._metrics["pairs/no_spread_groups"] == [1.0] and trainer.groups_without_spread == 1


def test_an_online_batch_without_any_spread_trains_nothing_and_logs_no_margin(tmp_path):
    def flat(prompts, images, **columns):
        return [1.0] * len(prompts)

    policy = load_policy(SHAPES_TINY, dtype="float32")
    trainer = ImageDPOTrainer(
        policy,
        _dpo_args(tmp_path, mode="online", num_generations=2),
        Dataset.from_dict({"prompt": PROMPTS}),
        rewards=[flat],
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )
    before = {k: v.clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
    trainer.train()
    entry = trainer.state.log_history[0]
    assert entry["loss"] == 0.0 and entry["pairs/no_spread_groups"] == len(PROMPTS) and "rewards/margins" not in entry
    assert all(torch.equal(before[k], v) for k, v in trainer.model.named_parameters() if v.requires_grad)


def test_caption_dropout_scores_its_share_of_pairs_unconditionally_the_same_way_for_a_batch_number(tmp_path):
    policy = load_policy(SHAPES_TINY, dtype="float32")
    pairs = _fixed_pairs(policy)
    trainer = ImageDPOTrainer(policy, _dpo_args(tmp_path, caption_dropout=0.3), pairs)
    kept = trainer._caption_kept(4000)
    assert abs(float((~kept).float().mean()) - 0.3) < 0.03  # 4.1 standard deviations of a 4000-draw share
    assert torch.equal(trainer._caption_kept(4000), kept)  # same batch number: same draws (resume-safe)
    trainer._generation += 1
    assert not torch.equal(trainer._caption_kept(4000), kept)
    assert ImageDPOTrainer(policy, _dpo_args(tmp_path), pairs)._caption_kept(4) is None  # off by default
    # a dropped caption means the unconditional prompt: equal to the guided scorer at scale 0 (likelihood.py)
    prompts, chosen = list(pairs["prompt"]), torch.tensor(pairs["chosen"])
    with torch.no_grad():
        dropped = trainer.sequence_logps(policy.model, prompts, chosen, torch.zeros(len(prompts), dtype=torch.bool))
        captioned = trainer.sequence_logps(policy.model, prompts, chosen, None)
        unconditional = policy.logprobs(
            policy.model, policy.encode_prompts(prompts), chosen, Sampling(cfg_mode="guided", cfg_scale=0.0)
        )[0].sum(1)
    assert_close_scaled(dropped, unconditional, relative=1e-6)
    assert float((dropped - captioned).abs().max()) > 1e-3 * float(captioned.abs().max())  # the caption matters


# ---------------------------------------------------------------------------------------- command, recipes
def _recipe_overrides(tmp_path, name: str) -> list[str]:
    return [
        "--output_dir",
        str(tmp_path / name),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--num_generations",
        "4",
        "--max_prompts",
        "8",
        "--logging_steps",
        "1",
    ]


@pytest.mark.slow  # real commands: online DPO, `dpo pairs`, offline DPO, then `rlhf-img train` (~30 s on 2 cores)
def test_shipped_recipes_run_two_steps_and_the_output_trains_with_rlhf_img_train(tmp_path, capsys):
    from rlhf_img.cli import main as cli_main

    online = os.path.join(REPO, "recipes", "shapes-dpo-online.yaml")
    offline = os.path.join(REPO, "recipes", "shapes-dpo.yaml")
    assert main([online, *_recipe_overrides(tmp_path, "online")]) == 0
    history = json.load(open(tmp_path / "online" / "trainer_state.json"))["log_history"]
    assert [entry["step"] for entry in history if "reward" in entry] == [1, 2]
    assert detect_family(str(tmp_path / "online")) == "causal_vq"
    card = ModelCard.load(tmp_path / "online" / "README.md")  # rlhf-img's model card (model_card.py)
    assert {"rlhf-img", "dpo", "causal_vq"} <= set(card.data.tags) and "## Rewards" in card.text

    pairs_dir = tmp_path / "pairs"
    assert (
        main(
            [
                "pairs",
                online,
                "--output_dir",
                str(pairs_dir),
                "--max_prompts",
                "8",
                "--num_generations",
                "4",
                "--per_device_train_batch_size",
                "8",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in open(pairs_dir / "pairs.jsonl")]
    assert rows and all(row["chosen_reward"] > row["rejected_reward"] for row in rows)
    assert all(os.path.isfile(pairs_dir / row["chosen"]) and len(row["chosen_actions"]) == 64 for row in rows)
    with open(offline) as f:
        assert yaml.safe_load(f)["mode"] == "offline"
    assert main([offline, *_recipe_overrides(tmp_path, "offline"), "--dataset", str(pairs_dir / "pairs.jsonl")]) == 0
    history = json.load(open(tmp_path / "offline" / "trainer_state.json"))["log_history"]
    assert [entry["step"] for entry in history if "rewards/margins" in entry] == [1, 2]
    assert "margin 0 (step 1)" in capsys.readouterr().out
    # the same table's PNG columns: read, resized, encoded by the VQ per batch
    assert (
        main(
            [
                offline,
                *_recipe_overrides(tmp_path, "offline-png"),
                "--dataset",
                str(pairs_dir / "pairs.jsonl"),
                "--chosen_column",
                "chosen",
                "--rejected_column",
                "rejected",
                "--max_steps",
                "1",
            ]
        )
        == 0
    )

    grpo = os.path.join(REPO, "recipes", "shapes-grpo.yaml")
    assert (
        cli_main(
            [
                "train",
                grpo,
                "--model_name_or_path",
                str(tmp_path / "offline"),
                "--output_dir",
                str(tmp_path / "grpo"),
                "--max_steps",
                "1",
                "--per_device_train_batch_size",
                "8",
                "--num_generations",
                "4",
                "--eval_every",
                "0",
                "--keep_best",
                "false",
                "--max_prompts",
                "8",
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max_stepz", "2"], "max_stepz"),
        (["--mode", "offline"], "'rewards' is read in mode 'online' only"),
        (["--rewards", "null"], "'rewards' is required"),
        (["--loss_type", "hinge"], "loss_type"),
        (["--num_generations", "1"], "num_generations"),
        (["--mode", "offline", "--rewards", "null", "--dataset", "missing-pairs.jsonl"], "missing-pairs.jsonl"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_key_or_file(tmp_path, capsys, argv, message):
    online = os.path.join(REPO, "recipes", "shapes-dpo-online.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main([online, "--output_dir", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlhf-img")]
    assert len(errors) == 1 and errors[0].startswith("rlhf-img: error: ") and message in errors[0]
    assert not os.path.exists(tmp_path / "out")


def test_help_lists_the_dpo_keys(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for key in (
        "--mode",
        "--beta",
        "--loss_type",
        "--num_generations",
        "--chosen_column",
        "--caption_dropout",
        "--lora_r",
        "--cfg_mode",
    ):
        assert key in text
