"""GenEval with real detectors: Mask2Former (transformers) + CLIP colours, the reward, and `rlhf-img eval geneval`.

Models are tiny random-weight ones saved in the real on-disk formats (tests/tiny_models.py)."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from PIL import Image
from tiny_models import save_tiny_mask2former, save_tiny_open_clip

CAT = 15  # COCO / GenEval class index of "cat"


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> str:
    return save_tiny_open_clip(str(tmp_path_factory.mktemp("clip") / "tiny-clip"), seed=0)


@pytest.fixture(scope="module")
def cat_detector_dir(tmp_path_factory) -> str:
    return save_tiny_mask2former(str(tmp_path_factory.mktemp("m2f") / "tiny-m2f"), seed=0, favoured_class=CAT)


def _pil_colour_logits(clip_dir, image_uint8, mask, box, classname):
    """Independent GenEval colour path: PIL composite on #999, PIL crop, open_clip's own PIL transform."""
    import open_clip

    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{clip_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{clip_dir}")
    model.eval()
    from rlhf_img.rewards.geneval import COLOR_TEMPLATES, GENEVAL_COLORS

    with torch.no_grad():
        weights = []
        for color in GENEVAL_COLORS:
            texts = [t.format(color=color, classname=classname) for t in COLOR_TEMPLATES]
            embedding = F.normalize(model.encode_text(tokenizer(texts)), dim=-1).mean(0)
            weights.append(embedding / embedding.norm())
        weights = torch.stack(weights, 1)
        image = Image.fromarray(image_uint8)
        pasted = Image.composite(image, Image.new("RGB", image.size, color="#999"), Image.fromarray(mask))
        crop = transform(pasted.crop(box))[None]
        features = F.normalize(model.encode_image(crop), dim=-1)
    return (100 * features @ weights)[0]


@pytest.mark.parametrize("box", [(16, 8, 48, 40), (5, 10, 40, 30)])
def test_clip_colour_classifier_matches_geneval_pil_pipeline(tiny_clip_dir, box):
    from rlhf_img.geneval_rules import Detection
    from rlhf_img.rewards.clip import load_open_clip
    from rlhf_img.rewards.geneval import ClipColorClassifier

    generator = torch.Generator().manual_seed(0)
    image_uint8 = (torch.rand(64, 64, 3, generator=generator) * 255).round().to(torch.uint8).numpy()
    mask = np.zeros((64, 64), dtype=bool)
    mask[box[1] + 2 : box[3] - 2, box[0] + 3 : box[2] - 1] = True
    image = torch.from_numpy(image_uint8).permute(2, 0, 1).float() / 255
    classifier = ClipColorClassifier(load_open_clip(f"local-dir:{tiny_clip_dir}", device="cpu"))
    detection = Detection(tuple(float(v) for v in box), 0.9, mask=torch.from_numpy(mask))

    reference = _pil_colour_logits(tiny_clip_dir, image_uint8, (mask * 255).astype(np.uint8), box, "cat")
    ours = classifier(image, "cat", [detection])
    # the 32x32 crop needs no resize: the two pipelines agree to float precision; other sizes differ only by
    # PIL's vs torch's bicubic kernels
    crop = classifier.crops(image, [detection])[0]
    from rlhf_img.rewards.clip import preprocess_images

    pixels = preprocess_images(crop[None], classifier.clip.size, classifier.clip.mean, classifier.clip.std)
    with torch.no_grad():
        features = F.normalize(classifier.clip.model.encode_image(pixels), dim=-1)
    logits = (100 * features @ classifier.class_weights("cat"))[0]
    tolerance = 1e-3 if (box[2] - box[0], box[3] - box[1]) == (32, 32) else 0.5
    assert torch.allclose(logits, reference, atol=tolerance), (logits, reference)
    if (box[2] - box[0], box[3] - box[1]) == (32, 32):
        assert ours == [
            ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"][
                int(reference.argmax())
            ]
        ]


def test_mask2former_detector_reads_boxes_from_masks_and_keeps_scores_above_threshold(cat_detector_dir):
    from rlhf_img.rewards.geneval import Mask2FormerDetector, box_from_mask

    detector = Mask2FormerDetector(cat_detector_dir, device="cpu")
    detections = detector.detect(torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(1)))
    assert len(detections) == 2
    for found in detections:
        assert set(found) == {"cat"}
        for detection in found["cat"]:
            assert detection.score >= 0.3
            assert detection.mask.shape == (48, 64)
            assert detection.box == box_from_mask(detection.mask)
    mask = torch.zeros(10, 12, dtype=torch.bool)
    mask[2:5, 3:9] = True
    assert box_from_mask(mask) == (3.0, 2.0, 9.0, 5.0)


def test_geneval_reward_from_registry_scores_by_geneval_rules(cat_detector_dir, tiny_clip_dir):
    from rlhf_img.rewards import build_rewards

    kwargs = {"detector_model": cat_detector_dir, "clip_model": f"local-dir:{tiny_clip_dir}", "device": "cpu"}
    strict, dense = build_rewards(
        [
            {"name": "geneval", "kwargs": {"mode": "strict", **kwargs}},
            {"name": "geneval", "label": "geneval_dense", "kwargs": {"mode": "dense", **kwargs}},
        ]
    )
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    columns = {
        "tag": ["single_object", "single_object", "two_object"],
        "include": [
            [{"class": "cat", "count": 1}],
            [{"class": "dog", "count": 1}],
            [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}],
        ],
        "exclude": [None, None, None],
    }
    prompts = ["a photo of a cat", "a photo of a dog", "a photo of a cat and a dog"]
    assert strict(prompts, images, **columns) == [1.0, 0.0, 0.0]
    assert dense(prompts, images, **columns) == pytest.approx([1.0, 0.0, 0.5])  # one of two clauses met


def _write_metadata(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return str(path)


def test_eval_geneval_end_to_end_from_a_checkpoint(tmp_path, tiny_checkpoint, cat_detector_dir, tiny_clip_dir, capsys):
    from rlhf_img.cli import main

    metadata = _write_metadata(
        tmp_path / "evaluation_metadata.jsonl",
        [
            {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
            {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
            {
                "tag": "counting",
                "include": [{"class": "cat", "count": 2}],
                "exclude": [{"class": "cat", "count": 3}],
                "prompt": "a photo of two cats",
            },
            {
                "tag": "colors",
                "include": [{"class": "cat", "count": 1, "color": "red"}],
                "prompt": "a photo of a red cat",
            },
        ],
    )
    out = tmp_path / "geneval"
    code = main(
        [
            "eval",
            "geneval",
            "--checkpoint",
            tiny_checkpoint,
            "--metadata",
            metadata,
            "--output_dir",
            str(out),
            "--images_per_prompt",
            "2",
            "--detector_model",
            cat_detector_dir,
            "--clip_model",
            f"local-dir:{tiny_clip_dir}",
            "--device",
            "cpu",
            "--cfg_scale",
            "2",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "single_object" in printed and "overall" in printed
    records = [json.loads(line) for line in open(out / "results.jsonl")]
    assert len(records) == 8
    assert set(records[0]) == {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}
    assert sorted(os.listdir(out / "images")) == ["00000", "00001", "00002", "00003"]
    assert sorted(os.listdir(out / "images" / "00002" / "samples")) == ["0000.png", "0001.png"]
    table = json.load(open(out / "table.json"))
    assert table["single_object"] == 0.5  # the detector sees cats everywhere and never a dog
    assert set(table) == {"single_object", "counting", "colors", "overall"}
    assert table["overall"] == pytest.approx(np.mean([table[t] for t in ("single_object", "counting", "colors")]))


def test_eval_geneval_scores_an_image_folder_with_the_shapes_detector(tmp_path):
    """The same command and rules score the shapes world: rendered ground truth is all correct."""
    from rlhf_img.cli import main
    from rlhf_img.worlds import shapes

    image_dir = tmp_path / "images"
    rows = [row for row in shapes.all_prompts() if row["tag"] in ("counting", "position", "color_attr")][::15]
    for index, row in enumerate(rows):
        folder = image_dir / f"{index:05d}"
        (folder / "samples").mkdir(parents=True)
        (folder / "metadata.jsonl").write_text(json.dumps(row))
        for k in range(2):
            Image.fromarray(shapes.render_prompt(row, seed=k)).save(folder / "samples" / f"{k:04d}.png")
    code = main(
        ["eval", "geneval", "--images", str(image_dir), "--detector", "shapes", "--output_dir", str(tmp_path / "o")]
    )
    assert code == 0
    table = json.load(open(tmp_path / "o" / "table.json"))
    assert table["overall"] == 1.0 and set(table) == {"counting", "position", "color_attr", "overall"}


def test_eval_geneval_bad_input_is_one_line_exit_2(tmp_path, capsys):
    from rlhf_img.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "eval",
                "geneval",
                "--images",
                str(tmp_path / "missing"),
                "--detector",
                "shapes",
                "--output_dir",
                str(tmp_path / "o"),
            ]
        )
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "missing" in error
    assert not (tmp_path / "o").exists()


def test_geneval_metadata_reader_reads_the_real_file():
    path = os.path.join(os.path.dirname(REPO), "shared", "data", "geneval", "evaluation_metadata.jsonl")
    if not os.path.isfile(path):
        pytest.skip("../shared/data/geneval is absent")
    from collections import Counter

    from rlhf_img.eval import read_metadata

    rows = read_metadata(path)
    assert Counter(row["tag"] for row in rows) == {
        "single_object": 80,
        "two_object": 99,
        "counting": 80,
        "colors": 94,
        "position": 100,
        "color_attr": 100,
    }
