"""Infinity's visual tokenizer: a convolutional autoencoder with multi-scale binary spherical quantisation.

Written from the architecture of FoundationVision/Infinity's `bsq_vae` (FLUX-style conv encoder/decoder,
no attention; module names follow its released `infinity_vae_d32reg.pth`, whose weights sit under the key
`vae`). A latent `(B, d, H, W)` is quantised coarse to fine: at each scale the residual is area-resized
to the scale's grid, each position becomes `d` bits (the sign of each channel; the code is
`±1/sqrt(d)`, a point on the unit sphere), the code is resized back and subtracted. The decoder sees the
sum of all scales' codes. Bits are the transformer's actions.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ...checkpoints import check_state_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class BSQVAEConfig:
    """`codebook_dim` bits per latent position; `patch_size` the pixel stride (len(channel_multipliers) - 1 halvings)."""

    codebook_dim: int = 32
    patch_size: int = 16
    base_channels: int = 128
    channel_multipliers: tuple[int, ...] = (1, 2, 4, 4, 4)
    num_res_blocks: int = 2
    image_channels: int = 3
    kind: str = field(default="infinity_bsq_vae", repr=False)

    def __post_init__(self) -> None:
        self.channel_multipliers = tuple(int(m) for m in self.channel_multipliers)
        halvings = math.log2(self.patch_size)
        if not halvings.is_integer() or len(self.channel_multipliers) < halvings + 1:
            raise ValueError(
                f"patch_size {self.patch_size} needs a power of two and at least log2(patch_size) + 1 channel "
                f"multipliers, got {list(self.channel_multipliers)}"
            )


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = 32 if channels % 32 == 0 else 24 if channels % 24 == 0 else None
    if groups is None:
        raise ValueError(f"BSQ-VAE group norm needs channels divisible by 32 or 24, got {channels}")
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class Norm(nn.Module):
    """Group norm wrapped as `.norm` (the released key layout: `norm1.norm.weight`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class Conv(nn.Module):
    """A 2D conv wrapped as `.conv` (the released key layout: `conv1.conv.weight`)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = Norm(in_channels), Conv(in_channels, out_channels, 3, padding=1)
        self.norm2, self.conv2 = Norm(out_channels), Conv(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = Conv(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # pad right/bottom only, as the released encoder was trained


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, config: BSQVAEConfig) -> None:
        super().__init__()
        ch, mults = config.base_channels, config.channel_multipliers
        halvings = int(math.log2(config.patch_size))
        self.conv_in = Conv(config.image_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for level, mult in enumerate(mults):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(config.num_res_blocks):
                stage.block.append(ResnetBlock(block_in, ch * mult))
                block_in = ch * mult
            if level < halvings:
                stage.downsample = Downsample(block_in)
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.block_2 = ResnetBlock(block_in, block_in), ResnetBlock(block_in, block_in)
        self.norm_out = Norm(block_in)
        self.conv_out = Conv(block_in, config.codebook_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.block_1(h))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, config: BSQVAEConfig) -> None:
        super().__init__()
        ch, mults = config.base_channels, config.channel_multipliers
        halvings = int(math.log2(config.patch_size))
        block_in = ch * mults[-1]
        self.conv_in = Conv(config.codebook_dim, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.block_2 = ResnetBlock(block_in, block_in), ResnetBlock(block_in, block_in)
        stages = []
        for level in reversed(range(len(mults))):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(config.num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, ch * mults[level]))
                block_in = ch * mults[level]
            if 1 <= level <= halvings:
                stage.upsample = Upsample(block_in)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)  # up[level]; run from the deepest level up
        self.norm_out = Norm(block_in)
        self.conv_out = Conv(block_in, config.image_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.block_1(self.conv_in(z)))
        for stage in reversed(self.up):
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class BinarySphericalQuantizer(nn.Module):
    """Bits <-> codes. `mask` (powers of two) is kept only so the released state dict matches key for key."""

    def __init__(self, codebook_dim: int) -> None:
        super().__init__()
        self.codebook_dim = codebook_dim
        self.register_buffer("mask", 2 ** torch.arange(codebook_dim - 1, -1, -1))

    def codes(self, bits: torch.Tensor) -> torch.Tensor:
        """Bits `(..., d)` in {0, 1} -> codes `(..., d)` in {±1/sqrt(d)} (unit norm)."""
        scale = 1.0 / math.sqrt(self.codebook_dim)
        return F.normalize(bits.float() * (2 * scale) - scale, dim=-1)

    def quantize(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent `(B, d, h, w)` -> (codes `(B, d, h, w)`, bits `(B, h, w, d)`): the sign of each channel."""
        bits = (latent > 0).permute(0, 2, 3, 1).long()
        return self.codes(bits).permute(0, 3, 1, 2), bits


class MultiScaleQuantizer(nn.Module):
    def __init__(self, codebook_dim: int) -> None:
        super().__init__()
        self.lfq = BinarySphericalQuantizer(codebook_dim)


def resize_codes(codes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Codes `(B, d, h, w)` resized the way Infinity resizes them between scales (trilinear over a single frame)."""
    if tuple(codes.shape[-2:]) == tuple(size):
        return codes
    return F.interpolate(codes.unsqueeze(2), size=(1, *size), mode="trilinear").squeeze(2)


class BSQVAE(nn.Module):
    """Encoder, decoder and multi-scale quantiser. Pixels are in [-1, 1] inside, [0, 1] at `decode_pixels`."""

    def __init__(self, config: BSQVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder, self.decoder = Encoder(config), Decoder(config)
        self.quantizer = MultiScaleQuantizer(config.codebook_dim)

    @property
    def codebook_dim(self) -> int:
        return self.config.codebook_dim

    def decode(self, summed_codes: torch.Tensor) -> torch.Tensor:
        """Summed codes `(B, d, H, W)` -> pixels `(B, 3, 16H, 16W)` in [-1, 1]."""
        return self.decoder(summed_codes).clamp(-1, 1)

    @torch.no_grad()
    def multiscale_bits(self, images: torch.Tensor, grids: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Pixels `(B, 3, H, W)` in [-1, 1] -> per-scale bits `(B, h_k, w_k, d)` (how Infinity tokenises training images)."""
        latent = self.encoder(images).float()
        if tuple(latent.shape[-2:]) != tuple(grids[-1]):
            raise ValueError(
                f"images encode to a {tuple(latent.shape[-2:])} grid, the schedule ends at {tuple(grids[-1])}"
            )
        accumulated = torch.zeros_like(latent)
        all_bits = []
        for index, grid in enumerate(grids):
            residual = latent - accumulated
            if index != len(grids) - 1:
                residual = F.interpolate(residual.unsqueeze(2), size=(1, *grid), mode="area").squeeze(2)
            codes, bits = self.quantizer.lfq.quantize(residual)
            accumulated = accumulated + resize_codes(codes, tuple(latent.shape[-2:]))
            all_bits.append(bits)
        return all_bits

    # ------------------------------------------------------------------------------------------ files
    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        config = asdict(self.config)
        config["channel_multipliers"] = list(config["channel_multipliers"])
        with open(os.path.join(directory, CONFIG_NAME), "w") as f:
            json.dump(config, f, indent=2)
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(directory, WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str) -> "BSQVAE":
        with open(os.path.join(directory, CONFIG_NAME)) as f:
            data = json.load(f)
        model = cls(BSQVAEConfig(**data))
        load_vae_state_dict(model, load_file(os.path.join(directory, WEIGHTS_NAME)), source=directory)
        return model


def _canonical_vae_key(key: str, expected: set[str]) -> str:
    """Released files may name a wrapped conv/norm without its wrapper (`conv1.weight` for `conv1.conv.weight`)."""
    if key in expected:
        return key
    head, _, leaf = key.rpartition(".")
    for wrapper in ("conv", "norm"):
        candidate = f"{head}.{wrapper}.{leaf}"
        if candidate in expected:
            return candidate
    return key


def load_vae_state_dict(model: BSQVAE, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load: missing or unexpected keys, or shape mismatches, raise an error naming them."""
    expected = model.state_dict()
    # the reference autoencoder registers its quantiser twice (`quantizer` and the alias `quantize`), so its
    # state dicts carry `quantize.lfq.mask` as a second name of `quantizer.lfq.mask`
    state = {k: v for k, v in state.items() if not k.startswith("quantize.")}
    renamed = {_canonical_vae_key(k, set(expected)): v for k, v in state.items()}
    renamed.setdefault("quantizer.lfq.mask", expected["quantizer.lfq.mask"])  # a constant; older files omit it
    check_state_dict(expected, renamed, source)
    model.load_state_dict(renamed, strict=True)
