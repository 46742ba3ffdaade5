"""Parity of the `emu3` family with transformers' own Emu3 code (`generate` with `guidance_scale`,
`negative_prompt_ids` and Emu3's prefix constraint; `decode_image_tokens`), replayed against the reference data
that `tools/parity/emu3.py` wrote into `tests/data/emu3_parity/` (see its README.md).

How the two samplers are aligned:
- same prompts: our `encode_prompts` is BAAI's generation prompt, which `Emu3Processor(...,
  return_for_image_generation=True)` builds; the negative prompt is the processor's output for BAAI's negative text,
  WITH the image header (BAAI's image_generation.py; transformers' docs example leaves it out: not this family's
  choice); equal-length prompts, so no padding on either side;
- same rule: `generate` mixes log-softmaxed scores, `g * (c - u) + u`
  (`UnbatchedClassifierFreeGuidanceLogitsProcessor`), masks every token but the visual block (or forces a
  structural token), applies temperature and top-k over the full vocabulary; ours mixes the visual block's logits,
  `u + g * (c - u)`, then temperature and top-k over that block. The log-softmax shifts each row by a constant,
  which softmax, temperature and top-k ignore, so the two distributions over visual codes are equal
  (`tests/families/test_emu3.py` checks this on random numbers);
- same randomness: `GenerateDraws` (`tools/parity/emu3.py`) makes our draws as `generate` makes its own: one
  full-vocabulary `torch.multinomial` per step from a generator seeded as `torch.manual_seed(seed)` seeds the global
  one, including one draw where `generate` drew a forced end-of-line token.
"""

import importlib.util
import json
import os

import pytest
import torch
from numerics import assert_close_scaled
from safetensors.torch import load_file

from rlhf_img import Sampling, load_policy

DATA = os.path.join(os.path.dirname(__file__), "data", "emu3_parity")
TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "parity", "emu3.py")
with open(os.path.join(DATA, "settings.json")) as f:
    SETTINGS = json.load(f)
CASES = [(name, seed) for name in SETTINGS["settings"] for seed in SETTINGS["seeds"]]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("emu3_parity_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def policy():
    return load_policy(os.path.join(DATA, "model"), "emu3", dtype="float32", family_config=SETTINGS["family_config"])


@pytest.fixture(scope="module")
def reference():
    return load_file(os.path.join(DATA, "reference.safetensors"))


def _sampling(name: str, cfg_mode: str = "guided", sampler: str = "plain") -> Sampling:
    rule = SETTINGS["settings"][name]
    return Sampling(cfg_mode, rule["cfg_scale"], temperature=rule["temperature"], top_k=rule["top_k"], sampler=sampler)


def _sample(policy, tool, name, seed, sampler="plain"):
    draws = tool.GenerateDraws(seed, policy.model.config.text_config.vocab_size, policy.visual_offset, policy.grid[1])
    batch = policy.encode_prompts(SETTINGS["prompts"])
    return policy.sample(policy.model, batch, _sampling(name, sampler=sampler), generator=draws)


def test_prompts_and_the_negative_prompt_are_the_processors(policy, reference):
    batch = policy.encode_prompts(SETTINGS["prompts"])
    assert torch.equal(batch.input_ids, reference["input_ids"]) and bool(batch.attention_mask.all())
    assert list(policy.adapter.unconditional_ids) == reference["negative_ids"][0].tolist()
    assert policy.grid == tuple(reference["grid"].tolist()) == (3, 6)


@pytest.mark.parametrize("name, seed", CASES, ids=[f"{name}-seed{seed}" for name, seed in CASES])
def test_sampled_tokens_and_logprobs_are_generates(policy, tool, reference, name, seed):
    """Every token `generate` wrote (visual codes, end-of-line, end-of-frame, end-of-image, EOS) and, at each visual
    step, the log-prob of the drawn code under the distribution it was drawn from, for the sampler and the scorer in
    every CFG mode. Measured: tokens identical in all 16 runs; largest log-prob difference 5.6e-6 (log-probs up to
    7.2 in magnitude); the bound is 1e-5 of the largest magnitude."""
    rollout = _sample(policy, tool, name, seed)
    assert torch.equal(policy.image_tokens(rollout.actions), reference[f"{name}/{seed}/tokens"])
    guided, conditional = reference[f"{name}/{seed}/guided_logprobs"], reference[f"{name}/{seed}/conditional_logprobs"]
    assert_close_scaled(rollout.logprobs, guided, relative=1e-5)
    batch = policy.encode_prompts(SETTINGS["prompts"])
    with torch.no_grad():
        for cfg_mode in ("none", "sample_only", "guided", "guided_detached_uncond"):
            scored = policy.logprobs(policy.model, batch, rollout.actions, _sampling(name, cfg_mode))[0]
            uses_guidance = cfg_mode.startswith("guided") and SETTINGS["settings"][name]["cfg_scale"] != 1.0
            assert_close_scaled(scored, guided if uses_guidance else conditional, relative=1e-5)


@pytest.mark.parametrize("sampler", ["shared", "static"])
def test_every_sampler_reproduces_generates_tokens(policy, tool, reference, sampler):
    name, seed = "guidance 3 + top-k 8 + temperature 0.7", 1
    rollout = _sample(policy, tool, name, seed, sampler=sampler)
    assert torch.equal(policy.image_tokens(rollout.actions), reference[f"{name}/{seed}/tokens"])


@pytest.mark.parametrize("name", list(SETTINGS["settings"]))
def test_decoded_images_are_decode_image_tokens(policy, tool, reference, name):
    """`decode_image_tokens` of generate's tokens, through the image processor's own un-normalisation: equal to our
    decode of our actions (measured: bitwise; the same VQ modules on the same codes)."""
    rollout = _sample(policy, tool, name, SETTINGS["seeds"][0])
    expected = (reference[f"{name}/{SETTINGS['seeds'][0]}/decoded"] * policy.pixel_std + policy.pixel_mean).clamp(0, 1)
    assert_close_scaled(policy.decode(rollout.actions), expected, relative=1e-6)


def test_the_reference_is_what_the_installed_transformers_generates(policy, tool, reference):
    """The committed data against a fresh run of the installed transformers (a changed `generate`, CFG processor or
    Emu3 model shows here first; regenerate with `tools/parity/emu3.py` once the change is understood)."""
    from transformers import AutoProcessor, Emu3ForConditionalGeneration

    folder = os.path.join(DATA, "model")
    model = Emu3ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    for name in ("guidance 1 + top-k 16", "guidance 3 + top-k 8 + temperature 0.7"):
        rule = SETTINGS["settings"][name]
        run = tool.reference_run(model, processor, rule["cfg_scale"], rule["top_k"], rule["temperature"], seed=2)
        assert torch.equal(run["tokens"], reference[f"{name}/2/tokens"]), name
        assert_close_scaled(run["guided_logprobs"], reference[f"{name}/2/guided_logprobs"], relative=1e-5)
        assert_close_scaled(run["conditional_logprobs"], reference[f"{name}/2/conditional_logprobs"], relative=1e-5)
