"""Property-based fuzzing (hypothesis) of what users type: the recipe file and the `--key value` overrides of
`rlhf-img train`. Whatever the input, the command never shows a traceback: bad input exits 2 with exactly one
line naming the problem; input that passes every check reaches training (stubbed here, so nothing trains).

Deterministic (`derandomize`) and bounded, so CI sees the same examples every run."""

import contextlib
import dataclasses
import io
import os
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf_img.cli import main
from rlhf_img.recipes import TRAIN_DATACLASSES

KEYS = sorted({f.name for cls in TRAIN_DATACLASSES for f in dataclasses.fields(cls)} - {"env"})  # env sets os.environ
FOCUS = [
    "rewards",
    "dataset",
    "model_name_or_path",
    "model_family",
    "family_config",
    "num_generations",
    "per_device_train_batch_size",
    "cfg_mode",
    "cfg_scale",
    "temperature",
    "top_k",
    "top_p",
    "learning_rate",
    "max_steps",
    "beta",
    "loss_type",
    "lora_target_modules",
    "lora_r",
    "use_peft",
    "max_prompts",
    "prompt_column",
    "resume_from_checkpoint",
    "no_score_patience",
    "zero_spread_patience",
    "scale_rewards",
    "multi_objective_aggregation",
    "dtype",
    "visual_tokenizer",
    "output_dir",
    "logging_steps",
    "save_strategy",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        [
            "",
            "none",
            "true",
            "auto",
            "all-linear",
            "-1",
            "1e400",
            "nan",
            "{",
            "[1,",
            "jpeg_compressibility",
            "x.py:f",
            "recipes",
            "/",
            "~",
            "\x00",
            "é",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)
reward_entries = st.lists(
    st.one_of(
        values,
        st.fixed_dictionaries(
            {"name": st.sampled_from(["jpeg_compressibility", "nope", "x.py:f", "os:getcwd", ""])},
            optional={
                "weight": values,
                "kwargs": values,
                "label": values,
                "normalize": values,
                "timeout": values,
                "extra": values,
            },
        ),
    ),
    max_size=3,
)
plausible = st.one_of(
    st.integers(-3, 300),
    st.floats(-2, 10),
    st.booleans(),
    st.sampled_from(
        [
            "none",
            "auto",
            "float32",
            "bfloat16",
            "guided",
            "group",
            "dapo",
            "x",
            "",
            "causal_vq",
            "infinity",
            "all-linear",
            "steps",
            "no",
            "cpu",
        ]
    ),
)
keys = st.one_of(
    st.sampled_from(FOCUS), st.sampled_from(FOCUS), st.sampled_from(KEYS), st.text(min_size=1, max_size=12)
)
mutations = st.dictionaries(keys, st.one_of(plausible, plausible, values, reward_entries), max_size=4)
override_tokens = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(FOCUS + KEYS).map(lambda key: f"--{key}"),
            st.one_of(st.text(max_size=12), st.sampled_from(["1", "0", "-3", "true", "nan", "[]", "{}", "x"])),
        ),
        st.tuples(st.text(max_size=12)),
    ),
    max_size=3,
).map(lambda groups: [token for group in groups for token in group])
raw_files = st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode))


def run_cli(argv):
    """`rlhf-img ARGV` in process: (exit code, stdout, stderr); training itself is stubbed."""
    out, err = io.StringIO(), io.StringIO()
    environ = dict(os.environ)
    try:
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            mock.patch("rlhf_img.training.train", return_value=0),
        ):
            try:
                code = main(argv)
            except SystemExit as stop:
                code = stop.code
    finally:
        os.environ.clear()
        os.environ.update(environ)
    return code, out.getvalue(), err.getvalue()


def assert_clean(code, out, err):
    assert "Traceback" not in out + err, err
    if code == 0:
        if err.strip():  # warnings from libraries are fine, an error line is not
            assert "rlhf-img: error" not in err, err
        return
    assert code == 2, (code, err[-2000:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rlhf-img: error: "), lines


@pytest.fixture(scope="module")
def base_recipe(tmp_path_factory, tiny_checkpoint):
    folder = tmp_path_factory.mktemp("fuzz")
    prompts = folder / "prompts.txt"
    prompts.write_text("a red apple\na dog\n")
    return folder, dict(
        model_name_or_path=tiny_checkpoint,
        dataset=str(prompts),
        rewards=[{"name": "jpeg_compressibility"}],
        per_device_train_batch_size=8,
        num_generations=4,
        max_steps=1,
        use_cpu=True,
        report_to="none",
        output_dir=str(folder / "out"),
    )


FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.timeout(600)
@FUZZ
@given(changes=mutations, removed=st.lists(st.sampled_from(FOCUS), max_size=2), overrides=override_tokens)
def test_mutated_recipes_and_overrides_never_show_a_traceback(base_recipe, changes, removed, overrides):
    folder, recipe = base_recipe
    recipe = {key: value for key, value in {**recipe, **changes}.items() if key not in removed}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    assert_clean(*run_cli(["train", str(path), *overrides]))
    assert not (folder / "out").exists()  # nothing is written before training starts


@pytest.mark.timeout(300)
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(content=raw_files)
def test_any_recipe_file_content_exits_2_with_one_line(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("raw") / "recipe.yaml"
    path.write_bytes(content)
    code, out, err = run_cli(["train", str(path)])
    assert code == 2  # no raw content is a complete recipe (model, dataset and rewards are required)
    assert_clean(code, out, err)


@pytest.mark.parametrize(
    "argv",
    [["train"], ["train", "/"], ["train", "/no/such.yaml", "--x"], ["nope"], ["train", "recipes"], ["train", "\x00"]],
)
def test_odd_command_lines(argv):
    code, out, err = run_cli(argv)
    if argv == ["train"]:
        assert code == 0 and "usage" in out  # no recipe: the help
        return
    assert_clean(code, out, err)
    assert code == 2
