"""The family contract, run over every registered family's tiny stand-in (its `stand_in` hook).

A family that registers a stand-in gets this suite for free; per-family test files keep only real quirks
(released layouts, parity with the public code, independent computations through the family's own modules).
The `palette` family (`toy_family/`, one package and one `register_family` call) shows that a new family needs
nothing else to run it."""

import copy
import json
import os

import pytest
import torch
import yaml
from conftest import REPO, grpo_args
from datasets import Dataset
from numerics import assert_close_scaled
from peft import LoraConfig

from rlhf_img import ImageGRPOTrainer, Policy, Sampling, load_policy
from rlhf_img.families import FAMILIES, detect_family
from rlhf_img.policy import CFG_MODES

from .conftest import FAMILY_NAMES

# repeated prompts, out of order, of different lengths (rows left-padded differently; groups shared by the prefill)
PROMPTS = ["a red circle", "two blue squares left of a green triangle", "a red circle", "x"]
SAMPLING = dict(cfg_scale=3.0, temperature=0.9, top_k=12)


def _brightness(prompts, images, **kwargs):
    return images.mean(dim=(1, 2, 3)).tolist()


def _sample(policy, model=None, *, cfg_mode="guided", sampler="plain", seed=0, prompts=PROMPTS):
    sampling = Sampling(cfg_mode=cfg_mode, sampler=sampler, **SAMPLING)
    batch = policy.encode_prompts(prompts)
    return policy.sample(
        model if model is not None else policy.model, batch, sampling, generator=torch.Generator().manual_seed(seed)
    )


def test_stand_in_is_detected_and_loads_as_a_policy(stand_in, policy):
    name, tiny = stand_in
    assert detect_family(tiny.checkpoint) == name
    assert isinstance(policy, Policy) and policy.num_actions > 0
    assert type(load_policy(tiny.checkpoint, **tiny.load_kwargs)) is type(policy)  # family found from its files


@pytest.mark.parametrize("cfg_mode", CFG_MODES)
def test_every_sampler_draws_the_same_tokens_for_a_seed(policy, cfg_mode):
    reference = _sample(policy, cfg_mode=cfg_mode, sampler="plain")
    assert reference.actions.shape == reference.logprobs.shape == (len(PROMPTS), policy.num_actions)
    for sampler in ("shared", "static", "auto"):
        rollout = _sample(policy, cfg_mode=cfg_mode, sampler=sampler)
        assert torch.equal(rollout.actions, reference.actions), sampler
        assert_close_scaled(rollout.logprobs, reference.logprobs, relative=1e-5)
    assert not torch.equal(_sample(policy, cfg_mode=cfg_mode, seed=1).actions, reference.actions)


@pytest.mark.slow  # torch.compile with inductor per family (~10-20 s each on a cold cache)
def test_the_compiled_sampler_draws_the_plain_loops_tokens(policy):
    reference = _sample(policy, sampler="plain")
    with _no_compile_failure():
        compiled = _sample(policy, sampler="compiled")
    assert torch.equal(compiled.actions, reference.actions)
    assert_close_scaled(compiled.logprobs, reference.logprobs, relative=1e-5)


class _no_compile_failure:
    """A failed compile warns and falls back to the eager step: here it must not happen."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error", RuntimeWarning)

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


@pytest.mark.parametrize("cfg_mode", CFG_MODES)
def test_teacher_forced_logprobs_equal_the_samplers(policy, cfg_mode):
    rollout = _sample(policy, cfg_mode=cfg_mode)
    sampling = Sampling(cfg_mode=cfg_mode, **SAMPLING)
    logps, entropies = policy.logprobs(policy.model, policy.encode_prompts(PROMPTS), rollout.actions, sampling)
    assert logps.shape == entropies.shape == rollout.actions.shape
    assert bool(torch.isfinite(logps).all()) and bool((entropies >= 0).all())
    if cfg_mode == "sample_only":  # sampled guided, scored conditional: a real gap
        assert float((logps - rollout.logprobs).abs().max()) > 1e-3
    else:
        assert_close_scaled(logps, rollout.logprobs, relative=2e-5)


@pytest.mark.parametrize("cfg_mode", ["none", "guided", "guided_detached_uncond"])
def test_logprobs_match_a_float64_run_of_the_same_weights(stand_in, policy, cfg_mode):
    if not stand_in[1].runs_in_float64:
        pytest.skip(f"{stand_in[0]} pins parts of its network to float32 (see its stand_in hook)")
    rollout = _sample(policy, cfg_mode=cfg_mode)
    sampling = Sampling(cfg_mode=cfg_mode, **SAMPLING)
    batch = policy.encode_prompts(PROMPTS)
    with torch.no_grad():
        single = policy.logprobs(policy.model, batch, rollout.actions, sampling)[0]
        double = policy.logprobs(copy.deepcopy(policy.model).double(), batch, rollout.actions, sampling)[0]
    assert double.dtype == torch.float32  # log-probs are float32 whatever the weights
    assert_close_scaled(single, double, relative=1e-4)


def test_decode_gives_pixels_in_unit_range(policy):
    images = policy.decode(_sample(policy).actions)
    assert images.dim() == 4 and images.shape[:2] == (len(PROMPTS), 3) and images.dtype == torch.float32
    assert float(images.min()) >= 0 and float(images.max()) <= 1 and not images.requires_grad


def test_save_pretrained_round_trip_samples_and_decodes_the_same(policy, tmp_path):
    out = str(tmp_path / "saved")
    policy.model.save_pretrained(out)
    policy.processing_class.save_pretrained(out)
    policy.save_pretrained(out)
    reloaded = load_policy(out, dtype="float32")
    assert type(reloaded) is type(policy) and reloaded.num_actions == policy.num_actions
    expected, again = _sample(policy, seed=3), _sample(reloaded, seed=3)
    assert torch.equal(expected.actions, again.actions)
    assert torch.equal(policy.decode(expected.actions), reloaded.decode(again.actions))


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_one_grpo_step_saves_a_model_that_reloads_to_identical_images(stand_in, tmp_path, mode):
    name, tiny = stand_in
    fresh = load_policy(tiny.checkpoint, name, **tiny.load_kwargs)
    before = {k: v.clone() for k, v in fresh.model.state_dict().items()}
    args = grpo_args(
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=2,
        learning_rate=5e-2,
        cfg_mode="guided",
        cfg_scale=2.0,
        beta=0.0,
    )
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=tiny.lora_target_modules) if mode == "lora" else None
    dataset = Dataset.from_dict({"prompt": [f"prompt {i}" for i in range(4)]})
    trainer = ImageGRPOTrainer(fresh, args, dataset, reward_funcs=[_brightness], peft_config=peft)
    trainer.train()
    out = str(tmp_path / "saved")
    trainer.save_model(out)
    assert os.path.exists(os.path.join(out, "adapter_config.json")) == (mode == "lora")
    reloaded = load_policy(out, dtype="float32")  # the family is found from what the trainer wrote
    assert type(reloaded) is type(fresh)
    after = reloaded.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)  # the step changed weights
    trained = trainer.model.eval()
    expected, again = _sample(fresh, trained, seed=5), _sample(reloaded, seed=5)
    assert torch.equal(expected.actions, again.actions)
    assert torch.equal(fresh.decode(expected.actions), reloaded.decode(again.actions))


def _shipped_grpo_recipes(family: str) -> list[str]:
    """The shipped GRPO recipes (they name rewards; SFT stages do not, DPO recipes add a `mode`) whose
    `model_family` is `family`."""
    found = []
    for name in sorted(os.listdir(os.path.join(REPO, "recipes"))):
        if name.endswith(".yaml"):
            with open(os.path.join(REPO, "recipes", name)) as f:
                recipe = yaml.safe_load(f)
            if recipe.get("model_family") == family and "rewards" in recipe and "mode" not in recipe:
                found.append(name)
    return found


RECIPE_CASES = [(family, recipe) for family in FAMILY_NAMES for recipe in _shipped_grpo_recipes(family)]


def test_every_registered_family_but_the_toy_ships_a_recipe():
    assert {family for family, _ in RECIPE_CASES} == set(FAMILY_NAMES) - {"palette"}


@pytest.mark.slow  # a real `rlhf-img train` per shipped recipe (13 recipes, a few seconds each)
@pytest.mark.parametrize("family, recipe", RECIPE_CASES, ids=[f"{f}-{r}" for f, r in RECIPE_CASES])
def test_every_shipped_recipe_trains_two_steps_on_the_stand_in(family, recipe, tmp_path):
    """The recipe as shipped, with overrides that only point it at the stand-in, a tiny CLIP reward, two prompts,
    CPU float32 and 2 steps: its model, sampling and training keys must run on the family. A full fine-tuning
    recipe runs on the stand-in converted to this project's layout, as its header says."""
    from tiny_models import tiny_clip_recipe_overrides

    from rlhf_img.cli import main

    tiny = FAMILIES[family].stand_in(str(tmp_path / "stand-in"))
    checkpoint, family_config = tiny.checkpoint, tiny.load_kwargs.get("family_config")
    with open(os.path.join(REPO, "recipes", recipe)) as f:
        shipped = yaml.safe_load(f)
    full_fine_tuning = not shipped.get("use_peft", False)
    if full_fine_tuning and tiny.converter:
        checkpoint = str(tmp_path / "converted")
        convert = ["convert", tiny.converter, tiny.checkpoint, checkpoint, "--dtype", "float32"]
        assert main(convert + (["--family_config", json.dumps(family_config)] if family_config else [])) == 0
        with open(os.path.join(checkpoint, f"{family}.json")) as f:
            family_config = json.load(f)  # the converted folder's own config: the recipe's keys must not resize it
    overrides, out = tiny_clip_recipe_overrides(str(tmp_path))
    # the two prompts' groups in one batch (a recipe's batch may hold more prompts than the two given)
    overrides += ["--per_device_train_batch_size", str(2 * shipped.get("num_generations", 8))]
    if shipped.get("object_credit"):  # it needs a reward that locates clauses; the tiny CLIP reward does not
        overrides += ["--object_credit", "0"]
    model = ["--model_name_or_path", checkpoint, "--family_config", json.dumps(family_config or {})]
    if tiny.load_kwargs.get("visual_tokenizer"):
        model += ["--visual_tokenizer", tiny.load_kwargs["visual_tokenizer"]]
    assert main(["train", os.path.join(REPO, "recipes", recipe), *model, *overrides]) == 0
    history = json.load(open(os.path.join(out, "trainer_state.json")))["log_history"]
    assert sum("rewards/clip_score/mean" in entry for entry in history) >= 1
    assert detect_family(out) == family  # the run's output loads as the same family
