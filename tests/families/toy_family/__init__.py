"""`palette`: a model family written the way a new one is: one package, one `register_family` call.

A Llama causal LM whose vocabulary ends in a block of image codes (sampled and scored by the shared engine through
`CausalLMAdapter`), and a colour palette as its visual tokenizer: code c paints one patch with colour `palette[c]`.
On disk: a transformers folder plus `palette.json` (the family config) and `palette.safetensors`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from rlhf_img.checkpoints import CheckpointError
from rlhf_img.families import StandIn, register_family
from rlhf_img.families.causal_vq.loading import load_lm, load_tokenizer
from rlhf_img.families.causal_vq.tiny import byte_level_tokenizer
from rlhf_img.families.configuration import FamilyConfig
from rlhf_img.families.image_checks import check_image_size
from rlhf_img.families.registry import CONFIG_MATCH, NO_MATCH
from rlhf_img.policy import PromptBatch
from rlhf_img.sampling import CausalLMAdapter, NextTokenPolicy

PALETTE_FILE = "palette.safetensors"


@dataclass
class PaletteConfig(FamilyConfig):
    file_name = "palette.json"
    family = "palette"

    code_offset: int = 0
    code_count: int = 16
    grid: int = 3
    patch: int = 2


class PalettePolicy(NextTokenPolicy):
    def __init__(self, model: nn.Module, tokenizer, palette: torch.Tensor, config: PaletteConfig) -> None:
        self.model, self.processing_class, self.palette, self.config = model, tokenizer, palette, config
        self.num_actions = config.grid**2
        uncond = tokenizer([""], return_tensors="pt", add_special_tokens=False)
        pad = tokenizer.pad_token_id
        # an empty caption is one pad token (attended), so the unconditional row is never empty
        ids, mask = (uncond.input_ids[0].tolist() or [pad]), (uncond.attention_mask[0].tolist() or [1])
        self.adapter = CausalLMAdapter(config.code_offset, config.code_count, pad, tuple(ids), tuple(mask))

    def encode_prompts(self, prompts: list[str], device: torch.device | str = "cpu") -> PromptBatch:
        encoded = self.processing_class(
            prompts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False
        )
        return PromptBatch(encoded.input_ids.to(device), encoded.attention_mask.to(device))

    @property
    def image_size(self) -> tuple[int, int]:
        side = self.config.grid * self.config.patch
        return side, side

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Each patch's mean colour -> the index of the nearest palette colour `(B, grid²)`: the palette's encoder,
        so that `decode` paints every patch with the colour closest to what it was."""
        check_image_size(images, self.image_size, "palette")
        means = F.avg_pool2d(images.float(), self.config.patch)  # (B, 3, grid, grid)
        colours = means.flatten(2).transpose(1, 2)  # (B, grid², 3)
        return torch.cdist(colours, self.palette.to(images.device).float()[None]).argmin(-1)

    @torch.no_grad()
    def decode(self, actions: torch.Tensor) -> torch.Tensor:
        grid, patch = self.config.grid, self.config.patch
        colours = self.palette.to(actions.device)[actions]  # (B, grid², 3)
        image = colours.view(-1, grid, grid, 3).permute(0, 3, 1, 2)  # (B, 3, grid, grid)
        return image.repeat_interleave(patch, 2).repeat_interleave(patch, 3).clamp(0, 1)

    def to(self, device: torch.device | str) -> "PalettePolicy":
        return self

    def save_pretrained(self, output_dir: str, model: nn.Module | None = None) -> None:
        self.config.save(output_dir)
        save_file({"palette": self.palette.contiguous()}, os.path.join(output_dir, PALETTE_FILE))


def detect(checkpoint: str, revision: str | None = None) -> int:
    return CONFIG_MATCH if os.path.isfile(os.path.join(checkpoint, PaletteConfig.file_name)) else NO_MATCH


def stand_in(folder: str) -> StandIn:
    torch.manual_seed(0)
    tokenizer = byte_level_tokenizer()
    config = PaletteConfig(code_offset=len(tokenizer))
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer) + config.code_count,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            initializer_range=0.1,
        )
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    PalettePolicy(model, tokenizer, torch.rand(config.code_count, 3), config).save_pretrained(folder)
    return StandIn(folder, {"dtype": "float32"})


@register_family(
    "palette", detect=detect, looks_for="palette.json", help="a test family: Llama + colour palette", stand_in=stand_in
)
def load(
    checkpoint: str, *, dtype="float32", family_config=None, revision=None, trust_remote_code=False, **unused
) -> PalettePolicy:
    """The LM (a saved LoRA adapter is merged into its base) and tokenizer through causal_vq's loaders."""
    config = PaletteConfig.load(checkpoint, overrides=family_config, revision=revision)
    palette_path = os.path.join(checkpoint, PALETTE_FILE)
    if not os.path.isfile(palette_path):
        raise CheckpointError(f"palette: {palette_path} not found")
    model = load_lm(checkpoint, dtype, revision, trust_remote_code)
    tokenizer = load_tokenizer(checkpoint, revision, trust_remote_code)
    return PalettePolicy(model, tokenizer, load_file(palette_path)["palette"], config)
