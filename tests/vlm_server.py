"""A tiny random LLaVA built offline, served by a real `transformers serve` subprocess (OpenAI-compatible).

Tests of the `vlm_judge` reward and of the VLM client talk to this server over real HTTP: the requests, image parts
and answers are the wire format vLLM / SGLang speak, without a GPU or a download. What worked, and why each piece is
as it is: /work/shared/notes/ocr-vlm-rewards.md, section 4.

The tiny model's `lm_head` gives non-zero logits to the ten digit tokens only, so greedy decoding (temperature 0)
always answers with digits: the judge's number parsing can then be checked on real generated text.

Use `shared_tiny_vlm_server(root)` from a session-scoped fixture: every test module that asks shares one server
(starting one costs ~15-25 s of CPU), and the last release stops it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Iterator

from rlhf_img.rewards.tiny_judge import build_tiny_llava  # noqa: F401  (re-exported for the tests)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class TinyVlmServer:
    """A running `transformers serve`: `base_url` ends in /v1; `model` is the id it serves (the folder path)."""

    base_url: str
    model: str
    log_path: str
    process: subprocess.Popen

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def completions_logged(self) -> int:
        """POST /v1/chat/completions lines in uvicorn's access log: requests the server really answered."""
        return self.log().count("POST /v1/chat/completions")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the whole process group (serve may start workers), SIGKILL after 10 s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def serve_tiny_vlm(model_folder: str, log_path: str, startup_timeout: float = 120.0) -> Iterator[TinyVlmServer]:
    """`transformers serve FOLDER --device cpu` on a free loopback port, offline; yields once /health answers and
    always stops the process group on exit (also when startup fails)."""
    port = free_port()
    command = [
        os.path.join(os.path.dirname(sys.executable), "transformers"),
        "serve",
        model_folder,
        "--device",
        "cpu",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }  # unbuffered: the access log is read while the server runs
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )  # its own process group, stopped as a whole
        try:
            server = TinyVlmServer(f"http://127.0.0.1:{port}/v1", model_folder, log_path, process)
            _wait_healthy(server, startup_timeout)
            yield server
        finally:
            _stop(process)


def _wait_healthy(server: TinyVlmServer, timeout: float) -> None:
    health = server.base_url.removesuffix("/v1") + "/health"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {server.process.returncode}: {server.log()[-2000:]}")
        try:
            with opener.open(health, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"transformers serve gave no /health within {timeout:g}s: {server.log()[-2000:]}")


_shared: dict[str, object] = {}


def shared_tiny_vlm_server(root: str) -> Iterator[TinyVlmServer]:
    """One server for the whole pytest session, however many modules ask: use as the body of a session-scoped
    fixture (`yield from shared_tiny_vlm_server(str(tmp_path_factory.mktemp("vlm")))`). The last user stops it."""
    if "server" not in _shared:
        model = build_tiny_llava(os.path.join(root, "tiny-llava"))
        context = serve_tiny_vlm(model, os.path.join(root, "serve.log"))
        _shared.update(server=context.__enter__(), context=context, users=0)
    _shared["users"] += 1
    try:
        yield _shared["server"]
    finally:
        _shared["users"] -= 1
        if _shared["users"] == 0:
            context = _shared.pop("context")
            _shared.clear()
            context.__exit__(None, None, None)
