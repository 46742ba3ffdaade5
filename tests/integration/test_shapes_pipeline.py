"""The shapes world end to end: the upstream stages at toy scale, eval, and GRPO on the shipped checkpoint."""

import json
import os

import pytest
from conftest import REPO

from rlhf_img.cli import main

SHIPPED = os.path.join(REPO, "checkpoints", "shapes-tiny")


@pytest.mark.timeout(300)
def test_tokenizer_and_sft_stages_write_a_loadable_checkpoint(tmp_path, capsys):
    tokenizer_dir, sft_dir = str(tmp_path / "tok"), str(tmp_path / "sft")
    assert (
        main(
            [
                "pretrain-tokenizer",
                os.path.join(REPO, "recipes", "shapes-tokenizer.yaml"),
                "--output_dir",
                tokenizer_dir,
                "--max_steps",
                "5",
                "--num_images",
                "256",
                "--eval_images_per_prompt",
                "1",
            ]
        )
        == 0
    )
    assert os.path.exists(os.path.join(tokenizer_dir, "model.safetensors"))
    assert (
        main(
            [
                "sft",
                os.path.join(REPO, "recipes", "shapes-sft.yaml"),
                "--visual_tokenizer",
                tokenizer_dir,
                "--output_dir",
                sft_dir,
                "--max_steps",
                "3",
                "--num_examples",
                "256",
                "--disable_tqdm",
                "true",
            ]
        )
        == 0
    )
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "causal_vq.json",
        "visual_tokenizer/model.safetensors",
    ):
        assert os.path.exists(os.path.join(sft_dir, name)), name
    assert main(["eval", sft_dir, "--images_per_prompt", "1", "--output_dir", str(tmp_path / "eval")]) == 0
    table = json.loads((tmp_path / "eval" / "table.json").read_text())
    results = [json.loads(line) for line in (tmp_path / "eval" / "results.jsonl").read_text().splitlines()]
    assert len(results) == 49 and {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"} <= set(
        results[0]
    )
    assert (tmp_path / "eval" / "images" / results[0]["filename"]).exists()
    assert set(table) == {"single_object", "two_object", "counting", "colors", "position", "color_attr", "overall"}
    assert "color_attr" in capsys.readouterr().out


def test_sft_without_tokenizer_fails_cleanly(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", os.path.join(REPO, "recipes", "shapes-sft.yaml"), "--visual_tokenizer", str(tmp_path / "none")])
    assert exit_info.value.code == 2 and "visual tokenizer not found" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir(SHIPPED), reason="checkpoints/shapes-tiny not built")
@pytest.mark.timeout(300)
def test_short_grpo_run_on_the_shipped_checkpoint(tmp_path):
    out = tmp_path / "grpo"
    assert (
        main(
            [
                "train",
                os.path.join(REPO, "recipes", "shapes-grpo.yaml"),
                "--max_steps",
                "3",
                "--per_device_train_batch_size",
                "16",
                "--output_dir",
                str(out),
                "--disable_tqdm",
                "true",
                "--logging_steps",
                "1",
            ]
        )
        == 0
    )
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = [h for h in history if "rewards/shapes_geneval/mean" in h]
    assert len(logged) == 3 and all(0.0 <= h["reward"] <= 1.0 for h in logged)
    assert max(h["sampling/sampling_logp_difference/mean"] for h in logged) < 1e-4
