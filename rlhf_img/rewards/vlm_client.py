"""A small client for OpenAI-compatible `/v1/chat/completions` with one image per question (VLM judges, VQA).

Every judge server peers use speaks this protocol (vLLM, SGLang, `transformers serve`, hosted APIs), so one client
covers them all. It is built on the `openai` SDK (`pip install 'rlhf-img[judge]'`, imported only when a client is
made): the SDK is the reference client of the protocol that those servers test against, and it owns the choice of
HTTP library (httpx / httpx2), which is in flux. What the SDK does not decide here, on purpose:

- retries: ours (SDK retries off), so one bound holds: each request takes at most
  `timeout * (retries + 1) + backoff` seconds (backoff 0.5 s, 1 s, 2 s, ... capped at 8 s), and a call of n items at
  most ceil(n / max_concurrency) times that. Connection errors, timeouts, HTTP 429 and 5xx are retried; other 4xx
  are not (the request itself is wrong);
- the answer is read from the raw body, so a malformed one gives a one-line error quoting what came back;
- loopback endpoints are reached directly, never through an `HTTP_PROXY` from the environment.

Images go as `data:image/png;base64,...`: the MIME subtype matters (`transformers serve` answers HTTP 400 to
flow_grpo's bare `data:image;base64`); vLLM and SGLang accept it too.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import hashlib
import io
import ipaddress
import json
import math
import os
import threading
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

from .loading import RewardConfigError

if TYPE_CHECKING:
    from PIL import Image

INSTALL_HINT = "the VLM client needs the OpenAI SDK: pip install 'rlhf-img[judge]'"
CACHE_ENTRIES = 4096
# what a keyless server is sent (vLLM's convention); the SDK refuses to start without some key
PLACEHOLDER_API_KEY = "EMPTY"
MAX_BACKOFF_S = 8.0
_SHOWN_CHARS = 200  # of an answer quoted in an error


@dataclass(frozen=True)
class ChatAnswer:
    """One answer. `top_logprobs`: per generated token, {token: logprob} of the top candidates; None when the
    server gives none (`transformers serve` never does). `finish_reason` "length" means `max_tokens` cut it short.
    `prompt_tokens`: the server's count, image tokens included (None when it does not report usage)."""

    text: str
    top_logprobs: list[dict[str, float]] | None
    finish_reason: str | None = None
    prompt_tokens: int | None = None


class VlmCallError(RuntimeError):
    """A request that failed for good (after retries where retrying could help). One line: the endpoint, what
    failed and what came back, truncated. Returned by `VlmClient.ask`, not raised: callers decide."""


class _Retry(NamedTuple):
    """A failed attempt that another attempt may fix; `reason` goes into the final error."""

    reason: str


def shorten(text: Any, limit: int = _SHOWN_CHARS) -> str:
    """`text` on one line, at most `limit` characters (an ellipsis marks the cut)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def encode_png(image: "Image.Image") -> bytes:
    """The image as PNG bytes (RGB): lossless, so the judge sees exactly the pixels that were scored."""
    buffer = io.BytesIO()
    (image if image.mode == "RGB" else image.convert("RGB")).save(buffer, format="PNG")
    return buffer.getvalue()


def backoff_seconds(retry: int) -> float:
    """Wait before retry number `retry` (1, 2, ...): 0.5 s doubling, capped at 8 s."""
    return min(0.5 * 2 ** (retry - 1), MAX_BACKOFF_S)


def yes_probability(answer: ChatAnswer) -> float | None:
    """P(yes) / (P(yes) + P(no)) from the first generated token's top candidates; None without logprobs or when
    neither word is among them.

    Tokens are compared stripped and case-folded, and variants add up ("Yes", " yes", "YES"). A word missing from
    the top candidates counts as probability 0 (it is below the last one listed, usually far below)."""
    if not answer.top_logprobs:
        return None
    yes = no = 0.0
    for token, logprob in answer.top_logprobs[0].items():
        word = token.strip().casefold()
        if word == "yes":
            yes += math.exp(logprob)
        elif word == "no":
            no += math.exp(logprob)
    return yes / (yes + no) if yes + no > 0 else None


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _import_openai() -> Any:
    try:
        import openai
    except ImportError:
        raise RewardConfigError(INSTALL_HINT) from None
    return openai


def _describe_connection_error(error: BaseException) -> str:
    """The cause the SDK wraps ("ConnectError: [Errno 111] Connection refused"), else its own message."""
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause):
        return shorten(f"{type(cause).__name__}: {cause}")
    return shorten(f"{type(error).__name__}: {error}")


def _response_text(response: Any) -> str:
    try:
        return response.text
    except Exception:  # noqa: BLE001 - a body that cannot be read is reported as such
        return "<unreadable body>"


def _top_logprobs(logprobs: Any) -> list[dict[str, float]] | None:
    """OpenAI's `choices[0].logprobs` ({"content": [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]})
    -> one {token: logprob} per generated token; None when absent (null, or another shape)."""
    if not isinstance(logprobs, dict) or not isinstance(logprobs.get("content"), list):
        return None
    per_token = []
    for entry in logprobs["content"]:
        if not isinstance(entry, dict):
            return None
        candidates: dict[str, float] = {}
        for candidate in entry.get("top_logprobs") or []:
            if (
                isinstance(candidate, dict)
                and isinstance(candidate.get("token"), str)
                and isinstance(candidate.get("logprob"), (int, float))
            ):
                candidates[candidate["token"]] = float(candidate["logprob"])
        if not candidates and isinstance(entry.get("token"), str) and isinstance(entry.get("logprob"), (int, float)):
            candidates[entry["token"]] = float(entry["logprob"])  # asked without alternatives: the chosen token
        per_token.append(candidates)
    return per_token or None


def _run(coroutine: Any) -> Any:
    """Runs `coroutine` to completion from synchronous code, also when this thread already runs an event loop
    (a notebook): then in a worker thread with a loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class _AnswerCache:
    """Bounded LRU of successful answers, shared by the threads that may call one client."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: collections.OrderedDict[str, ChatAnswer] = collections.OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str) -> ChatAnswer | None:
        with self.lock:
            answer = self.entries.get(key)
            if answer is not None:
                self.entries.move_to_end(key)
            return answer

    def put(self, key: str, answer: ChatAnswer) -> None:
        with self.lock:
            self.entries[key] = answer
            self.entries.move_to_end(key)
            while len(self.entries) > self.capacity:
                self.entries.popitem(last=False)


class VlmClient:
    """Asks an OpenAI-compatible VLM server questions about images (see the module docstring for the policy).

    Args:
        base_url: the server's OpenAI root, e.g. "http://127.0.0.1:8000/v1".
        model: the served model name (vLLM: `--served-model-name`; `transformers serve`: the path it was given).
        api_key_env: the environment variable holding the key (never the key itself: recipes get shared); unset, or
            None, sends a placeholder, which keyless servers accept.
        timeout: seconds one attempt may take, from sending to the last byte of the answer.
        retries: extra attempts after connection errors, timeouts, HTTP 429 and 5xx.
        max_concurrency: requests in flight at once; servers batch concurrent requests (vLLM, SGLang).
        cache: remember successful answers (LRU, 4096) keyed by sha256 of (model, system, question, PNG bytes,
            max_tokens, top_logprobs, temperature). It only makes sense at temperature 0, where the same request gets
            the same answer; at other temperatures it would freeze one sample.
        temperature: sampling temperature of the judge; 0 (greedy) for a deterministic reward.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60.0,
        retries: int = 2,
        max_concurrency: int = 8,
        cache: bool = True,
        temperature: float = 0.0,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise RewardConfigError(f"VLM client: 'base_url' must look like http://127.0.0.1:8000/v1, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise RewardConfigError(f"VLM client: 'model' must be the served model name, got {model!r}")
        if api_key_env is not None and (not isinstance(api_key_env, str) or not api_key_env):
            raise RewardConfigError(f"VLM client: 'api_key_env' must name an environment variable, got {api_key_env!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise RewardConfigError(f"VLM client: 'timeout' must be a positive number of seconds, got {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise RewardConfigError(f"VLM client: 'retries' must be an int >= 0, got {retries!r}")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise RewardConfigError(f"VLM client: 'max_concurrency' must be an int >= 1, got {max_concurrency!r}")
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not 0 <= temperature < math.inf
        ):
            raise RewardConfigError(f"VLM client: 'temperature' must be a number >= 0, got {temperature!r}")
        self._openai = _import_openai()
        self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env
        self.timeout, self.retries, self.max_concurrency = float(timeout), retries, max_concurrency
        self.temperature = float(temperature)
        self.cache = _AnswerCache(CACHE_ENTRIES) if cache else None
        self.requests_sent = 0  # attempts that went to the server (cache hits send none)

    # ------------------------------------------------------------------------------------------ connection
    def _api_key(self) -> str:
        return (os.environ.get(self.api_key_env) if self.api_key_env else None) or PLACEHOLDER_API_KEY

    def _key_hint(self) -> str:
        """What to do about HTTP 401/403: which variable to set."""
        if self.api_key_env is None:
            return "the server wants an API key: set 'api_key_env' to the environment variable that holds it"
        if not os.environ.get(self.api_key_env):
            return f"the server wants an API key: set the environment variable {self.api_key_env} (it is unset)"
        return f"the server refused the key in the environment variable {self.api_key_env}"

    def _client_options(self) -> dict[str, Any]:
        """`AsyncOpenAI` options: no SDK retries (ours bound the time), and loopback reached directly, since a
        proxy from the environment cannot reach this machine's ports."""
        options: dict[str, Any] = {
            "base_url": self.base_url,
            "api_key": self._api_key(),
            "timeout": self.timeout,
            "max_retries": 0,
        }
        factory = getattr(self._openai, "DefaultAsyncHttpxClient", None)
        if factory is not None and _is_loopback(self.base_url):
            options["http_client"] = factory(trust_env=False)
        return options

    def _error(self, what: str, came_back: str = "") -> VlmCallError:
        shown = f"; got: {shorten(came_back)}" if came_back else ""
        return VlmCallError(shorten(f"{self.base_url} (model {self.model!r}): {what}", 400) + shown)

    def check(self) -> None:
        """GET {base_url}/models once, within `timeout`: RewardConfigError (one line) when nothing answers, the key
        is refused, or the model is not among those served. Call it before training so a missing judge fails in
        seconds instead of at the first reward."""
        openai = self._openai
        where = f"{self.base_url}/models"

        async def list_models() -> str:
            async with openai.AsyncOpenAI(**self._client_options()) as client:
                raw = await asyncio.wait_for(client.models.with_raw_response.list(), self.timeout)
                return raw.text

        try:
            text = _run(list_models())
        except asyncio.TimeoutError:
            raise RewardConfigError(f"{where} gave no answer within {self.timeout:g}s") from None
        except openai.APIStatusError as error:
            status, body = error.status_code, shorten(_response_text(error.response))
            if status in (401, 403):
                raise RewardConfigError(f"{where} answered HTTP {status}: {self._key_hint()}") from None
            if status == 404:
                raise RewardConfigError(
                    f"{where} answered HTTP 404 ({body}): 'base_url' must be the server's "
                    "OpenAI root, e.g. http://127.0.0.1:8000/v1"
                ) from None
            raise RewardConfigError(f"{where} answered HTTP {status}: {body}") from None
        except openai.APIConnectionError as error:
            raise RewardConfigError(
                f"no VLM server answers at {self.base_url} ({_describe_connection_error(error)}); "
                "start one first, e.g. `vllm serve MODEL --port 8000`"
            ) from None
        try:
            listed = json.loads(text).get("data")
            served = [entry["id"] for entry in listed if isinstance(entry, dict) and isinstance(entry.get("id"), str)]
        except (ValueError, AttributeError, TypeError):
            raise RewardConfigError(
                f"{where} did not answer like an OpenAI-compatible server: {shorten(text)!r}"
            ) from None
        if self.model not in served:
            raise RewardConfigError(
                f"{self.base_url} does not serve model {self.model!r}; it serves {served}: set "
                "'model' to one of them (vLLM / SGLang: the --served-model-name)"
            )

    # ------------------------------------------------------------------------------------------ asking
    def ask(
        self,
        items: Sequence[tuple["Image.Image", str]],
        *,
        max_tokens: int = 64,
        top_logprobs: int = 0,
        system: str | None = None,
    ) -> list[ChatAnswer | VlmCallError]:
        """One answer per (image, question), concurrently; a failure after retries is returned as VlmCallError
        (callers decide to raise or mask). Never hangs past the bound in the module docstring. Works from inside
        a running event loop too (it then runs in a worker thread)."""
        return _run(self.ask_async(items, max_tokens=max_tokens, top_logprobs=top_logprobs, system=system))

    async def ask_async(
        self,
        items: Sequence[tuple["Image.Image", str]],
        *,
        max_tokens: int = 64,
        top_logprobs: int = 0,
        system: str | None = None,
    ) -> list[ChatAnswer | VlmCallError]:
        """`ask` as a coroutine, for callers that have an event loop of their own."""
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"VLM client: 'max_tokens' must be an int >= 1, got {max_tokens!r}")
        if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= 20:
            raise ValueError(
                f"VLM client: 'top_logprobs' must be an int in 0..20 (OpenAI's limit), got {top_logprobs!r}"
            )
        results: list[ChatAnswer | VlmCallError | None] = [None] * len(items)
        pending: dict[str, tuple[list[int], dict[str, Any]]] = {}  # cache key -> (indices, request)
        # each image once (a VQA asks several questions of one), in threads: PIL's encoder releases the GIL, and
        # at 512 px a PNG takes ~30 ms, as long as a judge's answer
        unique = {id(image): image for image, _ in items}
        pngs = await asyncio.gather(*(asyncio.to_thread(encode_png, image) for image in unique.values()))
        encoded = dict(zip(unique, pngs))
        for index, (image, question) in enumerate(items):
            png = encoded[id(image)]
            key = self._cache_key(png, question, system, max_tokens, top_logprobs)
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is not None:
                results[index] = cached
            elif key in pending:  # the same image and question twice in one call: asked once
                pending[key][0].append(index)
            else:
                pending[key] = ([index], self._request(png, question, system, max_tokens, top_logprobs))
        if pending:
            semaphore = asyncio.Semaphore(self.max_concurrency)
            async with self._openai.AsyncOpenAI(**self._client_options()) as client:
                answers = await asyncio.gather(
                    *(self._ask_one(client, semaphore, request) for _, request in pending.values())
                )
            for (key, (indices, _)), answer in zip(pending.items(), answers):
                if isinstance(answer, ChatAnswer) and self.cache is not None:
                    self.cache.put(key, answer)
                for index in indices:
                    results[index] = answer
        return results  # type: ignore[return-value]  # every slot is filled above

    def _cache_key(self, png: bytes, question: str, system: str | None, max_tokens: int, top_logprobs: int) -> str:
        digest = hashlib.sha256()
        header = json.dumps([self.model, system, question, max_tokens, top_logprobs, self.temperature])
        digest.update(header.encode())
        digest.update(png)
        return digest.hexdigest()

    def _request(
        self, png: bytes, question: str, system: str | None, max_tokens: int, top_logprobs: int
    ) -> dict[str, Any]:
        """The keyword arguments of `chat.completions.create`: system message (optional), then one user turn of
        an image part and a text part (the order peers use)."""
        image_url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        messages.append(
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": question}],
            }
        )
        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": self.temperature,
        }
        if top_logprobs:
            request.update(logprobs=True, top_logprobs=top_logprobs)
        return request

    async def _ask_one(
        self, client: Any, semaphore: asyncio.Semaphore, request: dict[str, Any]
    ) -> ChatAnswer | VlmCallError:
        """Attempts until an answer, a final error, or the retries run out. The slot is released while waiting
        out a backoff, so one failing request does not hold back the others."""
        attempts = self.retries + 1
        last = ""
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                await asyncio.sleep(backoff_seconds(attempt - 1))
            async with semaphore:
                outcome = await self._attempt(client, request)
            if not isinstance(outcome, _Retry):
                return outcome
            last = outcome.reason
        return self._error(f"no answer after {attempts} attempt(s) (last: {last})")

    async def _attempt(self, client: Any, request: dict[str, Any]) -> ChatAnswer | VlmCallError | _Retry:
        openai = self._openai
        self.requests_sent += 1
        try:  # wait_for: the SDK's timeout is per socket operation; a trickling server must not outlast ours
            raw = await asyncio.wait_for(client.chat.completions.with_raw_response.create(**request), self.timeout)
            text = raw.text
        except asyncio.TimeoutError:
            return _Retry(f"no answer within {self.timeout:g}s")
        except openai.APIStatusError as error:
            status, body = error.status_code, _response_text(error.response)
            if status == 429 or status >= 500:
                return _Retry(f"HTTP {status}: {shorten(body)}")
            if status in (401, 403):
                return self._error(f"HTTP {status}, {self._key_hint()}", body)
            return self._error(f"the request was refused with HTTP {status} (not retried)", body)
        except openai.APIConnectionError as error:  # refused, reset, DNS, the SDK's own timeout
            return _Retry(_describe_connection_error(error))
        return self._parse(text)

    def _parse(self, text: str) -> ChatAnswer | VlmCallError:
        """The raw 200 body -> ChatAnswer; VlmCallError quoting the body when it is not a chat completion."""
        try:
            body = json.loads(text)
        except ValueError:
            return self._error("answered HTTP 200 with a body that is not JSON", text)
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return self._error("answered without 'choices'", text)
        choice = choices[0]
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # content given as parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        finish_reason = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
        if not isinstance(content, str):
            cut = f" (finish_reason={finish_reason}: raise max_tokens)" if finish_reason == "length" else ""
            return self._error(f"answered without 'choices[0].message.content'{cut}", text)
        usage = body.get("usage")
        prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return ChatAnswer(
            text=content,
            top_logprobs=_top_logprobs(choice.get("logprobs")),
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else None,
        )

    def __repr__(self) -> str:
        return f"VlmClient({self.base_url!r}, model={self.model!r}, timeout={self.timeout:g}, retries={self.retries})"
