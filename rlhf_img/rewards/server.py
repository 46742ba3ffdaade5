"""A reward server (`rlhf-img serve-reward CONFIG.yaml`) and the `remote` reward that calls it.

Heavy detectors and VLM judges can then run in their own process, on their own GPU, with their own
dependencies, while the trainer sees one more reward. Standard library HTTP only, on loopback by default.

Wire format (JSON both ways):
    GET  /health -> {"status": "ok", "rewards": [names], "weights": [floats], "max_request_bytes": int}
    POST /score  <- {"prompts": [B str],
                     "images": {"dtype": "uint8", "shape": [B, 3, H, W], "data": base64 of the raw bytes},
                     "columns": {name: JSON-able dataset column}}
                 -> {"scores": [B floats, the weighted sum, null where any reward gave no score],
                     "per_reward": {name: [B floats or null]}}
Errors: {"error": "one line"} with 400 (malformed request), 413 (a body above the server's
`--max_request_mb`) or 500 (a reward raised).
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import math
import os
import signal
import socket
import socketserver
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import torch

from ..images import to_uint8
from ..recipe_paths import RecipePathError, resolve_reward_spec
from ..yaml_files import YamlFileError, read_yaml_mapping
from .compose import RewardError, RewardFunction, score_rewards
from .loading import RewardConfigError, RewardSpec
from .registry import register_reward
from .reward_set import check_unique_names

LISTENING_PREFIX = "rlhf-img reward server listening on "
# A /score body is ~4/3 x B x 3 x H x W bytes (base64 of uint8): 1 GiB holds ~240 images at 1024², far above one
# device's rollout batch, and refuses a bogus or runaway Content-Length before anything is allocated for it.
DEFAULT_MAX_REQUEST_MB = 1024.0


# ------------------------------------------------------------------------------------------ wire format
def encode_images(images: torch.Tensor) -> dict[str, Any]:
    """`(B, 3, H, W)` float in [0, 1] -> the JSON image payload, quantised to uint8 (4x smaller than float32)."""
    quantised = np.ascontiguousarray(to_uint8(images).transpose(0, 3, 1, 2))  # (B, 3, H, W) uint8
    return {
        "dtype": "uint8",
        "shape": list(quantised.shape),
        "data": base64.b64encode(quantised.tobytes()).decode("ascii"),
    }


def decode_images(payload: Any, batch: int) -> torch.Tensor:
    """The JSON image payload -> `(B, 3, H, W)` float in [0, 1]; ValueError naming what is wrong."""
    if not isinstance(payload, dict):
        raise ValueError("'images' must be an object with 'dtype', 'shape' and 'data'")
    if payload.get("dtype") != "uint8":
        raise ValueError(f"'images.dtype' must be 'uint8', got {payload.get('dtype')!r}")
    shape = payload.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(n, int) and n > 0 for n in shape)):
        raise ValueError(f"'images.shape' must be [B, 3, H, W] of positive ints, got {shape!r}")
    if shape[0] != batch or shape[1] != 3:
        raise ValueError(f"'images.shape' {shape} does not match {batch} prompts x 3 channels")
    try:
        raw = base64.b64decode(payload.get("data", ""), validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise ValueError("'images.data' is not valid base64") from None
    expected = math.prod(shape)
    if len(raw) != expected:
        raise ValueError(f"'images.data' holds {len(raw)} bytes, shape {shape} needs {expected}")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(shape).float() / 255


def to_json_column(value: Any, column: str) -> Any:
    """A dataset column as JSON-able lists; TypeError naming the column for anything else (e.g. PIL images)."""
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value.tolist()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [to_json_column(item, column) for item in value]
    if isinstance(value, dict):
        return {str(key): to_json_column(item, column) for key, item in value.items()}
    raise TypeError(
        f"remote reward: dataset column {column!r} holds {type(value).__name__} values, which cannot be sent as JSON; "
        "convert it to numbers/strings or drop the column from the dataset"
    )


def _none_for_nan(values: list[float]) -> list[float | None]:
    return [None if math.isnan(value) else value for value in values]


# ------------------------------------------------------------------------------------------ server side
def load_server_rewards(config_path: str) -> list[RewardFunction]:
    """The rewards of a server config (`rewards:` in the recipe format), built now; RewardConfigError naming the file."""
    try:
        config = read_yaml_mapping(
            config_path, "reward server config", "a reward server config must be a mapping with a 'rewards' list"
        )
    except YamlFileError as error:
        raise RewardConfigError(str(error)) from None
    unknown = sorted(set(config) - {"rewards"})
    if unknown:
        raise RewardConfigError(f"{config_path}: unknown key(s) {unknown}; a reward server config has 'rewards' only")
    entries = config.get("rewards")
    if not isinstance(entries, list) or not entries:
        raise RewardConfigError(
            f"{config_path}: 'rewards' must be a non-empty list, e.g. [{{name: jpeg_compressibility}}]"
        )
    rewards = []
    config_dir = os.path.dirname(os.path.abspath(config_path))
    for entry in entries:
        try:  # `file.py:function` from the current folder, else from the config's folder (as in recipes)
            spec = resolve_reward_spec(RewardSpec.parse(entry), config_dir, config_path)
        except RecipePathError as error:
            raise RewardConfigError(str(error)) from None
        if spec.normalize:  # the z-score is over the trainer's whole batch, which the server never sees
            raise RewardConfigError(
                f"{config_path}: 'normalize' of {spec.display_name!r} is applied by the trainer; "
                "set `normalize: true` on the recipe's `remote` entry instead"
            )
        try:
            rewards.append(RewardFunction.from_spec(spec))
        except RewardConfigError:
            raise
        except Exception as error:  # noqa: BLE001 - a detector that fails to load: one line naming it
            message = (str(error).splitlines() or [""])[0]
            raise RewardConfigError(
                f"{config_path}: reward {spec.display_name!r} failed to load ({type(error).__name__}: {message})"
            ) from error
    check_unique_names([reward.name for reward in rewards], where=config_path)  # names key `per_reward`
    return rewards


class RewardHTTPServer(ThreadingHTTPServer):
    """Holds the built rewards; a lock keeps scoring to one batch at a time on the model."""

    daemon_threads = True  # a stuck client never blocks shutdown

    def __init__(
        self,
        address: tuple[str, int],
        rewards: list[RewardFunction],
        verbose: bool = False,
        max_request_bytes: int = int(DEFAULT_MAX_REQUEST_MB * 2**20),
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.rewards, self.verbose = rewards, verbose
        self.max_request_bytes = int(max_request_bytes)
        self.weights = torch.tensor([reward.weight for reward in rewards], dtype=torch.float64)
        self.score_lock = threading.Lock()
        super().__init__(address, RewardRequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on machines without DNS
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def score(self, request: Any) -> dict[str, Any]:
        """A decoded `/score` body -> the response; ValueError for a malformed request, RewardError from a reward."""
        if not isinstance(request, dict):
            raise ValueError("the body must be a JSON object with 'prompts', 'images' and 'columns'")
        prompts = request.get("prompts")
        if not (isinstance(prompts, list) and prompts and all(isinstance(p, str) for p in prompts)):
            raise ValueError("'prompts' must be a non-empty list of strings")
        images = decode_images(request.get("images"), len(prompts))
        columns = request.get("columns") or {}
        if not isinstance(columns, dict):
            raise ValueError("'columns' must be an object of column name -> values")
        with self.score_lock:
            scores = score_rewards(self.rewards, prompts, images, columns)  # (B, R), NaN = no score
        total = (scores.double() * self.weights).sum(dim=1)  # NaN wherever any reward gave no score
        return {
            "scores": _none_for_nan(total.tolist()),
            "per_reward": {reward.name: _none_for_nan(scores[:, i].tolist()) for i, reward in enumerate(self.rewards)},
        }


class RewardRequestHandler(BaseHTTPRequestHandler):
    server: RewardHTTPServer
    server_version = "rlhf-img-reward-server"

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.rstrip("/") != "/health":
            self._send_json(404, {"error": f"no endpoint GET {self.path}; try GET /health or POST /score"})
            return
        rewards = self.server.rewards
        self._send_json(
            200,
            {
                "status": "ok",
                "rewards": [r.name for r in rewards],
                "weights": [r.weight for r in rewards],
                "max_request_bytes": self.server.max_request_bytes,
            },
        )

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/score":
            self._send_json(404, {"error": f"no endpoint POST {self.path}; try POST /score"})
            return
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            self._send_json(400, {"error": "malformed request: send a JSON body with a Content-Length header"})
            return
        limit = self.server.max_request_bytes
        if int(length) > limit:
            self._refuse_too_large(int(length), limit)
            return
        try:
            request = json.loads(self.rfile.read(int(length)))
        except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
            self._send_json(400, {"error": f"malformed request: the body is not JSON ({error})"})
            return
        try:
            response = self.server.score(request)
        except ValueError as error:
            self._send_json(400, {"error": f"malformed request: {error}"})
            return
        except Exception as error:  # noqa: BLE001 - RewardError names the reward; anything else is still one line
            message = (
                str(error) if isinstance(error, RewardError) else f"reward server: {type(error).__name__}: {error}"
            )
            message = " ".join(message.split())
            self.log_error("%s", message)
            self._send_json(500, {"error": message})
            return
        self._send_json(200, response)

    def _refuse_too_large(self, length: int, limit: int) -> None:
        """413 with one line. The body is read and dropped in small chunks first (never held): a client still
        sending would otherwise see a reset connection instead of the answer."""
        message = (
            f"request body of {_size(length)} is above this server's limit of {_size(limit)}: "
            "send fewer images per request (smaller per_device_train_batch_size) or start the server with a "
            "larger --max_request_mb"
        )
        self.log_error("%s", message)
        remaining = length
        while remaining > 0 and (chunk := self.rfile.read(min(remaining, 1 << 20))):
            remaining -= len(chunk)
        self.close_connection = True
        self._send_json(413, {"error": message})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        if self.server.verbose:
            super().log_message(format, *args)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        super().log_message(format, *args)  # errors are logged even when quiet


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(
    config_path: str,
    host: str = "127.0.0.1",
    port: int = 0,
    verbose: bool = False,
    max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
) -> None:
    """Build the config's rewards, then serve them on `host:port` until Ctrl-C or SIGTERM (both stop it cleanly).

    Rewards are built before binding, so a bad config raises RewardConfigError and nothing is served. Prints one
    line, `rlhf-img reward server listening on http://HOST:PORT`, so a caller passing port 0 learns the port.
    """
    rewards = load_server_rewards(config_path)
    server = RewardHTTPServer((host, port), rewards, verbose=verbose, max_request_bytes=int(max_request_mb * 2**20))
    bound_host, bound_port = server.server_address[:2]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous_handler = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        print(f"{LISTENING_PREFIX}http://{url_host}:{bound_port}", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if previous_handler is not None:  # None: not ours to restore (set outside Python, or not the main thread)
            signal.signal(signal.SIGTERM, previous_handler)


# ------------------------------------------------------------------------------------------ client side
# connection refused/reset, timeouts (all OSError, URLError included) and broken HTTP answers
_RETRYABLE = (OSError, http.client.HTTPException)


@register_reward("remote")
class RemoteReward:
    """Scores from a reward server (`rlhf-img serve-reward`): detectors / VLM judges in their own process.

    Args (the recipe's `kwargs`):
        url: the server, e.g. "http://127.0.0.1:8765".
        timeout: seconds each request may take (connecting, waiting, reading the answer).
        retries: extra attempts after connection errors, timeouts and 5xx answers (0.5 s, 1 s, ... apart).
        health_check: GET /health once now, so a missing server fails before training starts.
    Returns the server's weighted sum per image (None where any of its rewards gave no score). The rewards
    entry's own `timeout` key sets `timeout` here (see `resolve_reward`).
    """

    handles_timeout = True  # bounds each request itself: the trainer's per-call watchdog would cut retries short

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 2, health_check: bool = True) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise RewardConfigError(f"remote reward: 'url' must look like http://127.0.0.1:8765, got {url!r}")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise RewardConfigError(f"remote reward: 'timeout' must be a positive number of seconds, got {timeout!r}")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise RewardConfigError(f"remote reward: 'retries' must be an int >= 0, got {retries!r}")
        self.url, self.timeout, self.retries = url.rstrip("/"), float(timeout), retries
        self.server_rewards: list[str] | None = None  # what the server scores with, from /health
        self.max_request_bytes: int | None = None  # the server's body limit, from /health
        if health_check:
            self.check_health()

    def check_health(self) -> dict[str, Any]:
        """GET /health once; RewardConfigError (one line) when no reward server answers within the timeout."""
        try:
            status, body = self._request("GET", "/health")
        except _RETRYABLE as error:
            raise RewardConfigError(
                f"remote reward: no reward server at {self.url} ({_describe(error)}); "
                "start one with `rlhf-img serve-reward CONFIG.yaml`"
            ) from None
        if status != 200 or not isinstance(body, dict) or body.get("status") != "ok":
            raise RewardConfigError(
                f"remote reward: {self.url}/health did not answer like a reward server "
                f"(HTTP {status}: {_one_line(body)})"
            )
        self.server_rewards = body.get("rewards")
        limit = body.get("max_request_bytes")
        self.max_request_bytes = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
        return body

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        """(HTTP status, decoded JSON) of one request. Each socket operation is bounded by `timeout`, and reading
        the answer stops at `timeout` too, so a silent or trickling server cannot hang the trainer."""
        request = urllib.request.Request(
            self.url + path,
            data=body,
            method=method,
            headers={"Content-Type": "application/json"} if body is not None else {},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # direct: never via an HTTP proxy
        deadline = time.monotonic() + self.timeout
        try:
            response = opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:  # 4xx/5xx: the server's {"error": ...} is the message
            response = error
        with response:
            read_some = getattr(response, "read1", response.read)  # read1: one socket read, so the deadline holds
            chunks = []
            while chunk := read_some(1 << 16):
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no complete answer within {self.timeout:g}s")
            status = response.getcode()
        raw = b"".join(chunks)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")[:200]

    def __call__(self, prompts: list[str], images: torch.Tensor, **columns: Any) -> list[float | None]:
        payload = {
            "prompts": list(prompts),
            "images": encode_images(images),
            "columns": {name: to_json_column(value, name) for name, value in columns.items()},
        }
        body = json.dumps(payload).encode()
        if self.max_request_bytes is not None and len(body) > self.max_request_bytes:  # known from /health
            raise RuntimeError(
                f"remote reward: the batch of {len(prompts)} images is {_size(len(body))}, above "
                f"the limit of {self.url} ({_size(self.max_request_bytes)}): use a smaller "
                "per_device_train_batch_size or start the server with a larger --max_request_mb"
            )
        attempts = self.retries + 1
        last_error = ""
        for attempt in range(1, attempts + 1):
            try:
                status, answer = self._request("POST", "/score", body)
            except _RETRYABLE as error:
                last_error = _describe(error)
            else:
                if status == 200 and isinstance(answer, dict) and isinstance(answer.get("scores"), list):
                    return answer["scores"]
                last_error = f"HTTP {status}: {_one_line(answer)}"
                if status == 200:
                    raise RuntimeError(f"remote reward: {self.url}/score answered without 'scores' ({last_error})")
                if status < 500:  # the request itself is wrong: retrying cannot help
                    raise RuntimeError(f"remote reward: {self.url}/score rejected the batch ({last_error})")
            if attempt < attempts:
                time.sleep(0.5 * attempt)
        raise RuntimeError(f"remote reward: {self.url} failed after {attempts} attempt(s) (last error: {last_error})")

    def __repr__(self) -> str:
        return f"RemoteReward({self.url!r}, timeout={self.timeout:g}, retries={self.retries})"


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MB" if count >= 2**20 else f"{count} bytes"


def _one_line(answer: Any) -> str:
    text = answer.get("error", answer) if isinstance(answer, dict) else answer
    return " ".join(str(text).split())[:500]


def _describe(error: BaseException) -> str:
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, BaseException):
        return _one_line(f"{type(reason).__name__}: {reason}")
    return _one_line(reason)
