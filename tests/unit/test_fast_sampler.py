"""Quirks of the engine's fast samplers on `causal_vq` (that every sampler draws the plain loop's tokens, in every
family and CFG mode, is the family contract suite's: `tests/families/test_contract.py`).

`Sampling.sampler` picks how the KV-cached loop runs: 'plain' (every row prefilled, a growing `DynamicCache`),
'shared' (each distinct prompt prefilled once, its cache copied to the group), 'static' (shared + a `StaticCache`)
and 'compiled' (static + `torch.compile`d decode step). For a seeded generator every one must draw exactly the
same tokens as 'plain' and report the same log-probs up to float32 rounding, with left-padded prompts of
different lengths repeated out of order (as a group split across ranks may arrive)."""

import warnings

import pytest
import torch
from numerics import assert_close_scaled
from torch import nn

from rlhf_img import Sampling, load_policy
from rlhf_img.sampling import kv_cache
from rlhf_img.sampling.kv_cache import resolve_sampler, unique_rows

# repeated prompts, out of order, of different lengths (so rows are left-padded differently)
PROMPTS = [
    "a red circle",
    "two blue squares left of a green triangle",
    "a red circle",
    "x",
    "two blue squares left of a green triangle",
    "a red circle",
]
SAMPLINGS = {
    "none": dict(cfg_mode="none", temperature=0.9),
    "guided": dict(cfg_mode="guided", cfg_scale=3.0, temperature=0.9, top_k=40),
}


@pytest.fixture(scope="module")
def policy(tiny_checkpoint):
    return load_policy(tiny_checkpoint, "causal_vq")


def _sample(policy, prompts, sampler: str, cfg: str, seed: int = 0):
    sampling = Sampling(sampler=sampler, **SAMPLINGS[cfg])
    return policy.sample(
        policy.model, policy.encode_prompts(prompts), sampling, generator=torch.Generator().manual_seed(seed)
    )


def _assert_same_draws(rollout, reference) -> None:
    assert torch.equal(rollout.actions, reference.actions)
    assert_close_scaled(rollout.logprobs, reference.logprobs, relative=1e-5)


def test_unique_rows_maps_every_row_to_its_distinct_row_and_keys_on_the_mask():
    ids = torch.tensor([[0, 5, 6], [7, 8, 9], [0, 5, 6], [0, 5, 6]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1]])  # row 3: same ids, pad id 0 is a real token
    unique_ids, unique_mask, inverse = unique_rows(ids, mask)
    assert unique_ids.size(0) == 3
    assert torch.equal(unique_ids[inverse], ids) and torch.equal(unique_mask[inverse], mask)
    assert inverse[0] == inverse[2] != inverse[3]


@pytest.mark.parametrize("sampler, prefill_rows", [("plain", 2 * len(PROMPTS)), ("shared", 3 + 1)])
def test_shared_sampler_prefills_each_distinct_prompt_and_the_unconditional_prompt_once(policy, sampler, prefill_rows):
    rows = []
    hook = policy.model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        _sample(policy, PROMPTS, sampler, "guided")
    finally:
        hook.remove()
    assert rows[0][0] == prefill_rows  # 3 distinct prompts + 1 unconditional row
    assert {shape for shape in rows[1:]} == {(2 * len(PROMPTS), 1)}  # every sample decodes its own row


def test_default_sampler_on_cpu_is_shared_and_matches_plain(policy):
    assert resolve_sampler("auto", policy.model, torch.device("cpu")) == "shared"
    reference = _sample(policy, PROMPTS, "plain", "guided", seed=3)
    _assert_same_draws(_sample(policy, PROMPTS, "auto", "guided", seed=3), reference)


def test_compiled_decode_step_draws_the_plain_loops_tokens_and_reuses_its_cache(policy):
    # The same decode-batch rows (8) in both calls, so inductor compiles once; the second call has shorter
    # prompts and must reuse (and reset) the kept static cache.
    cases = [("none", PROMPTS + ["x", "x"]), ("guided", ["a red circle", "x", "a red circle", "x"])]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed compile would warn and fall back
        for cfg, prompts in cases:
            _assert_same_draws(_sample(policy, prompts, "compiled", cfg), _sample(policy, prompts, "plain", cfg))
    (decoder,) = kv_cache._COMPILED[policy.model].values()
    assert decoder.compiled is not None and decoder.cache is not None


def test_compile_failure_falls_back_to_the_eager_static_step_with_one_warning(tiny_checkpoint, monkeypatch):
    policy = load_policy(tiny_checkpoint, "causal_vq")  # a fresh model: no compiled step kept for it yet

    def no_compiler(function, **kwargs):
        def fails(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")

        return fails

    monkeypatch.setattr(torch, "compile", no_compiler)
    with pytest.warns(RuntimeWarning, match="torch.compile of the decode step failed") as caught:
        first = _sample(policy, PROMPTS, "compiled", "guided")
        second = _sample(policy, PROMPTS, "compiled", "guided", seed=1)
    assert len([w for w in caught if "torch.compile" in str(w.message)]) == 1
    _assert_same_draws(first, _sample(policy, PROMPTS, "plain", "guided"))
    _assert_same_draws(second, _sample(policy, PROMPTS, "plain", "guided", seed=1))


def test_static_sampler_refuses_sliding_window_layers_and_auto_avoids_them():
    model = nn.Linear(2, 2)
    model.config = type("Config", (), {"layer_types": ["full_attention", "sliding_attention"]})()
    with pytest.raises(ValueError, match="sampler='static' needs full attention"):
        resolve_sampler("static", model, torch.device("cpu"))
    assert resolve_sampler("auto", model, torch.device("cuda")) == "shared"


def test_unknown_sampler_is_rejected():
    with pytest.raises(ValueError, match="sampler must be one of"):
        Sampling(sampler="fastest")
