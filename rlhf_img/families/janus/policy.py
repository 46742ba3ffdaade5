"""The `janus` policy: Janus-Pro through transformers' own `JanusForConditionalGeneration`.

Prompts are Janus' chat format plus `<begin_of_image>` (what `JanusProcessor(..., generation_mode="image")`
builds), left-padded; the unconditional prompt is derived per row (see `adapter.py`). The trainable `model` is
the whole `JanusForConditionalGeneration` with only its language model trainable: the understanding tower
(`vision_model`, `aligner`), the VQ and the image-generation embeddings, aligner and head stay frozen, as in
T2I-R1. LoRA adapters must sit in the language model (`lora_target_modules`: see docs/families/janus.md).
"""

from __future__ import annotations

import torch
from torch import nn

from ...checkpoints import CheckpointError
from ...policy import PromptBatch
from ...sampling import NextTokenPolicy, unwrap_causal_lm
from ..image_checks import check_image_size, pool_to_raster
from ..llamagen.vq import quantize_images
from ..shared_loading import gathered
from .adapter import JanusAdapter, unconditional_ids
from .configuration import JanusFamilyConfig


def lora_outside_language_model(model: nn.Module) -> list[str]:
    """Names of the modules carrying a peft adapter outside `model.language_model` (should be none)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, BaseTunerLayer) and ".language_model." not in f".{name}."
    ]


class JanusPolicy(NextTokenPolicy):
    """The `janus` implementation of the policy interface (see `rlhf_img/policy.py`): prompts, frozen parts and
    decoding are its own; sampling and scoring are the engine's, through `JanusAdapter`."""

    def __init__(self, model: nn.Module, processor, config: JanusFamilyConfig) -> None:
        tokenizer = processor.tokenizer
        self.processing_class, self.config = processor, config
        self.bos_id = tokenizer.bos_token_id
        self.boi_id = tokenizer.convert_tokens_to_ids(tokenizer.boi_token)
        # generate() pads the unconditional prompt with the generation config's pad token (Janus-Pro: <｜▁pad▁｜>)
        pad = model.generation_config.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.pad_token_id
        if self.bos_id is None or self.pad_id is None:
            raise CheckpointError(
                "janus: the tokenizer defines no BOS or pad token (needed for the unconditional prompt)"
            )
        self.adapter = JanusAdapter(bos_id=self.bos_id, boi_id=self.boi_id, pad_id=self.pad_id)
        vq = model.config.vq_config
        self.grid = vq.num_patches
        self.num_actions = vq.num_patches**2
        self.code_count = vq.num_embeddings
        side = self.grid * 2 ** (len(vq.channel_multiplier) - 1)  # one 2x upsampling between resolutions
        self._image_size = (side, side)
        tokens = model.config.vision_config.num_image_tokens
        if tokens != self.num_actions:
            raise CheckpointError(
                f"janus: vision_config.num_image_tokens {tokens} != {self.grid}x{self.grid}, the VQ grid"
            )
        # only the language model trains (T2I-R1 froze vision_model, aligner and every gen_* module)
        model.requires_grad_(False)
        model.model.language_model.requires_grad_(True)
        self.model = model

    def check_trainable(self, model: nn.Module) -> None:
        """The trainer's hook, given the module it will train (peft-wrapped under LoRA): adapters outside the
        language model are refused."""
        if hasattr(model, "peft_config"):
            outside = lora_outside_language_model(model)
            if outside:
                raise ValueError(
                    f"janus: LoRA adapters on {len(outside)} module(s) outside the language model ({outside[:3]} ...); "
                    "the understanding tower and image head stay frozen: list the language model's layers in "
                    "lora_target_modules (see docs/families/janus.md), not all-linear"
                )

    @property
    def image_size(self) -> tuple[int, int]:
        return self._image_size

    def encode_prompts(self, prompts: list[str], device: torch.device | str = "cpu") -> PromptBatch:
        if self.config.prompt_template is None:
            texts = [
                self.processing_class.apply_chat_template(
                    [{"role": "user", "content": [{"type": "text", "text": prompt}]}], add_generation_prompt=True
                )
                for prompt in prompts
            ]
        else:
            texts = [self.config.prompt_template.format(prompt=prompt) for prompt in prompts]
        encoded = self.processing_class(
            text=texts, generation_mode="image", padding=True, padding_side="left", return_tensors="pt"
        )
        return PromptBatch(encoded["input_ids"].to(device), encoded["attention_mask"].to(device))

    def unconditional_ids(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Janus' unconditional prompt for `prompt_ids` `(B, L)` (BOS and `<begin_of_image>` kept, the rest pad)."""
        return unconditional_ids(prompt_ids, self.bos_id, self.boi_id, self.pad_id)

    def pool_to_actions(self, maps: torch.Tensor) -> torch.Tensor:
        """Pixel maps `(B, H, W)` -> `(B, T)`: each code's mean over its patch (for `object_credit`)."""
        return pool_to_raster(maps, (self.grid, self.grid), self.image_size, "janus")

    @torch.no_grad()
    def decode(self, actions: torch.Tensor) -> torch.Tensor:
        """Codes `(B, T)` -> pixels `(B, 3, H, W)` in [0, 1] through the model's VQ (Janus: `(x + 1) / 2`, clipped)."""
        janus = unwrap_causal_lm(self.model)
        device = janus.model.generation_embeddings.weight.device
        with gathered(janus.model.vqmodel):  # ZeRO-3: the VQ is part of the partitioned model
            pixels = janus.decode_image_tokens(actions.to(device))  # (B, H, W, 3), about [-1, 1]
        return ((pixels.float().permute(0, 3, 1, 2) + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels `(B, 3, H, W)` in [0, 1] -> codes `(B, T)`, raster order, through the model's VQ.

        Janus' VQ is LlamaGen's VQ-16 architecture (`codebook_l2_norm=True`), so LlamaGen's encoding applies as is:
        pixels mapped to [-1, 1] (as Janus' image processor does, `decode`'s inverse), the VQ's own encoder, then
        the L2-normalised nearest-code search that transformers' `JanusVQVAE.encode` leaves out (see
        `llamagen.vq.quantize_images`)."""
        check_image_size(images, self.image_size, "janus")
        vq = unwrap_causal_lm(self.model).model.vqmodel
        with gathered(vq):  # ZeRO-3: the VQ is part of the partitioned model
            return quantize_images(vq, images).codes

    def to(self, device: torch.device | str) -> "JanusPolicy":
        """Nothing to move: the VQ lives inside `model`, which its owner places."""
        return self

    def save_pretrained(self, output_dir: str, model: nn.Module | None = None) -> None:
        """Write `janus.json` (the trainer has saved the model or adapter and the processor)."""
        self.config.save(output_dir)
