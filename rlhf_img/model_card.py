"""Model cards: the `README.md` of every output folder of `rlhf-img train`, `sft` and `dpo`, in the Hugging Face
format (YAML metadata + markdown body), so a pushed folder says on the Hub what it is and how it was made.

The card is read off the finished run, nothing is re-computed: the base model and family, the recipe file and the
command-line overrides (values of secret-looking keys redacted, since the card is meant to be published), the
rewards and their weights, the steps, batch and hardware, the in-loop eval table (`eval_*` entries of the log
history) and a link to the last image grid the run wrote (`eval/step_*.png`, else a few saved rollouts).

Each trainer's `create_model_card` writes this card instead of transformers' / TRL's text-model card, so it is the
card written at TRL's checkpoint saves and the one `push_to_hub: true` uploads (transformers' `push_to_hub` calls
`create_model_card` right before `upload_folder`). The commands call it once more after the final save.
"""

from __future__ import annotations

import glob
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import yaml

from ._version import __version__

STAGES = {  # stage -> (what the card calls it, the command that reproduces it)
    "grpo": ("GRPO (TRL's GRPOTrainer with images as completions)", "train"),
    "sft": ("SFT (teacher-forced log-likelihood of the image actions)", "sft"),
    "dpo": ("DPO on images against a frozen reference", "dpo"),
}
SECRET_KEY = re.compile(r"token|secret|password|passwd|api_?key|credential|auth", re.IGNORECASE)
REDACTED = "<redacted>"
MAX_EVAL_ROWS = 12  # first, last and evenly spaced evals in between
MAX_ROLLOUT_IMAGES = 8
FILE_SUFFIXES = {
    ".txt",
    ".json",
    ".jsonl",
    ".csv",
    ".parquet",
    ".arrow",
    ".yaml",
    ".yml",
    ".pt",
    ".pth",
    ".bin",
    ".safetensors",
}


@dataclass(frozen=True)
class RecipeSource:
    """Where a run's configuration came from: the recipe file and the `--key value` overrides as given, and the
    recipe's keys (secret-looking values redacted). Attached to the training config by `remember_recipe`."""

    path: str | None
    overrides: tuple[str, ...] = ()
    keys: dict[str, Any] = field(default_factory=dict)
    model_name_or_path: str | None = None
    model_family: str | None = None
    dataset: str | None = None


def redact(value: Any, key: str = "") -> Any:
    """`value` with every value under a secret-looking key (`hub_token`, `api_key`, ...) replaced by a marker."""
    if key and SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, dict):
        return {name: redact(item, str(name)) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    return value


def redact_overrides(overrides: Sequence[str]) -> tuple[str, ...]:
    """`--key value` / `--key=value` tokens with the values of secret-looking keys replaced by a marker."""
    tokens, hide_next = [], False
    for token in overrides:
        if hide_next:
            tokens.append(REDACTED)
            hide_next = False
        elif token.startswith("--") and "=" in token and SECRET_KEY.search(token.split("=", 1)[0]):
            tokens.append(f"{token.split('=', 1)[0]}={REDACTED}")
        else:
            tokens.append(token)
            hide_next = token.startswith("--") and bool(SECRET_KEY.search(token))
    return tuple(tokens)


def remember_recipe(
    configs: Sequence[Any], recipe_path: str | None, overrides: Sequence[str], recipe: dict[str, Any]
) -> None:
    """Attach a `RecipeSource` to the first parsed config (the training arguments), for the model card: the trainer
    sees only its configs, and the recipe file and overrides are what reproduces the run. `env` values are
    dropped (they often hold credentials), its names kept."""
    keys = {name: redact(value, name) for name, value in recipe.items() if name != "env"}
    if isinstance(recipe.get("env"), dict):
        keys["env"] = {name: REDACTED for name in recipe["env"]}
    model = next((config for config in configs if hasattr(config, "model_name_or_path")), None)
    data = next((config for config in configs if isinstance(getattr(config, "dataset", None), str)), None)
    source = RecipeSource(
        recipe_path,
        redact_overrides(overrides),
        keys,
        getattr(model, "model_name_or_path", None),
        getattr(model, "model_family", None),
        getattr(data, "dataset", None),
    )
    if configs and dataclass_like(configs[0]):
        configs[0].recipe_source = source


def dataclass_like(value: Any) -> bool:
    return hasattr(value, "__dataclass_fields__")


# --------------------------------------------------------------------------------------------- reading the run
def _unwrapped(trainer) -> Any:
    return trainer.accelerator.unwrap_model(trainer.model)


def _adapter(trainer) -> Any | None:
    """The LoRA config of the trained adapter, or None for full fine-tuning."""
    peft_config = getattr(_unwrapped(trainer), "peft_config", None)
    if isinstance(peft_config, dict) and peft_config:
        return peft_config.get("default", next(iter(peft_config.values())))
    return None


def _base_model(trainer, source: RecipeSource | None) -> str | None:
    """The checkpoint the run started from: the recipe's `model_name_or_path`, else what the model says."""
    if source is not None and source.model_name_or_path:
        return source.model_name_or_path
    adapter = _adapter(trainer)
    if adapter is not None and getattr(adapter, "base_model_name_or_path", None):
        return adapter.base_model_name_or_path
    return getattr(getattr(_unwrapped(trainer), "config", None), "_name_or_path", None) or None


def _family(trainer, source: RecipeSource | None, base_model: str | None) -> str | None:
    """The model family: the recipe's `model_family`, else detected from the saved folder or the base model."""
    if source is not None and source.model_family:
        return source.model_family
    from .families import detect_family

    for folder in (trainer.args.output_dir, base_model):
        if folder and os.path.isdir(folder):
            try:
                return detect_family(folder)
            except Exception:  # noqa: BLE001 - an unsaved or foreign folder: the card says "unknown"
                continue
    return None


def is_hub_id(name: str | None) -> bool:
    """A hub repo id (`org/name` or `name`) rather than a local path or file: only those go in the metadata."""
    if not name or os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return False
    return os.path.splitext(name)[1].lower() not in FILE_SUFFIXES


def _base_license(base_model: str | None) -> str | None:
    """The base model's license from its own card, when that card is on disk (the trained weights inherit it)."""
    if not base_model or not os.path.isfile(os.path.join(base_model, "README.md")):
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(os.path.join(base_model, "README.md")).data.license
    except Exception:  # noqa: BLE001 - a README without valid metadata
        return None


def _hardware(trainer) -> str:
    """Processes, device kind and precision, e.g. '2 processes on NVIDIA H100 80GB HBM3 (cuda), bf16'."""
    import torch

    device = trainer.args.device
    name = device.type
    if device.type == "cuda" and torch.cuda.is_available():
        name = f"{torch.cuda.get_device_name(device)} (cuda)"
    processes = trainer.accelerator.num_processes
    precision = "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32"
    distributed = str(trainer.accelerator.distributed_type).split(".")[-1]
    launch = "" if processes == 1 else f", {distributed}"
    return f"{processes} process{'es' if processes != 1 else ''} on {name}{launch}, {precision}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _first_last(log_history: list[dict], key: str) -> str | None:
    """'first (step a) -> last (step b)' of a logged scalar, or None if it was never logged as a number."""
    logged = [entry for entry in log_history if _is_number(entry.get(key))]
    if not logged:
        return None
    first, last = logged[0], logged[-1]
    return f"{first[key]:.4g} (step {first.get('step', '?')}) -> {last[key]:.4g} (step {last.get('step', '?')})"


def eval_table(log_history: list[dict]) -> list[str]:
    """The in-loop eval entries as markdown table lines (empty when the run had no in-loop eval): one row per
    eval (at most `MAX_EVAL_ROWS`: first, last and evenly spaced), the weighted reward, each reward's mean and
    GenEval's overall score and per-tag accuracies when they were logged."""
    entries = [entry for entry in log_history if "eval_reward" in entry]
    if not entries:
        return []
    if len(entries) > MAX_EVAL_ROWS:
        picks = sorted({round(i * (len(entries) - 1) / (MAX_EVAL_ROWS - 1)) for i in range(MAX_EVAL_ROWS)})
        entries = [entries[i] for i in picks]
    keys = sorted({key for entry in entries for key in entry if key.startswith("eval_")})
    rewards = [key for key in keys if key.startswith("eval_rewards/")]
    geneval = [key for key in keys if key == "eval_geneval/overall"] + [
        key for key in keys if key.startswith("eval_geneval/") and key != "eval_geneval/overall"
    ]
    columns = ["eval_reward", *rewards, *geneval]
    header = ["step"] + [_column_name(key) for key in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in entries:
        cells = [str(entry.get("step", "?"))] + [_cell(entry.get(key)) for key in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _column_name(key: str) -> str:
    name = key[len("eval_") :]
    if name.startswith("rewards/") and name.endswith("/mean"):
        name = name[len("rewards/") : -len("/mean")]
    return _escape(name)


def _cell(value: Any) -> str:
    return f"{value:.4g}" if _is_number(value) else "–"


def _escape(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def sample_images(output_dir: str) -> list[str]:
    """Paths relative to `output_dir` of the images to show: the last in-loop eval grid, else up to
    `MAX_ROLLOUT_IMAGES` rollouts of the last saved rollout step; empty when the run wrote no image."""
    grids = sorted(glob.glob(os.path.join(output_dir, "eval", "step_*.png")))
    if grids:
        return [os.path.relpath(grids[-1], output_dir)]
    steps = sorted(glob.glob(os.path.join(output_dir, "rollouts", "step_*")))
    if steps:
        images = sorted(glob.glob(os.path.join(steps[-1], "*.png")))[:MAX_ROLLOUT_IMAGES]
        return [os.path.relpath(image, output_dir) for image in images]
    return []


# --------------------------------------------------------------------------------------------- the card
def build_model_card(trainer, stage: str, tags: Sequence[str] | None = None):
    """The `huggingface_hub.ModelCard` of a finished (or checkpointed) run of `trainer`: one of
    `ImageGRPOTrainer` (stage 'grpo'), `ActionSFTTrainer` ('sft') or `ImageDPOTrainer` ('dpo')."""
    import torch
    import transformers
    import trl
    from huggingface_hub import ModelCard, ModelCardData

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}")
    args, state = trainer.args, trainer.state
    source: RecipeSource | None = getattr(args, "recipe_source", None)
    base_model = _base_model(trainer, source)
    family = _family(trainer, source, base_model)
    adapter = _adapter(trainer)
    rewards = getattr(trainer, "image_rewards", None) or getattr(trainer, "rewards", None)
    name = (args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))).split("/")[-1]
    what, command = STAGES[stage]

    card_tags = ["rlhf-img", "text-to-image", stage, *([family] if family else []), *(["lora"] if adapter else [])]
    model_tags = getattr(trainer.model, "model_tags", None) or []  # TRL's ('trl', 'grpo'), as push_to_hub adds them
    for tag in [*(tags or ()), *model_tags]:
        if tag not in card_tags:
            card_tags.append(tag)
    dataset = source.dataset if source is not None else None
    metadata = ModelCardData(
        license=_base_license(base_model) or "unknown",
        base_model=base_model if is_hub_id(base_model) else None,
        library_name="rlhf-img",
        pipeline_tag="text-to-image",
        tags=card_tags,
        datasets=[dataset] if isinstance(dataset, str) and is_hub_id(dataset) else None,
        model_name=name,
    )

    body = [f"# {name}", ""]
    origin = f"`{base_model}`" if base_model else "an unnamed checkpoint"
    body += [
        f"A {f'`{family}` ' if family else ''}text-to-image model post-trained from {origin} with "
        f"rlhf-img's {stage.upper()}{', trained as a LoRA adapter' if adapter else ''}.",
        "",
    ]
    if base_model and not is_hub_id(base_model):
        body += [
            "The base model is a local checkpoint, so the metadata names none; set `base_model` to its hub "
            "id before publishing. The license is the base model's: `unknown` means its card was not found.",
            "",
        ]
    images = sample_images(args.output_dir)
    if images:
        body += ["## Samples", ""] + [f"![sample]({image})" for image in images] + [""]

    body += ["## Training", "", "| | |", "|---|---|"]
    rows = [
        ("stage", what),
        ("base model", f"`{base_model}`" if base_model else "–"),
        ("family", f"`{family}`" if family else "unknown"),
        ("weights", _adapter_text(adapter)),
        ("steps", f"{state.global_step}" + (f" of max_steps {args.max_steps}" if args.max_steps > 0 else "")),
        ("batch per optimizer step", _batch_text(trainer, stage)),
        ("learning rate", f"{args.learning_rate:g} ({_scheduler(args)})"),
        ("hardware", _hardware(trainer)),
    ]
    runtime = next((entry["train_runtime"] for entry in reversed(state.log_history) if "train_runtime" in entry), None)
    if _is_number(runtime):
        rows.append(("train runtime", f"{runtime:.0f} s"))
    if hasattr(args, "cfg_mode") and (stage == "grpo" or getattr(args, "mode", "") == "online"):
        rows.append(("sampling", _sampling_text(args)))
    if stage in ("grpo", "dpo") and hasattr(args, "beta"):
        rows.append(("beta / loss", f"{args.beta:g} / {args.loss_type}"))
    rows.append(
        (
            "versions",
            f"rlhf-img {__version__}, trl {trl.__version__}, transformers "
            f"{transformers.__version__}, torch {torch.__version__}",
        )
    )
    body += [f"| {key} | {_escape(value)} |" for key, value in rows] + [""]

    curve = _training_curve(state.log_history, stage)
    if curve:
        body += [f"Training: {curve}.", ""]

    if rewards is not None and len(rewards) > 0:
        body += ["## Rewards", "", "| reward | weight | normalized |", "|---|---|---|"]
        body += [
            f"| `{_escape(reward.name)}` | {reward.weight:g} | {'yes' if reward.normalize else 'no'} |"
            for reward in rewards
        ] + [""]

    table = eval_table(state.log_history)
    if table:
        body += (
            [
                "## Held-out evaluation",
                "",
                f"In-loop eval on `{_escape(getattr(args, 'eval_prompts', '') or '')}`, fixed prompts and seeds "
                f"(`eval_seed` {getattr(args, 'eval_seed', '?')}), "
                f"{getattr(args, 'eval_images_per_prompt', '?')} images per prompt:",
                "",
            ]
            + table
            + [""]
        )

    body += _recipe_section(source, command)
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(body).rstrip() + "\n")


def _adapter_text(adapter) -> str:
    if adapter is None:
        return "full fine-tuning"
    targets = getattr(adapter, "target_modules", None)
    if isinstance(targets, (set, list, tuple)):  # peft resolves 'all-linear' to full names: show the layer kinds
        targets = ", ".join(sorted({str(target).split(".")[-1] for target in targets}))
    return f"LoRA r={getattr(adapter, 'r', '?')}, alpha={getattr(adapter, 'lora_alpha', '?')}, targets: {targets}"


def _batch_text(trainer, stage: str) -> str:
    args = trainer.args
    total = args.per_device_train_batch_size * trainer.accelerator.num_processes * args.gradient_accumulation_steps
    split = (
        f"{args.per_device_train_batch_size} per process x {trainer.accelerator.num_processes} process(es) x "
        f"{args.gradient_accumulation_steps} accumulation"
    )
    if stage == "grpo":
        return f"{total} images, {total // max(args.num_generations, 1)} prompts x {args.num_generations} ({split})"
    if stage == "dpo":
        unit = f"prompts x {args.num_generations} images" if args.mode == "online" else "pairs"
        return f"{total} {unit} ({split})"
    return f"{total} images ({split})"


def _scheduler(args) -> str:
    return str(args.lr_scheduler_type).split(".")[-1].lower()


def _sampling_text(args) -> str:
    text = f"cfg_mode {args.cfg_mode}"
    if args.cfg_mode != "none":
        text += f" (scale {args.cfg_scale:g})"
    return text + f", temperature {args.temperature:g}, top_k {args.top_k or 0}, top_p {args.top_p:g}"


def _training_curve(log_history: list[dict], stage: str) -> str | None:
    """The stage's headline metric, first -> last logged value."""
    parts = []
    if stage == "grpo":
        reward = _first_last(log_history, "reward")
        if reward:
            parts.append(f"weighted reward {reward}")
    elif stage == "dpo":
        for key, label in (("rewards/margins", "margin"), ("rewards/accuracies", "accuracy"), ("reward", "reward")):
            value = _first_last(log_history, key)
            if value:
                parts.append(f"{label} {value}")
    loss = _first_last(log_history, "loss")
    if loss:
        parts.append(f"loss {loss}")
    return "; ".join(parts) or None


def _recipe_section(source: RecipeSource | None, command: str) -> list[str]:
    if source is None or source.path is None and not source.overrides:
        return ["## Recipe", "", "Configured in Python (no recipe file); `training_args.bin` holds the arguments.", ""]
    lines = ["## Recipe", ""]
    reproduce = " ".join(["rlhf-img", command] + ([source.path] if source.path else []) + list(source.overrides))
    if source.path:
        lines += [f"Recipe `{source.path}`" + (" with the overrides below." if source.overrides else "."), ""]
    lines += ["```bash", reproduce, "```", ""]
    if source.keys:
        lines += [
            "<details><summary>Recipe keys</summary>",
            "",
            "```yaml",
            yaml.safe_dump(source.keys, sort_keys=False, allow_unicode=True).rstrip(),
            "```",
            "",
            "</details>",
            "",
        ]
    return lines


def write_model_card(trainer, stage: str, tags: Sequence[str] | None = None) -> str | None:
    """Write `README.md` into `trainer.args.output_dir` on the main process; returns its path (None elsewhere)."""
    if not trainer.is_world_process_zero():
        return None
    os.makedirs(trainer.args.output_dir, exist_ok=True)
    path = os.path.join(trainer.args.output_dir, "README.md")
    build_model_card(trainer, stage, tags).save(path)
    return path
