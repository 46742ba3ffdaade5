"""The VQA judge on the shapes world: its strict verdict (exact answerer) against GenEval's rules on the same
detector, over every prompt of the world drawn right and drawn wrong; and the `vqa` reward through the registry.

The two verdicts agree on every image in which each prompted class appears as often as the prompt says. They
differ, by design and in one known direction each, only when a class appears more often:
- counts="geneval" (count atoms only where GenEval's metadata caps the count): VQA asks whether *some* objects
  have the colour / relation, GenEval checks only its most confident detections (ties: detector order), so VQA
  passes images GenEval fails;
- counts="geneval2" (GenEval 2 asks "How many" of every object, "a" meaning one): VQA fails images with an extra
  object that GenEval's "at least one" passes.
"""

import random

import numpy as np
import pytest
import torch

from rlhf_img.eval.vqa import ShapesAnswerer, VqaJudge
from rlhf_img.geneval_rules import select_detections
from rlhf_img.rewards import RewardConfigError, build_rewards, score_rewards
from rlhf_img.rewards.geneval import build_scorer
from rlhf_img.worlds import shapes
from rlhf_img.worlds.shapes_detector import detect

KINDS = ("correct", "recoloured", "mirrored", "extra object", "other prompt")


def _scene(row: dict, kind: str, index: int, rows: list[dict]) -> np.ndarray:
    """One `(32, 32, 3)` image of `row` drawn as `kind` says (deterministic per index)."""
    rng = random.Random(index)
    if kind == "other prompt":
        return shapes.render_prompt(rows[(index * 7 + 3) % len(rows)], seed=10_000 + index)
    objects = shapes.sample_scene(row, rng)
    if kind == "recoloured":  # every object in another colour
        objects = [
            shapes.ShapeObject(o.shape, rng.choice([c for c in shapes.COLORS if c != o.color]), o.cx, o.cy, o.radius)
            for o in objects
        ]
    if kind == "extra object":  # one more object of a prompted class, in a colour the prompt did not ask for
        clause = rng.choice(row["include"])
        radius = rng.uniform(5.0, 6.0)
        spot = shapes._place(rng, radius, objects)
        if spot is not None:
            color = rng.choice([c for c in shapes.COLORS if c != clause.get("color")])
            objects = objects + [shapes.ShapeObject(clause["class"], color, spot[0], spot[1], radius)]
    image = shapes.render(objects)
    return np.ascontiguousarray(image[:, ::-1]) if kind == "mirrored" else image  # left <-> right


@pytest.fixture(scope="module")
def judged():
    rows = shapes.all_prompts()
    metadata = [row for row in rows for _ in KINDS]
    kinds = [kind for _ in rows for kind in KINDS]
    pixels = np.stack([_scene(row, kind, index, rows) for index, (row, kind) in enumerate(zip(metadata, kinds))])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    geneval, _ = build_scorer("shapes").judge(images, metadata, "strict")
    surplus = []  # some prompted class detected more often than its clause's count
    for image, row in zip(pixels, metadata):
        found = select_detections(detect(image), row["tag"])
        surplus.append(any(len(found.get(c["class"], [])) > c["count"] for c in row["include"]))
    return images, metadata, kinds, [j.correct for j in geneval], surplus


@pytest.mark.parametrize("counts", ["geneval", "geneval2"])
def test_strict_vqa_verdict_agrees_with_geneval_rules_except_on_surplus_objects(judged, counts):
    images, metadata, kinds, geneval, surplus = judged
    records = VqaJudge(ShapesAnswerer(), aggregation="strict", counts=counts).judge(images, metadata)
    vqa = [record["correct"] for record in records]
    agree = [a == b for a, b in zip(vqa, geneval)]
    per_kind = {kind: np.mean([ok for ok, k in zip(agree, kinds) if k == kind]) for kind in KINDS}
    print(
        f"\ncounts={counts}: agreement {np.mean(agree):.4f} over {len(agree)} images; per kind "
        + ", ".join(f"{k} {v:.3f}" for k, v in per_kind.items())
        + f"; pass rates geneval {np.mean(geneval):.3f} vqa {np.mean(vqa):.3f}"
    )
    assert per_kind["correct"] == 1.0 and all(geneval[i] for i, k in enumerate(kinds) if k == "correct")
    for i, ok in enumerate(agree):
        if not surplus[i]:
            assert ok, (metadata[i]["prompt"], kinds[i], geneval[i], vqa[i])
        elif not ok:  # each mode differs from GenEval in one direction only
            assert vqa[i] == (counts == "geneval"), (metadata[i]["prompt"], kinds[i], geneval[i], vqa[i])
    disagreements = len(agree) - sum(agree)
    assert 0 < disagreements <= sum(surplus)  # the surplus images exist and explain every disagreement


def _columns(rows: list[dict]) -> dict:
    """Dataset columns as the trainer passes them (Arrow rows: absent clause keys are None)."""
    keys = ("class", "count", "color", "position")
    return {
        "tag": [r["tag"] for r in rows],
        "include": [[{k: c.get(k) for k in keys} for c in r["include"]] for r in rows],
        "exclude": [[{k: c.get(k) for k in keys} for c in r.get("exclude", [])] or None for r in rows],
    }


def test_vqa_reward_scores_shapes_images_from_metadata_columns():
    rows = [row for tag in ("colors", "counting", "position") for row in shapes.all_prompts() if row["tag"] == tag][::9]
    right = [shapes.render_prompt(row, seed=i) for i, row in enumerate(rows)]
    wrong = [shapes.render_prompt(rows[(i + 1) % len(rows)], seed=i) for i in range(len(rows))]
    images = torch.from_numpy(np.stack(right + wrong)).permute(0, 3, 1, 2).float() / 255
    prompts = [r["prompt"] for r in rows] * 2
    rewards = build_rewards(
        [
            {"name": "vqa", "kwargs": {"answerer": "shapes"}},
            {"name": "vqa", "label": "vqa_am", "kwargs": {"answerer": "shapes", "aggregation": "soft_tifa_am"}},
        ]
    )
    scores = score_rewards(rewards, prompts, images, _columns(rows + rows))
    assert scores.shape == (len(prompts), 2)
    assert scores[: len(rows)].eq(1.0).all()
    judged = VqaJudge(ShapesAnswerer(), "soft_tifa_am").judge(images, rows + rows)
    assert scores[:, 1].tolist() == pytest.approx([r["score"] for r in judged])
    assert scores[len(rows) :, 0].tolist() == [float(r["correct"]) for r in judged[len(rows) :]]
    assert 0 < scores[len(rows) :, 1].sum() < len(rows)  # partial credit on wrong images
    # an `atoms` column wins over the metadata columns: is the first prompt's shape there, is it absent
    shape = rows[0]["include"][0]["class"]
    atoms = [
        [{"type": "object", "question": "q", "subject": shape}],
        [{"type": "count", "question": "q", "answer": "no", "subject": shape, "count": 1, "quantifier": "fewer than"}],
    ]
    only = score_rewards(
        rewards[:1], prompts[:1] * 2, images[:1].repeat(2, 1, 1, 1), {**_columns(rows[:1] * 2), "atoms": atoms}
    )
    assert only.flatten().tolist() == [1.0, 0.0]


def test_vqa_reward_config_errors_name_the_setting():
    with pytest.raises(RewardConfigError, match="answerer must be one of"):
        build_rewards([{"name": "vqa", "kwargs": {"answerer": "detector"}}])
    with pytest.raises(RewardConfigError, match="needs 'base_url' and 'model'"):
        build_rewards([{"name": "vqa", "kwargs": {"answerer": "vlm"}}])
    with pytest.raises(RewardConfigError, match="aggregation must be one of"):
        build_rewards([{"name": "vqa", "kwargs": {"aggregation": "mean"}}])
    with pytest.raises(RewardConfigError, match="apply to answerer: vlm"):
        build_rewards([{"name": "vqa", "kwargs": {"answerer": "shapes", "model": "qwen"}}])
