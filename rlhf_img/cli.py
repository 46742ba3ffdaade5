"""`rlhf-img` command line: `rlhf-img train RECIPE.yaml [--key value ...]` and helpers.

Each command parses its arguments and calls the library: recipes and run preparation in `recipes.py`,
evaluation in `eval/`, families in `families/`. Bad input exits with code 2 and one line naming the key or
file, before anything is written.
"""

from __future__ import annotations

import argparse
import textwrap
import os
import sys
import time
from typing import TYPE_CHECKING, NoReturn, Sequence

from .recipes import UsageError, parse_recipe, prepare_training, recipe_parser
from .yaml_files import YamlFileError, read_yaml_mapping

if TYPE_CHECKING:
    from .config import EvalConfig


def one_line(message: str) -> str:
    """`message` on one line whatever it quotes: line breaks and other control characters are escaped."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in str(message))


def fail(message: str) -> NoReturn:
    print(f"rlhf-img: error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(2)


def cmd_train(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: rlhf-img train RECIPE.yaml [--key value ...]\n")
        print("GRPO-train an autoregressive text-to-image model. Every key below can be set in the recipe\n"
              "and overridden on the command line.\n")
        recipe_parser().print_help()
        return 0
    try:
        run = prepare_training(argv[0], list(argv[1:]))
    except UsageError as error:
        fail(str(error))
    from .training import train

    return train(*run)


def _run_stage(argv: Sequence[str], command: str, dataclass_type, description: str):
    """Parse `RECIPE [--key value ...]` for an upstream stage; None after printing --help."""
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: rlhf-img {command} RECIPE.yaml [--key value ...]\n\n{description}\n")
        recipe_parser((dataclass_type,), command).print_help()
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


def _recipe_family(argv: Sequence[str]) -> str | None:
    """The `model_family` a stage recipe names (None if it names none or cannot be read yet)."""
    if not argv:
        return None
    try:
        return read_yaml_mapping(argv[0], "recipe", "not a mapping").get("model_family")
    except YamlFileError:
        return None  # the stage's own parsing reports the problem


def cmd_sft(argv: Sequence[str]) -> int:
    from .families import FAMILIES

    family = FAMILIES.get(_recipe_family(argv) or "")
    if family is not None and family.sft is not None:
        config_class, run = family.sft()
        config = _run_stage(argv, "sft", config_class, f"SFT a {family.name} model on image/caption pairs.")
        if config is None:
            return 0
        if not config.dataset:
            fail("dataset: set the image/caption pairs to train on")
        start = time.time()
        try:
            path = run(config)
        except (OSError, ValueError) as error:
            fail(str(error).splitlines()[0])
        print(f"rlhf-img: SFT done in {time.time() - start:.0f}s; {family.name} checkpoint in {path}")
        return 0
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


EVAL_DESCRIPTION = (
    "Score a checkpoint (or a folder of images) with GenEval's rules: sample N images per prompt with fixed "
    "seeds, detect objects (the shapes world's exact detector, or Mask2Former + CLIP colours as GenEval), judge "
    "strictly, print GenEval's per-tag table. With --output_dir: images/ in GenEval's layout, results.jsonl "
    "(GenEval's fields) and table.json. Every option below is also a key of an eval YAML file (`rlhf-img eval "
    "EVAL.yaml [--key value ...]`, flags override the file); the family and sampling options are the training "
    "recipe's keys of the same names. `rlhf-img eval geneval --checkpoint X --metadata M ...` is an alias with "
    "GenEval's defaults (Mask2Former, 4 images per prompt, guided CFG 4)."
)
EVAL_USAGE = "rlhf-img eval [geneval] [CHECKPOINT | EVAL.yaml [CHECKPOINT]] [--key value ...]"


def eval_parser(geneval_defaults: bool = False) -> argparse.ArgumentParser:
    """The `rlhf-img eval` parser: one option per `EvalConfig` field (the recipe parser `rlhf-img train` uses, so
    names, types, defaults and help are the dataclass's), plus the positional CHECKPOINT; `geneval_defaults`: the
    `rlhf-img eval geneval` alias (`GENEVAL_DEFAULTS`)."""
    from .config import GENEVAL_DEFAULTS, EvalConfig

    parser = recipe_parser((EvalConfig,), "eval", description=EVAL_DESCRIPTION, usage=EVAL_USAGE)
    parser.add_argument("checkpoint_argument", nargs="?", metavar="CHECKPOINT",
                        help="the same as --checkpoint (after EVAL.yaml when both are given)")
    if geneval_defaults:
        parser.set_defaults(**GENEVAL_DEFAULTS)
    return parser


def _is_eval_file(token: str) -> bool:
    """A first argument ending in .yaml/.yml is an eval file (a checkpoint is a folder or a hub id, never that)."""
    return token.lower().endswith((".yaml", ".yml")) and not os.path.isdir(token)


def parse_eval_config(argv: Sequence[str]) -> EvalConfig:
    """`[geneval] [EVAL.yaml] [CHECKPOINT] [--key value ...]` -> the `EvalConfig`, as `rlhf-img train` parses a recipe:
    the file's keys, then the flags over them (UsageError with one line naming the key on bad input)."""
    from .config import EvalConfig

    argv = list(argv)
    geneval = argv[:1] == ["geneval"]
    if geneval:
        argv = argv[1:]
    eval_file = argv.pop(0) if argv and _is_eval_file(argv[0]) else None
    config, positional = parse_recipe(eval_file, argv, (EvalConfig,), "eval", parser=eval_parser(geneval))
    checkpoint = positional.checkpoint_argument
    if checkpoint is not None:
        flag_given = any(token == "--checkpoint" or token.startswith("--checkpoint=") for token in argv)
        if flag_given and config.checkpoint != checkpoint:
            raise UsageError(f"checkpoint given twice ({checkpoint!r} and --checkpoint {config.checkpoint!r}); "
                             "give one")
        config.checkpoint = checkpoint
    return config


def cmd_eval(argv: Sequence[str]) -> int:
    if any(token in ("-h", "--help") for token in argv):
        eval_parser(geneval_defaults=argv[:1] == ["geneval"]).print_help()
        return 0
    try:
        config = parse_eval_config(argv)
    except UsageError as error:
        fail(str(error))
    from .checkpoints import CheckpointError
    from .eval.run import run_evaluation

    try:
        table, title, written = run_evaluation(config)
    except (UsageError, CheckpointError, OSError, ValueError, KeyError) as error:
        fail(str(error).splitlines()[0])
    from .eval import format_table

    print(format_table(table, title))
    if written:
        print(f"rlhf-img: wrote {', '.join(written)}")
    return 0


def cmd_quickstart(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rlhf-img quickstart",
        description="Evaluate checkpoints/shapes-tiny on held-out prompts, GRPO-train it, evaluate again.",
    )
    parser.add_argument("--checkpoint", default="checkpoints/shapes-tiny")
    parser.add_argument("--recipe", default="recipes/shapes-grpo.yaml")
    parser.add_argument("--output_dir", default="runs/quickstart")
    parser.add_argument("--images_per_prompt", type=int, default=16,
                        help="images per held-out prompt (several tags have 1-5 held-out prompts: 16 keeps the "
                        "per-tag accuracies from swinging on a few samples)")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (same seed -> same images)")
    parser.add_argument("--train_seed", type=int, default=None, help="GRPO seed (default: the recipe's `seed`)")
    options, overrides = parser.parse_known_args(argv)
    from .quickstart import run_quickstart

    if options.train_seed is not None:
        overrides = [*overrides, "--seed", str(options.train_seed)]
    try:
        run_quickstart(options.checkpoint, options.recipe, options.output_dir, options.images_per_prompt,
                       options.seed, overrides)
    except UsageError as error:
        fail(str(error))
    print(f"rlhf-img: wrote {options.output_dir}/summary.json, reward_curve.png, dashboard.png, eval_progress.png, "
          "samples_before.png, samples_after.png")
    return 0


def cmd_convert(argv: Sequence[str]) -> int:
    from .checkpoints import CheckpointError
    from .families import CONVERTERS

    kinds = "\n".join(textwrap.fill(f"{name} (family {converter.family}): {converter.help}", width=100,
                                   initial_indent="  ", subsequent_indent="      ")
                     for name, converter in CONVERTERS.items())
    parser = argparse.ArgumentParser(
        prog="rlhf-img convert",
        description="Convert released weights into this project's safetensors layout. What each registered "
        "converter reads and writes:\n" + kinds,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=list(CONVERTERS), help="what to convert (the converters above)")
    parser.add_argument("source", help="folder or hub id holding the released files")
    parser.add_argument("output_dir", help="where the safetensors files go")
    parser.add_argument("--config", default=None, help="an architecture config file, for converters that take one")
    parser.add_argument("--family_config", default=None,
                        help="the released files and options as YAML/JSON, for converters that take one")
    parser.add_argument("--dtype", default="bfloat16", help="dtype of the written weights, for converters that cast")
    options = parser.parse_args(argv)
    from .config import parse_structured

    try:
        if options.family_config:
            options.family_config = parse_structured(options.family_config, "--family_config")
        written = CONVERTERS[options.kind].run(options.source, options.output_dir, options)
    except (CheckpointError, OSError, ValueError) as error:
        fail(str(error).splitlines()[0])
    print(f"rlhf-img: wrote {written}")
    return 0


def cmd_rewards(argv: Sequence[str]) -> int:
    from .rewards import REWARD_REGISTRY

    for name in sorted(REWARD_REGISTRY):
        doc = (REWARD_REGISTRY[name].__doc__ or "").strip().splitlines()[0]
        print(f"{name:28s} {doc}")
    return 0


def cmd_families(argv: Sequence[str]) -> int:
    """What the registry holds: each family, how its checkpoints are recognised, and what it adds (converters of
    released files, an SFT recipe, a tiny stand-in for the contract suite)."""
    from .families import CONVERTERS, FAMILIES

    for name, family in FAMILIES.items():
        extras = [f"rlhf-img convert {c.name}" for c in CONVERTERS.values() if c.family == name]
        extras += ["rlhf-img sft"] if family.sft is not None else []
        extras += ["tiny stand-in"] if family.stand_in is not None else []
        print(f"{name:12s} {family.help}\n{'':12s} detected by: {family.looks_for}")
        if extras:
            print(f"{'':12s} also: {', '.join(extras)}")
    return 0


SERVE_REWARD_EPILOG = """\
CONFIG.yaml holds a `rewards:` list in the recipe's format, e.g.
  rewards:
    - {name: my_detector.py:score, weight: 1.0, kwargs: {device: cuda:1}, label: detector}

endpoints (JSON):
  GET  /health  -> {"status": "ok", "rewards": [...], "weights": [...]}
  POST /score   {"prompts": [...], "images": {"dtype": "uint8", "shape": [B, 3, H, W], "data": base64},
                 "columns": {...}} -> {"scores": [weighted sum per image], "per_reward": {name: [...]}}

use it from a training recipe with the `remote` reward:
  rewards:
    - {name: remote, kwargs: {url: "http://127.0.0.1:8765", timeout: 60, retries: 2, health_check: true}}
  url: the server; timeout: seconds per request; retries: extra attempts after connection errors,
  timeouts and 5xx answers; health_check: GET /health when the trainer starts.
"""


def cmd_serve_reward(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rlhf-img serve-reward",
        description="Serve rewards over HTTP so heavy detectors / VLM judges run in their own process, GPU and "
        "environment; the trainer calls them with the `remote` reward. Prints `rlhf-img reward server listening on "
        "http://HOST:PORT` once the rewards are loaded; Ctrl-C stops it.",
        epilog=SERVE_REWARD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML file with a `rewards:` list (name/weight/kwargs/label, as in a recipe)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one (printed on start)")
    parser.add_argument("--verbose", action="store_true", help="log one line per request to stderr")
    parser.add_argument("--max_request_mb", type=float, default=1024.0,
                        help="refuse /score bodies above this many MB with HTTP 413 (default 1024: ~240 images at 1024²)")
    options = parser.parse_args(argv)
    if not 0 <= options.port <= 65535:
        fail(f"--port must be in 0..65535, got {options.port}")
    if not 0 < options.max_request_mb < float("inf"):
        fail(f"--max_request_mb must be a positive number, got {options.max_request_mb}")
    from .rewards import RewardConfigError
    from .rewards.server import serve

    try:
        serve(options.config, options.host, options.port, verbose=options.verbose, max_request_mb=options.max_request_mb)
    except RewardConfigError as error:
        fail(str(error))
    except OSError as error:  # the port is taken, or the host is not an address of this machine
        fail(f"cannot listen on {options.host}:{options.port} ({error})")
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
    from .families.causal_vq.tiny import save_tiny_causal_vq

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
    "sft": (cmd_sft, "Upstream: SFT a world's causal LM (recipes/shapes-sft.yaml) or a family's model (simplear)."),
    "eval": (cmd_eval, "GenEval's rules on a checkpoint or an image folder: rlhf-img eval CHECKPOINT|EVAL.yaml [--key ...]"),
    "quickstart": (cmd_quickstart, "The main job: eval -> GRPO -> eval on the shapes world."),
    "convert": (cmd_convert, "Convert released weights (Cosmos .jit, Infinity .pth, LlamaGen .pt) to safetensors."),
    "rewards": (cmd_rewards, "List the built-in rewards."),
    "families": (cmd_families, "List the model families and how each is detected."),
    "serve-reward": (cmd_serve_reward, "Serve rewards over HTTP for the `remote` reward: rlhf-img serve-reward X.yaml"),
    "create-tiny": (cmd_create_tiny, "Write a tiny random causal_vq checkpoint."),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: rlhf-img COMMAND [...]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:18s} {help_text}")
        print("\n`rlhf-img COMMAND --help` for a command's options.")
        return 0
    if argv[0] not in COMMANDS:
        fail(f"unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}")
    return COMMANDS[argv[0]][0](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
