"""Recipes: a flat YAML of config-dataclass keys plus `--key value` overrides -> the configs, and
`prepare_training`, which builds everything a run needs before anything is written.

Every recipe key is a field of the config dataclasses (`rlhf_img/config.py`), so the YAML, `--help` and the
Python API cannot drift apart. Bad input raises `UsageError` with one line naming the key or file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, NoReturn, Sequence

from .checkpoints import CheckpointError, resolve_subpath
from .config import ImageGRPOConfig, ImageModelConfig, PromptDataConfig
from .model_card import remember_recipe
from .recipe_paths import RecipePathError, resolve_recipe_paths
from .resume import resolve_resume
from .trl_keys import inapplicable_key
from .yaml_files import YamlFileError, read_yaml_mapping

DESCRIPTION = "rlhf-img: post-train autoregressive text-to-image models with GRPO on TRL."
TRAIN_DATACLASSES = (ImageGRPOConfig, ImageModelConfig, PromptDataConfig)
STRUCTURED_KEYS = {"rewards", "family_config"}  # typed `str` for the command line (JSON), mappings/lists in YAML


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def recipe_parser(
    dataclass_types=TRAIN_DATACLASSES, command: str = "train", description: str = DESCRIPTION, usage: str | None = None
):
    """The `--key value` parser of `dataclass_types` (TRL's `TrlParser`): one option per field, its help the field's."""
    from trl import TrlParser

    class RecipeParser(TrlParser):
        def error(self, message: str) -> NoReturn:  # argparse prints usage + error; we print one line
            raise UsageError(message)

    return RecipeParser(dataclass_types, prog=f"rlhf-img {command} RECIPE", description=description, usage=usage)


def _field_types(dataclass_types=TRAIN_DATACLASSES) -> dict[str, str]:
    """Each field's declared type, from the class annotations: HfArgumentParser rewrites `field.type` of
    `dict`-typed fields (e.g. `lr_scheduler_kwargs`) to `str` in place, the annotations keep the truth."""
    types = {}
    for cls in dataclass_types:
        names = {f.name for f in dataclasses.fields(cls)}
        for klass in reversed(cls.__mro__):
            for name, annotation in vars(klass).get("__annotations__", {}).items():
                if name in names:
                    types[name] = str(annotation)
    return types


def load_recipe(path: str, dataclass_types=TRAIN_DATACLASSES, command: str = "train") -> dict[str, Any]:
    """The recipe mapping, with unknown keys rejected (one line naming the first)."""
    try:
        recipe = read_yaml_mapping(path, "recipe", "a recipe must be a YAML mapping of key: value")
    except YamlFileError as error:
        raise UsageError(str(error)) from None
    known = set(_field_types(dataclass_types)) | {"env"}
    unknown = [key for key in recipe if key not in known]
    if unknown:
        raise UsageError(f"unknown recipe key {unknown[0]!r} in {path} (see `rlhf-img {command} --help` for the keys)")
    return recipe


def check_recipe_types(parser, recipe: dict[str, Any], path: str, dataclass_types=TRAIN_DATACLASSES) -> None:
    """argparse converts string values only; check the YAML's non-string values against each key's type."""
    types = _field_types(dataclass_types)
    actions = {action.dest: action for action in parser._actions}
    for key, value in recipe.items():
        action = actions.get(key)
        if action is None:
            continue
        if value is None:
            if "None" not in types[key] and "Optional" not in types[key]:
                raise UsageError(f"recipe key {key!r} in {path} needs a value ({types[key]}), got null")
            continue
        structured = (
            key in STRUCTURED_KEYS or "dict" in types[key] or "list" in types[key] or action.nargs in ("+", "*")
        )
        if isinstance(value, (list, dict)):
            if not structured:
                raise UsageError(f"recipe key {key!r} in {path} must be a single value, got a {type(value).__name__}")
            if isinstance(value, list) and "dict" in types[key] and "list" not in types[key] and action.nargs is None:
                raise UsageError(f"recipe key {key!r} in {path} must be a mapping or a file path, got a list")
            continue
        if "dict" in types[key] and not isinstance(value, str):  # a mapping, or a JSON file path: never a number
            raise UsageError(f"recipe key {key!r} in {path} must be a mapping or a file path, got {value!r}")
        converter = action.type
        if converter in (int, float) and isinstance(value, bool):
            raise UsageError(f"recipe key {key!r} in {path} must be a {converter.__name__}, got {value!r}")
        if converter is int and isinstance(value, float) and not value.is_integer():
            raise UsageError(f"recipe key {key!r} in {path} must be an int, got {value!r}")
        if callable(converter) and not structured:
            try:
                converted = converter(
                    value if isinstance(value, str) else str(value) if converter is not float else value
                )
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                name = getattr(converter, "__name__", "value")
                raise UsageError(f"recipe key {key!r} in {path}: invalid {name} value {value!r}") from None
            if action.choices is not None and converted not in action.choices:
                raise UsageError(f"recipe key {key!r} in {path} must be one of {list(action.choices)}, got {value!r}")


def _parse(parser, recipe: dict[str, Any], overrides: Sequence[str]):
    """What `TrlParser.parse_args_and_config` does with a config file (set `env`, the recipe's values as defaults,
    then the command line), from the already checked mapping: a number under a text key (`output_dir: 1`)
    becomes text, as it would on the command line, instead of reaching the configs as an int."""
    env = recipe.get("env") or {}
    if not isinstance(env, dict):
        raise UsageError("recipe key 'env' must be a mapping of environment variable: value")
    for name, value in env.items():
        os.environ[str(name)] = str(value)
    actions = {action.dest: action for action in parser._actions}
    values = {}
    for key, value in recipe.items():
        if key == "env":
            continue
        action = actions.get(key)
        if action is not None and action.type is str and isinstance(value, (int, float)) and action.nargs is None:
            value = str(value)
        values[key] = value
    parser.set_defaults_with_config(**values)
    return parser.parse_args_into_dataclasses(args=list(overrides))


def parse_recipe(
    recipe_path: str | None, overrides: Sequence[str], dataclass_types=TRAIN_DATACLASSES, command="train", parser=None
):
    """The dataclasses of `dataclass_types` from a recipe plus `--key value` overrides (UsageError on bad input).
    `recipe_path=None`: the command line alone. `parser`: one built by `recipe_parser` with extra arguments or
    defaults (their values come back as a last `argparse.Namespace`)."""
    parser = parser or recipe_parser(dataclass_types, command)
    recipe = load_recipe(recipe_path, dataclass_types, command) if recipe_path is not None else {}
    check_recipe_types(parser, recipe, recipe_path, dataclass_types)
    try:
        configs = _parse(parser, recipe, overrides)
    except UsageError:
        raise
    except ValueError as error:
        message = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
        if "not used by the HfArgumentParser" in message:
            message = f"unknown option(s) {message.split(':', 1)[1].strip()}"
        raise UsageError(message) from None
    except Exception as error:  # noqa: BLE001 - the configs' own checks (transformers, TRL) on user values
        message = " ".join(str(error).split()) or "no detail"
        raise UsageError(f"invalid recipe/options ({type(error).__name__}: {message[:300]})") from None
    try:  # inputs the recipe names relative to itself work from any folder (recipe_paths.py)
        if recipe_path is not None:
            resolve_recipe_paths(configs, recipe, recipe_path, overrides)
    except RecipePathError as error:
        raise UsageError(str(error)) from None
    remember_recipe(configs, recipe_path, overrides, recipe)  # for the output folder's model card (model_card.py)
    return configs


def check_run_keys(args, model_args) -> None:
    """What every training command (train, dpo) checks first: `resume_from_checkpoint` resolved (`true` -> the
    latest complete checkpoint-N in output_dir; a path must be a complete checkpoint) and a checkpoint named."""
    try:
        args.resume_from_checkpoint = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if not model_args.model_name_or_path:
        raise UsageError("recipe key 'model_name_or_path' is required (a local checkpoint folder or a hub id)")


def prepare_training(recipe_path: str, overrides: Sequence[str]):
    """Everything that can fail on user input, before anything is written: configs, the `RewardSet` (its models
    loaded), prompts, model. Returns `(args, model_args, rewards, dataset, policy, peft_config)`."""
    from trl import get_peft_config

    from .data import load_prompt_dataset
    from .families import load_policy
    from .rewards import RewardConfigError, RewardSet

    args, model_args, data_args = parse_recipe(recipe_path, overrides)
    refusal = inapplicable_key(args, model_args)  # a TRL key that would do nothing for images (trl_keys.py)
    if refusal is not None:
        raise UsageError(refusal)
    check_run_keys(args, model_args)
    if not data_args.dataset:
        raise UsageError("recipe key 'dataset' is required (a prompt file or a `datasets` name)")
    if not args.reward_specs:
        raise UsageError("recipe key 'rewards' is required (a list of rewards, e.g. [{name: jpeg_compressibility}])")
    try:
        if args.eval_every > 0:  # a bad in-loop eval prompt set fails here, not at the first eval
            from .in_loop_eval import load_eval_prompts

            load_eval_prompts(args.eval_prompts, args.eval_max_prompts)
        rewards = RewardSet.build(args.reward_specs)  # built once, here; the trainer takes it as it is
        dataset = load_prompt_dataset(
            data_args.dataset,
            config=data_args.dataset_config,
            split=data_args.dataset_split,
            prompt_column=data_args.prompt_column,
            max_prompts=data_args.max_prompts,
        )
        policy = load_policy(
            model_args.model_name_or_path,
            model_args.model_family,
            visual_tokenizer=model_args.visual_tokenizer,
            dtype=model_args.dtype,
            family_config=model_args.family_config,
            revision=None if model_args.model_revision == "main" else model_args.model_revision,
            trust_remote_code=args.trust_remote_code,
        )
    except (RewardConfigError, CheckpointError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None
    except (OSError, ValueError) as error:
        raise UsageError(str(error).splitlines()[0]) from None
    peft_config = get_peft_config(model_args)
    _check_reference_loadable(args, policy, peft_config)
    return args, model_args, rewards, dataset, policy, peft_config


def _check_reference_loadable(args, policy, peft_config) -> None:
    """Full fine-tuning with beta > 0: TRL rebuilds the reference model from the policy's
    `config._name_or_path`, which must then be a transformers folder or hub repo (not a released .pth)."""
    if args.beta == 0.0 or peft_config is not None:
        return
    location = getattr(getattr(policy.model, "config", None), "_name_or_path", "") or ""
    if not location or resolve_subpath(location, "config.json", required=False) is None:
        raise UsageError(
            f"beta={args.beta} with full fine-tuning needs a reference model that TRL can reload from "
            f"{location or 'the checkpoint'!r}, which has no transformers config.json; use LoRA (use_peft: true), "
            "beta: 0, or convert the checkpoint first (e.g. `rlhf-img convert infinity SRC OUT`)"
        )
