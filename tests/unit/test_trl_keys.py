"""Every recipe key inherited from TRL either applies to images or is refused at parse time with one line
(rlhf_img/trl_keys.py): a TRL upgrade that adds a key fails here until the key is classified."""

import dataclasses
import os

import pytest
import transformers
import trl
import yaml
from conftest import REPO, write_recipe

from rlhf_img.cli import main
from rlhf_img.config import ImageGRPOConfig, ImageModelConfig
from rlhf_img.recipes import parse_recipe
from rlhf_img.trl_keys import APPLIES, REFUSED, TRL_KEYS, inapplicable_key, inherited_fields, key_reference

TINY_RECIPE = os.path.join(REPO, "recipes", "tiny-random-jpeg.yaml")
TRL_BASES = (trl.GRPOConfig, transformers.TrainingArguments, trl.ModelConfig)


def test_every_field_inherited_from_trl_is_classified():
    inherited = {field.name for base in TRL_BASES for field in dataclasses.fields(base)}
    ours = {field.name for cls in (ImageGRPOConfig, ImageModelConfig) for field in dataclasses.fields(cls)}
    unclassified = sorted((inherited & ours) - set(TRL_KEYS))
    assert not unclassified, f"classify these TRL keys in rlhf_img/trl_keys.py (applies or refused): {unclassified}"
    stale = sorted(set(TRL_KEYS) - inherited)
    assert not stale, f"rlhf_img/trl_keys.py classifies keys TRL no longer has: {stale}"


def test_every_rule_says_why_and_refused_ones_what_to_use_instead():
    for name, rule in TRL_KEYS.items():
        assert rule.verdict in (APPLIES, REFUSED), name
        if rule.verdict == REFUSED:
            assert rule.note and rule.instead, name
        for path in rule.tested:
            assert os.path.isfile(os.path.join(REPO, "tests", path)), f"{name}: no test file tests/{path}"


def test_the_key_reference_has_one_row_per_inherited_key_with_its_origin():
    rows = key_reference()
    expected = len(inherited_fields(ImageGRPOConfig)) + len(inherited_fields(ImageModelConfig))
    assert len(rows) == expected == len({(row["key"], row["origin"]) for row in rows})
    by_key = {row["key"]: row for row in rows}
    assert by_key["use_vllm"]["verdict"] == REFUSED and by_key["use_vllm"]["origin"] == "GRPOConfig"
    assert by_key["learning_rate"]["origin"] == "TrainingArguments" and by_key["lora_r"]["origin"] == "ModelConfig"
    assert by_key["beta"]["verdict"] == APPLIES and by_key["beta"]["tested"]


def test_refused_keys_left_at_their_defaults_are_accepted(tmp_path):
    """A TRL recipe that spells out the defaults of keys images do not use still runs: only a change is refused."""
    assert inapplicable_key(ImageGRPOConfig(output_dir=str(tmp_path)), ImageModelConfig()) is None
    defaults = {}
    for cls in (trl.GRPOConfig, trl.ModelConfig):
        for field in dataclasses.fields(cls):
            rule = TRL_KEYS.get(field.name)
            if rule is None or rule.verdict != REFUSED or field.default is dataclasses.MISSING:
                continue
            if isinstance(field.default, (bool, int, float, str)) and field.name not in ("pad_to_multiple_of",):
                defaults[field.name] = field.default
    with open(TINY_RECIPE) as f:
        recipe = {
            **yaml.safe_load(f),
            **defaults,
            "output_dir": str(tmp_path / "out"),
            "model_name_or_path": os.path.join(REPO, "checkpoints", "tiny-random-causal-vq"),
            "dataset": os.path.join(REPO, "recipes", "prompts", "simple-objects.txt"),
        }
    args, model_args, _ = parse_recipe(write_recipe(tmp_path / "defaults.yaml", **recipe), [])
    assert len(defaults) > 20 and inapplicable_key(args, model_args) is None


@pytest.mark.parametrize(
    "argv, key",
    [
        (["--use_vllm", "true"], "use_vllm"),
        (["--max_completion_length", "7"], "max_completion_length"),
        (["--mask_truncated_completions", "true"], "mask_truncated_completions"),
        (["--vllm_mode", "server"], "vllm_mode"),
        (["--generation_kwargs", '{"do_sample": false}'], "generation_kwargs"),
        (["--eval_strategy", "steps"], "eval_strategy"),
        (["--load_in_4bit", "true"], "load_in_4bit"),
    ],
)
def test_a_refused_key_exits_2_with_one_line_and_no_output_dir(tmp_path, capsys, argv, key):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        main(["train", TINY_RECIPE, "--output_dir", str(out), *argv])
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"rlhf-img: error: recipe key {key!r} does not apply to images: ")
    assert "; " in lines[0]  # the reason, then what to use instead
    assert not out.exists()


def test_a_refused_key_in_the_recipe_file_is_refused_too(tmp_path, capsys):
    with open(TINY_RECIPE) as f:
        recipe = yaml.safe_load(f)
    recipe.update(
        model_name_or_path=os.path.join(REPO, "checkpoints", "tiny-random-causal-vq"),
        dataset=os.path.join(REPO, "recipes", "prompts", "simple-objects.txt"),
        log_completions=True,
        output_dir=str(tmp_path / "out"),
    )
    with pytest.raises(SystemExit) as stop:
        main(["train", write_recipe(tmp_path / "recipe.yaml", **recipe)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "recipe key 'log_completions' does not apply to images" in err and "save_rollouts" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore:`use_transformers_paged` is deprecated:FutureWarning")
def test_a_key_trl_derives_from_another_is_reported_under_the_key_the_user_wrote(tmp_path):
    args = ImageGRPOConfig(output_dir=str(tmp_path), use_transformers_paged=True)  # TRL also sets the new key
    assert "'use_transformers_paged'" in inapplicable_key(args)


def test_refused_keys_are_judged_against_declared_defaults_and_the_ones_trl_resolves():
    """`inapplicable_key` never builds a config (that resets accelerate's process state under torchrun); the keys
    whose default TRL's `__post_init__` changes are listed in RESOLVED_DEFAULTS with the value it gives."""
    import dataclasses

    from rlhf_img.config import ImageGRPOConfig, ImageModelConfig
    from rlhf_img.trl_keys import REFUSED, RESOLVED_DEFAULTS, TRL_KEYS

    resolved = {}
    for config_type in (ImageGRPOConfig, ImageModelConfig):
        built = config_type()
        for field in dataclasses.fields(config_type):
            rule = TRL_KEYS.get(field.name)
            if rule is None or rule.verdict != REFUSED:
                continue
            declared = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
            value = getattr(built, field.name)
            if not (value is declared or value == declared):
                resolved[field.name] = value
    assert resolved == RESOLVED_DEFAULTS
