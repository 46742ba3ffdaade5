"""One reward set, built once: names, weights, normalize flags and the image-embedding capability; the trainer
takes it as it is and writes nothing into the `args` or the policy it was given."""

import copy

import pytest
import torch
from conftest import grpo_args
from datasets import Dataset
from numerics import assert_close_scaled
from peft import LoraConfig

from rlhf_img import ImageGRPOConfig, ImageGRPOTrainer, load_policy
from rlhf_img.monitors import group_diversity
from rlhf_img.rewards import RewardConfigError, RewardFunction, RewardSet


def brightness(prompts, images, **kwargs):
    return images.mean(dim=(1, 2, 3)).tolist()


def redness(prompts, images, **kwargs):
    return images[:, 0].mean(dim=(1, 2)).tolist()


class EmbeddingReward:
    """A reward exposing the image-embedding capability: embeds each image as its per-channel means."""

    def __init__(self) -> None:
        self.scored: list[torch.Tensor] = []
        self.embedded: list[torch.Tensor] = []

    def __call__(self, prompts, images, **kwargs):
        self.scored.append(images)
        return images.mean(dim=(1, 2, 3)).tolist()

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        self.embedded.append(images)
        return torch.nn.functional.normalize(images.float().mean(dim=(2, 3)) + 0.1, dim=-1)  # (B, 3)


def _dataset() -> Dataset:
    return Dataset.from_dict({"prompt": ["a red circle", "a blue square"]})


def test_reward_set_holds_names_weights_normalize_flags_and_labels():
    rewards = RewardSet.build(
        [
            {"name": "jpeg_compressibility", "weight": 0.5, "normalize": True},
            {"name": "jpeg_compressibility", "label": "jpeg_again", "weight": -2.0},
            RewardFunction(brightness, "bright", weight=3.0),
            redness,
        ]
    )
    assert rewards.names == ["jpeg_compressibility", "jpeg_again", "bright", "redness"]
    assert rewards.weights.dtype == torch.float32
    assert_close_scaled(rewards.weights, torch.tensor([0.5, -2.0, 3.0, 1.0]))
    assert rewards.normalize.tolist() == [True, False, False, False]
    assert rewards.image_embedder() is None  # no reward here embeds images
    rewards.weights.mul_(0)  # a fresh tensor each time: a caller cannot change the set
    assert_close_scaled(rewards.weights, torch.tensor([0.5, -2.0, 3.0, 1.0]))
    assert RewardSet.build(rewards) is rewards  # built once: handing it on does not rebuild (or reload) anything
    totals = rewards.weighted_totals(torch.tensor([[1.0, 1.0, float("nan"), 2.0]]))
    assert_close_scaled(totals, torch.tensor([0.5 - 2.0 + 2.0]))  # an unscored reward counts 0, as in TRL


@pytest.mark.parametrize(
    "entries",
    [
        [brightness, brightness],
        ["jpeg_compressibility", {"name": "jpeg_compressibility", "weight": 2.0}],
        [{"name": "jpeg_compressibility", "label": "bright"}, RewardFunction(brightness, "bright")],
    ],
)
def test_duplicate_reward_names_are_a_one_line_error_naming_the_duplicate(entries):
    with pytest.raises(RewardConfigError) as error:
        RewardSet.build(entries)
    message = str(error.value)
    assert "\n" not in message and "label" in message
    repeated = entries[0].__name__ if callable(entries[0]) else RewardSet.build(entries[:1]).names[0]
    assert repr(repeated) in message


def test_duplicate_names_in_the_trainer_and_the_config_are_the_same_error(tmp_path, tiny_checkpoint):
    policy = load_policy(tiny_checkpoint, "causal_vq")
    with pytest.raises(RewardConfigError, match=r"\['brightness'\] appear more than once"):
        ImageGRPOTrainer(policy, grpo_args(tmp_path), _dataset(), reward_funcs=[brightness, brightness])
    with pytest.raises(RewardConfigError, match=r"\['jpeg_compressibility'\] appear more than once"):
        ImageGRPOConfig(output_dir=str(tmp_path), rewards=["jpeg_compressibility", "jpeg_compressibility"])
    with pytest.raises(RewardConfigError, match="no rewards"):
        RewardSet([])


def test_a_reward_server_config_with_a_repeated_name_is_refused_naming_the_file(tmp_path):
    from rlhf_img.rewards.server import load_server_rewards

    config = tmp_path / "server.yaml"
    config.write_text("rewards:\n  - name: jpeg_compressibility\n  - name: jpeg_compressibility\n    weight: 2\n")
    with pytest.raises(RewardConfigError, match=r"server\.yaml: \['jpeg_compressibility'\] appear more than once"):
        load_server_rewards(str(config))


def test_building_the_trainer_leaves_args_untouched(tmp_path, tiny_checkpoint):
    args = grpo_args(tmp_path)
    before = copy.deepcopy(args.reward_weights)
    rewards = RewardSet.build(
        [RewardFunction(brightness, "bright", weight=2.0), RewardFunction(redness, "red", weight=0.1)]
    )
    trainer = ImageGRPOTrainer(load_policy(tiny_checkpoint, "causal_vq"), args, _dataset(), reward_funcs=rewards)
    assert args.reward_weights == before and before is None  # the weights live in the reward set, not in args
    assert trainer.image_rewards is rewards  # the set handed over is used as it is, not rebuilt
    assert_close_scaled(trainer.reward_weights, torch.tensor([2.0, 0.1]))  # what TRL's own code reads
    # TRL-style `reward_weights` next to the rewards' own weights: fine when they agree, one line when not
    ImageGRPOTrainer(
        load_policy(tiny_checkpoint, "causal_vq"),
        grpo_args(tmp_path, reward_weights=[2.0, 0.1]),
        _dataset(),
        reward_funcs=rewards,
    )
    with pytest.raises(ValueError, match=r"disagree with the rewards' own weights \[2\.0, 0\.1\]"):
        ImageGRPOTrainer(
            load_policy(tiny_checkpoint, "causal_vq"),
            grpo_args(tmp_path, reward_weights=[1.0, 1.0]),
            _dataset(),
            reward_funcs=rewards,
        )
    with pytest.raises(RewardConfigError, match="reward_weights"):  # in a recipe: one place for the weights
        ImageGRPOConfig(output_dir=str(tmp_path), rewards=["jpeg_compressibility"], reward_weights=[1.0])


@pytest.mark.timeout(120)
def test_lora_trainer_keeps_the_wrapped_model_and_leaves_the_policy_model_alone(tmp_path, tiny_checkpoint):
    policy = load_policy(tiny_checkpoint, "causal_vq")
    model = policy.model
    seen_at_save = []

    class RecordingPolicy(type(policy)):  # which module a family's save_pretrained is told was saved
        def save_pretrained(self, output_dir: str, model=None) -> None:
            seen_at_save.append(model)
            super().save_pretrained(output_dir, model)

    policy.__class__ = RecordingPolicy
    args = grpo_args(tmp_path, max_steps=1, learning_rate=1e-2)
    trainer = ImageGRPOTrainer(
        policy,
        args,
        _dataset(),
        reward_funcs=[brightness],
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]),
    )
    assert policy.model is model  # the trainer wrote nothing into the policy
    assert hasattr(trainer.model, "peft_config") and trainer.model.get_base_model() is model
    trainer.train()
    assert policy.model is model
    trainer.save_model(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "adapter_config.json").exists() and (tmp_path / "saved" / "causal_vq.json").exists()
    assert seen_at_save == [trainer.model]  # the family saved next to the adapter, seeing the peft model
    assert policy.model is model and type(policy) is RecordingPolicy


@pytest.mark.timeout(120)
def test_diversity_monitor_gets_embeddings_through_the_public_capability(tmp_path, tiny_checkpoint):
    reward = EmbeddingReward()
    rewards = RewardSet.build([brightness, RewardFunction(reward, "embedder")])
    assert rewards.image_embedder() == reward.embed_images  # the first reward that has the capability
    trainer = ImageGRPOTrainer(
        load_policy(tiny_checkpoint, "causal_vq"), grpo_args(tmp_path, max_steps=2), _dataset(), reward_funcs=rewards
    )
    trainer.train()
    assert len(reward.embedded) == 2 and all(e is s for e, s in zip(reward.embedded, reward.scored))  # the same batch
    logged = [
        entry["monitors/clip_diversity"] for entry in trainer.state.log_history if "monitors/clip_diversity" in entry
    ]
    assert len(logged) == 2
    expected = group_diversity(reward.embed_images(reward.scored[0]), trainer.num_generations, "cosine")
    assert logged[0] == pytest.approx(expected, rel=1e-5, abs=1e-6 * max(1.0, abs(expected)))
