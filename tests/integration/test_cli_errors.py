"""Bad input: exit code 2, one line naming the key or file, and no output directory."""

import os

import pytest
from conftest import write_recipe

from rlhf_img.cli import main


@pytest.fixture
def base(tmp_path, tiny_checkpoint, prompt_file):
    return dict(
        model_name_or_path=tiny_checkpoint,
        dataset=prompt_file,
        rewards=[{"name": "jpeg_compressibility"}],
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        per_device_train_batch_size=8,
        num_generations=4,
        max_steps=1,
        report_to="none",
    )


def run_bad(capsys, tmp_path, recipe_keys, *overrides):
    recipe = write_recipe(tmp_path / "recipe.yaml", **recipe_keys)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", recipe, *overrides])
    assert exit_info.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(error_lines) == 1, error_lines
    assert error_lines[0].startswith("rlhf-img: error: ")
    assert not os.path.exists(recipe_keys.get("output_dir", tmp_path / "out"))
    return error_lines[0]


def test_unknown_recipe_key_exits_2_without_output_dir(capsys, tmp_path, base):
    line = run_bad(capsys, tmp_path, {**base, "learning_rat": 1e-5})
    assert "'learning_rat'" in line and "recipe.yaml" in line


@pytest.mark.parametrize(
    "key, value",
    [
        ("learning_rate", [1, 2]),
        ("learning_rate", "fast"),
        ("max_steps", 1.5),
        ("num_generations", True),
        ("cfg_mode", "cfg"),
    ],
)
def test_wrong_type_in_recipe_names_the_key(capsys, tmp_path, base, key, value):
    line = run_bad(capsys, tmp_path, {**base, key: value})
    assert key in line


def test_wrong_type_on_command_line_names_the_option(capsys, tmp_path, base):
    line = run_bad(capsys, tmp_path, base, "--learning_rate", "abc")
    assert "learning_rate" in line


def test_unknown_command_line_option(capsys, tmp_path, base):
    line = run_bad(capsys, tmp_path, base, "--lerning_rate", "1e-5")
    assert "lerning_rate" in line


def test_missing_checkpoint_names_the_path(capsys, tmp_path, base):
    line = run_bad(capsys, tmp_path, {**base, "model_name_or_path": str(tmp_path / "no-such-ckpt")})
    assert "no-such-ckpt" in line


def test_missing_prompt_file_names_the_file(capsys, tmp_path, base):
    line = run_bad(capsys, tmp_path, {**base, "dataset": str(tmp_path / "missing.txt")})
    assert "missing.txt" in line


def test_missing_recipe_names_the_file(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path / "nope.yaml")])
    assert exit_info.value.code == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_num_generations_not_dividing_generation_batch(capsys, tmp_path, base):
    line = run_bad(capsys, tmp_path, {**base, "per_device_train_batch_size": 6, "num_generations": 4})
    assert "num_generations" in line and "generation_batch_size" in line


def test_unknown_reward_name(capsys, tmp_path, base):
    line = run_bad(capsys, tmp_path, {**base, "rewards": [{"name": "clip_scroe"}]})
    assert "clip_scroe" in line


def test_missing_reward_file(capsys, tmp_path, base):
    line = run_bad(capsys, tmp_path, {**base, "rewards": [{"name": str(tmp_path / "r.py") + ":f"}]})
    assert "r.py" in line


def test_missing_required_keys(capsys, tmp_path, base):
    keys = dict(base)
    del keys["dataset"]
    assert "'dataset'" in run_bad(capsys, tmp_path, keys)


def test_help_lists_the_recipe_keys(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for key in ("--cfg_mode", "--rewards", "--num_generations", "--lora_r", "--dataset", "--save_rollouts"):
        assert key in out
    assert main([]) == 0


def test_broken_reward_fails_with_its_name(capsys, tmp_path, base, brightness_reward_file):
    recipe = write_recipe(
        tmp_path / "recipe.yaml", **{**base, "rewards": [{"name": f"{brightness_reward_file}:broken"}]}
    )
    assert main(["train", recipe]) == 1
    err = capsys.readouterr().err
    assert f"reward '{brightness_reward_file}:broken' raised RuntimeError: detector crashed" in err


def test_rlhf_img_traceback_shows_what_is_behind_the_one_line(capsys, tmp_path, base, monkeypatch):
    """A loader's error reaches the user as one line; with RLHF_IMG_TRACEBACK=1 the tracebacks behind it come
    first, the original error's included although the CLI re-raised it `from None`."""
    import shutil

    bad = tmp_path / "bad-checkpoint"
    shutil.copytree(base["model_name_or_path"], bad)
    (bad / "config.json").write_text("{not json")  # transformers' own error, deep in from_pretrained
    keys = {**base, "model_name_or_path": str(bad)}
    line = run_bad(capsys, tmp_path, keys)  # without it: the one line alone
    monkeypatch.setenv("RLHF_IMG_TRACEBACK", "1")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", write_recipe(tmp_path / "recipe.yaml", **keys)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.rstrip().splitlines()[-1] == line
    assert err.count("Traceback (most recent call last)") >= 2 and "UsageError" in err
    assert "transformers" in err and "from_pretrained" in err  # where the original error was raised
