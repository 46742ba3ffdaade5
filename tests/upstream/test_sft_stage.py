"""`rlhf-img sft` end to end on the shapes world: `rlhf-img encode` -> SFT (LoRA and full) reading the shards ->
the output loads as the family and trains with `rlhf-img train`; bad input stops with one line naming the key."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import REPO
from huggingface_hub import ModelCard

from rlhf_img.cli import main

from .encode_helpers import CHECKPOINT, encode, render_pairs, write_image_folder

COMMON = [
    "--max_steps",
    "2",
    "--per_device_train_batch_size",
    "8",
    "--logging_steps",
    "1",
    "--use_cpu",
    "true",
    "--disable_tqdm",
    "true",
    "--learning_rate",
    "1e-3",
]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft-data")
    write_image_folder(root / "images", render_pairs(16, seed=5))
    encode(root / "images", root / "encoded")
    return root / "encoded"


def _recipe(tmp_path, **keys) -> str:
    path = tmp_path / "sft.yaml"
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in keys.items()))
    return str(path)


def _history(out) -> list[dict]:
    with open(os.path.join(out, "trainer_state.json")) as f:
        return [entry for entry in json.load(f)["log_history"] if "loss" in entry]


@pytest.mark.parametrize("use_peft", [True, False], ids=["lora", "full"])
def test_encode_then_sft_then_the_output_trains_with_rlhf_img_train(encoded, tmp_path, use_peft):
    from rlhf_img import Sampling, load_policy
    from rlhf_img.families import detect_family

    out = tmp_path / "sft"
    recipe = _recipe(tmp_path, model_name_or_path=CHECKPOINT, dataset=str(encoded), output_dir=str(out))
    assert main(["sft", recipe, *COMMON, "--use_peft", str(use_peft).lower()]) == 0
    losses = [entry["loss"] for entry in _history(out)]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert os.path.exists(out / ("adapter_model.safetensors" if use_peft else "model.safetensors"))
    assert detect_family(str(out)) == "causal_vq"
    card = ModelCard.load(out / "README.md")  # rlhf-img's model card (model_card.py)
    assert {"rlhf-img", "sft", "causal_vq"} <= set(card.data.tags) and "| steps | 2 of max_steps 2 |" in card.text
    policy = load_policy(str(out))
    rollout = policy.sample(
        policy.model, policy.encode_prompts(["a red circle"]), Sampling(), generator=torch.Generator().manual_seed(0)
    )
    assert policy.decode(rollout.actions).shape[0] == 1
    grpo = tmp_path / "grpo"
    assert (
        main(
            [
                "train",
                os.path.join(REPO, "recipes", "tiny-random-jpeg.yaml"),
                "--model_name_or_path",
                str(out),
                "--max_steps",
                "1",
                "--report_to",
                "none",
                "--save_strategy",
                "no",
                "--output_dir",
                str(grpo),
                "--disable_tqdm",
                "true",
            ]
        )
        == 0
    )
    assert detect_family(str(grpo)) == "causal_vq"


def test_sft_refuses_shards_encoded_for_another_family_in_one_line(encoded, tmp_path, capsys):
    from rlhf_img.families import FAMILIES

    tiny = FAMILIES["llamagen"].stand_in(str(tmp_path / "llamagen"))
    recipe = _recipe(
        tmp_path,
        model_name_or_path=tiny.checkpoint,
        model_family="llamagen",
        family_config=tiny.load_kwargs["family_config"],
        dataset=str(encoded),
        output_dir=str(tmp_path / "out"),
    )
    with pytest.raises(SystemExit) as error:
        main(["sft", recipe, *COMMON, "--dtype", "float32"])
    assert error.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlhf-img: error:")]
    assert len(lines) == 1 and "was encoded for model family 'causal_vq', not 'llamagen'" in lines[0]
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize(
    "missing, message",
    [
        ("dataset", "dataset: set the folder `rlhf-img encode` wrote"),
        ("model_name_or_path", "model_name_or_path: set the checkpoint"),
    ],
)
def test_sft_names_a_missing_key(encoded, tmp_path, capsys, missing, message):
    keys = dict(model_name_or_path=CHECKPOINT, dataset=str(encoded), output_dir=str(tmp_path / "out"))
    del keys[missing]
    with pytest.raises(SystemExit):
        main(["sft", _recipe(tmp_path, **keys), *COMMON])
    assert message in capsys.readouterr().err


def test_an_unfinished_encode_is_refused_naming_it(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    with pytest.raises(SystemExit):
        main(["sft", _recipe(tmp_path, model_name_or_path=CHECKPOINT, dataset=str(tmp_path / "half")), *COMMON])
    assert "no encode.json" in capsys.readouterr().err
