"""Configuration of the `simplear` family: the family config (`SimpleARConfig`, `simplear.json`) and the
architecture of NVIDIA's Cosmos discrete tokenizer (`CosmosConfig`).

Kept apart from the modeling code (`cosmos.py`, `cosmos_layers.py`) so that both import it and neither imports the
other's config back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ...checkpoints import CheckpointError
from ..configuration import FamilyConfig


@dataclass
class CosmosConfig:
    """Architecture of a Cosmos discrete video tokenizer (the `discrete_video` config of NVIDIA's code).

    channels / channels_mult: conv width of each resolution level is `channels * mult`, finest first.
    num_res_blocks: residual blocks per level in the encoder (the decoder has one more per level).
    attn_resolutions / resolution: a level whose nominal side (`resolution / patch_size`, halved per level)
        is listed gets attention after each block. For DV8x16x16 none is (levels are 256, 128, 64): only
        the middle of each net attends.
    z_channels: width of the latent before / after the 1x1x1 conv to / from the FSQ code.
    levels: FSQ levels per code channel; the code has len(levels) channels and prod(levels) values.
    patch_size: the Haar patcher's factor in t, h and w (log2 levels of the 3D Haar transform).
    spatial_compression / temporal_compression: total down-sampling; the conv net does the part that
        patching does not, one 2x per level at most.
    legacy_mode: which decoder levels up-sample in time (False for all released DV tokenizers).
    """

    channels: int = 128
    channels_mult: tuple[int, ...] = (2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    resolution: int = 1024
    z_channels: int = 16
    levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)
    patch_size: int = 4
    spatial_compression: int = 16
    temporal_compression: int = 8
    legacy_mode: bool = False
    in_channels: int = 3

    def __post_init__(self) -> None:
        self.channels_mult, self.levels = tuple(self.channels_mult), tuple(self.levels)
        self.attn_resolutions = tuple(self.attn_resolutions)
        for name in ("patch_size", "spatial_compression", "temporal_compression"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1) or value < self.patch_size:
                raise ValueError(f"CosmosConfig.{name} must be a power of 2, >= patch_size; got {value}")
        max_downs = len(self.channels_mult) - 1
        if max(self.num_spatial_downs, self.num_temporal_downs) > max_downs:
            raise ValueError(
                f"CosmosConfig: compression {self.temporal_compression}x{self.spatial_compression}x"
                f"{self.spatial_compression} needs more 2x steps beyond patch_size={self.patch_size} than the "
                f"{max_downs} that {len(self.channels_mult)} levels give"
            )

    @classmethod
    def dv8x16x16(cls) -> "CosmosConfig":
        """Cosmos-0.1- and Cosmos-1.0-Tokenizer-DV8x16x16 (the defaults above)."""
        return cls()

    @classmethod
    def tiny(cls, channels: int = 8, z_channels: int = 4) -> "CosmosConfig":
        """The DV8x16x16 module tree and compression with narrow convs: for tests."""
        return cls(channels=channels, z_channels=z_channels)

    @classmethod
    def from_dict(cls, data: dict, source: str) -> "CosmosConfig":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise CheckpointError(f"{source}: unknown Cosmos config key(s) {sorted(unknown)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{source}: {error}") from None

    @property
    def embedding_dim(self) -> int:
        return len(self.levels)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    @property
    def num_spatial_downs(self) -> int:  # 2x steps of the conv net in space (patching does the rest)
        return int(math.log2(self.spatial_compression // self.patch_size))

    @property
    def num_temporal_downs(self) -> int:
        return int(math.log2(self.temporal_compression // self.patch_size))


CONFIG_NAME = "simplear.json"  # written next to a trained model: resolution, prefix, tokenizer, overrides
COSMOS_DOWNSAMPLE = 16
GRPO_PREFIX = "A photo of "


@dataclass
class SimpleARConfig(FamilyConfig):
    """`simplear.json`: what a SimpleAR policy is run at. `resolution` (pixels, a multiple of 16: 1024 -> 64x64
    codes), `prompt_prefix` (their GRPO's "A photo of "; their inference used "A highly realistic image of "),
    `visual_tokenizer` (None: the folder a trained checkpoint saved, else NVIDIA's hub repo). Any `causal_vq` key
    below overrides the layout SimpleAR's files imply (None: implied)."""

    file_name = CONFIG_NAME
    family = "simplear"

    resolution: int = 1024
    prompt_prefix: str = GRPO_PREFIX
    visual_tokenizer: str | None = None
    # causal_vq overrides (`CausalVQConfig` fields), None: what SimpleAR's layout implies
    image_code_offset: int | None = None
    image_code_count: int | None = None
    grid: list[int] | None = None
    prompt_template: str | None = None
    uncond_prompt: str | None = None
    special_tokens: list[str] | None = None
    add_special_tokens: bool | None = None
    visual_tokenizer_class: str | None = None

    def validate(self, source: str) -> None:
        if int(self.resolution) % COSMOS_DOWNSAMPLE:
            raise CheckpointError(
                f"{source}: resolution must be a multiple of {COSMOS_DOWNSAMPLE}, got {self.resolution}"
            )

    def causal_vq_overrides(self) -> dict:
        """The `causal_vq` keys this config sets (their values replace what SimpleAR's layout implies)."""
        family_keys = {"resolution", "prompt_prefix", "visual_tokenizer"}
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in family_keys and getattr(self, f.name) is not None
        }
