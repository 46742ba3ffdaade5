"""Config dataclasses: the single source of every option (recipe keys, `--help`, Python API).

A recipe YAML is flat, TRL-style: its keys are the fields of `ImageGRPOConfig` (TRL's `GRPOConfig` plus
image generation), `ImageModelConfig` (TRL's `ModelConfig` plus the family) and `PromptDataConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import trl
import yaml

from .policy import CFG_MODES, Sampling
from .rewards.loading import RewardConfigError, RewardSpec


def parse_structured(value: Any, key: str) -> Any:
    """A YAML / JSON string from the command line, or the structure a YAML recipe already gave."""
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ValueError(f"{key}: cannot parse {value!r} as YAML/JSON ({error})") from None
    return value


@dataclass
class SamplingOptions:
    """How image tokens are sampled and scored: declared once, shared by the training config (recipe keys) and
    `rlhf-img eval` (flags), so both read the same names, defaults and help."""

    cfg_mode: str = field(
        default="none",
        metadata={
            "help": "Classifier-free guidance mode: 'none' (no guidance), 'sample_only' (sample guided, score the "
            "conditional branch), 'guided' (sample and score the guided distribution), 'guided_detached_uncond' "
            "(guided, unconditional branch detached). See README, 'CFG modes'.",
            "choices": list(CFG_MODES),
        },
    )
    cfg_scale: float = field(
        default=4.0,
        metadata={"help": "Guidance scale s in uncond + s * (cond - uncond) on logits; ignored when cfg_mode='none'."},
    )
    # TRL's own sampling fields (GRPOConfig has them too), documented for image tokens:
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the image tokens."})
    top_k: int = field(default=0, metadata={"help": "Keep the k most likely image codes when sampling (0: all)."})
    top_p: float = field(
        default=1.0, metadata={"help": "Nucleus sampling over image codes (1.0: off). Log-probs use the same truncation."}
    )

    @property
    def sampling(self) -> Sampling:
        return Sampling(
            cfg_mode=self.cfg_mode,
            cfg_scale=self.cfg_scale,
            temperature=self.temperature,
            top_k=self.top_k or 0,
            top_p=self.top_p,
        )


@dataclass
class ImageGRPOConfig(SamplingOptions, trl.GRPOConfig):
    """`trl.GRPOConfig` plus what image generation needs. `temperature`, `top_k`, `top_p` (TRL's own
    fields) apply to image tokens; `num_generations` is the group size (images per prompt)."""

    rewards: str | None = field(
        default=None,
        metadata={
            "help": "Reward list. In a recipe: a YAML list of {name, weight, kwargs}; name is a built-in reward, "
            "'path/file.py:function' or 'package.module:function'. On the command line: the same as JSON, e.g. "
            '\'[{"name": "jpeg_compressibility", "weight": 1.0}]\'.'
        },
    )
    log_images_every: int = field(
        default=10,
        metadata={"help": "Log a captioned grid of rollouts to the dashboards every N optimizer steps (0: never)."},
    )
    num_logged_images: int = field(default=16, metadata={"help": "Images in each logged grid."})
    save_rollouts: bool = field(
        default=False,
        metadata={"help": "Write every rollout as PNG plus a JSONL line (prompt, rewards, advantage) under "
                  "output_dir/rollouts/step_XXXXXX/."},
    )
    # TRL defaults changed for image generation:
    disable_dropout: bool = field(
        default=True,
        metadata={"help": "Disable dropout so that sampling and scoring see the same function (drift ~0)."},
    )
    activation_checkpointing: bool | None = field(
        default=True,
        metadata={"help": "Recompute activations in the backward pass to save memory (TRL's GRPO default)."},
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of `activation_checkpointing`."}
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every N optimizer steps."})
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Dashboards: 'wandb', 'tensorboard', 'all' or 'none'."}
    )

    def __post_init__(self) -> None:
        if self.bf16 is None and not self.fp16:
            # TRL turns bf16 on by default; on a machine without a bf16 GPU that only slows things down
            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported() and not self.use_cpu
        super().__post_init__()
        if self.cfg_mode not in CFG_MODES:
            raise ValueError(f"cfg_mode must be one of {list(CFG_MODES)}, got {self.cfg_mode!r}")
        self.rewards = parse_structured(self.rewards, "rewards")
        if self.rewards is not None:
            if isinstance(self.rewards, (str, dict)):
                self.rewards = [self.rewards]
            if not isinstance(self.rewards, list) or not self.rewards:
                raise RewardConfigError("rewards: expected a non-empty list of reward entries")
            self.reward_specs = [RewardSpec.parse(entry) for entry in self.rewards]
            names = [spec.display_name for spec in self.reward_specs]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise RewardConfigError(f"rewards: {repeated} appear more than once; give each a distinct `label`")
        else:
            self.reward_specs = []
        self.sampling  # validates temperature / top_p


@dataclass
class ImageModelConfig(trl.ModelConfig):
    """`trl.ModelConfig` (checkpoint, dtype, LoRA: `use_peft`, `lora_r`, `lora_alpha`, `lora_dropout`,
    `lora_target_modules`) plus the model family and its visual tokenizer."""

    model_family: str | None = field(
        default=None,
        metadata={"help": "Model family: 'causal_vq', 'simplear', 'infinity', 'janus' or 'llamagen' (`rlhf-img families`; "
                  "README, 'Model families'); "
                  "default: found from the checkpoint's files."},
    )
    visual_tokenizer: str | None = field(
        default=None,
        metadata={"help": "Visual tokenizer checkpoint (local folder or hub id); default: the one the checkpoint's "
                  "family config names."},
    )
    family_config: str | None = field(
        default=None,
        metadata={"help": "Overrides of the family config (causal_vq.json), a mapping in YAML or JSON, e.g. "
                  '\'{"grid": [16, 16]}\'.'},
    )
    lora_dropout: float = field(
        default=0.0, metadata={"help": "LoRA dropout (0 keeps sampling and scoring identical)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.lora_target_modules, str) and self.lora_target_modules != "all-linear":
            # TRL unwraps one-element lists for 'all-linear'; peft would read a bare 'q_proj' as a full-name regex
            self.lora_target_modules = [self.lora_target_modules]
        self.family_config = parse_structured(self.family_config, "family_config")
        if self.family_config is not None and not isinstance(self.family_config, dict):
            raise ValueError("family_config must be a mapping")


@dataclass
class PromptDataConfig:
    """Where the prompts come from."""

    dataset: str | None = field(
        default=None,
        metadata={"help": "Prompts: a .txt file (one prompt a line), a .jsonl/.json/.csv/.parquet file with a "
                  "prompt column plus any metadata columns (passed to rewards), or a `datasets` name or folder."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "`datasets` config name."})
    dataset_split: str = field(default="train", metadata={"help": "`datasets` split."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompt text."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
