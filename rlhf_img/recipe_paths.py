"""Relative paths in a recipe: from the current folder first, then from the recipe's own folder.

So `rlhf-img train /somewhere/recipes/x.yaml` works from any folder when the recipe names its inputs relative
to itself (`dataset: prompts/simple-objects.txt`), and a path that exists where the user stands still wins
(the rule before this module). Only inputs are resolved: `output_dir` and other outputs stay relative to the
current folder. Values given on the command line are the user's own typing, relative to the current folder,
and are left alone.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

# recipe keys that name an input file or folder (a value that exists in neither place is left as written:
# it may be a hub id, and the loader's own error names it)
PATH_KEYS = (
    "dataset",
    "model_name_or_path",
    "visual_tokenizer",
    "resume_from_checkpoint",
    "checkpoint",
    "images",
    "prompts",
    "class_names",
)  # the last four: `rlhf-img eval` files (EvalConfig)
LOCAL_FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet")  # `dataset` values that can only be files


class RecipePathError(ValueError):
    """A recipe input that is clearly a local file but exists in neither place; one line naming both."""


def resolve_input(value: Any, recipe_dir: str) -> Any:
    """`value` if it is absolute or exists from the current folder; else the recipe-folder path if that exists;
    else `value` unchanged."""
    if not isinstance(value, str) or not value or os.path.isabs(value) or value.startswith("~"):
        return value
    if os.path.exists(value):
        return value
    candidate = os.path.normpath(os.path.join(recipe_dir, value))
    return candidate if os.path.exists(candidate) else value


def _reward_location(name: str) -> tuple[str, str] | None:
    """(file, function) of a `path/file.py:function` reward name; None for built-ins and `module:function`."""
    if ":" not in name:
        return None
    location, attribute = name.rsplit(":", 1)
    return (location, attribute) if location.endswith(".py") or os.sep in location else None


def resolve_reward_spec(spec, recipe_dir: str, source: str):
    """A `RewardSpec` whose `file.py:function` is resolved like any input; its label keeps the name as written,
    so the dashboards' `rewards/<name>/...` keys do not change with the folder the run starts from."""
    parts = _reward_location(spec.name)
    if parts is None:
        return spec
    location, attribute = parts
    resolved = resolve_input(location, recipe_dir)
    if resolved == location:
        if not os.path.exists(location):
            raise RecipePathError(
                f"reward {spec.name!r} in {source}: file not found: {location} (looked in the "
                f"current folder and in the recipe's folder {recipe_dir})"
            )
        return spec
    return dataclasses.replace(spec, name=f"{resolved}:{attribute}", label=spec.label or spec.name)


def _overridden(overrides: Sequence[str]) -> set[str]:
    return {token[2:].split("=", 1)[0] for token in overrides if isinstance(token, str) and token.startswith("--")}


def resolve_recipe_paths(
    configs: Sequence[Any], recipe: dict[str, Any], recipe_path: str, overrides: Sequence[str] = ()
) -> None:
    """Resolve, in place, the input paths that `configs` (parsed dataclasses) took from the recipe file."""
    recipe_dir = os.path.dirname(os.path.abspath(recipe_path))
    from_command_line = _overridden(overrides)
    for config in configs:
        for key in PATH_KEYS:
            if key not in recipe or key in from_command_line or not hasattr(config, key):
                continue
            value = getattr(config, key)
            resolved = resolve_input(value, recipe_dir)
            if (
                key == "dataset"
                and resolved == value
                and isinstance(value, str)
                and value.lower().endswith(LOCAL_FILE_SUFFIXES)
                and not os.path.exists(os.path.expanduser(value))
            ):
                raise RecipePathError(
                    f"recipe key 'dataset' in {recipe_path}: prompt file not found: {value} (looked "
                    f"in the current folder and in the recipe's folder {recipe_dir})"
                )
            setattr(config, key, resolved)
        if "rewards" in recipe and "rewards" not in from_command_line and getattr(config, "reward_specs", None):
            config.reward_specs = [resolve_reward_spec(spec, recipe_dir, recipe_path) for spec in config.reward_specs]
