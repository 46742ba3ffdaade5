"""`ImageGRPOTrainer`: TRL's GRPOTrainer with images as completions.

Overridden: the rollout step (sample -> decode -> rewards -> group advantages) and the per-token
log-probs (through the policy, under the chosen CFG mode). Everything else -- loss types, clipping, KL to
the reference (with LoRA, the adapter-disabled model), num_iterations, gradient accumulation,
checkpointing, scalar logging -- is TRL's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Sequence

import torch
from accelerate.utils import gather, gather_object
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import nanstd, use_adapter

from .advantages import group_advantages, reward_metrics
from .best_weights import KeepBestError
from .config import ImageGRPOConfig
from .dashboards import log_image
from .dynamic_sampling import RolloutRows, refill_zero_spread_groups
from .fsdp import unsharded_root
from .guards import TrainingGuards, unscored_counts
from .images import captioned_grid
from .in_loop_eval import InLoopEvaluation
from .model_card import write_model_card
from .monitors import rollout_monitors
from .object_credit import ObjectCreditError, clause_advantages, object_token_advantages
from .policy import Policy, PromptBatch, Rollout
from .resume import resolve_resume, save_marked_checkpoint
from .rewards.reward_set import RewardEntry, RewardSet
from .rollout_records import save_rollouts
from .sampling.generators import SampleGenerators

logger = logging.getLogger(__name__)


class ImageGRPOTrainer(GRPOTrainer):
    """GRPO for autoregressive text-to-image policies.

    Args:
        policy: a model family's policy (`rlhf_img.load_policy(...)`); its `model` is trained. The trainer keeps
            the module it trains (peft-wrapped under LoRA) as `self.model`, as TRL does, and hands it to
            `policy.sample` / `policy.logprobs`; it sets no attribute of `policy` (nor of `args`).
        args: `ImageGRPOConfig`.
        train_dataset: rows with a `prompt` column; other columns reach the rewards as keyword arguments.
        reward_funcs: a `RewardSet` (what `prepare_training` builds), or rewards to build one from (callables,
            `RewardFunction`s, `RewardSpec`s, names, or dicts); default: `args.rewards`.
        peft_config: a peft `LoraConfig` for LoRA training; None for full fine-tuning.
    """

    def __init__(
        self,
        policy: Policy,
        args: ImageGRPOConfig,
        train_dataset,
        reward_funcs: RewardSet | Sequence[RewardEntry] | None = None,
        eval_dataset=None,
        peft_config=None,
        callbacks=None,
        optimizers=(None, None),
    ) -> None:
        rewards = RewardSet.build(reward_funcs if reward_funcs is not None else args.reward_specs)
        if args.reward_weights is not None:  # TRL's field: accepted only when it says what the rewards say
            given = torch.tensor([float(w) for w in args.reward_weights], dtype=torch.float32)
            if given.shape != rewards.weights.shape or not torch.equal(given, rewards.weights):
                raise ValueError(
                    f"args.reward_weights {list(args.reward_weights)} disagree with the rewards' own "
                    f"weights {[r.weight for r in rewards]}; leave reward_weights unset"
                )
        if args.object_credit > 0:  # per-token advantages from clause boxes (object_credit.py)
            if rewards.object_credit_source() is None:
                raise ObjectCreditError(
                    "object_credit needs a reward that says where each clause was judged (geneval, "
                    f"shapes_geneval); this recipe's rewards are {', '.join(rewards.names)}"
                )
            if not callable(getattr(policy, "pool_to_actions", None)):
                raise ObjectCreditError(
                    f"object_credit needs a family whose actions map to image regions (pool_to_actions); "
                    f"{type(policy).__name__} has none"
                )
        self.policy = policy
        self.image_rewards: RewardSet = rewards  # names, weights, normalize flags, scoring, image embeddings
        self.sampling = args.sampling
        self._last_policy_logps: torch.Tensor | None = None
        self._last_logged_image_step = -1
        self._eval_generations = 0  # numbers eval rollout batches for their random streams
        loading_context = getattr(policy, "loading_context", contextlib.nullcontext)  # optional hook (policy.py)
        with loading_context():  # TRL loads a full fine-tuning run's KL reference itself, in here
            super().__init__(
                model=policy.model,
                reward_funcs=list(rewards),
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=policy.processing_class,
                callbacks=callbacks,
                optimizers=optimizers,
                peft_config=peft_config,
            )
        # TRL read `args.reward_weights` (None: ones); the weights are the reward set's, set on the trainer only
        self.reward_weights = rewards.weights  # (R,) float32, what TRL's own code reads
        check_trainable = getattr(policy, "check_trainable", None)  # optional family hook (policy.py)
        if check_trainable is not None:
            check_trainable(self.model)  # e.g. janus refuses LoRA adapters outside its language model
        self.policy.to(self.accelerator.device)
        if args.dynamic_sampling and not (hasattr(train_dataset, "__len__") and hasattr(train_dataset, "__getitem__")):
            raise ValueError(
                "dynamic_sampling draws refill prompts by index: it needs a map-style dataset (a "
                "datasets.Dataset or a list of rows), not an iterable one"
            )
        if args.keep_best and (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            raise KeepBestError(
                "keep_best is not supported under DeepSpeed or FSDP (the weights are sharded across "
                "processes); run without it and keep checkpoints (save_strategy: steps) to pick by eval_*"
            )
        if args.eval_every > 0:  # fixed prompts and seeds every eval_every steps (in_loop_eval.py)
            self.add_callback(InLoopEvaluation(self))
        self.guards = TrainingGuards(  # silent-failure guards (guards.py); a callback so resume restores them
            rewards.names,
            args.no_score_patience,
            args.zero_spread_patience,
            args.constant_reward_patience,
            args.zero_grad_norm_patience,
            self.accelerator.is_main_process,
        )
        self.add_callback(self.guards)

    # ----------------------------------------------------------------------------------------- rollouts
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        device = self.accelerator.device
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        prompts = [row["prompt"] for row in inputs]
        columns = {key: [row[key] for row in inputs] for key in inputs[0] if key != "prompt"}
        batch = self.policy.encode_prompts(prompts, device)

        start = time.perf_counter()
        with self._generation_model() as unwrapped_model:
            generators = self._rollout_generators(mode, len(prompts), device)  # per-image streams: see method
            rollout = self.policy.sample(unwrapped_model, batch, self.sampling, generators)
        sampled = time.perf_counter()
        images = self.policy.decode(rollout.actions)  # each rank decodes and scores its own rollouts
        decoded = time.perf_counter()
        rewards_local = self.image_rewards.score(prompts, images, columns).to(device)
        scored = time.perf_counter()
        if (
            mode == "train" and self.args.dynamic_sampling
        ):  # zero-spread groups resampled in place (dynamic_sampling.py)
            rows = RolloutRows(prompts, columns, rollout.actions, rollout.logprobs, images, rewards_local)
            for key, value in self._refill(rows).items():
                self._metrics[mode][key].append(value)
            prompts, columns, images, rewards_local = rows.prompts, rows.columns, rows.images, rows.rewards
            rollout = Rollout(rows.actions, rows.logprobs)
            batch = self.policy.encode_prompts(prompts, device)  # new prompts: padded afresh
            scored = time.perf_counter()  # timing/reward_seconds includes the refill rounds

        actions = rollout.actions
        completion_mask = torch.ones_like(actions, dtype=batch.attention_mask.dtype)
        prompt_completion_ids = torch.cat([batch.input_ids, actions], dim=1)
        attention_mask = torch.cat([batch.attention_mask, completion_mask], dim=1)
        logits_to_keep = actions.size(1)
        num_items_in_batch = self.accelerator.gather(completion_mask.sum()).sum()
        chunk = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size

        with torch.no_grad(), self._no_checkpointing():
            generate_every = self.args.steps_per_generation * self.num_iterations
            old_per_token_logps = None
            if self.args.gradient_accumulation_steps % generate_every != 0:
                old_per_token_logps = self._get_per_token_logps_and_entropies(
                    self.model, prompt_completion_ids, attention_mask, logits_to_keep, batch_size=chunk
                )[0]
            ref_per_token_logps = None
            if self.beta != 0.0:
                if self.ref_model is not None:
                    ref_per_token_logps = self._get_per_token_logps_and_entropies(
                        self.ref_model, prompt_completion_ids, attention_mask, logits_to_keep, batch_size=chunk
                    )[0]
                else:  # LoRA: the reference is the policy with its adapter disabled
                    peft_model = self.accelerator.unwrap_model(self.model)
                    with use_adapter(peft_model, adapter_name="ref" if "ref" in peft_model.peft_config else None):
                        ref_per_token_logps = self._get_per_token_logps_and_entropies(
                            self.model, prompt_completion_ids, attention_mask, logits_to_keep, batch_size=chunk
                        )[0]

        rewards_per_func = gather(rewards_local)  # (N_global, R): groups may span ranks
        result = group_advantages(
            rewards_per_func,
            self.reward_weights.to(device),
            num_generations,
            self.scale_rewards,
            self.multi_objective_aggregation,
            self.image_rewards.normalize.to(device),
        )
        if mode == "train":  # raises NoScoreError (a RewardError) when no reward scored any image
            guard_metrics = self.guards.check_rollouts(rewards_per_func, result.is_std_zero, self.state.global_step)
        else:
            guard_metrics = unscored_counts(rewards_per_func, self.image_rewards.names)
        for key, value in guard_metrics.items():
            self._metrics[mode][key].append(value)
        process_slice = slice(
            self.accelerator.process_index * len(prompts), (self.accelerator.process_index + 1) * len(prompts)
        )
        local_advantages = result.advantages[process_slice]
        train_advantages = local_advantages
        if mode == "train" and self.args.object_credit > 0:
            train_advantages = self._object_advantages(
                prompts, images, columns, local_advantages, num_generations, process_slice
            )

        metrics = self._metrics[mode]
        for index, reward in enumerate(self.image_rewards):
            metrics[f"rewards/{reward.name}/mean"].append(torch.nanmean(rewards_per_func[:, index]).item())
            metrics[f"rewards/{reward.name}/std"].append(nanstd(rewards_per_func[:, index]).item())
        for key, value in reward_metrics(result).items():  # `reward`: the weighted raw rewards, as TRL logs it
            metrics[key].append(value)
        for name, seconds in (("sample", sampled - start), ("decode", decoded - sampled), ("reward", scored - decoded)):
            metrics[f"timing/{name}_seconds"].append(seconds)
        metrics["rollout/images_per_second"].append(len(prompts) / max(sampled - start, 1e-9))
        monitors = rollout_monitors(
            images, num_generations, self.accelerator.gather, self.image_rewards.image_embedder()
        )  # a CLIP reward's embeddings, if any
        for key, value in monitors.items():  # within-group diversity (docs/troubleshooting.md)
            metrics[key].append(value)

        local_rewards = {name: rewards_local[:, i].tolist() for i, name in enumerate(self.image_rewards.names)}
        local_totals = result.rewards[process_slice].tolist()
        self._record_rollouts(images, prompts, local_rewards, local_totals, local_advantages.tolist())

        output = {
            "prompt_ids": batch.input_ids,
            "prompt_mask": batch.attention_mask,
            "completion_ids": actions,
            "completion_mask": completion_mask,
            "advantages": train_advantages,
            "num_items_in_batch": num_items_in_batch,
            "sampling_per_token_logps": rollout.logprobs,
        }
        if old_per_token_logps is not None:
            output["old_per_token_logps"] = old_per_token_logps
        if ref_per_token_logps is not None:
            output["ref_per_token_logps"] = ref_per_token_logps
        return output

    def _object_advantages(self, prompts, images, columns, advantages, num_generations, process_slice):
        """`(B, T)` advantages: each clause's group-centred credit, scaled as `scale_rewards` scales the image
        advantages (per group under normalize_then_sum, which z-scores each reward per group), inside its boxes
        (object_credit.py)."""
        source = self.image_rewards.object_credit_source()
        objects = source.fn.object_credits(prompts, images, **columns)
        credits = gather_object([[item.credit for item in items] for items in objects])  # groups may span ranks
        scale = self.scale_rewards if self.multi_objective_aggregation == "sum_then_normalize" else "group"
        per_clause = clause_advantages(credits, num_generations, scale)[process_slice]  # scaled as the images
        token_advantages, box_share = object_token_advantages(
            advantages,
            objects,
            per_clause,
            self.policy.image_size,
            self.policy.pool_to_actions,
            self.args.object_credit,
        )
        self._metrics["train"]["object_credit/box_share"].append(box_share)
        return token_advantages

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs.update(self.guards.check_log(logs, self.state.global_step))  # grad_norm == 0 streak (guards.py)
        super().log(logs, start_time)

    def _rollout_generators(self, mode: str, count: int, device: torch.device) -> SampleGenerators:
        """One random stream per image, seeded from (seed, mode, generation, global sample index).

        The global index of local row i is `process_index * count + i` (TRL's `RepeatSampler` batches sharded
        by accelerate, the order `gather` uses), and a training generation is numbered by its micro-step
        `global_step * gradient_accumulation_steps + _step % gradient_accumulation_steps`, which a resumed run
        recomputes: so 1 process x batch 2B and 2 processes x batch B sample the same images."""
        if mode == "train":
            generation = self._train_generation()
        else:
            generation, self._eval_generations = self._eval_generations, self._eval_generations + 1
        first = self.accelerator.process_index * count
        return SampleGenerators.for_samples(self.args.seed, mode, generation, range(first, first + count), device)

    def _train_generation(self) -> int:
        """The number of the current training rollout batch: its micro-step, which a resumed run recomputes."""
        accumulation = self.args.gradient_accumulation_steps
        return self.state.global_step * accumulation + self._step % accumulation

    @contextlib.contextmanager
    def _generation_model(self):
        """The model to sample from: no grad, no checkpointing, unwrapped (ZeRO-3 weights gathered), autocast."""
        with (
            torch.no_grad(),
            self._no_checkpointing(),
            unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation
            ) as unwrapped_model,
            unsharded_root(unwrapped_model),  # FSDP2: the samplers bypass the root's forward (rlhf_img/fsdp.py)
            self.accelerator.autocast(),
        ):
            yield unwrapped_model

    def _refill(self, rows: RolloutRows) -> dict[str, float]:
        """`dynamic_sampling`: refill this batch's zero-spread groups in place; the metrics to log."""
        device = self.accelerator.device

        def sample(prompts, generators):
            with self._generation_model() as unwrapped_model:
                rollout = self.policy.sample(
                    unwrapped_model, self.policy.encode_prompts(prompts, device), self.sampling, generators
                )
            return rollout.actions, rollout.logprobs

        return refill_zero_spread_groups(
            rows,
            self.train_dataset,
            sample,
            self.image_rewards.score,
            self.policy.decode,
            self.reward_weights.to(device),
            self.num_generations,
            self.args.max_resample_rounds,
            self.args.seed,
            self._train_generation(),
            self.accelerator.process_index,
        )

    def _no_checkpointing(self):
        """Gradient checkpointing off for no-grad passes (TRL's helper), a no-op when it is not on."""
        if not self.args.activation_checkpointing:
            return contextlib.nullcontext()
        return disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs)

    def _record_rollouts(self, images, prompts, rewards, totals, advantages) -> None:
        step = self.state.global_step
        if self.args.save_rollouts:
            save_rollouts(
                os.path.join(self.args.output_dir, "rollouts"),
                step,
                images,
                prompts,
                rewards,
                totals,
                advantages,
                rank=self.accelerator.process_index,
            )
        every = self.args.log_images_every
        if (
            every > 0
            and step % every == 0
            and step != self._last_logged_image_step
            and self.accelerator.is_main_process
            and self.args.report_to
            and self.args.report_to != ["none"]
        ):
            self._last_logged_image_step = step
            count = min(self.args.num_logged_images, len(prompts))
            captions = [f"{prompts[i]} | r={totals[i]:.3g}" for i in range(count)]
            grid = captioned_grid(images[:count], captions)
            log_image(self, "rollouts/grid", grid, " || ".join(captions), step)

    # ------------------------------------------------------------------------------------ log-probs
    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **unused_multimodal_inputs,
    ):
        """Per-action log-probs `(B, T)` through the policy; `input_ids` = prompt ids + actions (TRL's layout)."""
        batch_size = batch_size or input_ids.size(0)
        all_logps, all_entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids = input_ids[start : start + batch_size]
            mask = attention_mask[start : start + batch_size]
            prompts = PromptBatch(ids[:, :-logits_to_keep], mask[:, :-logits_to_keep])
            with self.accelerator.autocast():
                logps, entropies = self.policy.logprobs(model, prompts, ids[:, -logits_to_keep:], self.sampling)
            all_logps.append(logps)
            all_entropies.append(entropies)
        logps = torch.cat(all_logps)
        if torch.is_grad_enabled():
            self._last_policy_logps = logps.detach()
        return logps, (torch.cat(all_entropies) if compute_entropy else None), None

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        mode = "train" if self.model.training else "eval"
        sampling_logps = inputs.get("sampling_per_token_logps")
        first_iteration = (
            self._step % (self.args.steps_per_generation * self.num_iterations) < self.args.steps_per_generation
        )
        if mode == "train" and first_iteration and sampling_logps is not None and self._last_policy_logps is not None:
            # rollout-vs-training drift: ~0 when the sampler and the loss score the same distribution
            delta = (self._last_policy_logps - sampling_logps).abs()
            self._metrics[mode]["sampling/sampling_logp_difference/mean"].append(
                self.accelerator.gather(delta.mean()).mean().item()
            )
            self._metrics[mode]["sampling/sampling_logp_difference/max"].append(
                self.accelerator.gather(delta.max()).max().item()
            )
        return loss

    # ---------------------------------------------------------------------------------------- saving
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            self._save_family_files(output_dir or self.args.output_dir)

    def _save_family_files(self, output_dir: str) -> None:
        """The family's own files next to the saved model or adapter, told which module was saved (the one trained:
        DDP / FSDP wrappers off, peft's kept), so a family writes an adapter's files under LoRA."""
        self.policy.save_pretrained(output_dir, model=self.accelerator.unwrap_model(self.model))

    def _save_checkpoint(self, model, trial) -> None:
        """TRL's checkpoint save, then a completion marker: resuming never picks a half-written folder."""
        save_marked_checkpoint(self, super()._save_checkpoint, model, trial)

    def create_model_card(self, model_name: str | None = None, tags=None, **unused) -> None:
        """rlhf-img's card (model_card.py) instead of TRL's text-model card: TRL writes it at each checkpoint save
        and transformers' `push_to_hub` right before uploading the folder."""
        write_model_card(self, "grpo", tags=[tags] if isinstance(tags, str) else tags)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`resume_from_checkpoint`: a checkpoint folder, or True / 'true' for the latest complete one."""
        return super().train(
            resume_from_checkpoint=resolve_resume(resume_from_checkpoint, self.args.output_dir), **kwargs
        )
