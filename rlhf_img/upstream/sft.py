"""SFT and pretraining for every family: teacher-forced log-likelihood of pre-tokenized actions given the caption.

    rlhf-img encode ENCODE.yaml        # image/caption pairs -> the family's actions, in Arrow shards
    rlhf-img sft SFT.yaml              # this stage, reading those shards memory-mapped

One stage for every family, over the policy interface: a batch of (caption, actions) rows is scored by the
family's own teacher-forced scorer (`upstream.likelihood.action_logprobs`, the scorer GRPO uses) and the loss is
the mean negative log-likelihood per action. A share `caption_dropout` of the rows is scored under the family's
unconditional prompt instead (CFG's null prompt: empty template, pad tokens or a learned null embedding, whatever
the family samples with), so the model learns the distribution classifier-free guidance subtracts.

Pretraining from scratch is the same stage with `from_scratch: true`: the trainable model's weights are re-drawn
with its own initialiser (transformers' `_init_weights`) before the first step, the frozen parts (visual
tokenizer, text encoder) kept as loaded. Training is transformers' `Trainer` (LoRA through peft, DDP / DeepSpeed
through accelerate, checkpoints, resume, dashboards); the output folder loads as the family and trains with
`rlhf-img train`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainingArguments

from ..model_card import write_model_card
from ..policy import Policy
from .likelihood import action_logprobs


@dataclass
class ActionSFTConfig(TrainingArguments):
    """transformers `TrainingArguments` plus the pre-tokenized data and the stage's own options."""

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "A folder written by `rlhf-img encode` (encode.json + shards/): the (caption, actions) rows "
            "to train on, read memory-mapped. Its family and image size must be the model's."
        },
    )
    caption_dropout: float = field(
        default=0.1,
        metadata={
            "help": "Share of rows scored under the family's unconditional prompt (CFG's null "
            "prompt) instead of their caption, so that guidance has an unconditional model."
        },
    )
    from_scratch: bool = field(
        default=False,
        metadata={
            "help": "Pretraining: re-draw the trainable model's weights with its own initialiser "
            "before training (the architecture is the checkpoint's config; the visual tokenizer "
            "and text encoder stay as loaded)."
        },
    )
    max_examples: int | None = field(default=None, metadata={"help": "Train on the first N rows only."})
    logprob_chunk_size: int = field(
        default=512,
        metadata={
            "help": "Positions whose logits the scorer computes at a time (per-chunk activation "
            "checkpointing: memory grows with the chunk, not with the image's length); 0: all "
            "at once, faster when (batch x actions x codes) logits fit."
        },
    )
    # defaults for this stage (transformers' own are for text models on GPUs)
    output_dir: str = field(default="runs/sft", metadata={"help": "Where the trained family checkpoint is written."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator reads the caption and actions columns itself."}
    )
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Dashboards (wandb, tensorboard)."})
    save_strategy: str = field(
        default="no", metadata={"help": "Checkpointing during SFT ('no' keeps only the result)."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if self.logprob_chunk_size < 0:
            raise ValueError(f"logprob_chunk_size must be >= 0 (0: unchunked), got {self.logprob_chunk_size}")


def collate_actions(rows: Sequence[dict]) -> dict:
    """Rows of an encoded dataset -> `captions` (list) and `actions` `(B, T)` long."""
    return {
        "captions": [str(row["caption"]) for row in rows],
        "actions": torch.tensor([row["actions"] for row in rows], dtype=torch.long),
    }


def reinitialize(model: nn.Module) -> int:
    """Re-draw, with the model's own `_init_weights`, every module whose parameters (its own and its children's)
    all train; returns how many parameters were re-drawn. Frozen parts a family keeps inside its model (Janus' VQ
    and vision encoder) keep their weights.

    Children first, then their parents, as `nn.Module.apply` and transformers' own initialisation go, so that an
    initialiser's model-level step (LlamaGen zeroes its output head when called on the model itself) runs last.
    transformers 5 marks loaded tensors `_is_hf_initialized` and its initialisers skip them: the marks of the
    re-drawn tensors are removed first, or nothing would change."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, PreTrainedModel):
        raise ValueError(f"from_scratch: {type(base).__name__} is not a transformers model with `_init_weights`")
    trainable = [
        module
        for module in base.modules()
        if (parameters := list(module.parameters())) and all(p.requires_grad for p in parameters)
    ]
    with torch.no_grad():
        for module in trainable:
            for parameter in module.parameters():
                parameter.__dict__.pop("_is_hf_initialized", None)
        for module in reversed(trainable):  # `modules()` is parents first: reversed, every child precedes its parent
            base._init_weights(module)
    redrawn = {id(p): p.numel() for module in trainable for p in module.parameters(recurse=False)}
    return sum(redrawn.values())


class ActionSFTTrainer(Trainer):
    """transformers' `Trainer` whose loss is the family scorer's negative log-likelihood of the actions."""

    def __init__(
        self, policy: Policy, args: ActionSFTConfig, train_dataset, model: nn.Module | None = None, **kwargs
    ) -> None:
        """`model`: what to train, default `policy.model` (pass the peft-wrapped model under LoRA)."""
        self.policy = policy
        super().__init__(
            model=policy.model if model is None else model,
            args=args,
            train_dataset=train_dataset,
            data_collator=collate_actions,
            processing_class=policy.processing_class,
            **kwargs,
        )
        self.policy.to(self.args.device)
        # caption dropout draws from its own stream (seeded per process), never from the global RNG; a resumed run
        # starts that stream again (which rows drop changes, their share does not)
        self._dropout_generator = torch.Generator().manual_seed(args.seed * 1_000_003 + args.process_index)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        captions, actions = inputs["captions"], inputs["actions"]
        conditional = torch.rand(len(captions), generator=self._dropout_generator) >= self.args.caption_dropout
        prompts = self.policy.encode_prompts(captions, actions.device)
        logps = action_logprobs(
            self.policy,
            model,
            prompts,
            actions,
            conditional.to(actions.device),
            chunk_size=self.args.logprob_chunk_size,
        )
        loss = -logps.mean()
        return (loss, {"logps": logps}) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:  # the family's own files next to the model or adapter (GRPO's trainer does the same)
            self.policy.save_pretrained(
                output_dir or self.args.output_dir, model=self.accelerator.unwrap_model(self.model)
            )

    def create_model_card(self, model_name: str | None = None, tags=None, **unused) -> None:
        """rlhf-img's card (model_card.py) instead of transformers' text-model card, also on `push_to_hub`."""
        write_model_card(self, "sft", tags=[tags] if isinstance(tags, str) else tags)


def check_encoded_matches(info, policy: Policy, family: str, path: str) -> None:
    """The shards were encoded by this family at this image size (a mismatch would train on foreign codes)."""
    if info.family != family:
        raise ValueError(f"dataset: {path} was encoded for model family {info.family!r}, not {family!r}")
    if tuple(info.image_size) != tuple(policy.image_size) or info.num_actions != policy.num_actions:
        raise ValueError(
            f"dataset: {path} holds {info.num_actions} actions per image at {tuple(info.image_size)}, "
            f"the model takes {policy.num_actions} at {tuple(policy.image_size)}; re-encode it "
            "for this model (`rlhf-img encode`)"
        )


def run_action_sft(args: ActionSFTConfig, model_args) -> str:
    """Train and write the family checkpoint to `args.output_dir`; returns it."""
    from trl import get_peft_config

    from ..families import detect_family, load_policy
    from .shards import EncodedInfo, open_encoded

    info = EncodedInfo.read(args.dataset)
    dataset = open_encoded(args.dataset)
    policy = load_policy(
        model_args.model_name_or_path,
        model_args.model_family,
        visual_tokenizer=model_args.visual_tokenizer,
        dtype=model_args.dtype,
        family_config=model_args.family_config,
    )
    family = model_args.model_family or detect_family(model_args.model_name_or_path)
    check_encoded_matches(info, policy, family, args.dataset)
    if args.max_examples is not None:
        dataset = dataset.select(range(min(args.max_examples, len(dataset))))
    if args.from_scratch:
        reinitialize(policy.model)
    model, peft_config = policy.model, get_peft_config(model_args)
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
        check_trainable = getattr(policy, "check_trainable", None)  # optional family hook (policy.py)
        if check_trainable is not None:
            check_trainable(model)
    trainer = ActionSFTTrainer(policy, args, dataset, model=model)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_state()  # first, so that push_to_hub (in save_model) uploads trainer_state.json too
    trainer.save_model(args.output_dir)
    trainer.create_model_card()  # README.md: rlhf-img's model card (model_card.py), main process only
    return os.path.abspath(args.output_dir)
