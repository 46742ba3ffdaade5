import json
import os

import numpy as np
import pytest
import torch
from conftest import REPO

from rlhf_img.geneval_rules import TAGS, summarize
from rlhf_img.rewards import build_rewards, score_rewards
from rlhf_img.worlds import shapes
from rlhf_img.worlds.shapes_detector import detect, judge

SHIPPED = os.path.join(REPO, "checkpoints", "shapes-tiny")


def test_prompts_cover_the_six_families_with_geneval_metadata():
    rows = shapes.all_prompts()
    assert {r["tag"] for r in rows} == set(TAGS)
    assert len({r["prompt"] for r in rows}) == len(rows)
    counting = next(r for r in rows if r["tag"] == "counting")
    assert counting["exclude"][0]["count"] == counting["include"][0]["count"] + 1
    position = next(r for r in rows if r["tag"] == "position")
    assert position["include"][1]["position"][1] == 0


def test_split_is_deterministic_disjoint_and_covers_every_tag():
    train, held_out = shapes.split_prompts()
    assert shapes.split_prompts() == (train, held_out)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
    assert {r["tag"] for r in held_out} == set(TAGS) == {r["tag"] for r in train}
    assert 0.15 < len(held_out) / (len(train) + len(held_out)) < 0.25


def test_every_held_out_position_scene_is_trained_in_its_other_phrasing():
    train, held_out = shapes.split_prompts()
    trained = {shapes._layout(r) for r in train if r["tag"] == "position"}
    held = [shapes._layout(r) for r in held_out if r["tag"] == "position"]
    assert len(held) == len(set(held)) >= 1
    assert set(held) <= trained
    circle_left = {
        "tag": "position",
        "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}],
    }
    square_right = {
        "tag": "position",
        "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1, "position": ["right of", 0]}],
    }
    assert shapes._layout(circle_left) == shapes._layout(square_right)


def test_shipped_prompt_files_match_the_generator():
    train, held_out = shapes.split_prompts()
    balanced = shapes.tag_balanced(train)
    for rows, name in (
        (train, "shapes-train.jsonl"),
        (held_out, "shapes-held-out.jsonl"),
        (balanced, "shapes-train-balanced.jsonl"),
    ):
        with open(os.path.join(REPO, "recipes", "prompts", name)) as f:
            assert [json.loads(line) for line in f] == rows


def test_tag_balanced_prompts_weigh_tags_equally_and_hold_nothing_out():
    train, held_out = shapes.split_prompts()
    balanced = shapes.tag_balanced(train)
    counts = {}
    for row in balanced:
        counts[row["tag"]] = counts.get(row["tag"], 0) + 1
    assert len(set(counts.values())) == 1
    assert {r["prompt"] for r in balanced} == {r["prompt"] for r in train}


def test_rendered_images_score_one_on_every_tag():
    results = []
    for index, row in enumerate(shapes.all_prompts()):
        for k in range(4):
            results.append((row["tag"], judge(shapes.render_prompt(row, 1000 * index + k), row).correct))
    table = summarize(results)
    assert all(value == 1.0 for value in table.values()), table


def test_detector_reads_shape_colour_and_box():
    image = shapes.render(
        [shapes.ShapeObject("triangle", "blue", 10.5, 12.5, 4.5), shapes.ShapeObject("square", "red", 24.5, 20.5, 4.0)]
    )
    found = detect(image)
    assert set(found) == {"triangle", "square"}
    assert found["triangle"][0].color == "blue" and found["square"][0].color == "red"
    x1, y1, x2, y2 = found["square"][0].box
    assert abs((x1 + x2) / 2 - 24.5) <= 0.5 and abs((y1 + y2) / 2 - 20.5) <= 0.5


def test_blank_image_scores_zero():
    blank = np.full((32, 32, 3), shapes.BACKGROUND, dtype=np.uint8)
    row = shapes.all_prompts()[0]
    assert judge(blank, row, "dense").score == 0.0


def test_shapes_geneval_reward_reads_dataset_columns():
    rows = [r for r in shapes.all_prompts() if r["tag"] in ("counting", "position")][:4]
    rendered = np.stack([shapes.render_prompt(r, 3) for r in rows])
    images = torch.from_numpy(rendered).permute(0, 3, 1, 2).float() / 255
    columns = {
        "tag": [r["tag"] for r in rows],
        "include": [r["include"] for r in rows],
        "exclude": [r.get("exclude") for r in rows],
    }
    (dense,) = build_rewards([{"name": "shapes_geneval", "kwargs": {"mode": "dense"}}])
    assert score_rewards([dense], [r["prompt"] for r in rows], images, columns)[:, 0].tolist() == [1.0] * 4
    blank = torch.full_like(images, 200 / 255)
    assert score_rewards([dense], [r["prompt"] for r in rows], blank, columns)[:, 0].max() < 1.0


@pytest.mark.skipif(not os.path.isdir(SHIPPED), reason="checkpoints/shapes-tiny not built")
def test_shipped_tokenizer_reconstructions_score_at_least_095():
    from rlhf_img.families.causal_vq.vq import VQTokenizer
    from rlhf_img.images import to_uint8

    vq = VQTokenizer.from_pretrained(os.path.join(SHIPPED, "visual_tokenizer")).eval()
    results = []
    for index, row in enumerate(shapes.all_prompts()):
        rendered = np.stack([shapes.render_prompt(row, 5000 + 7 * index + k) for k in range(2)])
        with torch.no_grad():
            recon = to_uint8(vq.decode(vq.encode(torch.from_numpy(rendered).permute(0, 3, 1, 2).float() / 255)))
        results += [(row["tag"], judge(image, row).correct) for image in recon]
    table = summarize(results)
    assert table["overall"] >= 0.95, table


def test_geneval_ranks_equally_confident_shapes_detections_in_scan_order():
    """The detector's confidences tie; GenEval's argsort ranking must then give palette/scan order (the order
    the world's rewards and published scores were computed with), not its reverse."""
    from rlhf_img.geneval_rules import select_detections
    from rlhf_img.worlds.shapes_detector import PALETTE_NAMES

    objects = [shapes.ShapeObject("circle", color, x, 16, 5) for color, x in (("red", 8), ("blue", 24))]
    image = shapes.render(objects)
    found = detect(image)
    ranked = select_detections(found, "colors")["circle"]
    scan_order = sorted(found["circle"], key=lambda d: PALETTE_NAMES.index(d.color))
    assert [d.color for d in ranked] == [d.color for d in scan_order] and len(ranked) == 2
    assert judge(
        image, {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": ranked[0].color}]}
    ).correct


def test_shape_free_counts_are_training_only_and_render_mixed_shapes():
    rows = shapes.shape_free_count_prompts()
    assert [r["prompt"] for r in rows] == [f"a photo of {w} shapes" for w in ("two", "three", "four")]
    # not in the enumeration the split is drawn from, so the split (and the shipped held-out file) cannot move
    assert not {r["prompt"] for r in rows} & {r["prompt"] for r in shapes.all_prompts()}
    mixed = 0
    for row in rows:
        for seed in range(6):
            image = shapes.render_prompt(row, seed)
            found = detect(image)
            assert sum(len(items) for items in found.values()) == row["include"][0]["count"]
            assert judge(image, row).correct
            mixed += len(found) > 1
    assert mixed >= 12  # each object's shape is drawn at random, not one shape per image
    three, four = shapes.render_prompt(rows[1], 0), shapes.render_prompt(rows[2], 0)
    assert not judge(three, rows[2]).correct and not judge(four, rows[1]).correct
    assert 0 < judge(three, rows[2], "dense").score < 1 and 0 < judge(four, rows[1], "dense").score < 1


def test_shapes_geneval_reward_counts_any_shape_for_shape_free_prompts_only():
    rows = shapes.shape_free_count_prompts()
    four = [shapes.render_prompt(rows[2], seed) for seed in range(3)]
    images = torch.from_numpy(np.stack(four)).permute(0, 3, 1, 2).float() / 255
    (strict,) = build_rewards([{"name": "shapes_geneval", "kwargs": {"mode": "strict"}}])

    def score(row):
        columns = {"tag": [row["tag"]] * 3, "include": [row["include"]] * 3, "exclude": [row.get("exclude")] * 3}
        return score_rewards([strict], [row["prompt"]] * 3, images, columns)[:, 0].tolist()

    assert score(rows[2]) == [1.0] * 3 and score(rows[1]) == [0.0] * 3
    assert any(len(detect(image)) > 1 for image in four)  # a mixed scene, so "four triangles" must fail on it
    # a prompt naming a shape still counts that shape alone: mixed scenes fail "four triangles"
    four_triangles = next(r for r in shapes.all_prompts() if r["prompt"] == "a photo of four triangles")
    assert score(four_triangles) == [float(len(detect(image)) == 1 and "triangle" in detect(image)) for image in four]


@pytest.mark.parametrize("shape_free_counts", [False, True])
def test_world_sft_adds_the_shape_free_counts_only_when_asked(tmp_path, shape_free_counts):
    from rlhf_img.worlds.sft import WorldSFTConfig, render_pairs, world_tokenizer

    config = WorldSFTConfig(output_dir=str(tmp_path), num_examples=300, shape_free_counts=shape_free_counts)
    folder = render_pairs(config, str(tmp_path / "pairs"))
    captions = [open(os.path.join(folder, name)).read() for name in sorted(os.listdir(folder)) if name.endswith(".txt")]
    held_out = {r["prompt"] for r in shapes.split_prompts()[1]}
    assert len(captions) == 300 and not set(captions) & held_out
    assert any(caption.endswith(" shapes") for caption in captions) == shape_free_counts
    assert ("shapes" in world_tokenizer(shape_free_counts).get_vocab()) == shape_free_counts
