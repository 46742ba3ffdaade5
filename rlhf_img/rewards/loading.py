"""Resolve a reward spec (built-in name, `path/file.py:func` or `package.module:func`) to a callable.

User code is imported only from the file or module the user named.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from .registry import REWARD_REGISTRY, list_rewards


class RewardConfigError(ValueError):
    """A reward spec that cannot be resolved (unknown name, missing file, missing function)."""


@dataclass
class RewardSpec:
    """One entry of the recipe's `rewards` list."""

    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str | None = None  # display/logging name; lets one reward appear twice with different kwargs
    normalize: bool = False  # z-score this reward over the batch before weighting (no reward dominates by scale)
    timeout: float | None = None  # seconds a call may take before the run stops naming it (None: no limit)

    @property
    def display_name(self) -> str:
        return self.label or self.name

    @classmethod
    def parse(cls, entry: Any) -> "RewardSpec":
        """Accepts `"name"`, `{"name": ..., "weight": ..., "kwargs": {...}, "label": ..., "normalize": bool,
        "timeout": seconds}`."""
        if isinstance(entry, str):
            return cls(name=entry)
        if not isinstance(entry, dict) or "name" not in entry:
            raise RewardConfigError(f"rewards: each entry needs a 'name' (got {entry!r})")
        unknown = set(entry) - {"name", "weight", "kwargs", "label", "normalize", "timeout"}
        if unknown:
            raise RewardConfigError(f"rewards: unknown key(s) {sorted(unknown)} in entry {entry['name']!r}")
        kwargs = entry.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise RewardConfigError(f"rewards: 'kwargs' of {entry['name']!r} must be a mapping")
        try:
            weight = float(entry.get("weight", 1.0))
        except (TypeError, ValueError):
            raise RewardConfigError(f"rewards: 'weight' of {entry['name']!r} must be a number") from None
        label, normalize = entry.get("label"), entry.get("normalize", False)
        if not isinstance(normalize, bool):
            raise RewardConfigError(f"rewards: 'normalize' of {entry['name']!r} must be true or false")
        timeout = entry.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf")
        ):
            raise RewardConfigError(
                f"rewards: 'timeout' of {entry['name']!r} must be a positive number of seconds, got {timeout!r}"
            )
        return cls(
            name=str(entry["name"]),
            weight=weight,
            kwargs=dict(kwargs),
            label=None if label is None else str(label),
            normalize=normalize,
            timeout=None if timeout is None else float(timeout),
        )


def _import_from_file(path: str, attribute: str, spec_name: str) -> Any:
    if not os.path.isfile(path):
        raise RewardConfigError(f"reward {spec_name!r}: file not found: {path}")
    module_name = f"rlhf_img_user_reward_{abs(hash(os.path.abspath(path)))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # lets pickling / dataclasses in the user file resolve their module
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as error:  # includes a file that is not UTF-8 text
        del sys.modules[module_name]
        where = f" line {error.lineno}" if error.lineno else ""
        raise RewardConfigError(f"reward {spec_name!r}: {path}{where}: {error.msg}") from None
    except Exception as error:  # noqa: BLE001 - the user's module failed at import: one line naming the file
        del sys.modules[module_name]
        message = (str(error).splitlines() or [""])[0]
        raise RewardConfigError(
            f"reward {spec_name!r}: importing {path} raised {type(error).__name__}: {message}"
        ) from None
    if not hasattr(module, attribute):
        raise RewardConfigError(f"reward {spec_name!r}: {path} defines no {attribute!r}")
    return getattr(module, attribute)


def _import_from_module(module_name: str, attribute: str, spec_name: str) -> Any:
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise RewardConfigError(f"reward {spec_name!r}: cannot import module {module_name!r} ({error})") from None
    if not hasattr(module, attribute):
        raise RewardConfigError(f"reward {spec_name!r}: module {module_name!r} defines no {attribute!r}")
    return getattr(module, attribute)


def resolve_reward(spec: RewardSpec) -> Callable:
    """The callable for `spec`: classes are instantiated with `kwargs`, functions get them bound."""
    name = spec.name
    # one `timeout` key for every reward: a reward that bounds its own requests (`remote`, `vlm_judge`) takes it as
    # its per-request timeout, since the trainer's watchdog is off for it
    if spec.timeout is not None and getattr(REWARD_REGISTRY.get(name), "handles_timeout", False):
        if spec.kwargs.get("timeout", spec.timeout) != spec.timeout:
            raise RewardConfigError(
                f"reward {spec.display_name!r}: 'timeout' is set twice ({spec.timeout:g} on the "
                f"entry, {spec.kwargs['timeout']!r} in kwargs); keep the entry's"
            )
        spec = dataclasses.replace(spec, kwargs={**spec.kwargs, "timeout": spec.timeout})
    if ":" in name:
        location, attribute = name.rsplit(":", 1)
        if location.endswith(".py") or os.sep in location:
            target = _import_from_file(location, attribute, name)
        else:
            target = _import_from_module(location, attribute, name)
    elif name in REWARD_REGISTRY:
        target = REWARD_REGISTRY[name]
    else:
        raise RewardConfigError(
            f"unknown reward {name!r}; built-in rewards: {', '.join(list_rewards())}; "
            "custom rewards: 'path/to/file.py:function' or 'package.module:function'"
        )
    if inspect.isclass(target):
        try:
            return target(**spec.kwargs)
        except TypeError as error:
            raise RewardConfigError(f"reward {name!r}: bad kwargs {spec.kwargs} ({error})") from None
    if not callable(target):
        raise RewardConfigError(f"reward {name!r} is not callable")
    if name in REWARD_REGISTRY:  # built-in factory functions build the reward from kwargs
        return target(**spec.kwargs)
    return functools.partial(target, **spec.kwargs) if spec.kwargs else target
