"""DPO on images, offline and online, for every model family: `rlhf-img dpo RECIPE [--key value ...]`.

Direct Preference Optimization (Rafailov et al., 2023) raises the log-likelihood of a chosen image over a
rejected one for the same prompt, measured against a frozen reference: with sequence log-probs `log p(x | c)`
summed over an image's actions,

    chosen_logratio   = log p(chosen)   - log p_ref(chosen)
    rejected_logratio = log p(rejected) - log p_ref(rejected)
    sigmoid: -log sigmoid(beta * (chosen_logratio - rejected_logratio))                       (DPO)
    ipo:     ((chosen_logratio - rejected_logratio) / T - 1 / (2 * beta)) ** 2               (IPO, beta = tau)

TRL's names and formulas (`trl/trainer/dpo_trainer.py`, `_compute_loss`; its IPO divides each log-ratio by the
completion's length, T actions here). TRL's loss lives inside its text trainer's forward (it needs TRL's fused LM
head on token ids), so the two formulas are written out here (`dpo_losses`) and tested against them on
hand-computed numbers. The metrics are TRL's: `rewards/chosen`, `rewards/rejected`, `rewards/accuracies`,
`rewards/margins`, `logps/chosen`, `logps/rejected`.

Log-probs are the family's teacher-forced scorer (`upstream/likelihood.py`): the conditional distribution at
temperature 1, or the unconditional one for the pairs whose caption is dropped (`caption_dropout`). The
reference is the adapter-disabled policy under LoRA and a frozen copy of the policy otherwise, so nothing is
reloaded from disk (any family, any checkpoint format).

- offline: pairs from a table (`dpo_data.py`): images (encoded per batch with `Policy.encode_images`) or actions.
- online: each step samples `num_generations` images per prompt from the current policy (per-image seeded
  streams, as GRPO), scores them with the recipe's rewards and trains on each group's best vs worst; groups
  with no spread are skipped and counted (`pairs/no_spread_groups`). `rlhf-img dpo pairs RECIPE` writes such
  pairs, from the recipe's model, as a table for offline runs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from ..config import ImageModelConfig, PromptDataConfig, SamplingOptions, parse_structured
from ..model_card import write_model_card
from ..policy import Policy, Sampling
from ..recipes import UsageError, check_run_keys, parse_recipe, recipe_parser
from ..rewards.loading import RewardConfigError, RewardSpec
from ..rewards.reward_set import RewardSet, check_unique_names
from ..sampling.generators import SampleGenerators, sample_seed
from .dpo_data import PreferencePairs, collate_pairs, collate_prompts, load_pair_table, sample_and_rank
from .likelihood import action_logprobs

MODES = ("offline", "online")
LOSS_TYPES = ("sigmoid", "ipo")


# ------------------------------------------------------------------------------------------------ config
@dataclass
class ImageDPOConfig(SamplingOptions, TrainingArguments):
    """transformers `TrainingArguments` plus DPO (TRL's `beta` / `loss_type` names and defaults), the mode, the
    online sampling (the GRPO recipe's `cfg_mode`, `cfg_scale`, `temperature`, `top_k`, `top_p`, `sampler`,
    `num_generations`, `rewards`) and caption dropout. `per_device_train_batch_size` counts pairs (online: prompts,
    each sampled `num_generations` times)."""

    mode: str = field(
        default="offline",
        metadata={
            "help": "'offline': pairs from `dataset` (prompt, chosen, rejected: images or actions); 'online': "
            "each step samples `num_generations` images per prompt of `dataset` from the current policy, scores "
            "them with `rewards` and trains on each group's best vs worst.",
            "choices": list(MODES),
        },
    )
    beta: float = field(
        default=0.1,
        metadata={
            "help": "TRL's beta: how far the policy may move from the reference (higher: less). For "
            "loss_type 'ipo' it is the regularisation tau of the IPO paper."
        },
    )
    loss_type: str = field(
        default="sigmoid",
        metadata={
            "help": "'sigmoid': DPO, -log sigmoid(beta * (chosen_logratio - rejected_logratio)); 'ipo': "
            "((chosen_logratio - rejected_logratio) / T - 1 / (2 beta))^2 with T the actions per image (TRL's "
            "length-normalised IPO). Log-ratios are summed action log-probs minus the reference's.",
            "choices": list(LOSS_TYPES),
        },
    )
    rewards: str | None = field(
        default=None,
        metadata={
            "help": "Online mode (and `rlhf-img dpo pairs`): the rewards that rank each group, the GRPO "
            "recipe's list of {name, weight, normalize, label, kwargs}, combined as GRPO combines them."
        },
    )
    num_generations: int = field(
        default=8, metadata={"help": "Online: images sampled per prompt; the best and the worst make its pair."}
    )
    caption_dropout: float = field(
        default=0.0,
        metadata={
            "help": "Share of pairs scored under the family's unconditional prompt instead of their caption "
            "(both images, policy and reference), so the unconditional branch CFG needs learns the "
            "preference too; 0: off."
        },
    )
    logprob_chunk_size: int = field(
        default=Sampling.logprob_chunk_size,
        metadata={
            "help": "Score this many image tokens at a time in the log-prob pass (per-chunk activation "
            "checkpointing); 0: all at once."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow the checkpoint's own code (hub models that need it), as in GRPO."}
    )
    disable_dropout: bool = field(
        default=True, metadata={"help": "Disable dropout, so the policy and the reference agree before training."}
    )
    # transformers defaults changed for this stage:
    logging_steps: float = field(default=1, metadata={"help": "Log every N optimizer steps."})
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Dashboards: 'wandb', 'tensorboard', 'all' or 'none'."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: every column is read (prompt metadata reaches the rewards)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {list(LOSS_TYPES)}, got {self.loss_type!r}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations must be >= 2 (a pair is the best and the worst of a group), got "
                f"{self.num_generations}"
            )
        if str(self.eval_strategy) not in ("no", "IntervalStrategy.NO"):
            raise ValueError("eval_strategy: DPO runs have no evaluation loop; score the output with `rlhf-img eval`")
        self.rewards = parse_structured(self.rewards, "rewards")
        self.reward_specs: list[RewardSpec] = []
        if self.rewards is not None:
            entries = [self.rewards] if isinstance(self.rewards, (str, dict)) else self.rewards
            if not isinstance(entries, list) or not entries:
                raise RewardConfigError("rewards: expected a non-empty list of reward entries")
            self.reward_specs = [RewardSpec.parse(entry) for entry in entries]
            check_unique_names([spec.display_name for spec in self.reward_specs])
        self.sampling  # validates temperature / top_p / sampler before any model loads

    @property
    def sampling(self) -> Sampling:
        """The online sampling options plus the chunk size of the log-prob pass."""
        return dataclasses.replace(super().sampling, logprob_chunk_size=self.logprob_chunk_size)


@dataclass
class DPODataConfig(PromptDataConfig):
    """Where the pairs (offline) or the prompts (online) come from."""

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Offline: a .jsonl/.json/.csv/.parquet pair table (image paths relative to the file) or a "
            "`datasets` name or save_to_disk folder, with prompt / chosen / rejected columns (images, or "
            "actions as lists of ints). Online: prompts, as in a GRPO recipe (.txt, or a table whose other "
            "columns reach the rewards)."
        },
    )
    chosen_column: str = field(default="chosen", metadata={"help": "Offline: the column of the preferred images."})
    rejected_column: str = field(default="rejected", metadata={"help": "Offline: the column of the other images."})


DPO_DATACLASSES = (ImageDPOConfig, ImageModelConfig, DPODataConfig)


# ------------------------------------------------------------------------------------------------- loss
def dpo_losses(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str,
    num_actions: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses `(P,)` and TRL's implicit rewards `beta * logratio` for the chosen and the rejected `(P,)`
    (detached), from summed sequence log-probs `(P,)` of the policy and the reference (module docstring)."""
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    delta = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "ipo":  # TRL normalises each log-ratio by its completion's length: T actions for both
        losses = (delta / num_actions - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be one of {list(LOSS_TYPES)}, got {loss_type!r}")
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


# ---------------------------------------------------------------------------------------------- trainer
class ImageDPOTrainer(Trainer):
    """DPO for autoregressive text-to-image policies, on transformers' `Trainer`.

    Args:
        policy: a family's policy (`rlhf_img.load_policy`); its `model` is trained (peft-wrapped under LoRA, as
            `self.model`); no attribute of `policy` is set.
        args: `ImageDPOConfig`.
        train_dataset: offline, a `PreferencePairs` (or a `datasets.Dataset` with prompt / chosen / rejected columns,
            image paths relative to the current folder); online, prompt rows (a `prompt` column; the other columns
            reach the rewards).
        rewards: online, the `RewardSet` (or entries to build one from; default `args.reward_specs`).
        peft_config: a peft `LoraConfig` for LoRA; None for full fine-tuning (the reference is then a frozen copy).
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean: the Trainer divides by the accumulation

    def __init__(
        self,
        policy: Policy,
        args: ImageDPOConfig,
        train_dataset,
        rewards=None,
        peft_config=None,
        callbacks=None,
        optimizers=(None, None),
    ) -> None:
        from trl.trainer.utils import disable_dropout_in_model

        self.policy = policy
        self.rewards: RewardSet | None = None
        if args.mode == "online":
            self.rewards = RewardSet.build(rewards if rewards is not None else args.reward_specs)
            if len(self.rewards) == 0:
                raise ValueError("mode 'online' needs rewards to rank the sampled images")
        elif not isinstance(train_dataset, PreferencePairs):  # a pair table given in Python
            image_size = policy.image_size if hasattr(policy, "encode_images") else None
            train_dataset = PreferencePairs(train_dataset, image_size, policy.num_actions, os.getcwd())
        model = policy.model
        # full fine-tuning: a frozen copy taken before any update (and before peft / accelerate wrap anything)
        ref_model = None if peft_config is not None else _frozen_copy(model)
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        if args.disable_dropout:
            disable_dropout_in_model(model)
            if ref_model is not None:
                disable_dropout_in_model(ref_model)
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._micro_steps = self._generation = 0  # number the batches: the online samples' and dropout's streams
        self.groups_seen = self.groups_without_spread = 0
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            data_collator=collate_prompts if args.mode == "online" else collate_pairs,
            processing_class=policy.processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        check_trainable = getattr(policy, "check_trainable", None)  # optional family hook (policy.py)
        if check_trainable is not None:
            check_trainable(self.model)
        self.policy.to(self.accelerator.device)
        self.ref_model = None if ref_model is None else self._place_reference(ref_model)

    def _place_reference(self, ref_model: torch.nn.Module) -> torch.nn.Module:
        """The frozen copy on the training device (sharded by DeepSpeed / FSDP when they shard the policy)."""
        if self.is_deepspeed_enabled:
            from trl.models.utils import prepare_deepspeed

            return prepare_deepspeed(ref_model, self.accelerator)
        if self.is_fsdp_enabled:
            from trl.models.utils import prepare_fsdp

            return prepare_fsdp(ref_model, self.accelerator)
        return ref_model.to(self.accelerator.device)

    # --------------------------------------------------------------------------------------------- pairs
    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """A batch -> `{"prompt": [P], "chosen": (P, T), "rejected": (P, T), "weight": (P,)}` on the device: offline
        images are encoded here (per batch); online, the pairs are sampled and ranked here (weight 0: a stand-in
        pair when no group had any spread, so every process still runs one forward and backward)."""
        accumulation = self.args.gradient_accumulation_steps  # numbered like GRPO's generations: resumes agree
        self._generation = self.state.global_step * accumulation + self._micro_steps % accumulation
        self._micro_steps += 1
        if self.args.mode == "online":
            return self._online_pairs(inputs["prompt"], inputs["columns"])
        inputs = super()._prepare_inputs(inputs)
        chosen, rejected = inputs["chosen"], inputs["rejected"]
        if chosen.is_floating_point():  # images: one encoder call for both sides
            actions = self.policy.encode_images(torch.cat([chosen, rejected]).float()).to(self.accelerator.device)
            chosen, rejected = actions.chunk(2)
        weight = torch.ones(len(inputs["prompt"]), device=self.accelerator.device)
        return {"prompt": inputs["prompt"], "chosen": chosen, "rejected": rejected, "weight": weight}

    def _online_pairs(self, prompts: list[str], columns: dict[str, list[Any]]) -> dict[str, Any]:
        from trl.models import unwrap_model_for_generation

        from ..fsdp import unsharded_root

        device, groups = self.accelerator.device, self.args.num_generations
        first = self.accelerator.process_index * len(prompts) * groups  # global sample index, as GRPO numbers them
        generators = SampleGenerators.for_samples(
            self.args.seed, "dpo", self._generation, range(first, first + len(prompts) * groups), device
        )
        start = time.perf_counter()
        with (
            torch.no_grad(),
            self._no_checkpointing(),
            unwrap_model_for_generation(self.model_wrapped, self.accelerator) as unwrapped,
            unsharded_root(unwrapped),
            self.accelerator.autocast(),
        ):
            sampled = sample_and_rank(
                self.policy, unwrapped, prompts, columns, self.rewards, groups, self.args.sampling, generators, device
            )
        ranked = sampled.ranked
        self._log_rollouts(sampled, time.perf_counter() - start)
        keep = ranked.valid.nonzero().squeeze(1)
        weight = torch.ones(len(keep), device=device)
        if len(keep) == 0:  # no pair this batch: a zero-weight stand-in keeps the backward (and DDP) in step
            keep, weight = torch.zeros(1, dtype=torch.long, device=ranked.valid.device), torch.zeros(1, device=device)
        return {
            "prompt": [prompts[int(i)] for i in keep],
            "chosen": sampled.actions[ranked.best[keep]].to(device),
            "rejected": sampled.actions[ranked.worst[keep]].to(device),
            "weight": weight,
        }

    def _log_rollouts(self, sampled, seconds: float) -> None:
        """GRPO's reward metrics over every sampled image (all processes), how many groups gave no pair, and the
        mean reward of the chosen and of the rejected images."""
        from trl.trainer.utils import nanstd

        device, ranked = self.accelerator.device, sampled.ranked
        totals = self.accelerator.gather(ranked.totals.to(device))
        per_func = self.accelerator.gather(sampled.rewards_per_func.to(device))
        valid = ranked.valid
        counts = torch.tensor(
            [
                len(valid),
                int((~valid).sum()),
                int(valid.sum()),
                float(ranked.totals[ranked.best[valid]].sum()),
                float(ranked.totals[ranked.worst[valid]].sum()),
            ],
            device=device,
        )
        groups, no_spread, pairs, chosen_sum, rejected_sum = self.accelerator.gather(counts[None]).sum(0).tolist()
        self.groups_seen += int(groups)
        self.groups_without_spread += int(no_spread)
        metrics = self._metrics
        metrics["reward"].append(torch.nanmean(totals).item())
        metrics["reward_std"].append(nanstd(totals).item())
        for index, name in enumerate(self.rewards.names):
            metrics[f"rewards/{name}/mean"].append(torch.nanmean(per_func[:, index]).item())
        metrics["pairs/no_spread_groups"].append(no_spread)
        metrics["pairs/frac_no_spread"].append(no_spread / max(groups, 1))
        if pairs > 0:
            metrics["pairs/reward_chosen"].append(chosen_sum / pairs)
            metrics["pairs/reward_rejected"].append(rejected_sum / pairs)
        metrics["timing/sample_and_score_seconds"].append(seconds)

    def _no_checkpointing(self):
        if not self.args.gradient_checkpointing:
            return contextlib.nullcontext()
        from trl.models.utils import disable_gradient_checkpointing

        return disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs)

    # ---------------------------------------------------------------------------------------------- loss
    def _caption_kept(self, count: int) -> torch.Tensor | None:
        """`(count,)` bool, False for the pairs scored unconditionally (`caption_dropout`); None when off. Drawn from
        a stream seeded by (seed, batch number, process), so a resumed run drops the same captions."""
        if self.args.caption_dropout == 0:
            return None
        seed = sample_seed(self.args.seed, "dpo-caption-dropout", self._generation, self.accelerator.process_index)
        draws = torch.rand(count, generator=torch.Generator().manual_seed(seed))
        return (draws >= self.args.caption_dropout).to(self.accelerator.device)

    def sequence_logps(
        self, model: torch.nn.Module, prompts: list[str], actions: torch.Tensor, conditional: torch.Tensor | None
    ) -> torch.Tensor:
        """Summed log-probs `(B,)` of `actions` `(B, T)` under `model` (the caption's, or the unconditional prompt's
        where `conditional` is False)."""
        batch = self.policy.encode_prompts(prompts, self.accelerator.device)
        with self.accelerator.autocast():
            logps = action_logprobs(
                self.policy, model, batch, actions, conditional, chunk_size=self.args.logprob_chunk_size
            )
        return logps.float().sum(dim=1)

    def reference_logps(self, prompts: list[str], actions: torch.Tensor, conditional: torch.Tensor | None):
        """The reference's summed log-probs `(B,)`: the frozen copy, or the policy with its adapters disabled."""
        with torch.no_grad(), self._no_checkpointing():
            if self.ref_model is not None:
                return self.sequence_logps(self.ref_model, prompts, actions, conditional)
            from trl.trainer.utils import use_adapter

            with use_adapter(self.accelerator.unwrap_model(self.model), adapter_name=None):  # disable_adapter()
                return self.sequence_logps(self.model, prompts, actions, conditional)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        prompts, weight = inputs["prompt"], inputs["weight"]
        actions = torch.cat([inputs["chosen"], inputs["rejected"]])  # (2P, T): one forward, TRL's concatenated batch
        kept = self._caption_kept(len(prompts))
        conditional = None if kept is None else torch.cat([kept, kept])
        logps = self.sequence_logps(model, prompts + prompts, actions, conditional)
        ref_logps = self.reference_logps(prompts + prompts, actions, conditional)
        chosen_logps, rejected_logps = logps.chunk(2)
        ref_chosen, ref_rejected = ref_logps.chunk(2)
        losses, chosen_rewards, rejected_rewards = dpo_losses(
            chosen_logps, rejected_logps, ref_chosen, ref_rejected, self.args.beta, self.args.loss_type, actions.size(1)
        )
        loss = (losses * weight).sum() / weight.sum().clamp(min=1.0)
        self._log_pairs(weight, chosen_rewards, rejected_rewards, chosen_logps.detach(), rejected_logps.detach())
        return (loss, {"losses": losses}) if return_outputs else loss

    def _log_pairs(self, weight, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> None:
        """TRL's DPO metrics, averaged over the real pairs of every process (sums and counts are gathered, since
        the processes may hold different numbers of pairs online)."""
        values = torch.stack(
            [
                weight.sum(),
                (weight * chosen_rewards).sum(),
                (weight * rejected_rewards).sum(),
                (weight * (chosen_rewards > rejected_rewards).float()).sum(),
                (weight * (chosen_rewards - rejected_rewards)).sum(),
                (weight * chosen_logps).sum(),
                (weight * rejected_logps).sum(),
            ]
        )
        totals = self.accelerator.gather(values.reshape(1, -1)).sum(dim=0)
        count = totals[0].item()
        if count == 0:
            return
        for key, total in zip(
            (
                "rewards/chosen",
                "rewards/rejected",
                "rewards/accuracies",
                "rewards/margins",
                "logps/chosen",
                "logps/rejected",
            ),
            totals[1:].tolist(),
        ):
            self._metrics[key].append(total / count)
        self._metrics["pairs/count"].append(count)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The metrics collected since the last log, averaged (TRL's convention), added to the Trainer's."""
        logs.update({key: sum(values) / len(values) for key, values in self._metrics.items() if values})
        self._metrics.clear()
        super().log(logs, start_time)

    # -------------------------------------------------------------------------------------------- saving
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """The Trainer's save (model or adapter, tokenizer), then the family's own files, so the folder reloads as
        the family (`load_policy(output_dir)`) and trains with `rlhf-img train`."""
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            self.policy.save_pretrained(
                output_dir or self.args.output_dir, model=self.accelerator.unwrap_model(self.model)
            )

    def create_model_card(self, model_name: str | None = None, tags=None, **unused) -> None:
        """rlhf-img's card (model_card.py) instead of transformers' text-model card, also on `push_to_hub`."""
        write_model_card(self, "dpo", tags=[tags] if isinstance(tags, str) else tags)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint save, then GRPO's completion marker (`resume_from_checkpoint: true` skips
        half-written checkpoints)."""
        from ..resume import save_marked_checkpoint

        save_marked_checkpoint(self, super()._save_checkpoint, model, trial)


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An independent copy of `model` with gradients off and in eval mode: the full-fine-tuning reference."""
    reference = copy.deepcopy(model)
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference.eval()


# ------------------------------------------------------------------------------------------ preparation
@dataclass
class PreparedDPO:
    """Everything a run needs, built before anything is written (`prepare_dpo`)."""

    args: ImageDPOConfig
    model_args: ImageModelConfig
    data_args: DPODataConfig
    policy: Policy
    dataset: Any  # online: prompt rows; offline: PreferencePairs
    rewards: RewardSet | None
    peft_config: Any


def prepare_dpo(recipe_path: str, overrides: Sequence[str], write_pairs: bool = False) -> PreparedDPO:
    """Configs, rewards, data and model from a recipe plus `--key value` overrides; `UsageError` (one line naming
    the key or file) on bad input. `write_pairs`: for `rlhf-img dpo pairs` (prompts and rewards, whatever `mode`)."""
    from trl import get_peft_config

    from ..checkpoints import CheckpointError
    from ..data import load_prompt_dataset
    from ..families import load_policy

    try:
        args, model_args, data_args = parse_recipe(recipe_path, overrides, DPO_DATACLASSES, "dpo")
    except UsageError as error:
        if "'dataset'" in str(error) and "not found" in str(error):  # an offline pair table not written yet
            raise UsageError(
                str(error).replace("prompt file not found", "file not found") + "; `rlhf-img dpo pairs "
                "ONLINE_RECIPE --output_dir DIR` writes ranked pairs from a model"
            ) from None
        raise
    online = write_pairs or args.mode == "online"
    check_run_keys(args, model_args)
    if not data_args.dataset:
        what = "prompts" if online else "a pair table (prompt, chosen, rejected)"
        raise UsageError(f"recipe key 'dataset' is required ({what})")
    if online and not args.reward_specs:
        raise UsageError("recipe key 'rewards' is required in mode 'online' (a list of rewards that rank each group)")
    if not online and args.reward_specs:
        raise UsageError(
            "recipe key 'rewards' is read in mode 'online' only (offline pairs are already ranked); "
            "remove it or set mode: online"
        )
    try:  # the data first: a missing file fails before a model loads
        rewards = RewardSet.build(args.reward_specs) if online else None
        if online:
            dataset = load_prompt_dataset(
                data_args.dataset,
                config=data_args.dataset_config,
                split=data_args.dataset_split,
                prompt_column=data_args.prompt_column,
                max_prompts=data_args.max_prompts,
            )
        else:
            try:
                table, base_dir = load_pair_table(
                    data_args.dataset,
                    prompt_column=data_args.prompt_column,
                    chosen_column=data_args.chosen_column,
                    rejected_column=data_args.rejected_column,
                    config=data_args.dataset_config,
                    split=data_args.dataset_split,
                    max_rows=data_args.max_prompts,
                )
            except FileNotFoundError:
                raise UsageError(
                    f"recipe key 'dataset': pair table not found: {data_args.dataset} (`rlhf-img dpo "
                    "pairs ONLINE_RECIPE --output_dir DIR` writes ranked pairs from a model)"
                ) from None
        policy = load_policy(
            model_args.model_name_or_path,
            model_args.model_family,
            visual_tokenizer=model_args.visual_tokenizer,
            dtype=model_args.dtype,
            family_config=model_args.family_config,
            revision=None if model_args.model_revision == "main" else model_args.model_revision,
            trust_remote_code=args.trust_remote_code,
        )
        if not online:
            image_size = policy.image_size if hasattr(policy, "encode_images") else None
            dataset = PreferencePairs(
                table, image_size, policy.num_actions, base_dir, data_args.chosen_column, data_args.rejected_column
            )
            if len(dataset) > 0:
                dataset[0]  # a first row that cannot be read fails here, naming its file
    except (RewardConfigError, CheckpointError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None
    except (OSError, ValueError) as error:
        raise UsageError(str(error).splitlines()[0]) from None
    return PreparedDPO(args, model_args, data_args, policy, dataset, rewards, get_peft_config(model_args))


# -------------------------------------------------------------------------------------------- commands
def run_dpo(run: PreparedDPO) -> int:
    """Train, save the model and `trainer_state.json` to `output_dir`, print a summary; 1 if a reward broke or
    nothing was trained."""
    from ..rewards import RewardError
    from ..training import reward_summary

    args = run.args
    trainer = ImageDPOTrainer(run.policy, args, run.dataset, rewards=run.rewards, peft_config=run.peft_config)
    start = time.time()
    try:
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    except RewardError as error:
        print(f"rlhf-img: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    if trainer.state.global_step == 0 and args.max_steps != 0:
        print(
            f"rlhf-img: error: trained 0 steps (max_steps {args.max_steps}, {len(run.dataset)} rows); nothing was "
            "saved",
            file=sys.stderr,
        )
        return 1
    trainer.save_state()  # first, so that push_to_hub (in save_model) uploads trainer_state.json too
    trainer.save_model(args.output_dir)
    trainer.create_model_card()  # README.md: rlhf-img's model card (model_card.py), main process only
    if trainer.accelerator.is_main_process:
        print(
            f"rlhf-img: DPO ({args.mode}, {args.loss_type}) trained {trainer.state.global_step} steps in "
            f"{time.time() - start:.0f}s; saved to {args.output_dir}"
        )
        print(f"rlhf-img: {margin_summary(trainer.state.log_history)}")
        if args.mode == "online":
            print(
                f"rlhf-img: {reward_summary(trainer.state.log_history)}; {trainer.groups_without_spread} of "
                f"{trainer.groups_seen} groups had no reward spread (no pair)"
            )
    return 0


def margin_summary(log_history: list[dict]) -> str:
    """The first and last logged DPO margin and accuracy (TRL's `rewards/margins`, `rewards/accuracies`)."""
    logged = [
        entry
        for entry in log_history
        if isinstance(entry.get("rewards/margins"), (int, float)) and math.isfinite(entry["rewards/margins"])
    ]
    if not logged:
        return "no DPO pair was trained (no margin logged)"
    first, last = logged[0], logged[-1]
    return (
        f"margin {first['rewards/margins']:.4g} (step {first['step']}) -> {last['rewards/margins']:.4g} "
        f"(step {last['step']}), accuracy {first['rewards/accuracies']:.3g} -> {last['rewards/accuracies']:.3g}"
    )


def run_pairs(run: PreparedDPO) -> int:
    """`rlhf-img dpo pairs`: rank groups sampled from the recipe's model and write them as a pair table."""
    from .dpo_data import write_ranked_pairs

    args, policy = run.args, run.policy
    device = args.device
    policy.model.to(device).eval()
    policy.to(device)
    start = time.time()
    counts = write_ranked_pairs(
        policy,
        run.dataset,
        run.rewards,
        args.output_dir,
        num_generations=args.num_generations,
        sampling=args.sampling,
        seed=args.seed,
        prompts_per_batch=args.per_device_train_batch_size,
        device=device,
    )
    table = os.path.join(args.output_dir, "pairs.jsonl")
    print(
        f"rlhf-img: {counts['pairs']} pairs from {counts['prompts']} prompts x {args.num_generations} images "
        f"({counts['no_spread']} groups without reward spread skipped) in {time.time() - start:.0f}s; wrote {table}"
    )
    return 0 if counts["pairs"] else 1


USAGE = "rlhf-img dpo [pairs] RECIPE.yaml [--key value ...]"
DESCRIPTION = (
    "DPO on images against a frozen reference (the adapter-disabled policy under LoRA, a frozen copy otherwise), "
    "for every model family. mode: offline trains on a pair table (prompt, chosen, rejected; images are resized, "
    "centre-cropped and encoded by the family's visual tokenizer, or actions as lists of ints); mode: online "
    "samples num_generations images per prompt from the current policy each step, ranks them by `rewards` and "
    "trains on each group's best vs worst. `rlhf-img dpo pairs RECIPE --output_dir DIR` instead writes such ranked "
    "pairs from the recipe's model (DIR/pairs.jsonl + DIR/images/) for offline runs. The output folder reloads as "
    "the family (`load_policy`, `rlhf-img eval`, a GRPO recipe's model_name_or_path). Every key below can be set "
    "in the recipe and overridden on the command line."
)


def main(argv: Sequence[str] | None = None) -> int:
    """`rlhf-img dpo [pairs] RECIPE [--key value ...]`; bad input exits with code 2 and one line."""
    from ..command_errors import fail

    argv = list(sys.argv[1:] if argv is None else argv)
    write_pairs = argv[:1] == ["pairs"]
    if write_pairs:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {USAGE}\n\n{DESCRIPTION}\n")
        recipe_parser(DPO_DATACLASSES, "dpo").print_help()
        return 0
    try:
        run = prepare_dpo(argv[0], argv[1:], write_pairs=write_pairs)
    except UsageError as error:
        fail(str(error))
    return run_pairs(run) if write_pairs else run_dpo(run)


if __name__ == "__main__":
    sys.exit(main())
