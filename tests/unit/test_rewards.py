import asyncio
import math

import pytest
import torch

from rlhf_img.rewards import (
    RewardConfigError,
    RewardError,
    RewardFunction,
    RewardSpec,
    build_rewards,
    list_rewards,
    score_rewards,
)

IMAGES = torch.rand(4, 3, 16, 16)
PROMPTS = ["a", "b", "c", "d"]


def test_builtin_jpeg_rewards_are_registered_and_rank_smooth_above_noise():
    assert {"jpeg_compressibility", "jpeg_incompressibility"} <= set(list_rewards())
    (reward,) = build_rewards(["jpeg_compressibility"])
    smooth = torch.full((1, 3, 64, 64), 0.5)
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    images = torch.cat([smooth, noise])
    scores = score_rewards([reward], ["x", "y"], images, {})[:, 0]
    assert scores[0] > scores[1]  # -kB: the flat image compresses better
    (inverse,) = build_rewards([{"name": "jpeg_incompressibility", "kwargs": {"quality": 95}}])
    assert torch.allclose(score_rewards([inverse], ["x", "y"], images, {})[:, 0], -scores)


def test_custom_reward_from_file_gets_kwargs_and_columns(tmp_path):
    path = tmp_path / "rw.py"
    path.write_text(
        "def score(prompts, images, scale, tag, **kwargs):\n"
        "    return [scale * len(p) + (tag[i] == 'x') for i, p in enumerate(prompts)]\n"
    )
    (reward,) = build_rewards([{"name": f"{path}:score", "weight": 2.0, "kwargs": {"scale": 10}}])
    assert reward.weight == 2.0 and reward.name == f"{path}:score"
    scores = score_rewards([reward], ["ab", "c"], IMAGES[:2], {"tag": ["x", "y"]})
    assert scores[:, 0].tolist() == [21.0, 10.0]


def test_custom_reward_from_module(tmp_path, monkeypatch):
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_pkg" / "scores.py").write_text(
        "def ones(prompts, images, **kw):\n    return [1.0] * len(prompts)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (reward,) = build_rewards(["my_pkg.scores:ones"])
    assert score_rewards([reward], PROMPTS, IMAGES, {})[:, 0].tolist() == [1.0] * 4


def test_unknown_reward_name_lists_the_builtins():
    with pytest.raises(RewardConfigError, match="unknown reward 'clipp'.*jpeg_compressibility"):
        build_rewards(["clipp"])


def test_missing_reward_file_names_the_file(tmp_path):
    with pytest.raises(RewardConfigError, match="file not found: .*nope.py"):
        build_rewards([f"{tmp_path}/nope.py:f"])


def test_missing_function_in_reward_file(tmp_path):
    path = tmp_path / "rw.py"
    path.write_text("x = 1\n")
    with pytest.raises(RewardConfigError, match="defines no 'f'"):
        build_rewards([f"{path}:f"])


def test_wrong_length_names_the_reward():
    bad = RewardFunction(lambda prompts, images, **kw: [0.0] * 3, name="my_file.py:score")
    with pytest.raises(RewardError, match=r"reward 'my_file.py:score' returned 3 values for 4 images"):
        score_rewards([bad], PROMPTS, IMAGES, {})


def test_raising_reward_names_the_reward():
    def crash(prompts, images, **kw):
        raise KeyError("boom")

    with pytest.raises(RewardError, match=r"reward 'crash' raised KeyError"):
        score_rewards(build_rewards([crash]), PROMPTS, IMAGES, {})


def test_none_means_no_score_and_becomes_nan():
    partial = RewardFunction(lambda prompts, images, **kw: [1.0, None, 3.0, None], name="partial")
    scores = score_rewards([partial], PROMPTS, IMAGES, {})
    assert scores[0, 0] == 1.0 and math.isnan(scores[1, 0]) and math.isnan(scores[3, 0])


def test_async_rewards_run_concurrently_with_sync_ones():
    async def slow_a(prompts, images, **kw):
        await asyncio.sleep(0.3)
        return [1.0] * len(prompts)

    async def slow_b(prompts, images, **kw):
        await asyncio.sleep(0.3)
        return [2.0] * len(prompts)

    def sync(prompts, images, **kw):
        return torch.arange(len(prompts)).float()  # tensors are accepted too

    import time

    start = time.perf_counter()
    scores = score_rewards(build_rewards([slow_a, slow_b, sync]), PROMPTS, IMAGES, {})
    assert time.perf_counter() - start < 0.55
    assert scores.shape == (4, 3)
    assert scores[:, 0].tolist() == [1.0] * 4 and scores[:, 1].tolist() == [2.0] * 4
    assert scores[:, 2].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_async_reward_error_names_the_reward():
    async def bad(prompts, images, **kw):
        raise ValueError("server down")

    with pytest.raises(RewardError, match=r"reward 'bad' raised ValueError: server down"):
        score_rewards(build_rewards([bad]), PROMPTS, IMAGES, {})


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"weight": 1}, "needs a 'name'"),
        ({"name": "x", "wieght": 1}, "unknown key"),
        ({"name": "x", "weight": "a"}, "must be a number"),
    ],
)
def test_bad_reward_entries(entry, message):
    with pytest.raises(RewardConfigError, match=message):
        RewardSpec.parse(entry)
