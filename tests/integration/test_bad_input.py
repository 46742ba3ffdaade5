"""Bad input everywhere a user types: every file error names the file (not UTF-8, broken table, broken reward
module), and relative paths in a recipe resolve from the current folder, then from the recipe's own folder, so
the shipped recipes run from anywhere."""

import json
import os
import shutil

import pytest
from conftest import REPO, write_recipe

from rlhf_img.cli import main
from rlhf_img.recipes import parse_recipe
from rlhf_img.rewards import RewardConfigError
from rlhf_img.rewards.server import load_server_rewards


def one_error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "rlhf-img" in line]  # (datasets may draw a progress bar)
    assert len(lines) == 1 and lines[0].startswith("rlhf-img: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def recipe_keys(tmp_path, tiny_checkpoint, prompt_file):
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


# ----------------------------------------------------------------------------------- files named in errors
@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("prompts.txt", b"a red apple\n\xff\xfe a dog\n", "not UTF-8 text (byte 0xff at offset 12)"),
        ("prompts.jsonl", b'{"prompt": "a \xff cat"}\n', "holds text that is not UTF-8 (byte 0xff)"),
        ("prompts.csv", b"prompt\na \xff cat\n", "not UTF-8 text"),
        ("prompts.jsonl", b'{"prompt": "ok"}\n{"prompt": \n', "cannot read it as json (ArrowInvalid"),
        ("prompts.jsonl", b'{"prompt": 5}\n', "column 'prompt' must hold text"),
    ],
)
def test_a_bad_prompt_file_is_named(capsys, tmp_path, recipe_keys, name, content, expected):
    prompts = tmp_path / name
    prompts.write_bytes(content)
    recipe = write_recipe(tmp_path / "recipe.yaml", **{**recipe_keys, "dataset": str(prompts)})
    line = one_error_line(capsys, ["train", recipe])
    assert str(prompts) in line and expected in line, line
    assert not os.path.exists(tmp_path / "out")


def test_a_recipe_that_is_not_utf8_is_named(capsys, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(b"dataset: caf\xe9.txt\n")  # Latin-1
    line = one_error_line(capsys, ["train", str(recipe)])
    assert str(recipe) in line and "not UTF-8 text (byte 0xe9 at offset 12)" in line


def test_invalid_yaml_says_where(capsys, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("max_steps: 3\nrewards: [\n")
    line = one_error_line(capsys, ["train", str(recipe)])
    assert str(recipe) in line and "invalid YAML" in line and "line" in line


@pytest.mark.parametrize(
    "source, expected",
    [
        ("def f(prompts, images:\n    return 1\n", "line 1"),
        ("import no_such_module_here\n", "importing {path} raised ModuleNotFoundError"),
        ("raise RuntimeError('weights missing')\n", "importing {path} raised RuntimeError: weights missing"),
    ],
)
def test_a_reward_file_that_fails_to_import_is_named(capsys, tmp_path, recipe_keys, source, expected):
    path = tmp_path / "my_reward.py"
    path.write_text(source)
    recipe = write_recipe(tmp_path / "recipe.yaml", **{**recipe_keys, "rewards": [{"name": f"{path}:f"}]})
    line = one_error_line(capsys, ["train", recipe])
    assert str(path) in line and expected.format(path=path) in line, line


def test_a_reward_file_that_is_not_utf8_is_named(capsys, tmp_path, recipe_keys):
    path = tmp_path / "my_reward.py"
    path.write_bytes(b'NAME = "caf\xe9"\ndef f(prompts, images):\n    return [0.0] * len(prompts)\n')  # Latin-1
    recipe = write_recipe(tmp_path / "recipe.yaml", **{**recipe_keys, "rewards": [{"name": f"{path}:f"}]})
    line = one_error_line(capsys, ["train", recipe])
    assert f"{path} line 1: (unicode error) 'utf-8' codec can't decode byte 0xe9" in line, line


def test_control_characters_in_an_error_stay_on_one_line(capsys, tmp_path, recipe_keys):
    recipe = write_recipe(tmp_path / "recipe.yaml", **recipe_keys)
    line = one_error_line(capsys, ["train", recipe, "--use_cpu", "maybe\x1e\nnot"])
    assert "\\x1e\\nnot" in line


# ----------------------------------------------------------------------------------- relative paths
@pytest.fixture
def recipe_folder(tmp_path, tiny_checkpoint):
    """project/recipes/run.yaml naming ../ckpt, prompts/p.txt and rewards/r.py relative to itself."""
    project = tmp_path / "project"
    (project / "recipes" / "prompts").mkdir(parents=True)
    (project / "recipes" / "rewards").mkdir()
    shutil.copytree(tiny_checkpoint, project / "ckpt")
    (project / "recipes" / "prompts" / "p.txt").write_text("from the recipe folder\nand a second prompt\n")
    (project / "recipes" / "rewards" / "r.py").write_text(
        "def brightness(prompts, images, **kwargs):\n    return images.mean(dim=(1, 2, 3)).tolist()\n"
    )
    recipe = write_recipe(
        project / "recipes" / "run.yaml",
        model_name_or_path="../ckpt",
        dataset="prompts/p.txt",
        rewards=[{"name": "rewards/r.py:brightness"}],
        output_dir="out",
        use_cpu=True,
        per_device_train_batch_size=8,
        num_generations=4,
        max_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return project, recipe, elsewhere


def test_recipe_inputs_resolve_from_the_recipe_folder_and_outputs_stay_in_the_current_one(recipe_folder, monkeypatch):
    project, recipe, elsewhere = recipe_folder
    monkeypatch.chdir(elsewhere)
    args, model_args, data_args = parse_recipe(recipe, [])
    assert model_args.model_name_or_path == str(project / "ckpt")
    assert data_args.dataset == str(project / "recipes" / "prompts" / "p.txt")
    (spec,) = args.reward_specs
    assert spec.name == f"{project / 'recipes' / 'rewards' / 'r.py'}:brightness"
    assert spec.display_name == "rewards/r.py:brightness"  # the dashboards keep the name as written
    assert args.output_dir == "out"  # an output: relative to where the user stands


def test_the_current_folder_wins(recipe_folder, monkeypatch):
    project, recipe, elsewhere = recipe_folder
    (elsewhere / "prompts").mkdir()
    (elsewhere / "prompts" / "p.txt").write_text("from the current folder\n")
    monkeypatch.chdir(elsewhere)
    _, _, data_args = parse_recipe(recipe, [])
    assert data_args.dataset == "prompts/p.txt"


def test_command_line_paths_are_relative_to_the_current_folder_only(recipe_folder, monkeypatch, capsys):
    project, recipe, elsewhere = recipe_folder
    monkeypatch.chdir(elsewhere)
    _, _, data_args = parse_recipe(recipe, ["--dataset", "prompts/p.txt"])
    assert data_args.dataset == "prompts/p.txt"  # not looked up next to the recipe
    line = one_error_line(capsys, ["train", recipe, "--dataset", "prompts/p.txt"])
    assert "prompt file not found: prompts/p.txt" in line


def test_a_missing_relative_input_names_both_places(recipe_folder, monkeypatch, capsys):
    project, recipe, elsewhere = recipe_folder
    monkeypatch.chdir(elsewhere)
    os.remove(project / "recipes" / "prompts" / "p.txt")
    line = one_error_line(capsys, ["train", recipe])
    assert "recipe key 'dataset'" in line and "prompt file not found: prompts/p.txt" in line
    assert str(project / "recipes") in line
    os.remove(project / "recipes" / "rewards" / "r.py")
    (project / "recipes" / "prompts" / "p.txt").write_text("back\n")
    line = one_error_line(capsys, ["train", recipe])
    assert "reward 'rewards/r.py:brightness'" in line and "file not found: rewards/r.py" in line


@pytest.mark.timeout(180)
def test_a_recipe_trains_from_another_folder(recipe_folder, monkeypatch, capsys):
    project, recipe, elsewhere = recipe_folder
    monkeypatch.chdir(elsewhere)
    assert main(["train", recipe]) == 0
    with open(elsewhere / "out" / "trainer_state.json") as f:
        history = json.load(f)["log_history"]
    assert any("rewards/rewards/r.py:brightness/mean" in entry for entry in history)


@pytest.mark.timeout(180)
def test_the_shipped_tiny_recipe_runs_from_another_folder(tmp_path, monkeypatch, capsys):
    """`rlhf-img train /abs/path/recipes/tiny-random-jpeg.yaml` from a folder that is not the repository."""
    monkeypatch.chdir(tmp_path)
    recipe = os.path.join(REPO, "recipes", "tiny-random-jpeg.yaml")
    assert (
        main(
            [
                "train",
                recipe,
                "--max_steps",
                "1",
                "--per_device_train_batch_size",
                "16",
                "--output_dir",
                "out",
                "--disable_tqdm",
                "true",
            ]
        )
        == 0
    )
    assert (tmp_path / "out" / "trainer_state.json").exists()
    assert "rlhf-img: reward" in capsys.readouterr().out


def test_reward_server_config_resolves_reward_files_from_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "server"
    folder.mkdir()
    (folder / "judge.py").write_text("def judge(prompts, images, **kwargs):\n    return [1.0] * len(prompts)\n")
    (folder / "server.yaml").write_text("rewards:\n  - {name: judge.py:judge}\n")
    monkeypatch.chdir(tmp_path)
    (reward,) = load_server_rewards(str(folder / "server.yaml"))
    assert reward.name == "judge.py:judge"
    (folder / "server.yaml").write_text("rewards:\n  - {name: missing.py:judge}\n")
    with pytest.raises(RewardConfigError, match="file not found: missing.py"):
        load_server_rewards(str(folder / "server.yaml"))
