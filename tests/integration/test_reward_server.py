"""The reward server (`rlhf-img serve-reward`) and the `remote` reward: same scores as in-process, a GRPO step
over loopback, and clear bounded errors when the server is gone, silent, or misconfigured."""

import json
import math
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from conftest import REPO, grpo_args
from datasets import Dataset

from rlhf_img import ImageGRPOTrainer, load_policy
from rlhf_img.cli import main
from rlhf_img.rewards import (
    RewardConfigError,
    RewardError,
    build_rewards,
    score_rewards,
)
from rlhf_img.rewards.server import LISTENING_PREFIX, RemoteReward

pytestmark = pytest.mark.timeout(120)

SERVER_REWARDS = '''
def brightness(prompts, images, **kwargs):
    return images.mean(dim=(1, 2, 3)).tolist()


def judge(prompts, images, score=None, **kwargs):
    """The `score` column (0 without it); no score for the prompt 'skip'; crashes on the prompt 'crash'."""
    if "crash" in prompts:
        raise RuntimeError("judge crashed")
    values = score if score is not None else [0.0] * len(prompts)
    return [None if prompt == "skip" else float(value) for prompt, value in zip(prompts, values)]
'''


def brightness(prompts, images, **kwargs):
    return images.mean(dim=(1, 2, 3)).tolist()


def quantised(images: torch.Tensor) -> torch.Tensor:
    """What the server sees: images rounded to uint8 and back."""
    return (images.clamp(0, 1) * 255).round() / 255


class ServerProcess:
    """`python -m rlhf_img serve-reward CONFIG --port 0` in a subprocess; `url` waits for its listening line."""

    def __init__(self, config: str, log_path: str) -> None:
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rlhf_img", "serve-reward", config, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=REPO,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()  # readline alone could block forever
        self._url = None

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    @property
    def url(self) -> str:
        deadline = time.monotonic() + 90
        while self._url is None:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            if line is None:
                with open(self.log.name) as f:
                    raise RuntimeError(f"server exited with {self.process.wait()}: {f.read()}")
            if line.startswith(LISTENING_PREFIX):
                self._url = line[len(LISTENING_PREFIX) :].strip()
        return self._url

    def stop(self) -> int:
        """SIGTERM (then SIGKILL after 10 s); the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        self.log.close()
        return self.process.returncode


@pytest.fixture(scope="module")
def server_config(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("reward_server")
    (folder / "server_rewards.py").write_text(SERVER_REWARDS)
    config = folder / "server.yaml"
    config.write_text(
        "rewards:\n"
        f"  - {{name: {folder / 'server_rewards.py'}:brightness, weight: 1.0, label: brightness}}\n"
        f"  - {{name: {folder / 'server_rewards.py'}:judge, weight: 0.5, label: judge}}\n"
    )
    return str(config)


@pytest.fixture(scope="module")
def servers(server_config, tmp_path_factory):
    """Two servers started together (each spends seconds importing torch/trl): one shared, one to kill."""
    folder = tmp_path_factory.mktemp("reward_server_logs")
    started = {}
    try:
        for name in ("shared", "to_kill"):
            started[name] = ServerProcess(server_config, str(folder / f"{name}.log"))
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture
def reward_server(servers) -> str:
    return servers["shared"].url


@pytest.fixture
def silent_server():
    """Accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    held, stop = [], threading.Event()

    def accept_forever():
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:  # the accept timeout
                continue

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()


def post_raw(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/score", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_health_lists_the_server_rewards_and_weights(reward_server):
    with urllib.request.urlopen(reward_server + "/health", timeout=10) as response:
        assert json.loads(response.read()) == {
            "status": "ok",
            "rewards": ["brightness", "judge"],
            "weights": [1.0, 0.5],
            "max_request_bytes": 1024 * 2**20,
        }


def test_remote_reward_matches_the_reward_called_on_uint8_quantised_images(reward_server):
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    prompts = ["a", "b", "c", "d"]
    (remote,) = build_rewards([{"name": "remote", "kwargs": {"url": reward_server}}])
    scores = score_rewards([remote], prompts, images, {})[:, 0]  # judge adds 0 without a `score` column
    expected = torch.tensor(brightness(prompts, quantised(images)))
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)
    assert remote.fn.server_rewards == ["brightness", "judge"]


def test_columns_reach_the_server_and_missing_scores_come_back_as_none(reward_server):
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    remote = RemoteReward(reward_server)
    light = brightness(None, quantised(images))
    for column in (torch.tensor([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])):
        scores = remote(["a", "skip", "c"], images, score=column)
        assert scores[1] is None  # judge gave no score: the weighted sum has none either
        assert scores[0] == pytest.approx(light[0] + 0.5 * 1.0, abs=1e-6)
        assert scores[2] == pytest.approx(light[2] + 0.5 * 3.0, abs=1e-6)


def test_column_that_is_not_json_raises_naming_the_column(reward_server):
    with pytest.raises(TypeError, match="dataset column 'photo' holds object values"):
        RemoteReward(reward_server)(["a"], torch.rand(1, 3, 8, 8), photo=[object()])


def test_reward_raising_on_the_server_is_one_line_naming_the_reward_and_the_cause(reward_server):
    (remote,) = build_rewards(
        [{"name": "remote", "kwargs": {"url": reward_server, "retries": 0}, "label": "judge_srv"}]
    )
    with pytest.raises(RewardError) as error_info:
        score_rewards([remote], ["crash", "b"], torch.rand(2, 3, 8, 8), {})
    message = str(error_info.value)
    assert "\n" not in message
    assert "reward 'judge_srv'" in message and "HTTP 500" in message and "judge crashed" in message


def test_malformed_requests_get_400_with_an_error_message(reward_server):
    status, body = post_raw(reward_server, b"not json")
    assert status == 400 and "malformed request" in body["error"]
    bad_images = {"dtype": "uint8", "shape": [1, 3, 4, 4], "data": "AAAA"}  # 3 bytes for 48
    status, body = post_raw(reward_server, json.dumps({"prompts": ["a"], "images": bad_images}).encode())
    assert status == 400 and "3 bytes" in body["error"]
    status, body = post_raw(reward_server, json.dumps({"prompts": "a"}).encode())
    assert status == 400 and "'prompts'" in body["error"]


def test_grpo_step_with_a_remote_reward_logs_its_metrics(tmp_path, tiny_checkpoint, reward_server):
    policy = load_policy(tiny_checkpoint, "causal_vq")
    args = grpo_args(tmp_path, max_steps=1)
    dataset = Dataset.from_dict({"prompt": [f"prompt {i}" for i in range(4)]})
    rewards = [{"name": "remote", "kwargs": {"url": reward_server, "timeout": 30}, "label": "served"}]
    trainer = ImageGRPOTrainer(policy, args, dataset, reward_funcs=rewards)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "rewards/served/mean" in entry]
    assert logs and all(math.isfinite(entry["rewards/served/mean"]) for entry in logs)
    assert all(0.0 <= entry["reward"] <= 1.0 for entry in logs)  # brightness + 0.5 * 0


def test_stopped_server_exits_0_and_the_remote_reward_then_raises_naming_the_url_within_seconds(servers):
    server = servers["to_kill"]
    remote = RemoteReward(server.url, timeout=2, retries=1)  # health check passes while it is up
    assert server.stop() == 0  # SIGTERM, like Ctrl-C, shuts the server down cleanly
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=rf"remote reward: {server.url} failed after 2 attempt\(s\)"):
        remote(["a"], torch.rand(1, 3, 8, 8))
    assert time.monotonic() - start < 10
    with pytest.raises(RewardConfigError, match=f"no reward server at {server.url}"):
        RemoteReward(server.url, timeout=2)


def test_silent_server_times_out_instead_of_hanging(silent_server):
    start = time.monotonic()
    with pytest.raises(RewardConfigError, match=f"no reward server at {silent_server}.*TimeoutError"):
        RemoteReward(silent_server, timeout=1)  # the health check at construction
    assert time.monotonic() - start < 1 + 3
    remote = RemoteReward(silent_server, timeout=1, retries=1, health_check=False)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="failed after 2 attempt.*TimeoutError"):
        remote(["a", "b"], torch.rand(2, 3, 8, 8))
    elapsed = time.monotonic() - start
    assert 2 * 1 - 0.1 <= elapsed < 2 * 1 + 0.5 + 3  # waited for each attempt, then gave up: never hangs


@pytest.mark.parametrize(
    "config_text, expected",
    [
        ("rewards:\n  - {name: brightnes}\n", "unknown reward 'brightnes'"),
        ("rewards: []\n", "'rewards' must be a non-empty list"),
        ("rewards:\n  - {name: jpeg_compressibility}\nport: 1\n", "unknown key(s) ['port']"),
        ("rewards:\n  - {name: jpeg_compressibility, normalize: true}\n", "set `normalize: true` on the recipe's"),
        (None, "reward server config not found"),
    ],
)
def test_bad_server_config_exits_2_with_one_line_before_listening(capsys, tmp_path, config_text, expected):
    config = tmp_path / "server.yaml"
    if config_text is not None:
        config.write_text(config_text)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve-reward", str(config), "--port", "0"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert LISTENING_PREFIX not in captured.out
    error_lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(error_lines) == 1 and error_lines[0].startswith("rlhf-img: error: ") and expected in error_lines[0]


def test_serve_reward_help_explains_the_endpoints_and_the_remote_reward(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve-reward", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(word in text for word in ("GET  /health", "POST /score", "name: remote", "retries", "--port"))
