"""`rlhf-img eval --metric ocr|vqa`: the one evaluation path (sample or read a folder -> judge -> table ->
results.jsonl) with the text-rendering judge on the real PP-OCRv4 weights and the VQA judge on the shapes
world's detector; bad combinations exit 2 with one line before anything is sampled."""

import json
import os

import pytest
from text_images import blank, render_sign

from rlhf_img.cli import main
from rlhf_img.eval.geneval_folder import save_image_folder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    import rapidocr_onnxruntime  # noqa: F401
except ImportError:  # CI installs rlhf-img[ocr]
    rapidocr_onnxruntime = None
needs_ocr = pytest.mark.skipif(
    rapidocr_onnxruntime is None, reason="rapidocr-onnxruntime is not installed (pip install 'rlhf-img[ocr]')"
)


@needs_ocr
def test_eval_ocr_scores_an_image_folder_of_rendered_text(tmp_path, capsys):
    import torch

    rows = [
        {"prompt": 'a shop sign that reads "Fresh Bread"', "text": "Fresh Bread"},
        {"prompt": 'a poster that says "Night Market"', "text": "Night Market"},
    ]
    images = torch.stack(
        [
            render_sign("Fresh Bread", 256, 32),
            blank(256),  # prompt 0: right, then nothing
            render_sign("Night Market", 256, 32),
            render_sign("Night Marker", 256, 32),
        ]
    )
    save_image_folder(images, rows, str(tmp_path / "images"), images_per_prompt=2)
    assert (
        main(["eval", "--metric", "ocr", "--images", str(tmp_path / "images"), "--output_dir", str(tmp_path / "out")])
        == 0
    )
    printed = capsys.readouterr().out
    assert "Text rendering (OCR) on 4 images" in printed
    records = [json.loads(line) for line in open(tmp_path / "out" / "results.jsonl")]
    assert [os.path.relpath(r["filename"], tmp_path / "images") for r in records] == [
        "00000/samples/0000.png",
        "00000/samples/0001.png",
        "00001/samples/0000.png",
        "00001/samples/0001.png",
    ]
    rewards = [r["reward"] for r in records]
    assert rewards[0] == 1.0 and rewards[1] == 0.0 and rewards[2] == 1.0 and 0.5 < rewards[3] < 1.0
    table = json.load(open(tmp_path / "out" / "table.json"))
    assert table["reward"] == pytest.approx(sum(rewards) / 4) and table["images"] == 4
    # 4 target words per prompt pair: "fresh" "bread" read once of twice, "night" twice, "market" once
    assert 0.5 <= table["word_accuracy"] < 1.0


@needs_ocr
def test_eval_ocr_samples_a_checkpoint_on_a_text_rendering_prompt_file(tiny_checkpoint, tmp_path, capsys):
    prompts = tmp_path / "signs.txt"
    prompts.write_text('a sign that reads "Open"\nposter with the words "Hello World"\n')
    assert (
        main(
            [
                "eval",
                tiny_checkpoint,
                "--metric",
                "ocr",
                "--prompts",
                str(prompts),
                "--images_per_prompt",
                "2",
                "--output_dir",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in open(tmp_path / "out" / "results.jsonl")]
    assert [r["target"] for r in records] == ["Open", "Open", "Hello World", "Hello World"]
    assert all(0.0 <= r["reward"] <= 1.0 for r in records)
    assert os.path.isfile(tmp_path / "out" / "images" / "00001" / "samples" / "0001.png")


def test_eval_vqa_with_the_shapes_answerer_writes_atom_records(tmp_path, capsys):
    checkpoint = os.path.join(REPO, "checkpoints", "shapes-tiny")
    shipped = os.path.join(REPO, "recipes", "prompts", "vqa-shapes-held-out.jsonl")
    prompts = tmp_path / "vqa.jsonl"
    prompts.write_text("".join(open(shipped).readlines()[::7]))  # 7 of the 49, every tag
    assert (
        main(
            [
                "eval",
                checkpoint,
                "--metric",
                "vqa",
                "--prompts",
                str(prompts),
                "--images_per_prompt",
                "2",
                "--output_dir",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    assert f"VQA (Soft-TIFA) on 7 prompts ({prompts}) x 2 images" in capsys.readouterr().out
    records = [json.loads(line) for line in open(tmp_path / "out" / "results.jsonl")]
    assert len(records) == 14 and all(record["atoms"] for record in records)
    table = json.load(open(tmp_path / "out" / "table.json"))
    assert 0.0 <= table["overall"] <= 1.0 and table["overall"] == pytest.approx(table["soft_tifa_gm"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--metric", "ocr", "--prompts", "shapes-held-out"], "metric ocr: 'shapes-held-out' has no text to render"),
        (["--metric", "vqa", "--vqa_answerer", "vlm"], "vqa_answerer vlm needs judge_base_url and judge_model"),
    ],
)
def test_eval_metric_misuse_exits_2_with_one_line(tiny_checkpoint, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", tiny_checkpoint, *argv, "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not os.path.exists(tmp_path / "out")
