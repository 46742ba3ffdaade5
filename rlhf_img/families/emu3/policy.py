"""The `emu3` policy: Emu3-Gen through transformers' own `Emu3ForConditionalGeneration` (no remote code).

Prompts are BAAI's generation mode ('G'), which transformers' `Emu3Processor(..., return_for_image_generation=True)`
also builds: BOS `<|extra_203|>` + caption + `<|image start|>` + `"{h}*{w}"` + `<|image token|>`, left-padded, with
`h x w` from the family config's image area and ratio. The actions are the `h * w` visual codes, raster order;
the end-of-line tokens between rows are forced by the adapter (`adapter.py`). The trainable `model` is the whole
`Emu3ForConditionalGeneration` with its text model and LM head trainable; the VQ (`model.model.vqmodel`) is frozen,
decodes actions to pixels and encodes given images to actions.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ...checkpoints import CheckpointError
from ...policy import PromptBatch
from ...sampling import NextTokenPolicy, unwrap_causal_lm
from ..image_checks import check_image_size, pool_to_raster
from ..shared_loading import gathered
from .adapter import Emu3Adapter
from .configuration import Emu3FamilyConfig, generation_grid
from .vq_init import loaded_vq_modules_left_alone


def lora_outside_text_model(model: nn.Module) -> list[str]:
    """Names of the modules carrying a peft adapter outside the text model and the LM head (should be none)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, BaseTunerLayer) and ".text_model." not in f".{name}." and not name.endswith("lm_head")
    ]


def visual_token_block(model: nn.Module) -> tuple[int, int]:
    """`(offset, count)`: visual code `c` is token `offset + c`, from transformers' own vocabulary mapping of the
    checkpoint (`config.vocabulary_map`, `<|visual token%06d|>`). The head is sliced to that block, so it must be
    one contiguous run of ids in code order (as in the released tokenizer, and as BAAI's prefix constraint assumes:
    `range(first visual id, last + 1)`); anything else is refused in one line."""
    count = model.config.vq_config.codebook_size
    code_to_token = model.vocabulary_mapping.img2bpe  # {code: token id}
    if sorted(code_to_token) != list(range(count)):
        raise CheckpointError(
            f"emu3: config.vocabulary_map holds {len(code_to_token)} visual tokens; the VQ has {count} codes"
        )
    offset = code_to_token[0]
    if any(code_to_token[code] != offset + code for code in range(count)):
        raise CheckpointError(
            "emu3: the visual tokens of config.vocabulary_map are not one contiguous block of ids in "
            "code order; this family slices the LM head to that block"
        )
    return offset, count


class Emu3Policy(NextTokenPolicy):
    """The `emu3` implementation of the policy interface (`rlhf_img/policy.py`): prompts, frozen parts and
    decoding are its own; sampling and scoring are the engine's, through `Emu3Adapter`."""

    loading_context = staticmethod(loaded_vq_modules_left_alone)  # TRL's KL reference loads through it too

    def __init__(self, model: nn.Module, processor, config: Emu3FamilyConfig) -> None:
        self.processing_class, self.config = processor, config
        self.tokenizer = tokenizer = processor.tokenizer
        if tokenizer.bos_token is None or tokenizer.pad_token_id is None:
            raise CheckpointError(
                "emu3: the tokenizer defines no BOS or pad token (Emu3's: <|extra_203|>, <|endoftext|>)"
            )
        end_of_line = model.vocabulary_mapping.eol_token_id
        if end_of_line is None:
            raise CheckpointError("emu3: config.vocabulary_map has no end-of-line token <|extra_200|>")
        self.visual_offset, self.code_count = visual_token_block(model)
        vq = model.model.vqmodel
        self.spatial_factor = vq.spatial_scale_factor  # 8 for the released VQ
        self.grid = generation_grid(config.image_area, config.ratio, self.spatial_factor)  # (h, w)
        height, width = self.grid
        if height < 1 or width < 1:
            raise CheckpointError(
                f"emu3: image_area {config.image_area} at ratio {config.ratio} is under one "
                f"{self.spatial_factor}x{self.spatial_factor} code"
            )
        self.num_actions = height * width
        self._image_size = (height * self.spatial_factor, width * self.spatial_factor)
        self.header = f"{tokenizer.boi_token}{height}*{width}{tokenizer.image_wrapper_token}"
        unconditional = self._tokenize([tokenizer.bos_token + config.negative_prompt + self.header])
        limit = model.config.text_config.max_position_embeddings
        length = unconditional.input_ids.size(1) + height * (width + 1) + 3
        if length > limit:
            raise CheckpointError(
                f"emu3: image_area {config.image_area} needs {height}x{width + 1} image tokens, "
                f"{length} positions with the negative prompt; the model has {limit}"
            )
        self.adapter = Emu3Adapter(
            visual_offset=self.visual_offset,
            code_count=self.code_count,
            end_of_line_id=end_of_line,
            width=width,
            pad_id=tokenizer.pad_token_id,
            unconditional_ids=tuple(unconditional.input_ids[0].tolist()),
        )
        image_processor = processor.image_processor
        self.pixel_mean = torch.tensor(image_processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.pixel_std = torch.tensor(image_processor.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        set_attention_dropout(model, config.attention_dropout)
        # the text model and its LM head train; the VQ stays frozen (it is the image tokenizer)
        model.requires_grad_(False)
        model.model.text_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
        self.model = model

    def check_trainable(self, model: nn.Module) -> None:
        """The trainers' hook, given the module they will train (peft-wrapped under LoRA): adapters outside the text
        model and the LM head (the VQ has `q_proj` / `k_proj` / `v_proj` layers too) are refused."""
        if hasattr(model, "peft_config"):
            outside = lora_outside_text_model(model)
            if outside:
                raise ValueError(
                    f"emu3: LoRA adapters on {len(outside)} module(s) outside the text model ({outside[:3]} ...); the "
                    "VQ stays frozen: list the text model's layers in lora_target_modules (see docs/families/emu3.md)"
                )

    @property
    def image_size(self) -> tuple[int, int]:
        return self._image_size

    def _tokenize(self, texts: list[str]):
        # the processor tokenises its text the same way (the BOS is in the text; the tokenizer adds nothing)
        return self.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")

    def encode_prompts(self, prompts: list[str], device: torch.device | str = "cpu") -> PromptBatch:
        texts = [
            self.tokenizer.bos_token + self.config.prompt_template.format(prompt=prompt) + self.header
            for prompt in prompts
        ]
        encoded = self._tokenize(texts)
        return PromptBatch(encoded["input_ids"].to(device), encoded["attention_mask"].to(device))

    def unconditional_prompt(self) -> PromptBatch:
        """CFG's unconditional row `(1, L)`: BOS + the negative prompt + the image header (BAAI's choice)."""
        ids = torch.tensor([self.adapter.unconditional_ids])
        return PromptBatch(ids, torch.ones_like(ids))

    def image_tokens(self, actions: torch.Tensor) -> torch.Tensor:
        """What Emu3 writes for `actions` `(B, h * w)`: `(B, h * (w + 1) + 3)` ids, each row closed by end-of-line,
        then end-of-frame, end-of-image, EOS (the layout `decode_image_tokens` takes)."""
        tail = [self.tokenizer.eof_token_id, self.tokenizer.eoi_token_id, self.tokenizer.eos_token_id]
        body = self.adapter.image_tokens(actions)
        return torch.cat([body, torch.tensor(tail, device=body.device).expand(body.size(0), -1)], dim=1)

    def _vq(self) -> nn.Module:
        return unwrap_causal_lm(self.model).model.vqmodel

    def pool_to_actions(self, maps: torch.Tensor) -> torch.Tensor:
        """Pixel maps `(B, H, W)` -> `(B, h * w)`: each code's mean over its patch (the end-of-line tokens are not
        actions), for `object_credit`."""
        return pool_to_raster(maps, self.grid, self.image_size, "emu3")

    @torch.no_grad()
    def decode(self, actions: torch.Tensor) -> torch.Tensor:
        """Codes `(B, h * w)` -> pixels `(B, 3, H, W)` in [0, 1]: the VQ's decoder (its first frame, as
        `decode_image_tokens`; `decode_batch_size` images per call), un-normalised with the image processor's mean
        and std, clipped."""
        vq = self._vq()
        device = vq.quantize.embedding.weight.device
        codes = actions.to(device).long().view(-1, *self.grid)  # (B, h, w)
        chunk = self.config.decode_batch_size or codes.size(0)
        with gathered(vq), evaluating(vq):  # ZeRO-3: the VQ is part of the partitioned model
            pixels = torch.cat([vq.decode(part).float() for part in codes.split(chunk)])  # (B, 3, H, W), normalised
        return (pixels * self.pixel_std.to(device) + self.pixel_mean.to(device)).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels `(B, 3, H, W)` in [0, 1] at `image_size` -> codes `(B, h * w)`, raster order: the image processor's
        normalisation (`(x - mean) / std`), then transformers' `Emu3VQVAE.encode` (the frame repeated over the VQ's
        temporal window, as it does for an image; nearest code)."""
        check_image_size(images, self.image_size, "emu3")
        vq = self._vq()
        device = vq.quantize.embedding.weight.device
        pixels = (images.to(device).float() - self.pixel_mean.to(device)) / self.pixel_std.to(device)
        sizes = torch.tensor([list(self.image_size)] * images.size(0), device=device)
        with gathered(vq), evaluating(vq):
            codes = vq.encode(pixels.to(vq.quantize.embedding.weight.dtype), sizes).image_tokens  # B x (h, w)
        return torch.stack(codes).view(images.size(0), -1).long()

    def to(self, device: torch.device | str) -> "Emu3Policy":
        """Nothing to move: the VQ lives inside `model`, which its owner places."""
        return self

    def save_pretrained(self, output_dir: str, model: nn.Module | None = None) -> None:
        """Write `emu3.json` (the trainer has saved the model or adapter and the processor)."""
        self.config.save(output_dir)


def set_attention_dropout(model: nn.Module, probability: float) -> None:
    """Emu3's `attention_dropout`, in its config (so a saved model keeps it) and everywhere the text model reads it:
    each attention layer's own float (the probabilities' dropout) and each decoder layer's `nn.Dropout` on the
    attention and MLP outputs, which share the value."""
    model.config.text_config.attention_dropout = probability
    for module in model.model.text_model.modules():
        if hasattr(module, "attention_dropout") and hasattr(module, "q_proj"):
            module.attention_dropout = probability
        elif isinstance(module, nn.Dropout):
            module.p = probability


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """`module` in eval mode for the block, its mode restored after. Emu3's VQ has `BatchNorm3d` layers (its temporal
    res blocks): in train mode, which a trainer's `model.train()` reaches, they would normalise with the batch's
    statistics and overwrite their running ones, so decoding would change the VQ and depend on the batch."""
    training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(training)
