"""The `infinity` family config (`infinity.json`): which files make a policy, the size, resolution and aspect
ratio. No modeling code is imported here (only the schedule tables, to check `resolution`)."""

from __future__ import annotations

from dataclasses import dataclass

from ...checkpoints import CheckpointError
from ..configuration import FamilyConfig
from .schedules import RESOLUTIONS

CONFIG_NAME = "infinity.json"
SIZE_NAMES = ("2b", "8b")


@dataclass
class InfinityFamilyConfig(FamilyConfig):
    """How to assemble and run a policy. File names are relative to the checkpoint (folder or hub repo)
    unless absolute; `text_encoder` is a hub id or folder of a transformers T5 encoder + tokenizer."""

    file_name = CONFIG_NAME
    family = "infinity"

    size: str | None = None  # "2b" | "8b": builds the released architecture; None: read config.json / infer
    transformer: str = "model.safetensors"  # a .pth/.bin/.safetensors file, or a sharded *.index.json
    vae: str = "vae"  # a folder saved by this project, or a released .pth (weights under "vae")
    text_encoder: str = "google/flan-t5-xl"
    text_encoder_dtype: str = "float32"
    aspect_ratio: float = 1.0  # height / width; snapped to the nearest of the 15 trained templates
    resolution: str = "1M"  # 0.06M (~256²), 0.25M (~512²), 0.60M, 1M (~1024²)
    num_scales: int | None = None  # overrides `resolution` (a prefix of the 13-scale schedule)
    patchify: bool | None = None  # 2x2 spatial patchify (Infinity-8B); default from `size`
    base_checkpoint: str | None = None  # for a saved LoRA adapter: where the base transformer lives

    def validate(self, source: str) -> None:
        if self.size is not None and self.size not in SIZE_NAMES:
            raise CheckpointError(f"{source}: size must be one of {list(SIZE_NAMES)}, got {self.size!r}")
        if self.num_scales is None and self.resolution not in RESOLUTIONS:
            raise CheckpointError(f"{source}: resolution must be one of {sorted(RESOLUTIONS)}, got {self.resolution!r}")
