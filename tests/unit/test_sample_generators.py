"""Per-sample random streams: a sample's image depends on (seed, stream, generation, global index) only, not on
the batch it is sampled in, for every family's sampler (rows of one sample drawn from its own generator)."""

import pytest
import torch

from rlhf_img import Sampling, load_policy
from rlhf_img.sampling import SampleGenerators, sample_actions
from rlhf_img.sampling.generators import sample_seed

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")

# prompts of different token lengths, so the batches are left-padded differently
PROMPTS = ["a red circle", "two small blue squares on the left", "green", "a yellow triangle above a square"]
SAMPLING = Sampling(cfg_mode="guided", cfg_scale=3.0, temperature=1.0, top_k=40)


def test_seeds_are_stable_and_distinct_per_key():
    assert sample_seed(0, "train", 3, 7) == sample_seed(0, "train", 3, 7)
    keys = [(0, "train", 3, 7), (1, "train", 3, 7), (0, "eval", 3, 7), (0, "train", 4, 7), (0, "train", 3, 8)]
    assert len({sample_seed(*key) for key in keys}) == len(keys)
    assert 0 <= sample_seed(2**40, "train", 10**9, 10**6) < 2**63


def test_a_blocks_draw_does_not_depend_on_the_other_blocks():
    """Rows grouped by sample (3 rows each): a sample's rows are the same drawn alone or among others."""
    torch.manual_seed(0)
    logits = torch.randn(4 * 3, 50)
    together = sample_actions(logits, SAMPLING, SampleGenerators.for_samples(0, "train", 0, range(4), "cpu"))
    for index in range(4):
        alone = sample_actions(
            logits[3 * index : 3 * index + 3], SAMPLING, SampleGenerators.for_samples(0, "train", 0, [index], "cpu")
        )
        assert torch.equal(alone, together[3 * index : 3 * index + 3])
    other = sample_actions(logits, SAMPLING, SampleGenerators.for_samples(0, "train", 1, range(4), "cpu"))
    assert not torch.equal(other, together)  # another generation draws differently


def test_rows_not_grouped_by_sample_are_an_error():
    with pytest.raises(ValueError, match="7 rows of logits for 2 per-sample generators"):
        sample_actions(torch.zeros(7, 5), SAMPLING, SampleGenerators.for_samples(0, "train", 0, range(2), "cpu"))


def test_draws_follow_the_distribution():
    """Per-sample draws are still draws from softmax(logits): frequencies of a 3-way choice over many samples."""
    probs = torch.tensor([0.6, 0.3, 0.1])
    count = 4000
    draws = sample_actions(
        probs.log().expand(count, 3), Sampling(), SampleGenerators.for_samples(0, "train", 0, range(count), "cpu")
    )
    frequencies = torch.bincount(draws, minlength=3).double() / count
    assert (frequencies - probs.double()).abs().max() < 4 * (0.25 / count) ** 0.5  # 4 binomial sigmas at worst


def test_truncated_actions_are_never_drawn():
    """Top-k / top-p zero out most of the vocabulary: no draw may land there, even at u close to 1."""
    torch.manual_seed(1)
    logits = torch.randn(3000, 64)
    sampling = Sampling(top_k=3, top_p=0.9)
    draws = sample_actions(logits, sampling, SampleGenerators.for_samples(0, "train", 0, range(3000), "cpu"))
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, torch.topk(logits, 3).indices, True)
    assert keep.gather(-1, draws.unsqueeze(-1)).all()
    one_hot = torch.full((8, 16), -float("inf")).index_fill(1, torch.tensor([15]), 0.0)  # all mass on the last
    assert (
        sample_actions(one_hot, Sampling(), SampleGenerators.for_samples(0, "train", 0, range(8), "cpu")).eq(15).all()
    )


def _policy(family: str, tmp_path):
    if family == "causal_vq":
        from rlhf_img.families.causal_vq.tiny import save_tiny_causal_vq

        return load_policy(save_tiny_causal_vq(str(tmp_path / "cvq"), arch="qwen2", seed=0), "causal_vq")
    if family == "janus":
        from rlhf_img.families.janus.tiny import save_tiny_janus

        return load_policy(save_tiny_janus(str(tmp_path / "Janus-Pro-tiny"), seed=0), "janus", dtype="float32")
    if family == "llamagen":
        from rlhf_img.families.llamagen.tiny import (
            save_tiny_llamagen,
            tiny_llamagen_family_config,
        )

        path = save_tiny_llamagen(str(tmp_path / "llamagen"), seed=0)
        return load_policy(path, "llamagen", dtype="float32", family_config=tiny_llamagen_family_config(path))
    from rlhf_img.families.infinity.tiny import (
        save_tiny_infinity,
        tiny_infinity_family_config,
    )

    path = save_tiny_infinity(str(tmp_path / "infinity"), seed=0)
    return load_policy(path, "infinity", dtype="float32", family_config=tiny_infinity_family_config(path))


@pytest.mark.parametrize("family", ["causal_vq", "janus", "llamagen", "infinity"])
def test_a_samples_image_is_the_same_whatever_batch_it_is_sampled_in(family, tmp_path):
    """Global samples 0..3 sampled as one batch of 4, and as 2 + 2 (two processes of batch 2): same actions."""
    policy = _policy(family, tmp_path)
    whole = policy.sample(
        policy.model,
        policy.encode_prompts(PROMPTS),
        SAMPLING,
        SampleGenerators.for_samples(0, "train", 5, range(4), "cpu"),
    ).actions
    for first in (0, 2):
        part = policy.sample(
            policy.model,
            policy.encode_prompts(PROMPTS[first : first + 2]),
            SAMPLING,
            SampleGenerators.for_samples(0, "train", 5, range(first, first + 2), "cpu"),
        ).actions
        assert torch.equal(part, whole[first : first + 2]), family
    # and the global RNG plays no part
    torch.manual_seed(123)
    again = policy.sample(
        policy.model,
        policy.encode_prompts(PROMPTS),
        SAMPLING,
        SampleGenerators.for_samples(0, "train", 5, range(4), "cpu"),
    ).actions
    assert torch.equal(again, whole)
