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


from .config import ImageGRPOConfig, ImageModelConfig, PromptDataConfig
from .yaml_files import YamlFileError, read_yaml_mapping

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


def load_recipe(path: str, dataclass_types=TRAIN_DATACLASSES) -> dict[str, Any]:
    """The recipe mapping, with unknown keys rejected (one line naming the first)."""
    try:
        recipe = read_yaml_mapping(path, "recipe", "a recipe must be a YAML mapping of key: value")
    except YamlFileError as error:
        raise UsageError(str(error)) from None
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
    peft_config = get_peft_config(model_args)
    _check_reference_loadable(args, policy, peft_config)
    return args, model_args, rewards, dataset, policy, peft_config


def _check_reference_loadable(args, policy, peft_config) -> None:
    """Full fine-tuning with beta > 0: TRL rebuilds the reference model from the policy's
    `config._name_or_path`, which must then be a transformers folder or hub repo (not a released .pth)."""
    from .models.resolve import resolve_subpath

    if args.beta == 0.0 or peft_config is not None:
        return
    location = getattr(getattr(policy.model, "config", None), "_name_or_path", "") or ""
    if not location or resolve_subpath(location, "config.json", required=False) is None:
        raise UsageError(
            f"beta={args.beta} with full fine-tuning needs a reference model that TRL can reload from "
            f"{location or 'the checkpoint'!r}, which has no transformers config.json; use LoRA (use_peft: true), "
            "beta: 0, or convert the checkpoint first (e.g. `rlhf-img convert infinity SRC OUT`)"
        )


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


def _recipe_family(argv: Sequence[str]) -> str | None:
    """The `model_family` a stage recipe names (None if it names none or cannot be read yet)."""
    if not argv:
        return None
    try:
        return read_yaml_mapping(argv[0], "recipe", "not a mapping").get("model_family")
    except YamlFileError:
        return None  # the stage's own parsing reports the problem


def cmd_sft(argv: Sequence[str]) -> int:
    if _recipe_family(argv) == "simplear":
        from .simplear_sft import SimpleARSFTConfig, run_simplear_sft

        config = _run_stage(argv, "sft", SimpleARSFTConfig, "SFT a SimpleAR model on image/caption pairs.")
        if config is None:
            return 0
        if not config.dataset:
            fail("dataset: set the image/caption pairs to train on")
        start = time.time()
        try:
            path = run_simplear_sft(config)
        except (OSError, ValueError) as error:
            fail(str(error).splitlines()[0])
        print(f"rlhf-img: SFT done in {time.time() - start:.0f}s; simplear checkpoint in {path}")
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


def cmd_eval_geneval(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rlhf-img eval geneval",
        description="GenEval (Ghosh et al., 2023) for a checkpoint or for a folder of images in GenEval's layout "
        "(NNNNN/metadata.jsonl + NNNNN/samples/NNNN.png): Mask2Former (COCO instance) detections, CLIP ViT-L-14 "
        "colours, GenEval's rules. Writes OUTPUT_DIR/results.jsonl (GenEval's fields) and table.json, prints the table.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="sample from this checkpoint (hub id or folder) into OUTPUT_DIR/images")
    source.add_argument("--images", help="score an existing GenEval image folder instead of sampling")
    parser.add_argument("--metadata", help="GenEval's evaluation_metadata.jsonl (needed with --checkpoint)")
    parser.add_argument("--output_dir", required=True, help="where results.jsonl, table.json (and images/) go")
    parser.add_argument("--model_family", default="causal_vq", help="family of --checkpoint (causal_vq, simplear, infinity)")
    parser.add_argument("--visual_tokenizer", default=None, help="visual tokenizer of --checkpoint, if not its default")
    parser.add_argument("--images_per_prompt", type=int, default=4, help="GenEval uses 4")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (same seed -> same images)")
    parser.add_argument("--cfg_mode", default="guided", choices=["none", "guided"], help="guidance when sampling")
    parser.add_argument("--cfg_scale", type=float, default=4.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--detector", default="mask2former", choices=["mask2former", "shapes"],
                        help="mask2former for real images; shapes for the shapes world")
    parser.add_argument("--detector_model", default="facebook/mask2former-swin-small-coco-instance",
                        help="transformers Mask2Former checkpoint (hub id or folder), COCO instance labels")
    parser.add_argument("--clip_model", default="ViT-L-14", help="open_clip model for colours (name, hf-hub:, local-dir:)")
    parser.add_argument("--clip_pretrained", default="openai", help="open_clip pretrained tag or weights file")
    parser.add_argument("--class_names", default=None, help="object_names.txt (default: GenEval's 80 COCO names)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--batch_size", type=int, default=8, help="images per detector batch")
    options = parser.parse_args(argv)
    from . import geneval_eval
    from .models import CheckpointError, Sampling, load_policy
    from .rewards.geneval import build_scorer
    from .worlds.evaluation import format_table

    image_dir = options.images
    try:
        if options.checkpoint:
            if not options.metadata:
                raise UsageError("--metadata (GenEval's evaluation_metadata.jsonl) is needed with --checkpoint")
            metadata = geneval_eval.read_metadata(options.metadata)
            extra = {"visual_tokenizer": options.visual_tokenizer} if options.visual_tokenizer else {}
            policy = load_policy(options.model_family, options.checkpoint, **extra)
        else:
            geneval_eval.list_image_folder(image_dir)  # fails early on a bad folder
        scorer = build_scorer(options.detector, options.detector_model, options.clip_model, options.clip_pretrained,
                              options.device, options.batch_size, options.class_names)
    except (UsageError, CheckpointError, OSError, ValueError, KeyError) as error:
        fail(str(error).splitlines()[0])
    if options.checkpoint:
        image_dir = os.path.join(options.output_dir, "images")
        sampling = Sampling(cfg_mode=options.cfg_mode, cfg_scale=options.cfg_scale, temperature=options.temperature,
                            top_k=options.top_k, top_p=options.top_p)
        geneval_eval.write_image_folder(policy, metadata, image_dir, options.images_per_prompt, sampling, options.seed)
    records = geneval_eval.score_image_folder(scorer, image_dir, options.batch_size)
    table = geneval_eval.results_table(records)
    results_path, table_path = geneval_eval.write_results(records, table, options.output_dir)
    print(format_table(table, f"GenEval on {len(records)} images from {image_dir}:"))
    print(f"rlhf-img: wrote {results_path} and {table_path}")
    return 0


def cmd_eval(argv: Sequence[str]) -> int:
    if argv and argv[0] == "geneval":
        return cmd_eval_geneval(argv[1:])
    parser = argparse.ArgumentParser(
        prog="rlhf-img eval",
        description="GenEval-style evaluation of a shapes-world checkpoint on its held-out prompts "
        "(N images per prompt with fixed seeds, strict rules, GenEval's per-tag table). "
        "For real GenEval: `rlhf-img eval geneval --help`.",
    )
    parser.add_argument("checkpoint", help="causal_vq checkpoint folder (SFT output, GRPO output, or LoRA adapter)")
    parser.add_argument("--split", default="held_out", choices=["held_out", "train"], help="prompt split")
    parser.add_argument("--images_per_prompt", type=int, default=16,
                        help="several tags have 1-5 held-out prompts: 16 images each keep the table steady")
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
    parser.add_argument("--images_per_prompt", type=int, default=16,
                        help="images per held-out prompt (several tags have 1-5 held-out prompts: 16 keeps the "
                        "per-tag accuracies from swinging on a few samples)")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (same seed -> same images)")
    parser.add_argument("--train_seed", type=int, default=None, help="GRPO seed (default: the recipe's `seed`)")
    options, overrides = parser.parse_known_args(argv)
    from .worlds.quickstart import run_quickstart

    if options.train_seed is not None:
        overrides = [*overrides, "--seed", str(options.train_seed)]
    try:
        run_quickstart(options.checkpoint, options.recipe, options.output_dir, options.images_per_prompt,
                       options.seed, overrides)
    except UsageError as error:
        fail(str(error))
    print(f"rlhf-img: wrote {options.output_dir}/summary.json, reward_curve.png, samples_before.png, samples_after.png")
    return 0


def cmd_convert(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rlhf-img convert",
        description="Convert released weights into this project's safetensors layout. `cosmos`: a folder or hub "
        "repo with NVIDIA's Cosmos tokenizer TorchScript files (encoder.jit + decoder.jit, e.g. "
        "nvidia/Cosmos-1.0-Tokenizer-DV8x16x16) -> OUT with config.json, encoder.safetensors, decoder.safetensors "
        "(checked by a strict load into our modules; written in the published dtype). `infinity`: a folder or hub "
        "repo with Infinity's .pth files (e.g. FoundationVision/Infinity) -> OUT loadable with model_family "
        "infinity and no family_config (transformer as a transformers model, vae/, infinity.json, T5 tokenizer). "
        "Only state dicts are read (torch.load with weights_only=True); no code from the files runs.",
    )
    parser.add_argument("kind", choices=["cosmos", "infinity"], help="what to convert")
    parser.add_argument("source", help="cosmos: folder or hub id holding encoder.jit and decoder.jit; "
                        "infinity: folder or hub id holding the .pth files")
    parser.add_argument("output_dir", help="where the safetensors files go")
    parser.add_argument("--config", default=None,
                        help="cosmos: a Cosmos config.json for non-default architectures (default: DV8x16x16)")
    parser.add_argument("--family_config", default=None,
                        help="infinity: the released files as YAML/JSON, default "
                        "'{size: 2b, transformer: infinity_2b_reg.pth, vae: infinity_vae_d32reg.pth, "
                        "text_encoder: google/flan-t5-xl}'")
    parser.add_argument("--dtype", default="bfloat16", help="infinity: dtype of the written transformer")
    options = parser.parse_args(argv)
    from .models.cosmos import CosmosConfig, convert_jit_to_safetensors
    from .models.resolve import CheckpointError, read_json_file

    if options.kind == "infinity":
        from .config import _parse_structured
        from .models.infinity import convert_released

        family = {"size": "2b", "transformer": "infinity_2b_reg.pth", "vae": "infinity_vae_d32reg.pth",
                  "text_encoder": "google/flan-t5-xl"}
        try:
            family = _parse_structured(options.family_config, "--family_config") if options.family_config else family
            out = convert_released(options.source, options.output_dir, family, dtype=options.dtype)
        except (CheckpointError, OSError, ValueError) as error:
            fail(str(error).splitlines()[0])
        print(f"rlhf-img: wrote {out} (config.json, model.safetensors, infinity.json, vae/, tokenizer)")
        return 0
    try:
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
    options = parser.parse_args(argv)
    if not 0 <= options.port <= 65535:
        fail(f"--port must be in 0..65535, got {options.port}")
    from .rewards import RewardConfigError
    from .rewards.server import serve

    try:
        serve(options.config, options.host, options.port, verbose=options.verbose)
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
    "eval": (cmd_eval, "GenEval-style scores of a shapes-world checkpoint; `eval geneval` for real GenEval."),
    "quickstart": (cmd_quickstart, "The main job: eval -> GRPO -> eval on the shapes world."),
    "convert": (cmd_convert, "Convert released weights (Cosmos tokenizer .jit files) to safetensors."),
    "rewards": (cmd_rewards, "List the built-in rewards."),
    "serve-reward": (cmd_serve_reward, "Serve rewards over HTTP for the `remote` reward: rlhf-img serve-reward X.yaml"),
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
