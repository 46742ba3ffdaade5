"""Reward faults: a per-reward `timeout` stops a hung reward (sync, async, or blocking its event loop) with an
error naming it, and the process exits instead of hanging; NaN/inf/None are "no score"; a reward that raises
mid-run stops it with one line naming the last checkpoint, which stays complete and resumes; the reward server
refuses bodies above its limit with 413 and one line."""

import asyncio
import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import torch
from conftest import REPO, write_recipe

from rlhf_img.cli import main
from rlhf_img.resume import is_complete
from rlhf_img.rewards import (
    RewardConfigError,
    RewardError,
    RewardFunction,
    RewardSpec,
    build_rewards,
    score_rewards,
)
from rlhf_img.rewards.server import RemoteReward, RewardHTTPServer

pytestmark = pytest.mark.timeout(180)

PROMPTS = ["a", "b"]
IMAGES = torch.zeros(2, 3, 4, 4)


def hangs(prompts, images, **kwargs):
    threading.Event().wait()  # forever


async def hangs_async(prompts, images, **kwargs):
    await asyncio.sleep(3600)


async def blocks_its_loop(prompts, images, **kwargs):
    time.sleep(3600)  # a blocking call inside `async def`: no await point, wait_for alone cannot stop it


def quick(prompts, images, **kwargs):
    return [1.0, 2.0]


def grad_mode(prompts, images, **kwargs):
    return [float(torch.is_grad_enabled())] * len(prompts)


def raises(prompts, images, **kwargs):
    raise ValueError("bad\ninput")


@pytest.mark.parametrize("function", [hangs, hangs_async, blocks_its_loop])
def test_a_hung_reward_with_a_timeout_raises_naming_it(function):
    reward = RewardFunction(function, name="slow_judge", timeout=0.3)
    start = time.monotonic()
    with pytest.raises(RewardError) as info:
        score_rewards([RewardFunction(quick, "quick"), reward], PROMPTS, IMAGES, {})
    assert time.monotonic() - start < 5
    assert "reward 'slow_judge' did not return within its timeout of 0.3s" in str(info.value)


def test_a_timed_reward_gives_the_same_scores_and_sees_the_callers_grad_mode():
    plain = score_rewards([RewardFunction(quick, "q")], PROMPTS, IMAGES, {})
    timed = score_rewards([RewardFunction(quick, "q", timeout=10)], PROMPTS, IMAGES, {})
    assert torch.equal(plain, timed)
    with torch.no_grad():
        assert score_rewards([RewardFunction(grad_mode, "g", timeout=10)], PROMPTS, IMAGES, {}).tolist() == [
            [0.0],
            [0.0],
        ]
    assert score_rewards([RewardFunction(grad_mode, "g", timeout=10)], PROMPTS, IMAGES, {}).tolist() == [[1.0], [1.0]]


def test_an_exception_in_a_timed_reward_names_the_reward_and_the_cause():
    with pytest.raises(RewardError, match=r"reward 'r' raised ValueError: bad"):
        score_rewards([RewardFunction(raises, "r", timeout=10)], PROMPTS, IMAGES, {})


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, None])
def test_non_finite_values_are_no_score(bad):
    values = score_rewards([RewardFunction(lambda prompts, images: [bad, 0.5], "r")], PROMPTS, IMAGES, {})
    assert math.isnan(values[0, 0].item()) and values[1, 0].item() == 0.5
    tensor = score_rewards(
        [RewardFunction(lambda prompts, images: torch.tensor([bad if bad is not None else math.nan, 0.5]), "t")],
        PROMPTS,
        IMAGES,
        {},
    )
    assert math.isnan(tensor[0, 0].item())


@pytest.mark.parametrize("value", [0, -1, "10", True, math.inf])
def test_timeout_must_be_a_positive_number(value):
    with pytest.raises(RewardConfigError, match="'timeout' of 'jpeg_compressibility' must be a positive number"):
        RewardSpec.parse({"name": "jpeg_compressibility", "timeout": value})


def test_timeout_is_one_key_for_every_reward_kind():
    (local,) = build_rewards([{"name": "jpeg_compressibility", "timeout": 12}])
    assert local.timeout == 12.0
    url = "http://127.0.0.1:9"  # never contacted: health_check false
    (remote,) = build_rewards([{"name": "remote", "timeout": 7, "kwargs": {"url": url, "health_check": False}}])
    assert isinstance(remote.fn, RemoteReward) and remote.fn.timeout == 7.0  # per request, with its retries
    assert remote.timeout is None  # no watchdog on top: it would cut the retries short
    (legacy,) = build_rewards([{"name": "remote", "kwargs": {"url": url, "timeout": 9, "health_check": False}}])
    assert legacy.fn.timeout == 9.0
    with pytest.raises(RewardConfigError, match="'timeout' is set twice"):
        build_rewards([{"name": "remote", "timeout": 7, "kwargs": {"url": url, "timeout": 9, "health_check": False}}])


FAULTY_REWARDS = """
import threading, time

calls = [0]

def hangs(prompts, images, **kwargs):
    threading.Event().wait()

def spins(prompts, images, **kwargs):
    while True:  # pure Python, never releases a lock or sleeps
        pass

def fails_on_third_call(prompts, images, **kwargs):
    calls[0] += 1
    if calls[0] == 3:
        raise RuntimeError("judge crashed")
    return images.mean(dim=(1, 2, 3)).tolist()
"""


def _recipe(tmp_path, tiny_checkpoint, function, **keys):
    rewards = tmp_path / "faulty_rewards.py"
    rewards.write_text(FAULTY_REWARDS)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple\na dog on a beach\n")
    entry = {"name": f"{rewards}:{function}", **keys.pop("reward", {})}
    defaults = dict(
        per_device_train_batch_size=8,
        num_generations=4,
        max_steps=2,
        beta=0.0,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        output_dir=str(tmp_path / "out"),
        disable_tqdm=True,
        logging_steps=1,
    )
    return write_recipe(
        tmp_path / "recipe.yaml",
        model_name_or_path=tiny_checkpoint,
        dataset=str(prompts),
        rewards=[entry],
        **{**defaults, **keys},
    ), entry["name"]


@pytest.mark.slow  # a real training command that must time out on a hung reward
@pytest.mark.parametrize("function", ["hangs", "spins"])
def test_a_hung_reward_stops_the_real_command_and_the_process_exits(tmp_path, tiny_checkpoint, function):
    recipe, name = _recipe(tmp_path, tiny_checkpoint, function, reward={"timeout": 1})
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "rlhf_img", "train", recipe], cwd=REPO, capture_output=True, text=True, timeout=150
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("rlhf-img: ")]
    assert len(lines) == 1, done.stderr[-3000:]
    assert f"reward {name!r} did not return within its timeout of 1s" in lines[0]
    assert "no checkpoint was saved" in lines[0]
    assert time.monotonic() - start < 140


def test_a_reward_that_raises_mid_run_leaves_the_last_checkpoint_complete_and_resumable(
    tmp_path, tiny_checkpoint, capsys
):
    recipe, name = _recipe(
        tmp_path, tiny_checkpoint, "fails_on_third_call", max_steps=4, save_strategy="steps", save_steps=1
    )
    assert main(["train", recipe]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("rlhf-img: ")]
    checkpoint = str(tmp_path / "out" / "checkpoint-2")
    assert len(lines) == 1 and "Traceback" not in err
    assert f"reward {name!r} raised RuntimeError: judge crashed" in lines[0]
    assert f"the last checkpoint, {checkpoint}, is intact" in lines[0]
    assert f"--resume_from_checkpoint {checkpoint}" in lines[0]
    assert is_complete(checkpoint) and not os.path.exists(tmp_path / "out" / "checkpoint-3")
    # the reward module is imported afresh: its third call is two steps after the resume point
    assert main(["train", recipe, "--resume_from_checkpoint", checkpoint, "--max_steps", "3"]) == 0
    with open(tmp_path / "out" / "trainer_state.json") as f:
        assert json.load(f)["global_step"] == 3


# ------------------------------------------------------------------------------------ reward server: 413
def brightness(prompts, images, **kwargs):
    return images.mean(dim=(1, 2, 3)).tolist()


@pytest.fixture
def small_server():
    server = RewardHTTPServer(("127.0.0.1", 0), [RewardFunction(brightness, "brightness")], max_request_bytes=2000)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_server_refuses_a_body_above_its_limit_with_413_and_one_line(small_server):
    body = json.dumps({"prompts": ["x"], "padding": "y" * 500_000}).encode()  # far above the limit, sent whole
    request = urllib.request.Request(small_server + "/score", data=body, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as info:
        opener.open(request, timeout=30)
    assert info.value.code == 413
    message = json.loads(info.value.read())["error"]
    assert (
        "\n" not in message and "above this server's limit of 2000 bytes" in message and "--max_request_mb" in message
    )
    health = json.loads(opener.open(small_server + "/health", timeout=30).read())
    assert health["max_request_bytes"] == 2000


def test_remote_reward_reports_the_413_in_one_line(small_server):
    images = torch.rand(4, 3, 16, 16)  # ~4 KB of base64: above 2000 bytes
    unchecked = RemoteReward(small_server, timeout=30, retries=0, health_check=False)
    with pytest.raises(RewardError) as info:
        score_rewards([RewardFunction(unchecked, "remote")], ["p"] * 4, images, {})
    assert "HTTP 413" in str(info.value) and "--max_request_mb" in str(info.value) and "\n" not in str(info.value)
    checked = RemoteReward(small_server, timeout=30, retries=0)  # knows the limit from /health: refuses before sending
    with pytest.raises(RewardError, match=r"the batch of 4 images is \d+ bytes, above the limit .* \(2000 bytes\)"):
        score_rewards([RewardFunction(checked, "remote")], ["p"] * 4, images, {})
    small = score_rewards([RewardFunction(checked, "remote")], ["p"], images[:1, :, :4, :4], {})
    assert small.shape == (1, 1)


def test_serve_reward_refuses_a_bad_limit(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["serve-reward", str(tmp_path / "x.yaml"), "--max_request_mb", "0"])
    assert info.value.code == 2
    assert "--max_request_mb must be a positive number" in capsys.readouterr().err
