"""The policy interface: the only thing the trainer knows about a model family.

A family turns prompts into token ids, samples a group of images as discrete actions, scores actions
teacher-forced, and decodes actions to pixels. Actions are a flat `(B, T)` integer tensor whatever the
family: image-code indices for next-token families, bits for next-scale bitwise families.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:  # sampling imports this module
    from .sampling.generators import SampleGenerators

CFG_MODES = ("none", "sample_only", "guided", "guided_detached_uncond")
SAMPLERS = ("auto", "plain", "shared", "static", "compiled")


@dataclass(frozen=True)
class Sampling:
    """How actions are drawn and which distribution their log-probs are taken under.

    `cfg_mode` (see docs/concepts/cfg-modes.md):
      - `none`: no guidance; sample and score the conditional distribution.
      - `sample_only`: sample from the guided distribution, score the conditional one.
      - `guided`: sample and score the guided distribution, gradients through both branches.
      - `guided_detached_uncond`: as `guided`, with the unconditional branch detached.
    Guidance is applied on logits: `uncond + cfg_scale * (cond - uncond)`, then temperature, then
    top-k / top-p. Log-probs are always those of the temperature-scaled, top-k/top-p-truncated
    distribution over the scored logits (the taken action is always kept in the support).
    `logprob_chunk_size`: teacher-forced scoring computes logits for this many positions at a time (with
    per-chunk activation checkpointing), so its memory grows with the chunk, not with T; 0: all at once.
    `sampler`: how next-token families run their KV-cached loop (docs/scaling.md, "Fast sampling"); every choice draws
    the same tokens for a seed: `plain` (the reference: one prefill per row, growing cache), `shared` (each
    distinct prompt prefilled once, its cache shared by the group), `static` (shared + a preallocated static
    cache), `compiled` (static + a `torch.compile`d decode step, CUDA graphs on GPU; eager if compile fails),
    `auto` (`compiled` on CUDA, `shared` elsewhere).
    """

    cfg_mode: str = "none"
    cfg_scale: float = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    logprob_chunk_size: int = 512
    sampler: str = "auto"

    def __post_init__(self) -> None:
        if self.cfg_mode not in CFG_MODES:
            raise ValueError(f"cfg_mode must be one of {CFG_MODES}, got {self.cfg_mode!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.logprob_chunk_size < 0:
            raise ValueError(f"logprob_chunk_size must be >= 0 (0: unchunked), got {self.logprob_chunk_size}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")

    @property
    def uses_uncond_when_sampling(self) -> bool:
        return self.cfg_mode != "none" and self.cfg_scale != 1.0

    @property
    def uses_uncond_when_scoring(self) -> bool:
        return self.cfg_mode in ("guided", "guided_detached_uncond") and self.cfg_scale != 1.0


@dataclass
class PromptBatch:
    """Left-padded conditional prompt ids `(B, L)` and their attention mask `(B, L)`."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor


@dataclass
class Rollout:
    """Sampled actions `(B, T)` and their log-probs `(B, T)` under the distribution they were sampled from."""

    actions: torch.Tensor
    logprobs: torch.Tensor


@runtime_checkable
class Policy(Protocol):
    """What every model family provides; a new family can be written from this protocol alone.

    `rlhf_img/families/causal_vq/` is the reference implementation. The trainer calls `encode_prompts`,
    `sample` (under `torch.no_grad`, on the unwrapped model), `decode`, `logprobs` (with gradients, on the
    wrapped model) and `save_pretrained`; the upstream stages (`rlhf_img/upstream/`) call `encode_images` and
    `logprobs`; evaluation calls `encode_prompts`, `sample` with a seeded
    `generator`, `decode` and `to`. The trainer sets no attribute of a policy: the module it trains (peft-wrapped
    under LoRA) is its own `model`, passed to `sample` / `logprobs`.

    Optional hook: `check_trainable(model)`, if a family defines it, is called once by the trainer with the
    module it will train (after peft wrapping) and raises `ValueError` to refuse it (janus: LoRA adapters
    outside its language model). `pool_to_actions(maps)`, if defined, turns pixel maps `(B, H, W)` at
    `image_size` into per-action values `(B, T)` (each action's mean over the pixels it covers); `object_credit`
    needs it (every built-in family; infinity pools each scale's token grid). `loading_context()`, if defined,
    returns a context manager the trainer holds while TRL builds the trainer, which loads a full fine-tuning run's
    KL reference with transformers itself (emu3: transformers' VQ initialisation under ZeRO-3).
    """

    model: nn.Module  # the trainable part; peft wraps it, TRL optimises it
    processing_class: object  # the text tokenizer TRL keeps for padding and saving
    num_actions: int  # T: actions per image

    def encode_prompts(self, prompts: list[str], device: torch.device) -> PromptBatch:
        """Conditional prompt ids; the unconditional prompt is the family's own constant."""
        ...

    def sample(
        self,
        model: nn.Module,
        prompts: PromptBatch,
        sampling: Sampling,
        generator: torch.Generator | SampleGenerators | None = None,
    ) -> Rollout:
        """Draw one image's actions per prompt row with a KV cache (CFG rows batched with the conditional rows).

        All randomness comes from `generator` (on the prompts' device) when given, so a seed fixes the images: a
        `torch.Generator`, or `rlhf_img.sampling.SampleGenerators` (one stream per row; the trainer passes these, so
        an image does not depend on its batch). Pass it to `sample_actions` with rows grouped by sample."""
        ...

    def logprobs(
        self, model: nn.Module, prompts: PromptBatch, actions: torch.Tensor, sampling: Sampling
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced per-action log-probs and entropies, both `(B, T)`, under `sampling.cfg_mode`."""
        ...

    def decode(self, actions: torch.Tensor) -> torch.Tensor:
        """Pixels `(B, 3, H, W)`, float in [0, 1]."""
        ...

    @property
    def image_size(self) -> tuple[int, int]:
        """`(H, W)` of the images `decode` returns and `encode_images` takes."""
        ...

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels `(B, 3, H, W)` in [0, 1] at `image_size` -> the actions `(B, T)` the model trains on (image codes,
        or Infinity's bits per scale): what the upstream stages (encode, SFT / pretraining, DPO on given images)
        teacher-force. Runs the frozen visual tokenizer's encoder under `no_grad`; long integers on its device."""
        ...

    def to(self, device: torch.device | str) -> "Policy":
        """Move the frozen parts (visual tokenizer, text encoder) to `device`; returns self. The trainable
        `model` is placed by its owner (accelerate in training, `rlhf_img.eval.load_for_eval` in evaluation)."""
        ...

    def save_pretrained(self, output_dir: str, model: nn.Module | None = None) -> None:
        """Write the non-trainable parts (visual tokenizer, family config file) next to a saved model, so that
        `output_dir` loads as a checkpoint of the same family (`load_policy(output_dir)` finds it). `model`: the
        module that was saved there (default `self.model`); the trainer passes the one it trained, peft-wrapped
        under LoRA, which is how a family tells an adapter from a full model."""
        ...
