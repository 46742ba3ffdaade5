"""Config dataclasses: the single source of every option (recipe keys, `--help`, Python API).

A recipe YAML is flat, TRL-style: its keys are the fields of `ImageGRPOConfig` (TRL's `GRPOConfig` plus
image generation), `ImageModelConfig` (TRL's `ModelConfig` plus the family) and `PromptDataConfig`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import trl
import yaml

from .families import FAMILIES
from .policy import CFG_MODES, SAMPLERS, Sampling
from .rewards.loading import RewardConfigError, RewardSpec
from .rewards.reward_set import check_unique_names


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
            "(guided, unconditional branch detached). See docs/concepts/cfg-modes.md.",
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
        default=1.0,
        metadata={"help": "Nucleus sampling over image codes (1.0: off). Log-probs use the same truncation."},
    )
    sampler: str = field(
        default="auto",
        metadata={
            "help": "KV-cached sampling loop of next-token families: 'plain' (reference: one prefill per row), "
            "'shared' (each distinct prompt prefilled once, its KV cache shared by its group), 'static' (shared + "
            "a preallocated static KV cache), 'compiled' (static + torch.compile'd decode step, CUDA graphs on GPU; "
            "eager with one warning if compile fails), 'auto' ('compiled' on CUDA, 'shared' elsewhere). Same "
            "distribution and, for a seed, the same tokens up to float rounding. See docs/scaling.md, 'Fast sampling'.",
            "choices": list(SAMPLERS),
        },
    )

    @property
    def sampling(self) -> Sampling:
        return Sampling(
            cfg_mode=self.cfg_mode,
            cfg_scale=self.cfg_scale,
            temperature=self.temperature,
            top_k=self.top_k or 0,
            top_p=self.top_p,
            sampler=self.sampler,
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
        metadata={
            "help": "Write every rollout as PNG plus a JSONL line (prompt, rewards, advantage) under "
            "output_dir/rollouts/step_XXXXXX/."
        },
    )
    # in-loop evaluation on fixed prompts and seeds (rlhf_img/in_loop_eval.py)
    eval_every: int = field(
        default=0,
        metadata={
            "help": "Evaluate on `eval_prompts` with fixed seeds before the first step and every N optimizer "
            "steps: each reward's mean (eval/rewards/<name>/mean), GenEval's per-tag table when the prompts "
            "carry GenEval metadata (eval/geneval/<tag>), and a grid of the same prompts and seeds each time "
            "(eval/grid, also saved to output_dir/eval/). 0: off."
        },
    )
    eval_prompts: str | None = field(
        default=None,
        metadata={
            "help": "In-loop eval prompts: 'shapes-held-out' / 'shapes-train', a GenEval metadata .jsonl, or a "
            "prompt file (.txt one a line, .jsonl/.csv/.parquet with a prompt column)."
        },
    )
    eval_max_prompts: int | None = field(
        default=None,
        metadata={
            "help": "Use N prompts of `eval_prompts`: with GenEval tags one of each tag in turn (so every tag "
            "is in the table), otherwise evenly spaced through the file; default: all."
        },
    )
    eval_images_per_prompt: int = field(
        default=4,
        metadata={
            "help": "In-loop eval images per prompt (sampled `per_device_eval_batch_size` images "
            "at a time; the images depend on that chunking, not on the number of processes)."
        },
    )
    eval_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of the in-loop eval's own random generator (the training's random state is not touched)."
        },
    )
    logprob_chunk_size: int = field(
        default=Sampling.logprob_chunk_size,
        metadata={
            "help": "Score this many image tokens at a time in the log-prob pass (per-chunk activation "
            "checkpointing), so its memory grows with the chunk, not with the grid; 0: all at once."
        },
    )
    # guards against silent failures (docs/troubleshooting.md); 0 turns a guard off
    no_score_patience: int = field(
        default=1,
        metadata={
            "help": "Stop the run when no reward scored any image (NaN/None/inf for all) in this many "
            "consecutive rollout batches: every advantage is 0 (0: never stop, warn once)."
        },
    )
    zero_spread_patience: int = field(
        default=5,
        metadata={
            "help": "Warn once when every group had zero reward spread (frac_reward_zero_std = 1, all "
            "advantages 0) in this many consecutive rollout batches (0: never)."
        },
    )
    constant_reward_patience: int = field(
        default=5,
        metadata={
            "help": "Warn once when a reward gave the same value (or no score) to every image of this many "
            "consecutive rollout batches (0: never)."
        },
    )
    zero_grad_norm_patience: int = field(
        default=3,
        metadata={"help": "Warn once when grad_norm was exactly 0 at this many consecutive logged steps (0: never)."},
    )
    # learning aids, each off by default (docs/concepts/learning.md)
    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "DAPO's dynamic sampling: a group whose images all get the same total reward (advantage 0 "
            "for all) is dropped and its rows resampled, in place, for a new prompt drawn from the training "
            "set, up to `max_resample_rounds` rounds; groups still without spread then stay (advantage 0). "
            "Costs extra sampling only where groups had no spread; logs dynamic_sampling/{dropped_groups, "
            "unfilled_groups, resample_rounds, reward_before_refill} (`reward` then describes the trained "
            "batch). Needs a map-style dataset (rlhf_img/dynamic_sampling.py)."
        },
    )
    max_resample_rounds: int = field(
        default=3,
        metadata={
            "help": "dynamic_sampling: resampling rounds per rollout batch at most (>= 1); each round "
            "resamples only the groups still without spread."
        },
    )
    object_credit: float = field(
        default=0.0,
        metadata={
            "help": "Per-token advantages for GenEval-style prompts (0: off, up to 1): the tokens drawn inside the "
            "boxes a clause of the prompt was judged on ('a red circle', 'a blue square') learn from a mix of "
            "the image's advantage (weight 1 - object_credit) and that clause's own credit normalised over its "
            "group (weight object_credit); other tokens keep the image's advantage. Needs a reward with "
            "`object_credits` (geneval, shapes_geneval) and a family with `pool_to_actions` (every built-in one; "
            "infinity pools each scale's cells). Logs object_credit/box_share (rlhf_img/object_credit.py)."
        },
    )
    keep_best: bool = field(
        default=False,
        metadata={
            "help": "Save the weights of the in-loop eval step with the best `best_metric` instead of the last "
            "ones: a CPU copy of the trainable weights (the adapter under LoRA, the whole model otherwise) is "
            "kept at each new best and put back when training ends; the step is printed and written to "
            "output_dir/best_step.json (and trainer_state.json's best_global_step / best_metric). Ties keep "
            "the earlier step; step 0 (before training) competes. Needs eval_every > 0; one process or DDP "
            "(refused under DeepSpeed / FSDP)."
        },
    )
    best_metric: str | None = field(
        default=None,
        metadata={
            "help": "keep_best: the in-loop eval key to compare, e.g. eval_geneval/overall, eval_reward, "
            "eval_rewards/<name>/mean ('eval/...' as the dashboards spell it works too). Default: "
            "eval_geneval/overall when the in-loop eval computes GenEval, else eval_reward."
        },
    )
    best_metric_mode: str = field(
        default="max",
        metadata={
            "help": "keep_best: 'max' (the highest best_metric wins) or 'min' (the lowest wins).",
            "choices": ["max", "min"],
        },
    )
    best_metric_tolerance: float = field(
        default=0.0,
        metadata={
            "help": "keep_best: a later in-loop eval takes over when it reads within this of the best reading so "
            "far (0: only when strictly better). Set it to about the eval's standard error (bench/eval_noise.py): "
            "then a step that was better only by noise does not win over later, more trained ones, and the kept "
            "step is the last whose reading is no more than this below the peak."
        },
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
        for key in ("no_score_patience", "zero_spread_patience", "constant_reward_patience", "zero_grad_norm_patience"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0 (0: off), got {getattr(self, key)}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0: off), got {self.eval_every}")
        if self.eval_every > 0 and not self.eval_prompts:
            raise ValueError("eval_every > 0 needs eval_prompts (e.g. 'shapes-held-out' or a prompt file)")
        if self.eval_images_per_prompt < 1 or (self.eval_max_prompts is not None and self.eval_max_prompts < 1):
            raise ValueError("eval_images_per_prompt and eval_max_prompts must be >= 1")
        if isinstance(self.max_resample_rounds, bool) or self.max_resample_rounds < 1:
            raise ValueError(f"max_resample_rounds must be an int >= 1, got {self.max_resample_rounds!r}")
        credit = self.object_credit
        if isinstance(credit, bool) or not isinstance(credit, (int, float)) or not 0 <= credit <= 1:
            raise ValueError(f"object_credit must be a number in [0, 1] (0: off), got {self.object_credit!r}")
        if self.keep_best and self.eval_every == 0:
            raise ValueError(
                "keep_best needs the in-loop eval: set eval_every > 0 and eval_prompts (or keep_best: false)"
            )
        tolerance = self.best_metric_tolerance
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < math.inf:
            raise ValueError(f"best_metric_tolerance must be a number >= 0, got {self.best_metric_tolerance!r}")
        if self.best_metric_mode not in ("max", "min"):
            raise ValueError(f"best_metric_mode must be 'max' or 'min', got {self.best_metric_mode!r}")
        if self.best_metric is not None:
            self.best_metric = (
                "eval_" + self.best_metric[len("eval/") :] if self.best_metric.startswith("eval/") else self.best_metric
            )
            if not self.best_metric.startswith("eval_"):
                raise ValueError(
                    "best_metric must be an in-loop eval key (eval_geneval/overall, eval_reward, "
                    f"eval_rewards/<name>/mean), got {self.best_metric!r}"
                )
        self.rewards = parse_structured(self.rewards, "rewards")
        if self.rewards is not None:
            if isinstance(self.rewards, (str, dict)):
                self.rewards = [self.rewards]
            if not isinstance(self.rewards, list) or not self.rewards:
                raise RewardConfigError("rewards: expected a non-empty list of reward entries")
            self.reward_specs = [RewardSpec.parse(entry) for entry in self.rewards]
            check_unique_names([spec.display_name for spec in self.reward_specs])  # fails before any model loads
            if self.reward_weights is not None:  # TRL's list would be a second, order-dependent copy of the weights
                raise RewardConfigError("reward_weights: give each entry of `rewards` its own `weight` instead")
        else:
            self.reward_specs = []
        self.sampling  # validates temperature / top_p / logprob_chunk_size

    @property
    def sampling(self) -> Sampling:
        """The recipe's sampling options plus the training-only chunk size of the log-prob pass."""
        return dataclasses.replace(super().sampling, logprob_chunk_size=self.logprob_chunk_size)


@dataclass
class FamilyOptions:
    """Which model family a checkpoint is and how to build it: declared once, shared by the training config
    (`ImageModelConfig`, recipe keys) and `rlhf-img eval` (`EvalConfig`, flags and eval-file keys), so both read the
    same names, defaults and help."""

    model_family: str | None = field(
        default=None,
        metadata={
            "help": f"Model family, one of those registered: {', '.join(repr(name) for name in FAMILIES)} "
            "(`rlhf-img families`; docs/families/index.md); default: found from the checkpoint's files."
        },
    )
    visual_tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "Visual tokenizer checkpoint (local folder or hub id); default: the one the checkpoint's "
            "family config names."
        },
    )
    family_config: str | None = field(
        default=None,
        metadata={
            "help": "Overrides of the family config (causal_vq.json), a mapping in YAML or JSON, e.g. "
            "'{\"grid\": [16, 16]}'."
        },
    )

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:  # a base of ImageModelConfig: trl.ModelConfig's own checks run too
            parent()
        self.family_config = parse_structured(self.family_config, "family_config")
        if self.family_config is not None and not isinstance(self.family_config, dict):
            raise ValueError("family_config must be a mapping")


@dataclass
class ImageModelConfig(FamilyOptions, trl.ModelConfig):
    """`trl.ModelConfig` (checkpoint, dtype, LoRA: `use_peft`, `lora_r`, `lora_alpha`, `lora_dropout`,
    `lora_target_modules`) plus the model family and its visual tokenizer (`FamilyOptions`)."""

    lora_dropout: float = field(
        default=0.0, metadata={"help": "LoRA dropout (0 keeps sampling and scoring identical)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.lora_target_modules, str) and self.lora_target_modules != "all-linear":
            # TRL unwraps one-element lists for 'all-linear'; peft would read a bare 'q_proj' as a full-name regex
            self.lora_target_modules = [self.lora_target_modules]


@dataclass
class PromptDataConfig:
    """Where the prompts come from."""

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Prompts: a .txt file (one prompt a line), a .jsonl/.json/.csv/.parquet file with a "
            "prompt column plus any metadata columns (passed to rewards), or a `datasets` name or folder."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "`datasets` config name."})
    dataset_split: str = field(default="train", metadata={"help": "`datasets` split."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompt text."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})


@dataclass
class EvalConfig(SamplingOptions, FamilyOptions):
    """`rlhf-img eval`: what to score, how to sample it and how to judge it. The family and sampling fields are the
    training recipe's own (`FamilyOptions`, `SamplingOptions`), so an eval file, the eval flags, the recipe keys
    and `--help` cannot drift apart. Give `checkpoint` (sample, then judge) or `images` (judge a folder)."""

    checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoint to sample from: a folder (SFT, GRPO or LoRA output) or a hub id; on the command "
            "line also the first argument, `rlhf-img eval CHECKPOINT`."
        },
    )
    images: str | None = field(
        default=None,
        metadata={
            "help": "Score this GenEval image folder (NNNNN/metadata.jsonl + NNNNN/samples/NNNN.png) instead "
            "of sampling a checkpoint."
        },
    )
    prompts: str | None = field(
        default="shapes-held-out",
        metadata={
            "help": "Prompt set: 'shapes-held-out', 'shapes-train', a GenEval evaluation_metadata.jsonl, a "
            "VQA prompt file (.jsonl rows with `prompt` and `atoms`; metric vqa) or a text-rendering prompt "
            "file (.txt, flow_grpo's format; metric ocr) (flag alias: --metadata).",
            "aliases": ["--metadata"],
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Write images/ (GenEval's layout), results.jsonl (one GenEval results line per image) and "
            "table.json here; default: only print the table."
        },
    )
    # not trl.ModelConfig's `dtype`: its 'float32' default would override the family's own
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "Policy weights dtype, e.g. bfloat16; default: the family's (float32 for causal_vq, "
            "bfloat16 for the released families)."
        },
    )
    device: str | None = field(
        default=None,
        metadata={"help": "Where the policy and the detector run; default: cuda if available, else cpu."},
    )
    images_per_prompt: int = field(
        default=16,
        metadata={
            "help": "Images per prompt: GenEval uses 4; the shapes world 16 (several tags have 1-5 held-out "
            "prompts, 16 keeps their accuracies from swinging on a few samples)."
        },
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Sampling seed: image k of prompt i depends only on the seed and its chunk of "
            "`batch_prompts` prompts (same seed -> same images)."
        },
    )
    batch_prompts: int = field(default=16, metadata={"help": "Prompts sampled together (each chunk has its own seed)."})
    detector: str = field(
        default="shapes",
        metadata={
            "help": "'shapes': the shapes world's exact detector; 'mask2former': GenEval's (Mask2Former + CLIP "
            "colours: detector_model, clip_model, clip_pretrained, class_names).",
            "choices": ["shapes", "mask2former"],
        },
    )
    detector_model: str = field(
        default="facebook/mask2former-swin-small-coco-instance",
        metadata={"help": "transformers Mask2Former checkpoint (hub id or folder), COCO instance labels."},
    )
    clip_model: str = field(
        default="ViT-L-14", metadata={"help": "open_clip model for the colours (a name, hf-hub:ID or local-dir:PATH)."}
    )
    clip_pretrained: str = field(default="openai", metadata={"help": "open_clip pretrained tag or weights file."})
    class_names: str | None = field(
        default=None, metadata={"help": "object_names.txt, one class a line; default: GenEval's 80 COCO names."}
    )
    batch_size: int = field(default=8, metadata={"help": "Images per detector batch."})
    metric: str = field(
        default="geneval",
        metadata={
            "help": "What to judge: 'geneval' (GenEval's rules on detections: detector, ...); 'ocr' (text "
            "rendering read back by PP-OCRv4, needs rlhf-img[ocr]: CVTG-2K word accuracy and normalised edit "
            "distance; prompts: a .txt file, one prompt with one \"quoted\" target per line); 'vqa' (GenEval "
            "2-style atom questions, Soft-TIFA: vqa_answerer).",
            "choices": ["geneval", "ocr", "vqa"],
        },
    )
    vqa_answerer: str = field(
        default="shapes",
        metadata={
            "help": "metric vqa: who answers the atom questions: 'shapes' (the shapes world's exact detector) "
            "or 'vlm' (a VLM behind an OpenAI-compatible endpoint: judge_base_url, judge_model).",
            "choices": ["shapes", "vlm"],
        },
    )
    judge_base_url: str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible endpoint of the VQA model, e.g. http://127.0.0.1:8000/v1 (vLLM, SGLang "
            "or `transformers serve`)."
        },
    )
    judge_model: str | None = field(default=None, metadata={"help": "The served model's name at judge_base_url."})
    judge_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "Environment variable holding the endpoint's API key (never the key itself)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # FamilyOptions: family_config -> a mapping
        if self.metric == "vqa" and self.vqa_answerer == "vlm" and not (self.judge_base_url and self.judge_model):
            raise ValueError("vqa_answerer vlm needs judge_base_url and judge_model (the endpoint and its model)")
        for key in ("images_per_prompt", "batch_prompts", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        self.sampling  # validates cfg_mode / temperature / top_k / top_p / sampler before any model loads


# `rlhf-img eval geneval ...`: GenEval's protocol as defaults (its metadata file must then be given, as `prompts`)
GENEVAL_DEFAULTS = {"prompts": None, "images_per_prompt": 4, "cfg_mode": "guided", "detector": "mask2former"}
