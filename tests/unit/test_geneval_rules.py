import json
import os

import numpy as np
import pytest
from conftest import REPO

from rlhf_img.geneval_rules import (
    Detection,
    evaluate,
    relative_position,
    select_detections,
    summarize,
)

GENEVAL = os.path.join(os.path.dirname(REPO), "shared", "data", "geneval", "evaluation_metadata.jsonl")


def box(x, y, size=10):
    return Detection((x, y, x + size, y + size))


def test_relative_position_uses_centres_with_a_size_margin():
    assert relative_position(box(0, 0), box(30, 0)) == {"left of"}
    assert relative_position(box(30, 0), box(0, 0)) == {"right of"}
    assert relative_position(box(0, 0), box(0, 30)) == {"above"}
    assert relative_position(box(0, 30), box(0, 0)) == {"below"}
    assert relative_position(box(0, 0), box(1, 1)) == set()  # within 0.1 x summed sizes: no relation
    assert relative_position(box(0, 0), box(30, 30)) == {"left of", "above"}


def test_select_detections_thresholds_and_sorts():
    detections = {"cat": [Detection((0, 0, 1, 1), 0.5), Detection((0, 0, 1, 1), 0.95), Detection((0, 0, 1, 1), 0.2)]}
    assert [d.score for d in select_detections(detections, "colors")["cat"]] == [0.95, 0.5]
    assert [d.score for d in select_detections(detections, "counting")["cat"]] == [0.95]


def test_counting_include_and_exclude():
    meta = {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}]}
    assert evaluate({"dog": [box(0, 0), box(20, 0)]}, meta).correct
    assert not evaluate({"dog": [box(0, 0)]}, meta).correct
    too_many = evaluate({"dog": [box(0, 0), box(20, 0), box(40, 0)]}, meta, mode="dense")
    assert not too_many.correct and 0 < too_many.score < 1


def test_colour_is_checked_on_the_most_confident_objects_only():
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}
    red_first = {"car": [Detection((0, 0, 5, 5), 0.9, "red"), Detection((9, 9, 15, 15), 0.5, "blue")]}
    blue_first = {"car": [Detection((0, 0, 5, 5), 0.9, "blue"), Detection((9, 9, 15, 15), 0.5, "red")]}
    assert evaluate(red_first, meta).correct
    assert not evaluate(blue_first, meta).correct


def test_position_needs_the_target_group_matched():
    meta = {
        "tag": "position",
        "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}],
    }
    assert evaluate({"cat": [box(0, 0)], "dog": [box(40, 0)]}, meta).correct
    wrong_side = evaluate({"cat": [box(40, 0)], "dog": [box(0, 0)]}, meta, mode="dense")
    assert not wrong_side.correct and wrong_side.score == pytest.approx(0.75)  # count credits 1, 1; position 0
    no_target = evaluate({"dog": [box(0, 0)]}, meta, mode="dense")
    assert not no_target.correct and "no target" in " ".join(no_target.reasons)


def test_dense_is_one_exactly_when_strict_passes():
    meta = {
        "tag": "color_attr",
        "include": [{"class": "a", "count": 1, "color": "red"}, {"class": "b", "count": 1, "color": "blue"}],
    }
    good = {"a": [Detection((0, 0, 1, 1), 1, "red")], "b": [Detection((5, 5, 6, 6), 1, "blue")]}
    half = {"a": [Detection((0, 0, 1, 1), 1, "red")], "b": [Detection((5, 5, 6, 6), 1, "green")]}
    assert evaluate(good, meta, "dense").score == 1.0 and evaluate(good, meta).correct
    assert 0.5 < evaluate(half, meta, "dense").score < 1.0 and not evaluate(half, meta).correct
    assert evaluate({}, meta, "dense").score == 0.0


def test_summary_is_the_unweighted_mean_of_tags():
    table = summarize([("counting", True), ("counting", False), ("colors", True)])
    assert table == {"counting": 0.5, "colors": 1.0, "overall": 0.75}


@pytest.mark.skipif(not os.path.exists(GENEVAL), reason="GenEval metadata not in ../shared/data/geneval")
def test_rules_read_the_real_geneval_metadata():
    """All 553 prompts: detections built to satisfy each prompt pass; removing one object fails."""
    with open(GENEVAL) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 553
    counts = {}
    for row in rows:
        counts[row["tag"]] = counts.get(row["tag"], 0) + 1
        detections, placed = {}, []
        offsets = {"left of": (-60, 0), "right of": (60, 0), "above": (0, -60), "below": (0, 60)}
        for clause in row["include"]:
            x, y = 200, 200
            if "position" in clause:
                relation, group = clause["position"]
                tx, ty = placed[group]
                x, y = tx + offsets[relation][0], ty + offsets[relation][1]
            placed.append((x, y))
            for k in range(clause["count"]):
                detections.setdefault(clause["class"], []).append(
                    Detection((x + 3 * k, y, x + 3 * k + 10, y + 10), 0.99, clause.get("color"))
                )
        assert evaluate(detections, row).correct, row["prompt"]
        first = row["include"][0]["class"]
        detections[first] = detections[first][:-1]
        assert not evaluate(detections, row).correct, row["prompt"]
    assert counts == {
        "single_object": 80,
        "two_object": 99,
        "counting": 80,
        "colors": 94,
        "position": 100,
        "color_attr": 100,
    }


# one passing and one failing case per GenEval tag, with hand-made detections
PER_TAG = {
    "single_object": ({"include": [{"class": "bench", "count": 1}]}, {"bench": [box(0, 0)]}, {"chair": [box(0, 0)]}),
    "two_object": (
        {"include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]},
        {"cat": [box(0, 0)], "dog": [box(30, 0)]},
        {"cat": [box(0, 0), box(30, 0)]},
    ),
    "counting": (
        {"include": [{"class": "cup", "count": 3}], "exclude": [{"class": "cup", "count": 4}]},
        {"cup": [box(0, 0), box(20, 0), box(40, 0)]},
        {"cup": [box(0, 0), box(20, 0)]},
    ),
    "colors": (
        {"include": [{"class": "car", "count": 1, "color": "green"}]},
        {"car": [Detection((0, 0, 9, 9), 0.8, "green")]},
        {"car": [Detection((0, 0, 9, 9), 0.8, "pink")]},
    ),
    "position": (
        {"include": [{"class": "tv", "count": 1}, {"class": "cup", "count": 1, "position": ["below", 0]}]},
        {"tv": [box(0, 0)], "cup": [box(0, 40)]},
        {"tv": [box(0, 40)], "cup": [box(0, 0)]},
    ),
    "color_attr": (
        {"include": [{"class": "bus", "count": 1, "color": "red"}, {"class": "kite", "count": 1, "color": "blue"}]},
        {"bus": [Detection((0, 0, 9, 9), 0.8, "red")], "kite": [Detection((30, 0, 39, 9), 0.8, "blue")]},
        {"bus": [Detection((0, 0, 9, 9), 0.8, "blue")], "kite": [Detection((30, 0, 39, 9), 0.8, "red")]},
    ),
}


@pytest.mark.parametrize("tag", sorted(PER_TAG))
def test_each_tag_passes_and_fails_by_geneval_rules(tag):
    clauses, passing, failing = PER_TAG[tag]
    meta = {"tag": tag, **clauses}
    assert evaluate(passing, meta).correct and evaluate(passing, meta, "dense").score == 1.0
    failed = evaluate(failing, meta, "dense")
    assert not failed.correct and failed.reasons and 0.0 <= failed.score < 1.0


def test_position_margin_edges():
    # centres 10 apart horizontally, boxes 10 wide: margin 0.1 x (10 + 10) = 2 -> revised dx 8 of norm 10 -> 0.8
    assert relative_position(box(0, 0), box(10, 0)) == {"left of"}
    # an offset exactly at the margin is no relation (revised offset 0)
    assert relative_position(box(0, 0), box(2, 0)) == set()
    # just past it on both axes: the diagonal counts for both relations only beyond 0.5 of the norm
    assert relative_position(box(0, 0), box(30, 30)) == {"left of", "above"}
    assert relative_position(box(0, 0), box(30, 12)) == {"left of"}  # dy revised (12 - 2) / norm 32.3 < 0.5
    # boxes of different sizes widen the margin
    wide = Detection((0, 0, 100, 10))
    assert relative_position(wide, box(60, 0)) == set()  # offset 15, margin 0.1 x 110 = 11: revised 4 / 15 < 0.5


def test_counting_threshold_and_exclude_edges():
    at_threshold = {"cup": [Detection((0, 0, 1, 1), 0.9), Detection((5, 0, 6, 1), 0.91)]}
    assert len(select_detections(at_threshold, "counting")["cup"]) == 1  # strictly above 0.9
    assert len(select_detections(at_threshold, "colors")["cup"]) == 2  # 0.3 elsewhere
    many = {"cup": [Detection((i, 0, i + 1, 1), 0.5 + i / 100) for i in range(20)]}
    kept = select_detections(many, "single_object")["cup"]
    assert len(kept) == 16 and kept[0].score == pytest.approx(0.69)  # at most 16, most confident first
    meta = {"tag": "counting", "include": [{"class": "cup", "count": 2}], "exclude": [{"class": "cup", "count": 3}]}
    exactly = {"cup": [box(0, 0), box(20, 0)]}
    one_more = {"cup": [box(0, 0), box(20, 0), box(40, 0)]}
    assert evaluate(exactly, meta).correct and not evaluate(one_more, meta).correct


def test_position_on_the_half_direction_edge_is_geneval_bit_for_bit():
    # Found by a numerical search over integer (mask-derived) boxes up to 1024 px: a's centre is (378.5, 652.5),
    # b's (2, 2), so the offset is (376.5, 650.5) and the x margin 0.1 x (3 + 4) = 0.7. GenEval works on mmdet's
    # float32 boxes and divides by np.linalg.norm: dx = 375.8 / 751.59998 rounds to exactly 0.5 -> not "right of".
    # The former float64 + math.hypot arithmetic gave dx = 0.500000027 -> "right of". (The float64 norms of hypot
    # and np.linalg.norm agree here; on this edge the verdict is decided by GenEval's float32.)
    a, b = Detection((377.0, 651.0, 380.0, 654.0)), Detection((0.0, 0.0, 4.0, 4.0))
    assert relative_position(a, b) == {"below"}
    meta = {
        "tag": "position",
        "include": [{"class": "cup", "count": 1}, {"class": "bowl", "count": 1, "position": ["right of", 0]}],
    }
    assert not evaluate({"cup": [b], "bowl": [a]}, meta).correct


def test_tied_scores_are_ordered_as_geneval_argsort_orders_them():
    # GenEval orders a class's detections by np.argsort(scores)[::-1] on mmdet's float32 score column: for up to
    # 16 detections numpy sorts equal scores in index order, so reversed, the LATER of tied detections comes first
    # (a stable "most confident first" sort would put the earlier one first).
    left, right = Detection((0, 0, 10, 10), 0.8), Detection((60, 0, 70, 10), 0.8)
    assert select_detections({"cat": [left, right]}, "position")["cat"] == [right, left]
    meta = {
        "tag": "position",
        "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["right of", 0]}],
    }
    found = select_detections({"dog": [Detection((30, 0, 40, 10), 0.9)], "cat": [left, right]}, "position")
    assert evaluate(found, meta).correct  # the cat GenEval checks is `right`
    swapped = select_detections({"dog": [Detection((30, 0, 40, 10), 0.9)], "cat": [right, left]}, "position")
    assert not evaluate(swapped, meta).correct
    # ties around a higher score: indices 1, 2 and 4 tie at 0.8 -> order 3, 4, 2, 1 (0.2 is below the threshold)
    items = [Detection((i, 0, i + 1, 1), s) for i, s in enumerate([0.2, 0.8, 0.8, 0.9, 0.8])]
    kept = select_detections({"cup": items}, "single_object")["cup"]
    assert kept == [items[3], items[4], items[2], items[1]]
    ordering = np.argsort(np.array([d.score for d in items], dtype=np.float32))[::-1]
    assert [items[i] for i in ordering if items[i].score > 0.3] == kept  # the line GenEval runs


def test_threshold_is_compared_in_float32_like_geneval():
    # mmdet scores are float32 and numpy compares them with the threshold in float32: float32(0.3) is not > 0.3
    at = float(np.float32(0.3))  # 0.30000001192..., above 0.3 as a Python float
    above = float(np.nextafter(np.float32(0.3), np.float32(1)))
    found = select_detections({"cup": [Detection((0, 0, 1, 1), at), Detection((5, 0, 6, 1), above)]}, "colors")
    assert [d.score for d in found["cup"]] == [above]
