"""Calling rewards: the contract check, sync and async rewards together, weights.

The contract (TRL's, with images in place of completions): a reward is called as
`reward(prompts=list[str], images=Tensor(B, 3, H, W) in [0, 1], **dataset_columns)` and returns B floats
(None, NaN or inf = no score for that sample). It may be `async`. A reward with a `timeout` that has not
returned after that many seconds stops the run with a `RewardError` naming it instead of hanging it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import math
import threading
from typing import Any, Callable, Sequence

import torch

from .loading import RewardSpec, resolve_reward


class RewardError(RuntimeError):
    """A reward raised or broke the contract; the message names the reward."""


class RewardFunction:
    """A resolved reward with its display name and weight."""

    def __init__(
        self, fn: Callable, name: str, weight: float = 1.0, normalize: bool = False, timeout: float | None = None
    ) -> None:
        self.fn, self.name, self.weight, self.normalize = fn, name, float(weight), bool(normalize)
        self.timeout = None if timeout is None else float(timeout)  # seconds per call; None: no limit
        self.__name__ = name  # TRL names reward columns after `__name__`

    @classmethod
    def from_spec(cls, spec: RewardSpec) -> "RewardFunction":
        fn = resolve_reward(spec)
        # a reward that bounds its own time (the `remote` client: per request, with retries) is not cut short
        timeout = None if getattr(fn, "handles_timeout", False) else spec.timeout
        return cls(fn, name=spec.display_name, weight=spec.weight, normalize=spec.normalize, timeout=timeout)

    def check(self, values: Any, batch: int) -> list[float]:
        """Contract check; None, NaN and +-inf become NaN (TRL's convention for 'no score')."""
        if isinstance(values, torch.Tensor):
            values = values.detach().float().cpu().flatten().tolist()
        try:
            values = list(values)
        except TypeError:
            raise RewardError(
                f"reward {self.name!r} returned {type(values).__name__}, expected a list of floats"
            ) from None
        if len(values) != batch:
            raise RewardError(f"reward {self.name!r} returned {len(values)} values for {batch} images")
        out = []
        for value in values:
            if value is None:
                out.append(math.nan)
                continue
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise RewardError(f"reward {self.name!r} returned a non-number: {value!r}") from None
            out.append(value if math.isfinite(value) else math.nan)  # inf would turn every advantage into NaN
        return out

    def __call__(self, prompts: list[str], images: torch.Tensor, **columns: Any) -> Any:
        return self.fn(prompts=prompts, images=images, **columns)

    def __repr__(self) -> str:
        return f"RewardFunction({self.name!r}, weight={self.weight})"


def build_rewards(specs: Sequence[RewardSpec | str | dict | Callable]) -> list[RewardFunction]:
    """Specs from a recipe, or callables from Python, to `RewardFunction`s."""
    rewards = []
    for spec in specs:
        if isinstance(spec, RewardFunction):
            rewards.append(spec)
        elif callable(spec) and not isinstance(spec, (str, dict)):
            rewards.append(RewardFunction(spec, name=getattr(spec, "__name__", type(spec).__name__)))
        else:
            rewards.append(RewardFunction.from_spec(spec if isinstance(spec, RewardSpec) else RewardSpec.parse(spec)))
    return rewards


def _timeout_error(names: Sequence[str], seconds: float) -> RewardError:
    which = ", ".join(repr(name) for name in names)
    return RewardError(
        f"reward {which} did not return within its timeout of {seconds:g}s (hung, or slower than "
        "that: raise `timeout` in its rewards entry if it is just slow); stopping the run"
    )


def _call_with_timeout(call: Callable[[], Any], seconds: float, names: Sequence[str], grace: float = 0.0) -> Any:
    """`call()` in a daemon thread, waited for `seconds`: a hung reward raises RewardError here. The thread
    cannot be killed; being a daemon, it does not keep the process alive once the run stops. It gets the
    caller's grad mode and CUDA device (both are per thread in torch). `grace`: extra seconds waited, not reported."""
    grad_enabled = torch.is_grad_enabled()
    device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            if device is not None:
                torch.cuda.set_device(device)
            with torch.set_grad_enabled(grad_enabled):
                outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, name=f"reward {', '.join(names)}", daemon=True)
    thread.start()
    thread.join(seconds + grace)
    if thread.is_alive():
        raise _timeout_error(names, seconds)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _run_coroutines(coroutines: list, timeouts: Sequence[float | None] = (), names: Sequence[str] = ()) -> list:
    """Awaits the coroutines together; each with a timeout gives a RewardError naming it when it runs over. When
    all have one, the event loop itself is also bounded (a coroutine that blocks the loop cannot hang the run)."""
    timeouts = list(timeouts) or [None] * len(coroutines)
    names = list(names) or [""] * len(coroutines)

    async def bounded(coroutine, seconds: float | None, name: str):
        if seconds is None:
            return await coroutine
        try:
            return await asyncio.wait_for(coroutine, seconds)
        except asyncio.TimeoutError:
            raise _timeout_error([name], seconds) from None

    async def gather() -> list:
        return await asyncio.gather(
            *(bounded(c, t, n) for c, t, n in zip(coroutines, timeouts, names)), return_exceptions=True
        )

    if coroutines and all(seconds is not None for seconds in timeouts):  # the loop runs in a watched thread
        return _call_with_timeout(lambda: asyncio.run(gather()), max(timeouts), names, grace=1.0)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(gather())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # already inside a loop (e.g. a notebook)
        return pool.submit(asyncio.run, gather()).result()


def score_rewards(
    rewards: Sequence[RewardFunction], prompts: list[str], images: torch.Tensor, columns: dict[str, list]
) -> torch.Tensor:
    """Rewards `(B, R)` float32 on CPU, NaN where a reward gave no score. Async rewards run concurrently."""
    batch = len(prompts)
    results: list[list[float] | None] = [None] * len(rewards)
    pending: list[tuple[int, Any]] = []
    for index, reward in enumerate(rewards):
        try:
            if reward.timeout is None:
                output = reward(prompts, images, **columns)
            else:
                output = _call_with_timeout(lambda: reward(prompts, images, **columns), reward.timeout, [reward.name])
        except RewardError:
            raise
        except Exception as error:  # noqa: BLE001 - re-raised with the reward's name
            raise RewardError(f"reward {reward.name!r} raised {type(error).__name__}: {error}") from error
        if inspect.isawaitable(output):
            pending.append((index, output))
        else:
            results[index] = reward.check(output, batch)
    if pending:
        outputs = _run_coroutines(
            [output for _, output in pending],
            [rewards[i].timeout for i, _ in pending],
            [rewards[i].name for i, _ in pending],
        )
        for (index, _), output in zip(pending, outputs):
            if isinstance(output, RewardError):
                raise output
            if isinstance(output, BaseException):
                name = rewards[index].name
                raise RewardError(f"reward {name!r} raised {type(output).__name__}: {output}") from output
            results[index] = rewards[index].check(output, batch)
    return torch.tensor(results, dtype=torch.float32).t().reshape(batch, len(rewards))
