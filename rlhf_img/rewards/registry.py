"""Name -> reward factory registry for built-in rewards (open_clip-style: one place that lists them all)."""

from __future__ import annotations

from typing import Callable

REWARD_REGISTRY: dict[str, Callable[..., Callable]] = {}


def register_reward(name: str) -> Callable[[Callable], Callable]:
    """Register a reward factory (a class or function called with the reward's `kwargs`) under `name`."""

    def decorator(factory: Callable) -> Callable:
        if name in REWARD_REGISTRY:
            raise ValueError(f"reward name {name!r} is already registered")
        REWARD_REGISTRY[name] = factory
        return factory

    return decorator


def list_rewards() -> list[str]:
    return sorted(REWARD_REGISTRY)
