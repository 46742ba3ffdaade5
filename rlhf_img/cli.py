"""`rlhf-img` command line: `rlhf-img train RECIPE.yaml [--key value ...]` and helpers.

Each command parses its arguments and calls the library: recipes and run preparation in `recipes.py`,
evaluation in `eval/`, families in `families/`. Bad input exits with code 2 and one line naming the key or
file, before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import NoReturn, Sequence

from .recipes import UsageError, parse_recipe, prepare_training, recipe_parser
from .yaml_files import YamlFileError, read_yaml_mapping


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


def add_sampling_arguments(parser: argparse.ArgumentParser, **defaults) -> None:
    """The sampling flags, from the same dataclass fields (names, types, help) as the training recipe keys."""
    from .config import SamplingOptions

    for field in dataclasses.fields(SamplingOptions):  # each default has the field's type (str, float, int)
        parser.add_argument(f"--{field.name}", type=type(field.default), choices=field.metadata.get("choices"),
                            default=defaults.get(field.name, field.default), help=field.metadata["help"])


EVAL_DESCRIPTION = (
    "Score a checkpoint (or a folder of images) with GenEval's rules: sample N images per prompt with fixed "
    "seeds, detect objects (the shapes world's exact detector, or Mask2Former + CLIP colours as GenEval), judge "
    "strictly, print GenEval's per-tag table. With --output_dir: images/ in GenEval's layout, results.jsonl "
    "(GenEval's fields) and table.json. `rlhf-img eval geneval --checkpoint X --metadata M ...` is an alias with "
    "GenEval's defaults (Mask2Former, 4 images per prompt, guided CFG 4)."
)


def eval_parser(geneval_defaults: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf-img eval", description=EVAL_DESCRIPTION)
    parser.add_argument("checkpoint", nargs="?", help="checkpoint to sample from: a folder (SFT, GRPO or LoRA output) or a hub id")
    parser.add_argument("--checkpoint", dest="checkpoint_option", metavar="CHECKPOINT", help="the same, as an option")
    parser.add_argument("--images", help="score this GenEval image folder (NNNNN/metadata.jsonl + NNNNN/samples/NNNN.png) instead of sampling")
    parser.add_argument("--prompts", "--metadata", dest="prompts", default=None if geneval_defaults else "shapes-held-out",
                        help="prompt set: shapes-held-out, shapes-train, or a GenEval evaluation_metadata.jsonl")
    parser.add_argument("--output_dir", default=None, help="write images/, results.jsonl and table.json here")
    parser.add_argument("--model_family", default=None, help="family of the checkpoint (default: found from its files)")
    parser.add_argument("--visual_tokenizer", default=None, help="visual tokenizer, if not the checkpoint's own")
    parser.add_argument("--family_config", default=None, help="overrides of the family config, YAML/JSON mapping (e.g. '{resolution: 512}')")
    parser.add_argument("--device", default=None, help="where the policy and the detector run (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, help="policy weights dtype, e.g. bfloat16 (default: the family's)")
    parser.add_argument("--images_per_prompt", type=int, default=4 if geneval_defaults else 16,
                        help="GenEval uses 4; the shapes world 16 (several tags have 1-5 held-out prompts)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (same seed -> same images)")
    parser.add_argument("--batch_prompts", type=int, default=16, help="prompts sampled together (each chunk has its own seed)")
    add_sampling_arguments(parser, **({"cfg_mode": "guided"} if geneval_defaults else {}))
    parser.add_argument("--detector", default="mask2former" if geneval_defaults else "shapes",
                        choices=["shapes", "mask2former"], help="shapes: the shapes world's exact detector; mask2former: GenEval's")
    parser.add_argument("--detector_model", default="facebook/mask2former-swin-small-coco-instance",
                        help="transformers Mask2Former checkpoint (hub id or folder), COCO instance labels")
    parser.add_argument("--clip_model", default="ViT-L-14", help="open_clip model for colours (name, hf-hub:, local-dir:)")
    parser.add_argument("--clip_pretrained", default="openai", help="open_clip pretrained tag or weights file")
    parser.add_argument("--class_names", default=None, help="object_names.txt (default: GenEval's 80 COCO names)")
    parser.add_argument("--batch_size", type=int, default=8, help="images per detector batch")
    return parser


def cmd_eval(argv: Sequence[str]) -> int:
    alias = bool(argv) and argv[0] == "geneval"
    options = eval_parser(geneval_defaults=alias).parse_args(argv[1:] if alias else argv)
    from .checkpoints import CheckpointError
    from .eval.run import run_evaluation

    try:
        table, title, written = run_evaluation(options)
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
    parser = argparse.ArgumentParser(
        prog="rlhf-img convert",
        description="Convert released weights into this project's safetensors layout. `cosmos`: a folder or hub "
        "repo with NVIDIA's Cosmos tokenizer TorchScript files (encoder.jit + decoder.jit, e.g. "
        "nvidia/Cosmos-1.0-Tokenizer-DV8x16x16) -> OUT with config.json, encoder.safetensors, decoder.safetensors "
        "(checked by a strict load into our modules; written in the published dtype). The .jit files are opened "
        "with torch.jit.load: TorchScript's own runtime compiles their TorchScript code (no Python pickle), and "
        "only their state dicts are kept; their forward is never called. `infinity`: a folder or hub repo with "
        "Infinity's .pth files (e.g. FoundationVision/Infinity) -> OUT loadable with model_family infinity and no "
        "family_config (transformer as a transformers model, vae/, infinity.json, T5 tokenizer); the .pth files "
        "are read with torch.load(weights_only=True), which refuses anything but tensors and plain containers. "
        "`llamagen`: a folder with LlamaGen's t2i_*.pt and vq_*.pt (or the hub repo peizesun/llamagen_t2i) -> OUT "
        "loadable with model_family llamagen (GPT as a transformers model, vq/, llamagen.json, T5 tokenizer); "
        "read the same way.",
    )
    parser.add_argument("kind", choices=["cosmos", "infinity", "llamagen"], help="what to convert")
    parser.add_argument("source", help="cosmos: folder or hub id holding encoder.jit and decoder.jit; "
                        "infinity: folder or hub id holding the .pth files; llamagen: folder or hub id with the .pt files")
    parser.add_argument("output_dir", help="where the safetensors files go")
    parser.add_argument("--config", default=None,
                        help="cosmos: a Cosmos config.json for non-default architectures (default: DV8x16x16)")
    parser.add_argument("--family_config", default=None,
                        help="infinity: the released files as YAML/JSON, default "
                        "'{size: 2b, transformer: infinity_2b_reg.pth, vae: infinity_vae_d32reg.pth, "
                        "text_encoder: google/flan-t5-xl}'; llamagen: see LlamaGenFamilyConfig (default: the folder's "
                        "t2i_*.pt / vq_*.pt; for a hub repo the 256 px stage-1 files)")
    parser.add_argument("--dtype", default="bfloat16", help="infinity, llamagen: dtype of the written transformer / GPT")
    options = parser.parse_args(argv)
    from .checkpoints import CheckpointError, read_json_file
    from .config import parse_structured

    try:
        if options.kind == "infinity":
            from .families.infinity.loading import RELEASED_2B_FILES, convert_released

            family = parse_structured(options.family_config, "--family_config") if options.family_config else RELEASED_2B_FILES
            out = convert_released(options.source, options.output_dir, family, dtype=options.dtype)
            print(f"rlhf-img: wrote {out} (config.json, model.safetensors, infinity.json, vae/, tokenizer)")
            return 0
        if options.kind == "llamagen":  # released t2i_*.pt + vq_*.pt (torch.load weights_only=True) -> safetensors
            from .families.llamagen.loading import RELEASED_STAGE1_FILES, convert_released

            family = parse_structured(options.family_config, "--family_config") if options.family_config else None
            if family is None and not os.path.isdir(options.source):
                family = RELEASED_STAGE1_FILES  # a hub repo (peizesun/llamagen_t2i): the 256 px stage-1 files
            out = convert_released(options.source, options.output_dir, family, dtype=options.dtype)
            print(f"rlhf-img: wrote {out} (config.json, model.safetensors, llamagen.json, vq/, tokenizer)")
            return 0
        from .families.simplear.cosmos import CosmosConfig, convert_jit_to_safetensors

        config = CosmosConfig.from_dict(read_json_file(options.config), options.config) if options.config else None
        out = convert_jit_to_safetensors(options.source, options.output_dir, config=config)
    except (CheckpointError, OSError, ValueError) as error:
        fail(str(error).splitlines()[0])
    print(f"rlhf-img: wrote {out}/config.json, encoder.safetensors, decoder.safetensors")
    return 0


def cmd_rewards(argv: Sequence[str]) -> int:
    from .rewards import REWARD_REGISTRY

    for name in sorted(REWARD_REGISTRY):
        doc = (REWARD_REGISTRY[name].__doc__ or "").strip().splitlines()[0]
        print(f"{name:28s} {doc}")
    return 0


def cmd_families(argv: Sequence[str]) -> int:
    from .families import FAMILIES

    for name, family in FAMILIES.items():
        print(f"{name:12s} {family.help}\n{'':12s} detected by: {family.looks_for}")
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
    "eval": (cmd_eval, "GenEval's rules on a checkpoint or an image folder: rlhf-img eval CHECKPOINT [--prompts ...]"),
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
