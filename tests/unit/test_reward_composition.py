"""Composition of several rewards: weights, per-reward batch normalisation, labels."""

import pytest
import torch

from rlhf_img.advantages import group_advantages
from rlhf_img.rewards import RewardConfigError, RewardSpec, build_rewards


def _advantages(rewards, normalize=None, weights=(1.0, 1.0)):
    return group_advantages(
        rewards,
        torch.tensor(weights),
        4,
        "group",
        "sum_then_normalize",
        None if normalize is None else torch.tensor(normalize),
    )[0]


def test_normalized_rewards_are_invariant_to_their_scale_so_none_dominates():
    generator = torch.Generator().manual_seed(0)
    small, other = torch.rand(16, 1, generator=generator), torch.rand(16, 1, generator=generator)
    big = 1000 * small + 7  # same ranking, another scale and offset (PickScore ~ 20 next to a cosine ~ 0.3)
    normalized_small = _advantages(torch.cat([small, other], 1), [True, True])
    normalized_big = _advantages(torch.cat([big, other], 1), [True, True])
    assert torch.allclose(normalized_small, normalized_big, atol=1e-3)  # up to the std epsilon
    raw_big = _advantages(torch.cat([big, other], 1))
    only_big = _advantages(torch.cat([big, torch.zeros_like(other)], 1))
    assert torch.allclose(raw_big, only_big, atol=1e-2)  # without normalisation the big reward drowns the other
    assert not torch.allclose(normalized_big, only_big, atol=1e-1)


def test_normalization_ignores_unscored_samples():
    rewards = torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [3.0, 1.0], [5.0, 1.0]])
    advantages = _advantages(rewards, [True, False])
    assert torch.isfinite(advantages).all()


def test_reward_spec_normalize_and_label_keys():
    spec = RewardSpec.parse({"name": "jpeg_compressibility", "weight": 0.5, "normalize": True, "label": "jpeg"})
    assert (spec.normalize, spec.display_name, spec.weight) == (True, "jpeg", 0.5)
    (reward,) = build_rewards([spec])
    assert (reward.name, reward.normalize) == ("jpeg", True)
    with pytest.raises(RewardConfigError, match="normalize"):
        RewardSpec.parse({"name": "jpeg_compressibility", "normalize": "yes"})


def test_a_reward_listed_twice_needs_a_label(tmp_path):
    from rlhf_img import ImageGRPOConfig

    with pytest.raises(RewardConfigError, match="label"):
        ImageGRPOConfig(output_dir=str(tmp_path), rewards=["jpeg_compressibility", "jpeg_compressibility"])
    config = ImageGRPOConfig(
        output_dir=str(tmp_path),
        rewards=["jpeg_compressibility", {"name": "jpeg_compressibility", "label": "jpeg_again"}],
    )
    assert [s.display_name for s in config.reward_specs] == ["jpeg_compressibility", "jpeg_again"]
