"""`rlhf-img create-tiny PATH --family X` writes a stand-in in X's released layout and prints the overrides that
dry-run a shipped recipe on it; the printed overrides, as printed, run a shipped recipe of every family end to end
on the CPU (its rewards swapped for a tiny local CLIP: the shipped ones download released weights)."""

import os
import shlex

import pytest
from conftest import REPO

from rlhf_img.cli import main
from rlhf_img.families import detect_family

RECIPES = {
    "causal_vq": "tiny-random-jpeg.yaml",
    "simplear": "simplear-0.5b-grpo-clip-lora.yaml",
    "janus": "janus-pro-1b-grpo-geneval-lora.yaml",
    "llamagen": "llamagen-xl-grpo-lora.yaml",
    "infinity": "infinity-2b-grpo-clip.yaml",
    "emu3": "emu3-gen-grpo-geneval-lora.yaml",
}


@pytest.mark.slow  # six real 2-step GRPO runs (~45 s together)
@pytest.mark.parametrize("family", sorted(RECIPES))
def test_create_tiny_then_a_shipped_recipe_runs_on_it_with_the_printed_overrides(family, tmp_path, capsys):
    from tiny_models import tiny_clip_recipe_overrides

    assert main(["create-tiny", str(tmp_path / "tiny"), "--family", family]) == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if "dry-run a recipe on it with:" in line)
    overrides = shlex.split(line.split("with:", 1)[1])
    assert overrides[overrides.index("--model_family") + 1] == family
    assert detect_family(overrides[overrides.index("--model_name_or_path") + 1]) == family
    reward_and_data, out = tiny_clip_recipe_overrides(str(tmp_path))
    code = main(
        [
            "train",
            os.path.join(REPO, "recipes", RECIPES[family]),
            *overrides,
            *reward_and_data,
            "--num_generations",
            "4",
            "--per_device_train_batch_size",
            "4",
        ]
    )
    assert code == 0
    assert detect_family(out) == family


def test_create_tiny_refuses_causal_vq_shape_options_for_another_family(tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        main(["create-tiny", str(tmp_path / "x"), "--family", "janus", "--hidden_size", "32"])
    assert error.value.code == 2
    assert "--hidden_size shapes causal_vq only" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")
