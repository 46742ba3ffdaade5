"""object_credit: each clause of a GenEval prompt gets its own group-normalised advantage inside its boxes."""

import pytest
import torch

from rlhf_img.geneval_rules import Detection, ObjectCredit, evaluate
from rlhf_img.object_credit import clause_advantages, object_token_advantages, pixel_advantages

COLOR_ATTR = {
    "tag": "color_attr",
    "include": [{"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "blue"}],
}


def pool_4x4(maps):  # the shapes world's layout: 32 x 32 pixels, an 8 x 8 code grid, raster order
    return torch.nn.functional.avg_pool2d(maps[:, None].float(), 4).flatten(1)


def test_each_include_clause_reports_its_credit_and_the_boxes_it_was_judged_on():
    circle, square = Detection((0, 0, 8, 8), 1, "red"), Detection((16, 16, 24, 24), 1, "green")
    judgement = evaluate({"circle": [circle], "square": [square]}, COLOR_ATTR, "dense")
    assert [(o.credit, o.boxes) for o in judgement.objects] == [(1.0, [circle.box]), (0.5, [square.box])]
    missing = evaluate({"circle": [circle]}, COLOR_ATTR, "dense").objects[1]
    assert missing == ObjectCredit(0.0, [])  # nothing of its class: no region to credit


def test_clause_advantages_are_normalised_within_each_group_and_zero_without_spread():
    credits = [[1.0, 0.5], [0.5, 1.0], [1.0, 1.0], [1.0, 1.0]]  # two groups of two images
    out = clause_advantages(credits, num_generations=2)
    expected = 0.25 / (torch.tensor([1.0, 0.5], dtype=torch.float64).std().item() + 1e-4)
    assert out[0] == pytest.approx([expected, -expected]) and out[1] == pytest.approx([-expected, expected])
    assert out[2] == [0.0, 0.0] and out[3] == [0.0, 0.0]  # same credits in the group: no signal


def test_clause_advantages_scale_as_scale_rewards_says():
    credits = [[1.0, 0.5], [0.5, 1.0], [1.0, 1.0], [1.0, 0.0]]  # two groups of two images
    pooled = torch.tensor(credits, dtype=torch.float64).flatten().std().item()
    none, batch = (clause_advantages(credits, 2, scale) for scale in ("none", "batch"))
    assert none == [pytest.approx([0.25, -0.25]), pytest.approx([-0.25, 0.25]), [0.0, 0.5], [0.0, -0.5]]
    expected = [[value / (pooled + 1e-4) for value in row] for row in none]
    assert all(row == pytest.approx(want) for row, want in zip(batch, expected))
    group = clause_advantages(credits, 2, "group")
    assert group[3][1] == pytest.approx(-0.5 / (torch.tensor([1.0, 0.0]).std().item() + 1e-4))
    with pytest.raises(ValueError, match="scale_rewards must be one of"):
        clause_advantages(credits, 2, "per_clause")


def test_pixels_inside_a_clause_box_mix_the_image_and_clause_advantages():
    objects = [ObjectCredit(1.0, [(0.0, 0.0, 8.0, 8.0)]), ObjectCredit(0.5, [(4.0, 4.0, 12.5, 12.0)])]
    result, inside = pixel_advantages(0.2, objects, [1.0, -1.0], (32, 32), beta=0.5)
    assert result[0, 0].item() == pytest.approx(0.5 * 0.2 + 0.5 * 1.0)  # first box only
    assert result[5, 5].item() == pytest.approx(0.5 * 0.2 + 0.5 * 0.0)  # both boxes: their mean
    assert result[11, 12].item() == pytest.approx(0.5 * 0.2 - 0.5)  # a fractional corner covers its pixel
    assert result[20, 20].item() == pytest.approx(0.2) and not inside[20, 20]  # outside every box
    assert inside.sum().item() == 64 + 9 * 8 - 16


def test_two_images_with_equal_totals_still_learn_which_object_each_got_right():
    # image 0 drew the red circle right and the square wrong; image 1 the reverse: same dense total, so the
    # image-level advantage is 0 for both, but each object's tokens learn from how that object did
    circle, square = (0.0, 0.0, 8.0, 8.0), (16.0, 16.0, 24.0, 24.0)
    objects = [
        [ObjectCredit(1.0, [circle]), ObjectCredit(0.5, [square])],
        [ObjectCredit(0.5, [circle]), ObjectCredit(1.0, [square])],
    ]
    per_clause = clause_advantages([[o.credit for o in items] for items in objects], 2)
    advantages, box_share = object_token_advantages(torch.zeros(2), objects, per_clause, (32, 32), pool_4x4, 1.0)
    assert advantages.shape == (2, 64) and box_share == pytest.approx(128 / 1024)
    grid = advantages.view(2, 8, 8)
    assert (grid[0, :2, :2] > 0).all() and (grid[0, 4:6, 4:6] < 0).all()  # right circle up, wrong square down
    assert (grid[1, :2, :2] < 0).all() and (grid[1, 4:6, 4:6] > 0).all()
    assert grid[:, 7, 7].abs().max() == 0  # background keeps the image advantage (0 here)


def test_beta_zero_is_the_image_advantage_on_every_token():
    objects = [[ObjectCredit(1.0, [(0.0, 0.0, 8.0, 8.0)])], [ObjectCredit(0.0, [])]]
    image = torch.tensor([0.7, -0.7])
    advantages, _ = object_token_advantages(image, objects, [[1.0], [-1.0]], (32, 32), pool_4x4, 0.0)
    torch.testing.assert_close(advantages, image[:, None].expand(2, 64))


def test_object_credits_reuse_the_judgements_of_the_same_images_and_only_those():
    from rlhf_img.rewards.shapes_geneval import ShapesGenEval
    from rlhf_img.worlds import shapes

    reward = ShapesGenEval()
    calls = []
    detect = reward.scorer.detector.detect
    reward.scorer.detector.detect = lambda images: calls.append(len(images)) or detect(images)
    row = {"prompt": "a photo of a red circle and a blue square", **COLOR_ATTR}
    images = torch.from_numpy(shapes.render_prompt(row, seed=0)).permute(2, 0, 1)[None].float() / 255
    columns = {"tag": [row["tag"]], "include": [row["include"]]}
    assert reward([row["prompt"]], images, **columns) == [1.0]
    objects = reward.object_credits([row["prompt"]], images, **columns)
    assert calls == [1] and [o.credit for o in objects[0]] == [1.0, 1.0] and all(o.boxes for o in objects[0])
    reward.object_credits([row["prompt"]], images.clone(), **columns)  # another tensor: detected afresh
    assert calls == [1, 1]
