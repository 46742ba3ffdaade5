"""Every recipe key inherited from TRL, classified once: it `applies` to images, or it is `refused`.

`ImageGRPOConfig` subclasses TRL's `GRPOConfig` (itself transformers' `TrainingArguments`) and `ImageModelConfig`
subclasses TRL's `ModelConfig`, so a recipe accepts well over a hundred keys written for text generation. Many work
unchanged (optimizer, schedule, logging, saving, distributed launch, the GRPO loss family); others steer code that
`ImageGRPOTrainer` replaces (TRL's `generate()` / vLLM rollout, chat templates, the completion logger, the eval
loop) and would be accepted and then silently do nothing. There is no third verdict: a key either works for images
or is refused when a recipe or a flag sets it to anything but its default, before anything is loaded or written:

    rlhf-img: error: recipe key 'use_vllm' does not apply to images: <why>; <what to use instead>

`TRL_KEYS` is the one table; `tests/unit/test_trl_keys.py` fails when TRL or transformers add a field it does not
classify, so an upgrade cannot slip a new silent key in. `key_reference()` gives the rows for the generated key
reference in the docs.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

APPLIES = "applies"
REFUSED = "refused"


@dataclass(frozen=True)
class KeyRule:
    """How one inherited key behaves in an image GRPO run.

    `note`: for `applies`, what it does here (when that differs from TRL's text reading); for `refused`, why it
    cannot work for images. `instead`: for `refused`, the key or action to use instead. `tested`: for `applies`,
    the test files that exercise it (empty: it runs TRL's or transformers' own code path unchanged, not tested here).
    """

    verdict: str
    note: str = ""
    instead: str = ""
    tested: tuple[str, ...] = ()


def applies(note: str = "", tested: str | tuple[str, ...] = ()) -> KeyRule:
    return KeyRule(APPLIES, note, tested=(tested,) if isinstance(tested, str) else tuple(tested))


def refused(reason: str, instead: str) -> KeyRule:
    return KeyRule(REFUSED, reason, instead)


def _same(keys: str, rule: KeyRule) -> dict[str, KeyRule]:
    return {key: rule for key in keys.split()}


# Test files named in the table (relative to tests/), so a renamed file shows up in one place.
TRAINING = "integration/test_training.py"
TRL_KEY_RUNS = "integration/test_trl_keys_training.py"
FUZZ = "integration/test_fuzz_recipes.py"
RESUME = "integration/test_resume.py"
DEEPSPEED = "distributed/test_deepspeed.py"
FSDP = ("distributed/test_fsdp_launch.py", "distributed/test_fsdp_rollouts.py")
MODEL_CARD = "integration/test_model_card.py"

_VLLM = refused(
    "images are sampled by the policy's own KV-cache sampler; vLLM generates text",
    "choose the sampler with `sampler` (plain, shared, static, compiled, auto)",
)
_TEXT_GENERATE = refused(
    "it configures TRL's text generate(), which image rollouts do not call",
    "sample with temperature, top_k, top_p, cfg_mode, cfg_scale and sampler",
)
_EVAL_LOOP = refused(
    "TRL's evaluation loop gets no eval dataset from `rlhf-img train`",
    "use eval_every and eval_prompts (in-loop eval on fixed prompts and seeds)",
)
_COMPLETION_LOG = refused(
    "TRL's completion table logs text completions; image rollouts never fill it",
    "use save_rollouts (PNG + JSONL per rollout) or log_images_every (captioned grids)",
)
_ADAPTIVE_ENTROPY = applies("entropy over the image codes at each position (the scorer's own)", TRL_KEY_RUNS)
_HUB = applies("pushes the output folder with rlhf-img's model card (README.md)", MODEL_CARD)
_QUANTIZED = refused(
    "the family loader does not quantize the policy (no QLoRA)",
    "train LoRA (use_peft: true) on a bf16 policy (dtype: bfloat16)",
)
_LABELS = refused("the loss is GRPO's on sampled images; there are no labels", "remove the key")

TRL_KEYS: dict[str, KeyRule] = {
    # ---------------------------------------------------------------- trl.GRPOConfig: the GRPO objective
    "beta": applies("KL to the reference (LoRA: the adapter-disabled policy)", (TRAINING, FUZZ)),
    "loss_type": applies(
        "every TRL loss over the image actions; dr_grpo divides by TRL's constant 512 "
        "(max_completion_length's default): scale learning_rate instead",
        (TRAINING, TRL_KEY_RUNS),
    ),
    "num_iterations": applies("", TRAINING),
    "epsilon": applies("", TRL_KEY_RUNS),
    "epsilon_high": applies("", TRL_KEY_RUNS),
    "delta": applies("", TRL_KEY_RUNS),
    "importance_sampling_level": applies("'sequence': one ratio per image", TRL_KEY_RUNS),
    "off_policy_mask_threshold": applies("KL from the sampler's own log-probs", TRL_KEY_RUNS),
    "use_bias_correction_kl": applies("", TRL_KEY_RUNS),
    "scale_rewards": applies("", ("unit/test_advantages.py", FUZZ)),
    "multi_objective_aggregation": applies("", ("unit/test_advantages.py", FUZZ)),
    "reward_weights": refused(
        "a second, order-dependent copy of the reward weights", "give each entry of `rewards` its own `weight`"
    ),
    "sapo_temperature_neg": applies("with loss_type sapo", TRL_KEY_RUNS),
    "sapo_temperature_pos": applies("with loss_type sapo", TRL_KEY_RUNS),
    **_same("vespo_k_pos vespo_k_neg vespo_lambda_pos vespo_lambda_neg", applies("with loss_type vespo", TRL_KEY_RUNS)),
    "top_entropy_quantile": applies("over the image-code entropies", TRL_KEY_RUNS),
    **_same(
        "entropy_coef use_adaptive_entropy entropy_coef_min entropy_coef_max entropy_coef_delta entropy_target",
        _ADAPTIVE_ENTROPY,
    ),
    "sync_ref_model": applies("full fine-tuning with beta > 0 (TRL refuses it with LoRA or beta 0)"),
    "ref_model_mixup_alpha": applies("with sync_ref_model"),
    "ref_model_sync_steps": applies("with sync_ref_model"),
    "router_aux_loss_coef": refused("the family scorer computes no Mixture-of-Experts router loss", "remove the key"),
    "cast_lm_head_to_fp32": refused(
        "log-probs come from the family's image head, not TRL's fused LM head",
        "set dtype: float32 for full-precision scoring",
    ),
    "disable_dropout": applies("default true here, so sampling and scoring see the same function", TRAINING),
    "model_init_kwargs": refused(
        "the policy is built by its family loader, which does not read it",
        "use dtype, model_revision, trust_remote_code and family_config",
    ),
    "trust_remote_code": applies("passed to the family loader"),
    # ---------------------------------------------------------------- GRPOConfig: groups and batches
    "num_generations": applies("images per prompt (the group)", (TRAINING, FUZZ)),
    "num_generations_eval": refused(
        "it sizes TRL's evaluation loop, which `rlhf-img train` does not run",
        "use eval_images_per_prompt (in-loop eval)",
    ),
    "generation_batch_size": applies("", "integration/test_cli_errors.py"),
    "steps_per_generation": applies("", TRAINING),
    "shuffle_dataset": applies("prompt order of TRL's RepeatSampler", TRL_KEY_RUNS),
    "ds3_gather_for_generation": applies("DeepSpeed ZeRO-3: weights gathered for the image sampler", DEEPSPEED),
    # ---------------------------------------------------------------- GRPOConfig: generation (text) keys
    "temperature": applies("temperature of the image-code sampler and of the scorer", ("unit/test_cfg_modes.py", FUZZ)),
    "top_k": applies("over image codes", ("unit/test_cfg_modes.py", "unit/test_fast_sampler.py")),
    "top_p": applies("over image codes; log-probs use the same truncation", "unit/test_cfg_modes.py"),
    "min_p": refused("the image sampler implements temperature, top_k and top_p only", "use top_p or top_k"),
    "repetition_penalty": refused(
        "image codes repeat by nature (flat regions) and the sampler has no penalty", "remove the key"
    ),
    "max_completion_length": refused(
        "an image's length is fixed by the family (its code grid: num_actions)",
        "set the grid with family_config (e.g. '{\"grid\": [16, 16]}') where the family allows it",
    ),
    "mask_truncated_completions": refused(
        "an image is never truncated: every rollout is the family's full code grid", "remove the key"
    ),
    "pad_to_multiple_of": refused("image completions have a fixed length and are never padded", "remove the key"),
    "generation_kwargs": _TEXT_GENERATE,
    "cache_implementation": refused(
        "the image samplers keep their own KV cache", "choose it with `sampler` (shared, static, compiled)"
    ),
    "chat_template_kwargs": refused(
        "prompts are encoded by the family's own prompt format, not a chat template", "remove the key"
    ),
    "max_tool_calling_iterations": refused("image rollouts call no tools", "remove the key"),
    **_same(
        "use_transformers_paged use_transformers_continuous_batching transformers_continuous_batching_config",
        _TEXT_GENERATE,
    ),
    **_same(
        "use_vllm vllm_importance_sampling_cap vllm_mode vllm_model_impl vllm_enable_sleep_mode "
        "vllm_structured_outputs_regex vllm_server_base_url vllm_server_host vllm_server_port vllm_server_timeout "
        "vllm_group_port "
        "vllm_gpu_memory_utilization vllm_max_model_length vllm_tensor_parallel_size "
        "vllm_importance_sampling_correction vllm_importance_sampling_mode vllm_importance_sampling_clip_max "
        "vllm_importance_sampling_clip_min",
        _VLLM,
    ),
    # ---------------------------------------------------------------- GRPOConfig: completion logging
    **_same(
        "log_completions log_multimodal num_completions_to_print log_unique_prompts log_completions_hub_repo",
        _COMPLETION_LOG,
    ),
    # ---------------------------------------------------------------- TrainingArguments: optimisation
    "learning_rate": applies("", TRAINING),
    **_same("lr_scheduler_type warmup_steps", applies("", DEEPSPEED)),
    **_same(
        "weight_decay adam_beta1 adam_beta2 adam_epsilon max_grad_norm lr_scheduler_kwargs optim optim_args "
        "optim_target_modules",
        applies(),
    ),
    "num_train_epochs": applies(),
    "max_steps": applies("", (TRAINING, FUZZ)),
    "gradient_accumulation_steps": applies("", TRAINING),
    "per_device_train_batch_size": applies("images per process per step (prompts x num_generations)", TRAINING),
    "per_device_eval_batch_size": applies(
        "images sampled at a time by the in-loop eval", "integration/test_in_loop_eval.py"
    ),
    "auto_find_batch_size": refused(
        "halving the batch after an OOM breaks GRPO's generation batch (groups of num_generations fixed at start)",
        "lower per_device_train_batch_size",
    ),
    "average_tokens_across_devices": refused(
        "GRPO normalizes its loss itself (loss_type); this option rescales token-averaged language-model losses only",
        "remove the key",
    ),
    **_same("label_names label_smoothing_factor", _LABELS),
    "neftune_noise_alpha": refused(
        "NEFTune noises the prompt embeddings in the scoring pass only, so the "
        "log-probs would no longer score what the sampler drew",
        "remove the key",
    ),
    **_same(
        "use_liger_kernel liger_kernel_config",
        refused(
            "Liger kernels patch a text LM's layers and loss; log-probs here come from the family scorer",
            "use logprob_chunk_size for memory",
        ),
    ),
    # ---------------------------------------------------------------- TrainingArguments: precision and speed
    **_same("bf16 fp16 tf32", applies("autocast around sampling and scoring")),
    "use_cpu": applies("", (TRAINING, FUZZ)),
    "activation_checkpointing": applies("off in the no-grad sampling and scoring passes", TRAINING),
    **_same("activation_checkpointing_kwargs gradient_checkpointing gradient_checkpointing_kwargs", applies()),
    **_same(
        "torch_compile torch_compile_backend torch_compile_mode",
        refused(
            "the samplers and several family scorers call the model's submodules directly, around a "
            "whole-model compile",
            "use sampler: compiled (the decode step compiled, CUDA graphs on GPU)",
        ),
    ),
    "use_cache": refused(
        "the image samplers keep their own KV cache and the scorer runs without one",
        "choose the sampler with `sampler`",
    ),
    "torch_empty_cache_steps": applies(),
    "skip_memory_metrics": applies(),
    "debug": applies(),
    # ---------------------------------------------------------------- TrainingArguments: data loading
    **_same(
        "dataloader_num_workers dataloader_pin_memory dataloader_persistent_workers dataloader_prefetch_factor "
        "dataloader_multiprocessing_context dataloader_drop_last",
        applies("prompt rows"),
    ),
    "dataloader_in_order": refused(
        "groups span processes, so every process must read its generation batches in the sampler's order",
        "remove the key",
    ),
    "remove_unused_columns": refused(
        "the prompt rows' other columns reach the rewards as keyword arguments (GenEval metadata, OCR targets)",
        "keep the default (false)",
    ),
    "train_sampling_strategy": refused(
        "GRPO's RepeatSampler orders the prompts (groups of num_generations)",
        "set shuffle_dataset: false for file order",
    ),
    "length_column_name": refused("read only by group_by_length sampling, which GRPO replaces", "remove the key"),
    "data_seed": refused("GRPO's RepeatSampler shuffles the prompts with `seed`, never data_seed", "set seed"),
    "seed": applies("also seeds each image's random stream", (TRAINING, "unit/test_sample_generators.py")),
    "full_determinism": applies(),
    "ignore_data_skip": applies("", RESUME),
    # ---------------------------------------------------------------- TrainingArguments: evaluation loop
    **_same(
        "eval_strategy eval_steps eval_delay eval_on_start eval_accumulation_steps eval_do_concat_batches "
        "eval_use_gather_object batch_eval_metrics include_for_metrics prediction_loss_only bf16_full_eval "
        "fp16_full_eval load_best_model_at_end metric_for_best_model greater_is_better do_eval do_predict",
        _EVAL_LOOP,
    ),
    "do_train": refused("a flag for training scripts; `rlhf-img train` always trains", "remove the key"),
    "include_num_input_tokens_seen": refused(
        "it counts input_ids of each Trainer batch, and a GRPO batch is prompt rows",
        "read rollout/images_per_second and the step count",
    ),
    # ---------------------------------------------------------------- TrainingArguments: logging and dashboards
    **_same(
        "logging_strategy logging_first_step logging_nan_inf_filter log_level log_level_replica "
        "log_on_each_node run_name project trackio_space_id trackio_bucket_id trackio_static_space_id",
        applies(),
    ),
    "logging_steps": applies("", FUZZ),
    "report_to": applies("", ("integration/test_dashboards.py", "integration/test_in_loop_eval.py")),
    "disable_tqdm": applies("", TRAINING),
    # ---------------------------------------------------------------- TrainingArguments: saving and resuming
    "output_dir": applies("", (TRAINING, MODEL_CARD)),
    "save_strategy": applies("", (TRAINING, RESUME)),
    "save_steps": applies("", (TRAINING, RESUME)),
    "save_total_limit": applies("", RESUME),
    **_same(
        "save_only_model save_on_each_node restore_callback_states_from_checkpoint enable_jit_checkpoint", applies()
    ),
    "resume_from_checkpoint": applies("true: the latest complete checkpoint", (RESUME, FUZZ)),
    **_same("push_to_hub hub_model_id hub_strategy hub_token hub_private_repo hub_always_push hub_revision", _HUB),
    # ---------------------------------------------------------------- TrainingArguments: distributed
    **_same(
        "ddp_backend ddp_timeout ddp_find_unused_parameters ddp_bucket_cap_mb ddp_broadcast_buffers "
        "ddp_static_graph local_rank accelerator_config",
        applies("", "distributed/test_process_invariance.py"),
    ),
    "deepspeed": applies("", DEEPSPEED),
    "fsdp": applies("FSDP2", FSDP),
    "fsdp_config": applies("", ("unit/test_launch_configs.py",) + FSDP),
    "parallelism_config": refused(
        "tensor and context parallelism would split the layers and sequences the image samplers call directly",
        "use DDP, fsdp (FSDP2) or deepspeed",
    ),
    # ---------------------------------------------------------------- trl.ModelConfig
    "model_name_or_path": applies("any family's checkpoint (folder or hub id)", (TRAINING, FUZZ)),
    "model_revision": applies("passed to the family loader"),
    "dtype": applies("policy weights dtype", FUZZ),
    "attn_implementation": refused(
        "the family loader builds its modules with their own attention",
        "set attn_implementation in the checkpoint's config.json",
    ),
    **_same("use_peft lora_r lora_alpha lora_dropout lora_target_modules", applies("", (TRAINING, FUZZ))),
    **_same(
        "lora_target_parameters lora_modules_to_save lora_task_type use_rslora use_dora",
        applies("passed to peft's LoraConfig"),
    ),
    **_same("load_in_8bit load_in_4bit bnb_4bit_quant_type use_bnb_nested_quant bnb_4bit_quant_storage", _QUANTIZED),
}


def inherited_fields(config_type: type) -> dict[str, str]:
    """The fields `config_type` inherits from TRL / transformers, each with the TRL-side class that declares it
    (`ModelConfig`, `TrainingArguments` or `GRPOConfig`); rlhf-img's own fields are left out."""
    import transformers
    import trl

    origins = {}
    for base in (trl.ModelConfig, transformers.TrainingArguments, trl.GRPOConfig):  # most basic first
        if issubclass(config_type, base):
            for field in dataclasses.fields(base):
                origins.setdefault(field.name, base.__name__)
    return origins


# Refused keys whose default TRL resolves in `__post_init__`: the value a parsed config holds when the recipe left
# the key out. Declared defaults are read from the dataclass fields, never from a config built for the purpose:
# building a TrainingArguments resets accelerate's process state, which breaks a multi-process run that has already
# built its own (tests/unit/test_trl_keys.py checks this table against a built config).
RESOLVED_DEFAULTS: dict[str, Any] = {"pad_to_multiple_of": None}  # TRL: "auto" -> None without padding-free


@functools.lru_cache(maxsize=None)
def _defaults(config_type: type) -> dict[str, Any]:
    """The declared default of every field of `config_type` (a dataclass), without building one."""
    return {
        field.name: field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        for field in dataclasses.fields(config_type)
    }


def _is_default(name: str, value: Any, default: Any) -> bool:
    if value is default or value == default:
        return True
    return name in RESOLVED_DEFAULTS and value == RESOLVED_DEFAULTS[name]


def inapplicable_key(*configs: Any) -> str | None:
    """The one-line refusal of the first refused key that `configs` set to anything but its default, or None.

    Only keys a config inherits from TRL are checked (a DPO config's own `beta` is not GRPO's). Keys are checked in
    the table's order, where a key comes before those TRL derives from it (`eval_strategy` sets `do_eval`), so the
    line names the key the user wrote."""
    for config in configs:
        inherited = inherited_fields(type(config))
        defaults = _defaults(type(config))
        for name, rule in TRL_KEYS.items():
            if rule.verdict != REFUSED or name not in inherited:
                continue
            if _is_default(name, getattr(config, name), defaults[name]):
                continue
            return f"recipe key {name!r} does not apply to images: {rule.note}; {rule.instead}"
    return None


def key_reference(config_types: tuple[type, ...] | None = None) -> list[dict[str, Any]]:
    """One row per inherited key, for the generated key reference: `key`, `origin` (the TRL / transformers class
    that declares it), `verdict` (applies / refused), `note`, `instead` and `tested` (test files)."""
    if config_types is None:
        from .config import ImageGRPOConfig, ImageModelConfig

        config_types = (ImageGRPOConfig, ImageModelConfig)
    rows = []
    for config_type in config_types:
        for name, origin in inherited_fields(config_type).items():
            rule = TRL_KEYS.get(name)
            if rule is None:
                raise KeyError(f"TRL key {name!r} ({origin}) is not classified in rlhf_img/trl_keys.py")
            rows.append(
                {
                    "key": name,
                    "origin": origin,
                    "verdict": rule.verdict,
                    "note": rule.note,
                    "instead": rule.instead,
                    "tested": list(rule.tested),
                }
            )
    return rows
