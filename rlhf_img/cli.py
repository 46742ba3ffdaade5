"""`rlhf-img` command line: `rlhf-img train RECIPE.yaml [--key value ...]` and helpers.

Each command parses its arguments and calls the library: recipes and run preparation in `recipes.py`,
evaluation in `eval/`, families in `families/`. Bad input exits with code 2 and one line naming the key or
file, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import textwrap
import time
from typing import TYPE_CHECKING, Sequence

from .command_errors import fail
from .recipes import UsageError, parse_recipe, prepare_training, recipe_parser
from .yaml_files import YamlFileError, read_yaml_mapping

if TYPE_CHECKING:
    from .config import EvalConfig


def cmd_train(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: rlhf-img train RECIPE.yaml [--key value ...]\n")
        print(
            "GRPO-train an autoregressive text-to-image model. Every key below can be set in the recipe\n"
            "and overridden on the command line.\n"
        )
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

    config = _run_stage(
        argv, "pretrain-tokenizer", TokenizerTrainingConfig, "Train a world's VQ tokenizer on rendered images."
    )
    if config is None:
        return 0
    summary = train_tokenizer(config)
    table = summary["held_out_reconstruction"]
    print("held-out reconstructions (strict GenEval rules): " + ", ".join(f"{k} {v:.3f}" for k, v in table.items()))
    print(f"rlhf-img: tokenizer trained in {summary['train_seconds']:.0f}s; saved to {config.output_dir}")
    return 0


SFT_DESCRIPTION = (
    "SFT or pretrain a model of any family on pre-tokenized image/caption pairs (`rlhf-img encode` output): the "
    "loss is the family scorer's negative log-likelihood of each image's actions given its caption, a share "
    "`caption_dropout` scored under the family's unconditional prompt (for CFG); `from_scratch: true` re-draws the "
    "trainable weights first (pretraining). LoRA with use_peft. A recipe without `model_name_or_path` is the shapes "
    "world's own SFT (recipes/shapes-sft.yaml: a causal LM built from scratch on rendered images)."
)


def _is_world_sft(argv: Sequence[str]) -> bool:
    """The shapes world's own SFT recipe (recipes/shapes-sft.yaml) builds its LM from a few shape keys and renders
    its own data: it names neither a checkpoint nor a dataset, which every family SFT recipe does."""
    if not argv or argv[0].startswith("-"):
        return False
    try:
        recipe = read_yaml_mapping(argv[0], "recipe", "not a mapping")
    except YamlFileError:
        return False  # the family stage's parsing reports the problem
    keys = ("model_name_or_path", "dataset")
    return not any(key in recipe or f"--{key}" in argv for key in keys)


def cmd_sft(argv: Sequence[str]) -> int:
    if _is_world_sft(argv):
        from .worlds.sft import WorldSFTConfig, run_sft

        config = _run_stage(
            argv, "sft", WorldSFTConfig, "Pretrain/SFT a small causal LM on a world's caption -> image tokens."
        )
        if not os.path.isdir(config.visual_tokenizer):
            fail(f"visual tokenizer not found: {config.visual_tokenizer} (run `rlhf-img pretrain-tokenizer` first)")
        start = time.time()
        path = run_sft(config)
        print(f"rlhf-img: SFT done in {time.time() - start:.0f}s; causal_vq checkpoint in {path}")
        print(f"rlhf-img: score it with `rlhf-img eval {path}`")
        return 0
    from .config import ImageModelConfig
    from .upstream.sft import ActionSFTConfig, run_action_sft

    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: rlhf-img sft RECIPE.yaml [--key value ...]\n\n{SFT_DESCRIPTION}\n")
        recipe_parser((ActionSFTConfig, ImageModelConfig), "sft").print_help()
        return 0
    try:
        args, model_args = parse_recipe(argv[0], list(argv[1:]), (ActionSFTConfig, ImageModelConfig), "sft")
    except UsageError as error:
        fail(str(error))
    if not model_args.model_name_or_path:
        fail("model_name_or_path: set the checkpoint to fine-tune (a folder or hub id)")
    if not args.dataset:
        fail("dataset: set the folder `rlhf-img encode` wrote (encode.json + shards/)")
    start = time.time()
    try:
        path = run_action_sft(args, model_args)
    except (OSError, ValueError) as error:
        fail(str(error).splitlines()[0])
    print(f"rlhf-img: SFT done in {time.time() - start:.0f}s; checkpoint in {path}")
    return 0


EVAL_DESCRIPTION = (
    "Score a checkpoint (or a folder of images) with GenEval's rules: sample N images per prompt with fixed "
    "seeds, detect objects (the shapes world's exact detector, or Mask2Former + CLIP colours as GenEval), judge "
    "strictly, print GenEval's per-tag table. --metric ocr reads rendered text back with PP-OCRv4 (CVTG-2K word "
    "accuracy, normalised edit distance); --metric vqa asks GenEval 2-style atom questions of a VQA model "
    "(Soft-TIFA). With --output_dir: images/ in GenEval's layout, results.jsonl (one record per image; GenEval's "
    "fields for geneval) and table.json. Every option below is also a key of an eval YAML file (`rlhf-img eval "
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
    parser.add_argument(
        "checkpoint_argument",
        nargs="?",
        metavar="CHECKPOINT",
        help="the same as --checkpoint (after EVAL.yaml when both are given)",
    )
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
            raise UsageError(
                f"checkpoint given twice ({checkpoint!r} and --checkpoint {config.checkpoint!r}); give one"
            )
        config.checkpoint = checkpoint
    return config


def cmd_encode(argv: Sequence[str]) -> int:
    from .upstream.encode import main as encode_main

    return encode_main(argv)


def cmd_dpo(argv: Sequence[str]) -> int:
    from .upstream.dpo import main as dpo_main

    return dpo_main(argv)


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
        description="Evaluate checkpoints/shapes-tiny on held-out prompts, GRPO-train it, evaluate again. "
        "Other `--key value` pairs are recipe overrides (as for `rlhf-img train`).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", default="checkpoints/shapes-tiny", help="the shapes-world model to evaluate and train"
    )
    parser.add_argument("--recipe", default="recipes/shapes-grpo.yaml", help="the GRPO recipe")
    parser.add_argument(
        "--output_dir",
        default="runs/quickstart",
        help="where summary.json, the plots and sample grids go (the trained weights: OUTPUT_DIR/grpo)",
    )
    parser.add_argument(
        "--images_per_prompt",
        type=int,
        default=16,
        help="images per held-out prompt (several tags have 1-5 held-out prompts: 16 keeps the "
        "per-tag accuracies from swinging on a few samples)",
    )
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (same seed -> same images)")
    parser.add_argument("--train_seed", type=int, default=None, help="GRPO seed; unset: the recipe's `seed`")
    options, overrides = parser.parse_known_args(argv)
    from .quickstart import run_quickstart

    if options.train_seed is not None:
        overrides = [*overrides, "--seed", str(options.train_seed)]
    try:
        run_quickstart(
            options.checkpoint, options.recipe, options.output_dir, options.images_per_prompt, options.seed, overrides
        )
    except UsageError as error:
        fail(str(error))
    print(
        f"rlhf-img: wrote {options.output_dir}/summary.json, reward_curve.png, dashboard.png, eval_progress.png, "
        "samples_before.png, samples_after.png"
    )
    return 0


def cmd_convert(argv: Sequence[str]) -> int:
    from .checkpoints import CheckpointError
    from .families import CONVERTERS

    kinds = "\n".join(
        textwrap.fill(
            f"{name} (family {converter.family}): {converter.help}",
            width=100,
            initial_indent="  ",
            subsequent_indent="      ",
        )
        for name, converter in CONVERTERS.items()
    )
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
    parser.add_argument(
        "--family_config",
        default=None,
        help="the released files and options as YAML/JSON, for converters that take one",
    )
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
    released files, a tiny stand-in for dry runs and the contract suite)."""
    from .families import CONVERTERS, FAMILIES

    for name, family in FAMILIES.items():
        extras = [f"rlhf-img convert {c.name}" for c in CONVERTERS.values() if c.family == name]
        extras += [f"rlhf-img create-tiny --family {name}"] if family.stand_in is not None else []
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
    parser.add_argument(
        "--max_request_mb",
        type=float,
        default=1024.0,
        help="refuse /score bodies above this many MB with HTTP 413 (default 1024: ~240 images at 1024²)",
    )
    options = parser.parse_args(argv)
    if not 0 <= options.port <= 65535:
        fail(f"--port must be in 0..65535, got {options.port}")
    if not 0 < options.max_request_mb < float("inf"):
        fail(f"--max_request_mb must be a positive number, got {options.max_request_mb}")
    from .rewards import RewardConfigError
    from .rewards.server import serve

    try:
        serve(
            options.config, options.host, options.port, verbose=options.verbose, max_request_mb=options.max_request_mb
        )
    except RewardConfigError as error:
        fail(str(error))
    except OSError as error:  # the port is taken, or the host is not an address of this machine
        fail(f"cannot listen on {options.host}:{options.port} ({error})")
    return 0


def cmd_create_tiny_judge(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rlhf-img create-tiny-judge",
        description="Write a tiny random LLaVA (~170k parameters, built offline) that `transformers serve` serves "
        "behind the OpenAI-compatible API vLLM and SGLang speak, to try the `vlm_judge` and `vqa` rewards on a CPU "
        "(recipes/tiny-random-ocr-judge.yaml). It judges nothing: it answers with digits that differ per image.",
    )
    parser.add_argument("path")
    parser.add_argument("--seed", type=int, default=0, help="Weights seed (default 0).")
    options = parser.parse_args(argv)
    from .rewards.tiny_judge import build_tiny_llava

    build_tiny_llava(options.path, seed=options.seed)
    print(f"rlhf-img: wrote {options.path} (a tiny random LLaVA judge)")
    print(
        f"rlhf-img: serve it with: transformers serve {shlex.quote(options.path)} --device cpu --host 127.0.0.1 "
        "--port 8765   (pip install 'transformers[serving]')"
    )
    return 0


def cmd_create_tiny(argv: Sequence[str]) -> int:
    from .families import FAMILIES

    with_stand_in = sorted(name for name, family in FAMILIES.items() if family.stand_in is not None)
    parser = argparse.ArgumentParser(
        prog="rlhf-img create-tiny",
        description="Write a tiny random-weight checkpoint of a model family, in the family's released on-disk "
        "format (the stand-ins the tests use), so that any shipped recipe can be dry-run on a CPU: "
        "`rlhf-img train recipes/X.yaml --model_name_or_path PATH ...` with the overrides this prints.",
    )
    parser.add_argument("path")
    parser.add_argument(
        "--family",
        default="causal_vq",
        choices=with_stand_in,
        help="Model family (default causal_vq). The options below shape causal_vq only.",
    )
    causal_vq = parser.add_argument_group("causal_vq only")
    causal_vq.add_argument("--arch", default=None, choices=["qwen2", "llama"], help="LM architecture (default qwen2).")
    causal_vq.add_argument(
        "--grid", type=int, nargs=2, default=None, metavar=("H", "W"), help="Code grid (default 4 4)."
    )
    causal_vq.add_argument("--codebook_size", type=int, default=None, help="VQ codes (default 64).")
    causal_vq.add_argument("--hidden_size", type=int, default=None, help="LM width (default 64).")
    causal_vq.add_argument("--num_layers", type=int, default=None, help="LM depth (default 2).")
    causal_vq.add_argument("--seed", type=int, default=None, help="Weights seed (default 0).")
    options = parser.parse_args(argv)
    shaped = {
        key: value
        for key in ("arch", "grid", "codebook_size", "hidden_size", "num_layers", "seed")
        if (value := getattr(options, key)) is not None
    }
    if options.family == "causal_vq":
        from .families.causal_vq.tiny import save_tiny_causal_vq
        from .families.registry import StandIn

        save_tiny_causal_vq(options.path, **{key: tuple(v) if key == "grid" else v for key, v in shaped.items()})
        stand_in = StandIn(options.path)
    elif shaped:
        fail(f"--{next(iter(shaped))} shapes causal_vq only; the {options.family} stand-in has a fixed tiny shape")
    else:
        stand_in = FAMILIES[options.family].stand_in(options.path)
    overrides = ["--model_name_or_path", stand_in.checkpoint, "--model_family", options.family]
    if stand_in.load_kwargs.get("visual_tokenizer"):
        overrides += ["--visual_tokenizer", stand_in.load_kwargs["visual_tokenizer"]]
    if stand_in.load_kwargs.get("family_config"):
        overrides += ["--family_config", shlex.quote(json.dumps(stand_in.load_kwargs["family_config"]))]
    print(f"rlhf-img: wrote {options.path} ({options.family}, random weights, released layout)")
    print(
        "rlhf-img: dry-run a recipe on it with: " + " ".join(overrides) + " --dtype float32 --bf16 false "
        "--use_cpu true --max_steps 2"
    )
    if stand_in.converter:
        print(
            f"rlhf-img: full fine-tuning with beta > 0 needs it converted first: rlhf-img convert "
            f"{stand_in.converter} {stand_in.checkpoint} OUT --dtype float32, then --model_name_or_path OUT"
        )
    return 0


COMMANDS = {
    "train": (cmd_train, "GRPO-train a model from a recipe: rlhf-img train recipes/X.yaml [--key value ...]"),
    "pretrain-tokenizer": (
        cmd_pretrain_tokenizer,
        "Upstream: train a world's VQ tokenizer (recipes/shapes-tokenizer.yaml).",
    ),
    "encode": (
        cmd_encode,
        "Upstream: image/caption pairs -> the family's actions in Arrow shards (for sft / pretraining).",
    ),
    "sft": (cmd_sft, "Upstream: SFT or pretrain any family on `rlhf-img encode` output (or the shapes world's LM)."),
    "dpo": (cmd_dpo, "Upstream: DPO on images, offline (chosen/rejected pairs) or online (ranked by rewards)."),
    "eval": (
        cmd_eval,
        "GenEval / OCR / VQA scores of a checkpoint or an image folder: rlhf-img eval CHECKPOINT|EVAL.yaml [--key ...]",
    ),
    "quickstart": (cmd_quickstart, "The main job: eval -> GRPO -> eval on the shapes world."),
    "convert": (cmd_convert, "Convert released weights (Cosmos .jit, Infinity .pth, LlamaGen .pt) to safetensors."),
    "rewards": (cmd_rewards, "List the built-in rewards."),
    "families": (cmd_families, "List the model families and how each is detected."),
    "serve-reward": (cmd_serve_reward, "Serve rewards over HTTP for the `remote` reward: rlhf-img serve-reward X.yaml"),
    "create-tiny": (cmd_create_tiny, "Write a tiny random checkpoint of any family (--family), to dry-run recipes."),
    "create-tiny-judge": (
        cmd_create_tiny_judge,
        "Write a tiny random LLaVA to serve as a VLM judge (vlm_judge / vqa) on a CPU.",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-V", "--version"):
        from ._version import __version__

        print(f"rlhf-img {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: rlhf-img [--version] COMMAND [...]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:18s} {help_text}")
        print("\n`rlhf-img COMMAND --help` for a command's options.")
        return 0
    if argv[0] not in COMMANDS:
        fail(f"unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}")
    return COMMANDS[argv[0]][0](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
