"""The VLM client and the `vlm_judge` reward against a scripted OpenAI-compatible stub (stdlib HTTP in a thread):
what goes on the wire, and every failure bounded and named: server down, too slow, malformed answers, 5xx then
success, 4xx without retry, a refused API key; P(yes) from OpenAI-format logprobs."""

import base64
import io
import json
import math
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import yaml
from conftest import REPO
from PIL import Image

from rlhf_img.rewards import RewardConfigError, RewardError, build_rewards, score_rewards
from rlhf_img.rewards.vlm_client import VlmCallError, VlmClient
from rlhf_img.rewards.vlm_judge import VlmJudgeReward

pytestmark = pytest.mark.timeout(60)

MODEL = "judge-model"
IMAGES = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])  # (2, 3, 8, 8): black, white
PROMPTS = ["a red cube", "a blue sphere"]


def completion(text: str, logprobs=None) -> dict:
    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return {
        "id": "x",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [choice],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
    }


class Stub:
    """Answers POST /v1/chat/completions from `script` (one step per request, the last one repeated): a step is
    (HTTP status, body: dict, str or a function of the request, seconds to wait first). Records requests."""

    def __init__(self) -> None:
        self.script: list[tuple[int, object, float]] = [(200, completion("Final Score: 4"), 0.0)]
        self.served = [MODEL]  # what GET /v1/models lists
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()

    def step(self) -> tuple[int, object, float]:
        with self.lock:
            index = min(len(self.requests) - 1, len(self.script) - 1)
            return self.script[index]


def make_handler(stub: Stub):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body) -> None:
            payload = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": name} for name in stub.served]})
            else:
                self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:  # noqa: N802
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with stub.lock:
                stub.requests.append(request)
                stub.headers.append({name.lower(): value for name, value in self.headers.items()})
                stub.in_flight += 1
                stub.most_in_flight = max(stub.most_in_flight, stub.in_flight)
            try:
                status, body, delay = stub.step()
                time.sleep(delay)
                self._send(status, body(request) if callable(body) else body)
            except OSError:  # the client gave up on this request (its timeout)
                pass
            finally:
                with stub.lock:
                    stub.in_flight -= 1

        def log_message(self, format, *args) -> None:  # noqa: A002
            pass

    return Handler


@pytest.fixture
def stub():
    """A stub server; yields (Stub, base_url)."""
    state = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    server.block_on_close = False  # a handler still sleeping must not hold up teardown
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def dead_url() -> str:
    """A loopback port nobody listens on (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def items(count: int = 1, size: int = 8) -> list:
    return [(Image.new("RGB", (size, size), (index, 0, 0)), f"question {index}") for index in range(count)]


def reward(url: str, **kwargs) -> VlmJudgeReward:
    return VlmJudgeReward(base_url=url, model=MODEL, **{"retries": 1, "timeout": 5.0, **kwargs})


# ------------------------------------------------------------------------------------------ the wire
def test_the_request_carries_a_png_data_url_the_question_and_greedy_settings(stub):
    state, url = stub
    judge = reward(
        url,
        template="Rate {prompt} as {style}.",
        parser=r"Final Score:\s*(\d)",
        scale=5,
        system="You are a strict judge.",
        image_size=16,
        max_tokens=32,
    )
    scores = judge(prompts=PROMPTS, images=IMAGES, style=["ink", "oil"])
    assert scores == [0.8, 0.8]
    by_question = {request["messages"][1]["content"][1]["text"]: request for request in state.requests}
    assert sorted(by_question) == ["Rate a blue sphere as oil.", "Rate a red cube as ink."]
    request = by_question["Rate a blue sphere as oil."]
    assert request["model"] == MODEL and request["temperature"] == 0 and request["max_tokens"] == 32
    assert "logprobs" not in request  # mode score asks for none
    assert request["messages"][0] == {"role": "system", "content": "You are a strict judge."}
    image_part = request["messages"][1]["content"][0]
    assert image_part["type"] == "image_url"
    prefix = "data:image/png;base64,"
    assert image_part["image_url"]["url"].startswith(prefix)
    picture = Image.open(io.BytesIO(base64.b64decode(image_part["image_url"]["url"][len(prefix) :])))
    assert picture.format == "PNG" and picture.size == (16, 16) and picture.getpixel((8, 8)) == (255, 255, 255)


def test_the_api_key_comes_from_the_named_environment_variable(stub, monkeypatch):
    state, url = stub
    monkeypatch.setenv("JUDGE_TEST_KEY", "secret-123")
    reward(url, api_key_env="JUDGE_TEST_KEY")(prompts=PROMPTS[:1], images=IMAGES[:1])
    assert state.headers[-1]["authorization"] == "Bearer secret-123"


def test_a_loopback_judge_is_reached_directly_whatever_proxy_the_environment_names(stub, monkeypatch, dead_url):
    state, url = stub
    for variable in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(variable, dead_url.removesuffix("/v1"))  # a proxy that refuses every connection
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    VlmClient(url, MODEL).check()
    assert [answer.text for answer in VlmClient(url, MODEL, retries=0).ask(items())] == ["Final Score: 4"]


def test_a_refused_key_names_the_unset_variable(stub, monkeypatch):
    state, url = stub
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    state.script = [(401, {"error": {"message": "Invalid API key"}}, 0.0)]
    (result,) = VlmClient(url, MODEL, api_key_env="JUDGE_TEST_KEY").ask(items())
    assert isinstance(result, VlmCallError) and len(state.requests) == 1
    assert "HTTP 401, the server wants an API key: set the environment variable JUDGE_TEST_KEY (it is unset)" in str(
        result
    )


def test_concurrency_is_bounded(stub):
    state, url = stub
    state.script = [(200, completion("ok"), 0.15)]
    answers = VlmClient(url, MODEL, max_concurrency=2).ask(items(6))
    assert [answer.text for answer in answers] == ["ok"] * 6
    assert state.most_in_flight == 2


def test_a_repeated_question_is_answered_from_the_cache(stub):
    state, url = stub
    client = VlmClient(url, MODEL)
    batch = items(2) + items(1)  # the third repeats the first: asked once
    first = client.ask(batch)
    assert len(state.requests) == 2 and client.requests_sent == 2
    assert client.ask(batch) == first and len(state.requests) == 2
    client.ask(batch, max_tokens=65)  # another setting is another question
    assert len(state.requests) == 4
    uncached = VlmClient(url, MODEL, cache=False)
    uncached.ask(items(1)), uncached.ask(items(1))
    assert len(state.requests) == 6


# ------------------------------------------------------------------------------------------ failures
def test_a_server_that_is_down_fails_the_check_and_the_calls(dead_url):
    with pytest.raises(
        RewardConfigError,
        match=r"reward 'vlm_judge': no VLM server answers at "
        r"http://127\.0\.0\.1:\d+/v1 \(ConnectError: .*\); start one first",
    ):
        build_rewards([{"name": "vlm_judge", "kwargs": {"base_url": dead_url, "model": MODEL}}])
    start = time.monotonic()
    (result,) = VlmClient(dead_url, MODEL, retries=1).ask(items())
    assert time.monotonic() - start < 0.5 + 1.0  # the backoff, and nothing to wait for
    assert isinstance(result, VlmCallError)
    assert "no answer after 2 attempt(s) (last: ConnectError" in str(result) and dead_url in str(result)


def test_a_silent_server_fails_the_check_within_the_timeout():
    with socket.create_server(("127.0.0.1", 0)) as listener:  # connections queue up, nothing ever answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        start = time.monotonic()
        with pytest.raises(RewardConfigError, match=r"/v1/models gave no answer within 0\.3s|no VLM server answers"):
            VlmClient(url, MODEL, timeout=0.3).check()
        assert time.monotonic() - start < 0.3 + 0.5


def test_a_slow_server_is_retried_then_fails_within_the_bound(stub):
    state, url = stub
    state.script = [(200, completion("late"), 3.0)]
    start = time.monotonic()
    (result,) = VlmClient(url, MODEL, timeout=0.3, retries=1).ask(items())
    elapsed = time.monotonic() - start
    assert elapsed < 0.3 * 2 + 0.5 + 0.5  # timeout x attempts + backoff, plus slack for this shared machine
    assert len(state.requests) == 2
    assert "no answer after 2 attempt(s) (last: no answer within 0.3s)" in str(result)


def test_a_slow_server_stops_the_reward_with_a_reward_error_within_the_bound(stub):
    state, url = stub
    state.script = [(200, completion("late"), 3.0)]
    (judge,) = build_rewards(
        [
            {
                "name": "vlm_judge",
                "label": "unified",
                "timeout": 0.3,
                "kwargs": {"base_url": url, "model": MODEL, "retries": 1},
            }
        ]
    )
    assert judge.fn.client.timeout == 0.3 and judge.timeout is None  # the entry's timeout is the client's own
    start = time.monotonic()
    with pytest.raises(RewardError) as info:
        score_rewards([judge], PROMPTS, IMAGES, {})
    assert time.monotonic() - start < 0.3 * 2 + 0.5 + 0.5
    message = str(info.value)
    assert "\n" not in message and message.startswith("reward 'unified' raised RuntimeError: vlm_judge: 2 of 2 images")
    assert f"from {url} (model '{MODEL}'); first, prompt 'a red cube': request failed:" in message
    assert "no answer within 0.3s" in message and "set on_failure: mask" in message


@pytest.mark.parametrize(
    "body, what",
    [
        ("<html>Bad Gateway</html>", "answered HTTP 200 with a body that is not JSON; got: <html>Bad Gateway</html>"),
        ({"object": "chat.completion", "choices": []}, "answered without 'choices'"),
        (
            {"choices": [{"message": {"role": "assistant", "content": None}, "finish_reason": "length"}]},
            "answered without 'choices[0].message.content' (finish_reason=length: raise max_tokens)",
        ),
    ],
)
def test_a_malformed_answer_is_one_error_quoting_it_without_retry(stub, body, what):
    state, url = stub
    state.script = [(200, body, 0.0)]
    (result,) = VlmClient(url, MODEL, retries=2).ask(items())
    assert isinstance(result, VlmCallError) and what in str(result) and "\n" not in str(result)
    assert len(state.requests) == 1


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_5xx_or_429_then_success_is_retried(stub, status):
    state, url = stub
    state.script = [(status, {"error": "overloaded"}, 0.0), (200, completion("Final Score: 3"), 0.0)]
    assert reward(url)(prompts=PROMPTS[:1], images=IMAGES[:1]) == [0.6]
    assert len(state.requests) == 2


def test_a_400_is_not_retried_and_quotes_the_server(stub):
    state, url = stub
    state.script = [(400, {"detail": "Incorrect image source"}, 0.0)]
    (result,) = VlmClient(url, MODEL, retries=3).ask(items())
    assert len(state.requests) == 1
    assert 'the request was refused with HTTP 400 (not retried); got: {"detail": "Incorrect image source"}' in str(
        result
    )


def test_mask_gives_no_score_and_one_warning_per_call(stub, caplog):
    state, url = stub
    state.script = [(200, lambda request: completion("Final Score: 5" if "red" in str(request) else "no idea"), 0.0)]
    judge = reward(url, template="Judge {prompt}", parser="unifiedreward_point", on_failure="mask")
    with caplog.at_level("WARNING", logger="rlhf_img.rewards.vlm_judge"):
        scores = score_rewards(build_rewards([judge]), PROMPTS, IMAGES, {})
    assert scores[0, 0].item() == 1.0 and math.isnan(scores[1, 0].item())
    (record,) = caplog.records
    assert "1 of 2 images got no score" in record.getMessage() and "'no idea'" in record.getMessage()


def test_the_check_names_the_models_served_and_a_wrong_root(stub):
    state, url = stub
    VlmClient(url, MODEL).check()
    with pytest.raises(RewardConfigError, match=r"does not serve model 'other'; it serves \['judge-model'\]"):
        VlmClient(url, "other").check()
    with pytest.raises(RewardConfigError, match=r"/models answered HTTP 404 .*must be the server's OpenAI root"):
        VlmClient(url.removesuffix("/v1"), MODEL).check()


# ------------------------------------------------------------------------------------------ logprobs
def openai_logprobs(first: dict[str, float]) -> dict:
    """OpenAI's chat logprobs shape: one entry per generated token, each with its top candidates."""
    top = [{"token": token, "logprob": logprob, "bytes": list(token.encode())} for token, logprob in first.items()]
    best = max(first, key=first.get)
    return {"content": [{"token": best, "logprob": first[best], "bytes": list(best.encode()), "top_logprobs": top}]}


def test_yes_no_reads_p_yes_from_openai_logprobs(stub):
    state, url = stub
    first = {"Yes": math.log(0.3), "No": math.log(0.6), " yes": math.log(0.1)}
    state.script = [(200, completion("No", openai_logprobs(first)), 0.0)]
    (judge,) = build_rewards([{"name": "vlm_judge", "kwargs": {"base_url": url, "model": MODEL, "template": "yes_no"}}])
    scores = score_rewards([judge], PROMPTS, IMAGES, {})
    assert scores[:, 0].tolist() == pytest.approx([0.4, 0.4])
    assert all(request["logprobs"] is True and request["top_logprobs"] == 5 for request in state.requests)
    assert sorted(request["messages"][0]["content"][1]["text"] for request in state.requests) == [
        'Does this image match the description "a blue sphere"? Answer yes or no.',
        'Does this image match the description "a red cube"? Answer yes or no.',
    ]
    (answer,) = VlmClient(url, MODEL).ask(items(), top_logprobs=3)
    assert answer.top_logprobs == [pytest.approx(first)]


def test_the_shipped_unifiedreward_recipe_entry_scores_unifiedreward2_answers(stub):
    state, url = stub
    state.served = ["unifiedreward"]
    answer = "Alignment Score (1-5): 4\nCoherence Score (1-5): 4.5\nStyle Score (1-5): 3"
    state.script = [(200, completion(answer), 0.0)]
    with open(os.path.join(REPO, "recipes", "simplear-0.5b-grpo-unifiedreward.yaml")) as f:
        (entry,) = yaml.safe_load(f)["rewards"]
    entry["kwargs"]["base_url"] = url  # the recipe's judge, served here by the stub
    (judge,) = build_rewards([entry])
    assert score_rewards([judge], PROMPTS, IMAGES, {})[:, 0].tolist() == pytest.approx([11.5 / 15] * 2)
    request = state.requests[-1]
    assert request["model"] == "unifiedreward"
    assert "Alignment Score (1-5): X" in request["messages"][0]["content"][1]["text"]
    url_data = request["messages"][0]["content"][0]["image_url"]["url"].split(",", 1)[1]
    assert Image.open(io.BytesIO(base64.b64decode(url_data))).size == (512, 512)
