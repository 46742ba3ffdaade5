"""The `emu3` family config (`emu3.json`): the generated image's area and aspect ratio, the prompt template, the
negative prompt and the attention dropout. No modeling code is imported here."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...checkpoints import CheckpointError
from ..configuration import FamilyConfig

CONFIG_NAME = "emu3.json"
RELEASED_IMAGE_AREA = 720 * 720  # BAAI/Emu3-Gen's `image_area` (90 x 90 codes at the VQ's 8x factor)

# BAAI's image_generation.py (baaivision/Emu3): the negative prompt of its CFG branch
BAAI_NEGATIVE_PROMPT = (
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, worst quality, "
    "low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry."
)
_RATIO = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_ratio(ratio: str, source: str = "emu3") -> tuple[int, int]:
    """`"width:height"` -> `(width, height)`, positive integers (Emu3's processors read the ratio in that order)."""
    match = _RATIO.match(ratio) if isinstance(ratio, str) else None
    if match is None or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise CheckpointError(
            f"{source}: ratio must be 'width:height' in positive integers (e.g. '1:1', '16:9'), got {ratio!r}"
        )
    return int(match.group(1)), int(match.group(2))


def generation_grid(image_area: int, ratio: str, spatial_factor: int) -> tuple[int, int]:
    """Code rows and columns `(h, w)` of the image Emu3 is asked for: the `width:height` rectangle of area
    `image_area` pixels, divided by the VQ's `spatial_factor` and rounded, as BAAI's processor (mode 'G') and
    transformers' `Emu3Processor.calculate_generate_size` compute it (720x720 -> 90x90, 512x512 -> 64x64)."""
    width, height = parse_ratio(ratio)
    scale = (image_area / (width * height)) ** 0.5
    return round(height * scale / spatial_factor), round(width * scale / spatial_factor)  # Python's round, as theirs


@dataclass
class Emu3FamilyConfig(FamilyConfig):
    """`emu3.json`, written next to every trained model.

    `image_area` / `ratio`: the image generated (and trained on): its area in pixels and `width:height`; the prompt
    says its grid (`<|image start|>{h}*{w}<|image token|>`) and the policy samples `h * w` codes. Released:
    720*720 (8,193 tokens per image with the end-of-line tokens); 512*512 gives 64x64 codes (64 * 65 + 3 tokens).
    `prompt_template`: the caption's text (`{prompt}` replaced); BAAI's demo appends
    " masterpiece, film grained, best quality.".
    `negative_prompt`: the text of CFG's unconditional row, which is built as BAAI builds it: BOS + this text + the
    same image header (transformers' docs example leaves the header out; see docs/families/emu3.md).
    `attention_dropout`: Emu3's attention dropout (released config: 0.1). Besides the decoder layers' `nn.Dropout`
    it is a float read inside the attention call, which the trainers' `disable_dropout` cannot reach; 0 keeps
    sampling and scoring the same function in train mode.
    `decode_batch_size`: images per VQ decoder call (0: all at once). The VQ decodes 4 frames per image at full
    resolution with 256-channel activations (estimated at about 2 GB per 512x512 image in bfloat16), so a GRPO
    batch is decoded a few images at a time; the pixels do not depend on it (up to float rounding)."""

    file_name = CONFIG_NAME
    family = "emu3"

    image_area: int = RELEASED_IMAGE_AREA
    ratio: str = "1:1"
    prompt_template: str = "{prompt}"
    negative_prompt: str = BAAI_NEGATIVE_PROMPT
    attention_dropout: float = 0.0
    decode_batch_size: int = 4

    def validate(self, source: str) -> None:
        if not isinstance(self.image_area, int) or isinstance(self.image_area, bool) or self.image_area <= 0:
            raise CheckpointError(f"{source}: image_area must be a positive number of pixels, got {self.image_area!r}")
        parse_ratio(self.ratio, source)
        if "{prompt}" not in self.prompt_template:
            raise CheckpointError(f"{source}: prompt_template must contain '{{prompt}}'")
        if not isinstance(self.negative_prompt, str):
            raise CheckpointError(
                f"{source}: negative_prompt must be a string, got {type(self.negative_prompt).__name__}"
            )
        if not 0.0 <= self.attention_dropout < 1.0:
            raise CheckpointError(f"{source}: attention_dropout must be in [0, 1), got {self.attention_dropout}")
        if not isinstance(self.decode_batch_size, int) or self.decode_batch_size < 0:
            raise CheckpointError(
                f"{source}: decode_batch_size must be >= 0 (0: all at once), got {self.decode_batch_size!r}"
            )
