"""`rlhf-img` command line: `rlhf-img train RECIPE.yaml [--key value ...]` and helpers.

Every recipe key is a field of the config dataclasses (`rlhf_img/config.py`), so the YAML, `--help` and
the Python API cannot drift apart. Bad input exits with code 2 and one line naming the key or file,
before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, NoReturn, Sequence

import yaml

from .config import ImageGRPOConfig, ImageModelConfig, PromptDataConfig

TRAIN_DATACLASSES = (ImageGRPOConfig, ImageModelConfig, PromptDataConfig)
STRUCTURED_KEYS = {"rewards", "family_config"}  # typed `str` for the command line (JSON), mappings/lists in YAML


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def fail(message: str) -> NoReturn:
    print(f"rlhf-img: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _trl_parser(dataclass_types=TRAIN_DATACLASSES, command: str = "train"):
    from trl import TrlParser

    class RecipeParser(TrlParser):
        def error(self, message: str) -> NoReturn:  # argparse prints usage + error; we print one line
            raise UsageError(message)

    return RecipeParser(dataclass_types, prog=f"rlhf-img {command} RECIPE", description=__doc__.split("\n")[0])


def _field_types(dataclass_types=TRAIN_DATACLASSES) -> dict[str, str]:
    return {f.name: str(f.type) for cls in dataclass_types for f in dataclasses.fields(cls)}


def load_recipe(path: str, dataclass_types=TRAIN_DATACLASSES) -> dict[str, Any]:
    """The recipe mapping, with unknown keys rejected (one line naming the first)."""
    if not os.path.isfile(path):
        raise UsageError(f"recipe not found: {path}")
    try:
        with open(path) as f:
            recipe = yaml.safe_load(f) or {}
    except yaml.YAMLError as error:
        raise UsageError(f"{path}: invalid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(recipe, dict):
        raise UsageError(f"{path}: a recipe must be a YAML mapping of key: value")
    known = set(_field_types(dataclass_types)) | {"env"}
    unknown = [key for key in recipe if key not in known]
    if unknown:
        raise UsageError(f"unknown recipe key {unknown[0]!r} in {path} (see `rlhf-img train --help` for the keys)")
    return recipe


def check_recipe_types(parser, recipe: dict[str, Any], path: str, dataclass_types=TRAIN_DATACLASSES) -> None:
    """argparse converts string values only; check the YAML's non-string values against each key's type."""
    types = _field_types(dataclass_types)
    actions = {action.dest: action for action in parser._actions}
    for key, value in recipe.items():
        action = actions.get(key)
        if action is None or value is None:
            continue
        structured = key in STRUCTURED_KEYS or "dict" in types[key] or "list" in types[key] or action.nargs in ("+", "*")
        if isinstance(value, (list, dict)):
            if not structured:
                raise UsageError(f"recipe key {key!r} in {path} must be a single value, got a {type(value).__name__}")
            continue
        converter = action.type
        if converter in (int, float) and isinstance(value, bool):
            raise UsageError(f"recipe key {key!r} in {path} must be a {converter.__name__}, got {value!r}")
        if converter is int and isinstance(value, float) and not value.is_integer():
            raise UsageError(f"recipe key {key!r} in {path} must be an int, got {value!r}")
        if callable(converter) and not structured:
            try:
                converted = converter(value if isinstance(value, str) else str(value) if converter is not float else value)
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                name = getattr(converter, "__name__", "value")
                raise UsageError(f"recipe key {key!r} in {path}: invalid {name} value {value!r}") from None
            if action.choices is not None and converted not in action.choices:
                raise UsageError(f"recipe key {key!r} in {path} must be one of {list(action.choices)}, got {value!r}")


def parse_recipe(recipe_path: str, overrides: Sequence[str], dataclass_types=TRAIN_DATACLASSES, command="train"):
    """The dataclasses of `dataclass_types` from a recipe plus `--key value` overrides (UsageError on bad input)."""
    parser = _trl_parser(dataclass_types, command)
    recipe = load_recipe(recipe_path, dataclass_types)
    check_recipe_types(parser, recipe, recipe_path, dataclass_types)
    try:
        return parser.parse_args_and_config(["--config", recipe_path, *overrides])
    except UsageError:
        raise
    except ValueError as error:
        message = str(error).splitlines()[0]
        if "not used by the HfArgumentParser" in message:
            message = f"unknown option(s) {message.split(':', 1)[1].strip()}"
        raise UsageError(message) from None


def prepare_training(recipe_path: str, overrides: Sequence[str]):
    """Everything that can fail on user input, before anything is written: configs, rewards, prompts, model."""
    from trl import get_peft_config

    from .data import load_prompt_dataset
    from .models import CheckpointError, load_policy
    from .rewards import RewardConfigError, build_rewards

    args, model_args, data_args = parse_recipe(recipe_path, overrides)
    if not model_args.model_name_or_path:
        raise UsageError("recipe key 'model_name_or_path' is required (a local checkpoint folder or a hub id)")
    if not data_args.dataset:
        raise UsageError("recipe key 'dataset' is required (a prompt file or a `datasets` name)")
    if not args.reward_specs:
        raise UsageError("recipe key 'rewards' is required (a list of rewards, e.g. [{name: jpeg_compressibility}])")
    try:
        rewards = build_rewards(args.reward_specs)
        dataset = load_prompt_dataset(
            data_args.dataset,
            config=data_args.dataset_config,
            split=data_args.dataset_split,
            prompt_column=data_args.prompt_column,
            max_prompts=data_args.max_prompts,
        )
        policy = load_policy(
            model_args.model_family,
            model_args.model_name_or_path,
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
    return args, model_args, rewards, dataset, policy, get_peft_config(model_args)


def cmd_train(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: rlhf-img train RECIPE.yaml [--key value ...]\n")
        print("GRPO-train an autoregressive text-to-image model. Every key below can be set in the recipe\n"
              "and overridden on the command line.\n")
        _trl_parser().print_help()
        return 0
    recipe_path, overrides = argv[0], list(argv[1:])
    try:
        args, model_args, rewards, dataset, policy, peft_config = prepare_training(recipe_path, overrides)
    except UsageError as error:
        fail(str(error))

    from .rewards import RewardError
    from .trainer import ImageGRPOTrainer

    trainer = ImageGRPOTrainer(policy, args, dataset, reward_funcs=rewards, peft_config=peft_config)
    start = time.time()
    try:
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    except RewardError as error:  # a user's reward broke mid-run: name it, skip the traceback
        print(f"rlhf-img: error: {error}", file=sys.stderr)
        return 1
    trainer.save_model(args.output_dir)
    trainer.save_state()  # trainer_state.json: the full log history next to the model
    print(f"rlhf-img: trained {trainer.state.global_step} steps in {time.time() - start:.0f}s; saved to {args.output_dir}")
    logged = [entry for entry in trainer.state.log_history if "reward" in entry]
    if logged:
        print(f"rlhf-img: reward {logged[0]['reward']:.4g} (step {logged[0]['step']}) -> "
              f"{logged[-1]['reward']:.4g} (step {logged[-1]['step']})")
    return 0


def _run_stage(argv: Sequence[str], command: str, dataclass_type, description: str):
    """Parse `RECIPE [--key value ...]` for an upstream stage; None after printing --help."""
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: rlhf-img {command} RECIPE.yaml [--key value ...]\n\n{description}\n")
        _trl_parser((dataclass_type,), command).print_help()
        return None
    try:
        (config,) = parse_recipe(argv[0], list(argv[1:]), (dataclass_type,), command)
    except UsageError as error:
        fail(str(error))
    return config


def cmd_pretrain_tokenizer(argv: Sequence[str]) -> int:
    from .worlds.tokenizer_training import TokenizerTrainingConfig, train_tokenizer

    config = _run_stage(argv, "pretrain-tokenizer", TokenizerTrainingConfig, "Train a world's VQ tokenizer on rendered images.")
    if config is None:
        return 0
    summary = train_tokenizer(config)
    table = summary["held_out_reconstruction"]
    print("held-out reconstructions (strict GenEval rules): " + ", ".join(f"{k} {v:.3f}" for k, v in table.items()))
    print(f"rlhf-img: tokenizer trained in {summary['train_seconds']:.0f}s; saved to {config.output_dir}")
    return 0


def cmd_sft(argv: Sequence[str]) -> int:
    from .worlds.sft import WorldSFTConfig, run_sft

    config = _run_stage(argv, "sft", WorldSFTConfig, "Pretrain/SFT a small causal LM on a world's caption -> image tokens.")
    if config is None:
        return 0
    if not os.path.isdir(config.visual_tokenizer):
        fail(f"visual tokenizer not found: {config.visual_tokenizer} (run `rlhf-img pretrain-tokenizer` first)")
    start = time.time()
    path = run_sft(config)
    print(f"rlhf-img: SFT done in {time.time() - start:.0f}s; causal_vq checkpoint in {path}")
    print(f"rlhf-img: score it with `rlhf-img eval {path}`")
    return 0


def cmd_eval(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rlhf-img eval",
        description="GenEval-style evaluation of a shapes-world checkpoint on its held-out prompts "
        "(N images per prompt with fixed seeds, strict rules, GenEval's per-tag table).",
    )
    parser.add_argument("checkpoint", help="causal_vq checkpoint folder (SFT output, GRPO output, or LoRA adapter)")
    parser.add_argument("--split", default="held_out", choices=["held_out", "train"], help="prompt split")
    parser.add_argument("--images_per_prompt", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (same seed -> same images)")
    parser.add_argument("--cfg_mode", default="none", choices=["none", "guided"], help="guidance at evaluation")
    parser.add_argument("--cfg_scale", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--results", default=None, help="write one JSON line per image here")
    parser.add_argument("--json", default=None, help="write the table as JSON here")
    options = parser.parse_args(argv)
    from .models import CheckpointError, Sampling, load_policy
    from .worlds import shapes
    from .worlds.evaluation import evaluate_policy, format_table, write_records

    try:
        policy = load_policy("causal_vq", options.checkpoint)
    except (CheckpointError, OSError, ValueError) as error:
        fail(str(error).splitlines()[0])
    train_rows, held_out = shapes.split_prompts()
    rows = held_out if options.split == "held_out" else train_rows
    sampling = Sampling(cfg_mode=options.cfg_mode, cfg_scale=options.cfg_scale, temperature=options.temperature,
                        top_k=options.top_k)
    table, records, _ = evaluate_policy(policy, rows, options.images_per_prompt, sampling, options.seed)
    print(format_table(table, f"GenEval (strict) on {len(rows)} {options.split} prompts x {options.images_per_prompt} images, "
                              f"seed {options.seed}:"))
    if options.results:
        write_records(records, options.results)
    if options.json:
        with open(options.json, "w") as f:
            json.dump(table, f, indent=2)
    return 0


def cmd_quickstart(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rlhf-img quickstart",
        description="Evaluate checkpoints/shapes-tiny on held-out prompts, GRPO-train it, evaluate again.",
    )
    parser.add_argument("--checkpoint", default="checkpoints/shapes-tiny")
    parser.add_argument("--recipe", default="recipes/shapes-grpo.yaml")
    parser.add_argument("--output_dir", default="runs/quickstart")
    parser.add_argument("--images_per_prompt", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed")
    options, overrides = parser.parse_known_args(argv)
    from .worlds.quickstart import run_quickstart

    try:
        run_quickstart(options.checkpoint, options.recipe, options.output_dir, options.images_per_prompt,
                       options.seed, overrides)
    except UsageError as error:
        fail(str(error))
    print(f"rlhf-img: wrote {options.output_dir}/summary.json, reward_curve.png, samples_before.png, samples_after.png")
    return 0


def cmd_rewards(argv: Sequence[str]) -> int:
    from .rewards import REWARD_REGISTRY

    for name in sorted(REWARD_REGISTRY):
        doc = (REWARD_REGISTRY[name].__doc__ or "").strip().splitlines()[0]
        print(f"{name:28s} {doc}")
    return 0


def cmd_create_tiny(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rlhf-img create-tiny", description="Write a random-weight causal_vq checkpoint (for tests and demos)."
    )
    parser.add_argument("path")
    parser.add_argument("--arch", default="qwen2", choices=["qwen2", "llama"])
    parser.add_argument("--grid", type=int, nargs=2, default=(4, 4), metavar=("H", "W"))
    parser.add_argument("--codebook_size", type=int, default=64)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    from .models.tiny import save_tiny_causal_vq

    save_tiny_causal_vq(
        options.path,
        arch=options.arch,
        grid=tuple(options.grid),
        codebook_size=options.codebook_size,
        hidden_size=options.hidden_size,
        num_layers=options.num_layers,
        seed=options.seed,
    )
    print(f"rlhf-img: wrote {options.path}")
    return 0


COMMANDS = {
    "train": (cmd_train, "GRPO-train a model from a recipe: rlhf-img train recipes/X.yaml [--key value ...]"),
    "pretrain-tokenizer": (cmd_pretrain_tokenizer, "Upstream: train a world's VQ tokenizer (recipes/shapes-tokenizer.yaml)."),
    "sft": (cmd_sft, "Upstream: pretrain/SFT a world's causal LM (recipes/shapes-sft.yaml)."),
    "eval": (cmd_eval, "GenEval-style scores of a shapes-world checkpoint on held-out prompts."),
    "quickstart": (cmd_quickstart, "The main job: eval -> GRPO -> eval on the shapes world."),
    "rewards": (cmd_rewards, "List the built-in rewards."),
    "create-tiny": (cmd_create_tiny, "Write a tiny random causal_vq checkpoint."),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: rlhf-img COMMAND [...]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:14s} {help_text}")
        print("\n`rlhf-img COMMAND --help` for a command's options.")
        return 0
    if argv[0] not in COMMANDS:
        fail(f"unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}")
    return COMMANDS[argv[0]][0](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
