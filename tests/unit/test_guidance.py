import math

import pytest
import torch

from rlhf_img.policy import Sampling
from rlhf_img.sampling.guidance import (
    guide,
    sample_actions,
    scored_logprobs,
    truncation_mask,
)


def test_guide_is_uncond_plus_scale_times_difference():
    cond, uncond = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.5, 0.5, 0.5]])
    assert torch.allclose(guide(cond, uncond, 3.0), uncond + 3.0 * (cond - uncond))
    assert guide(cond, None, 3.0) is cond
    assert guide(cond, uncond, 1.0) is cond


def test_top_k_keeps_exactly_k_largest():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 2.5]])
    keep = truncation_mask(logits, top_k=2, top_p=1.0)
    assert keep.tolist() == [[False, True, False, False, True]]


def test_top_p_keeps_smallest_prefix_reaching_mass():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    keep = truncation_mask(probs.log(), top_k=0, top_p=0.75)
    assert keep.tolist() == [[True, True, False, False]]  # 0.5 < 0.75, 0.5 + 0.3 >= 0.75
    keep = truncation_mask(probs.log(), top_k=0, top_p=0.5)
    assert keep.tolist() == [[True, False, False, False]]


def test_no_truncation_returns_none():
    assert truncation_mask(torch.randn(2, 5), top_k=0, top_p=1.0) is None
    assert truncation_mask(torch.randn(2, 5), top_k=5, top_p=1.0) is None


def test_scored_logprobs_match_renormalised_truncated_softmax():
    torch.manual_seed(0)
    logits = torch.randn(4, 10)
    sampling = Sampling(temperature=0.7, top_k=3)
    actions = torch.topk(logits, 3).indices[:, 1]
    logp, entropy = scored_logprobs(logits, actions, sampling)
    for row in range(4):
        top = torch.topk(logits[row] / 0.7, 3)
        expected = torch.log_softmax(top.values, -1)[1]
        assert math.isclose(logp[row].item(), expected.item(), rel_tol=1e-5)
        p = torch.softmax(top.values, -1)
        assert math.isclose(entropy[row].item(), -(p * p.log()).sum().item(), rel_tol=1e-5)


def test_taken_action_outside_truncated_support_gets_finite_logprob():
    logits = torch.tensor([[5.0, 4.0, -3.0]])
    logp, _ = scored_logprobs(logits, torch.tensor([2]), Sampling(top_k=1))
    assert torch.isfinite(logp).all()


def test_sample_actions_respects_top_k():
    logits = torch.randn(1000, 20)
    actions = sample_actions(logits, Sampling(top_k=2), torch.Generator().manual_seed(0))
    top2 = torch.topk(logits, 2).indices
    assert (actions.unsqueeze(1) == top2).any(1).all()


@pytest.mark.parametrize("bad", [dict(cfg_mode="cfg"), dict(temperature=0.0), dict(top_p=0.0)])
def test_bad_sampling_settings_raise(bad):
    with pytest.raises(ValueError):
        Sampling(**bad)
