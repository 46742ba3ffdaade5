"""Cosmos-1.0-Tokenizer-DV8x16x16: NVIDIA's causal discrete video tokenizer, SimpleAR's visual tokenizer.

Our own plain PyTorch implementation. Module and buffer names follow the published TorchScript files
(`encoder.jit` / `decoder.jit` of the hub repo nvidia/Cosmos-1.0-Tokenizer-DV8x16x16), so their state dicts
load with strict=True. An image is a one-frame video:

    image (B, 3, H, W) in [0, 1] -> video (B, 3, 1, H, W) in [-1, 1]
      -> CosmosEncoder: 3D Haar patching (4x in t, h, w) -> factorized causal conv net (2x down twice in space,
         once in time: 8x16x16 in all) -> 1x1x1 conv to 6 channels -> FSQ -> indices (B, 1, H/16, W/16)
    indices -> CosmosDecoder (the mirror image) -> video (B, 3, 1, H, W), roughly [-1, 1] -> image in [0, 1]

"Causal": a temporal conv pads the past by repeating the first frame and never looks ahead, so the tokens of
frame t depend on frames <= t only. That is what makes a single image a valid 1-frame input: the patcher
repeats it 4x before the temporal Haar step, and the decoder keeps the last of the 4 frames it rebuilds.

On disk (`save_pretrained`), a folder holds
    config.json          the `CosmosConfig` fields
    encoder.safetensors  the `CosmosEncoder` state dict (the keys of `encoder.jit`)
    decoder.safetensors  the `CosmosDecoder` state dict (the keys of `decoder.jit`)
`from_pretrained` also reads a folder or hub repo holding the published `encoder.jit` + `decoder.jit`.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .resolve import CheckpointError, read_json_file, resolve_subpath

CONFIG_NAME = "config.json"
ENCODER_WEIGHTS, DECODER_WEIGHTS = "encoder.safetensors", "decoder.safetensors"
ENCODER_JIT, DECODER_JIT = "encoder.jit", "decoder.jit"  # the file names of the published hub repo


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


# ---------------------------------------------------------------------------------------------------------
# Building blocks. Every tensor is a video (B, C, T, H, W).


class CausalConv3d(nn.Module):
    """Conv3d that pads time on the left only, with copies of the first frame, so output frame t sees input
    frames <= t; height and width are zero-padded by `padding` on both sides."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, time_stride=1, padding=0) -> None:
        super().__init__()
        kernel = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        self.time_pad = kernel[0] - time_stride  # with stride 1: the kernel's whole past, so T frames in, T out
        self.padding = padding
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride=(time_stride, stride, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_pad > 0:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        if self.padding:
            x = F.pad(x, (self.padding,) * 4)  # (W left, W right, H top, H bottom)
        return self.conv3d(x)


def factorized_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """A 3x3x3 causal conv factorized as 1x3x3 (space) then 3x1x1 (time)."""
    return nn.Sequential(
        CausalConv3d(in_channels, out_channels, (1, 3, 3), padding=1),
        CausalConv3d(out_channels, out_channels, (3, 1, 1)),
    )


class FrameNorm(nn.Module):
    """GroupNorm with a single group, over (C, H, W) of each frame on its own: statistics never mix frames."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(num_groups=1, num_channels=channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        x = self.norm(x.transpose(1, 2).reshape(B * T, C, H, W))
        return x.reshape(B, T, C, H, W).transpose(1, 2)


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = FrameNorm(in_channels), factorized_conv(in_channels, out_channels)
        self.norm2, self.conv2 = FrameNorm(out_channels), factorized_conv(out_channels, out_channels)
        self.nin_shortcut = CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class SpatialAttention(nn.Module):
    """Single-head self-attention among the H*W positions of each frame."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = FrameNorm(channels)
        self.q, self.k, self.v = (CausalConv3d(channels, channels, 1) for _ in range(3))
        self.proj_out = CausalConv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        h = self.norm(x)
        q, k, v = (proj(h).permute(0, 2, 3, 4, 1).reshape(B * T, H * W, C) for proj in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # (B*T, H*W, C)
        return x + self.proj_out(h.reshape(B, T, H, W, C).permute(0, 4, 1, 2, 3))


class TemporalAttention(SpatialAttention):
    """Single-head causal self-attention along time at each (h, w) position: frame t attends to frames <= t."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        h = self.norm(x)
        q, k, v = (proj(h).permute(0, 3, 4, 2, 1).reshape(B * H * W, T, C) for proj in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B*H*W, T, C)
        return x + self.proj_out(h.reshape(B, H, W, T, C).permute(0, 4, 3, 1, 2))


def attention(channels: int) -> nn.Sequential:
    return nn.Sequential(SpatialAttention(channels), TemporalAttention(channels))


class HybridDownsample(nn.Module):
    """2x down in space and / or time: a strided conv added to average pooling, then a 1x1x1 conv. The conv of
    an axis that is not down-sampled is not built (the published checkpoints do not hold it)."""

    def __init__(self, channels: int, spatial: bool, temporal: bool) -> None:
        super().__init__()
        self.spatial, self.temporal = spatial, temporal
        if spatial:
            self.conv1 = CausalConv3d(channels, channels, (1, 3, 3), stride=2)
        if temporal:
            self.conv2 = CausalConv3d(channels, channels, (3, 1, 1), time_stride=2)
        if spatial or temporal:
            self.conv3 = CausalConv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spatial:
            x = F.pad(x, (0, 1, 0, 1))  # one zero column / row at the end: (H, W) -> (H/2, W/2) for even sides
            x = self.conv1(x) + F.avg_pool3d(x, (1, 2, 2))
        if self.temporal:
            x = torch.cat([x[:, :, :1], x], dim=2)  # the first frame twice: T -> 1 + (T - 1) / 2 for odd T
            x = self.conv2(x) + F.avg_pool3d(x, (2, 1, 1))
        return self.conv3(x) if self.spatial or self.temporal else x


class HybridUpsample(nn.Module):
    """2x up in time and / or space: nearest-neighbour repeat, a conv added as a residual, then a 1x1x1 conv."""

    def __init__(self, channels: int, spatial: bool, temporal: bool) -> None:
        super().__init__()
        self.spatial, self.temporal = spatial, temporal
        if temporal:
            self.conv1 = CausalConv3d(channels, channels, (3, 1, 1))
        if spatial:
            self.conv2 = CausalConv3d(channels, channels, (1, 3, 3), padding=1)
        if spatial or temporal:
            self.conv3 = CausalConv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temporal:
            if x.shape[2] > 1:  # T -> 2T - 1: the first frame stays single, as the encoder made it
                x = x.repeat_interleave(2, dim=2)[:, :, 1:]
            x = self.conv1(x) + x
        if self.spatial:
            x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
            x = self.conv2(x) + x
        return self.conv3(x) if self.spatial or self.temporal else x


# ---------------------------------------------------------------------------------------------------------
# 3D Haar wavelet patching. One level splits every 2x2x2 (t, h, w) block into 8 sub-bands, low / high along
# time, then height, then width (order lll, llh, lhl, ..., hhh), laid out band-major on channels
# (`band * C + c`) and scaled so that band lll is the block mean. `patch_size = 2**levels`.

_SQRT_HALF = math.sqrt(0.5)


def _haar_split(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs along `dim` -> (low, high) = ((even + odd), (even - odd)) / sqrt(2); `dim` halves."""
    even, odd = x.unflatten(dim, (-1, 2)).unbind(dim + 1)
    return (even + odd) * _SQRT_HALF, (even - odd) * _SQRT_HALF


def _haar_merge(low: torch.Tensor, high: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of `_haar_split`: interleave (low + high) / sqrt(2) and (low - high) / sqrt(2) along `dim`."""
    return torch.stack([(low + high) * _SQRT_HALF, (low - high) * _SQRT_HALF], dim + 1).flatten(dim, dim + 1)


class _HaarBuffers(nn.Module):
    """The buffers the published state dicts carry for the patchers (`wavelets`: the Haar filter, `_arange`: its
    tap index). Kept for key compatibility only: the transforms use exact constants, as a published copy may
    be bf16-rounded."""

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size, self.num_levels = patch_size, int(math.log2(patch_size))
        self.register_buffer("wavelets", torch.full((2,), _SQRT_HALF))
        self.register_buffer("_arange", torch.arange(2))


class HaarPatcher3d(_HaarBuffers):
    """Video (B, C, T, H, W) -> (B, C * 8**L, 1 + (T - 1) / p, H / p, W / p), p = patch_size = 2**L.

    The first frame is repeated p times first, so a 1-frame video becomes one group of p identical frames."""

    def __init__(self, patch_size: int) -> None:
        super().__init__(patch_size)
        self.register_buffer("patch_size_buffer", torch.tensor([patch_size], dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, :, :1].expand(-1, -1, self.patch_size - 1, -1, -1), x], dim=2)
        for _ in range(self.num_levels):
            bands = [x]
            for dim in (2, 3, 4):
                bands = [half for band in bands for half in _haar_split(band, dim)]
            x = torch.cat(bands, dim=1) / (2 * math.sqrt(2))
        return x


class HaarUnpatcher3d(_HaarBuffers):
    """Inverse of `HaarPatcher3d`, dropping the p - 1 extra copies of the first frame at the end."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.num_levels):
            bands = list(x.chunk(8, dim=1))
            for dim in (4, 3, 2):
                bands = [_haar_merge(bands[i], bands[i + 1], dim) for i in range(0, len(bands), 2)]
            x = bands[0] * (2 * math.sqrt(2))
        return x[:, :, self.patch_size - 1 :]


# ---------------------------------------------------------------------------------------------------------
# Finite scalar quantisation


class FSQ(nn.Module):
    """Finite scalar quantisation (Mentzer et al., 2023): channel i of a latent is squashed into
    (-L_i / 2, L_i / 2) and rounded to one of L_i integers n; its code is n / (L_i // 2), in [-1, 1]
    ({-1, -0.5, 0, 0.5, 1} for L = 5; {-1, -0.75, ..., 0.75} for L = 8).

    The index is a mixed-radix number with digit `n + L_i // 2` in [0, L_i), channel 0 least significant:
    index = sum_i digit_i * prod(levels[:i]). Levels (8, 8, 8, 5, 5, 5) give 64,000 codes.
    The buffers (`_levels`, `_basis` = the place values, `implicit_codebook` = every code, (K, D)) carry the
    names of the published state dicts.
    """

    def __init__(self, levels: tuple[int, ...]) -> None:
        super().__init__()
        self.codebook_size = math.prod(levels)
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.int32))
        place_values = [math.prod(levels[:i]) for i in range(len(levels))]
        self.register_buffer("_basis", torch.tensor(place_values, dtype=torch.int32))
        self.register_buffer("implicit_codebook", self.indices_to_codes(torch.arange(self.codebook_size)))

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (...) in [0, K) -> codes (..., D), float32."""
        digits = (indices.long().unsqueeze(-1) // self._basis) % self._levels  # (..., D) in [0, L)
        half_width = self._levels // 2
        return (digits - half_width) / half_width

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (..., D) -> indices (...), int64."""
        half_width = self._levels // 2
        digits = (codes.float() * half_width + half_width).round().long()
        return (digits * self._basis).sum(-1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (B, D, T, H, W) -> (indices (B, T, H, W) int64, codes (B, D, T, H, W) float32)."""
        z = z.float().movedim(1, -1)  # (B, T, H, W, D)
        # tanh bounds channel i to (-L/2, L/2) (shrunk by eps so rounding never reaches the edge); for even L
        # the range is shifted by half a step so that rounding yields L integers, -L/2 .. L/2 - 1.
        half_range = (self._levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        integers = (torch.tanh(z + torch.atanh(offset / half_range)) * half_range - offset).round()
        codes = integers / (self._levels // 2)
        return self.codes_to_indices(codes), codes.movedim(-1, 1)


# ---------------------------------------------------------------------------------------------------------
# The conv nets


class _Level(nn.Module):
    """One resolution level: `block` (residual blocks), `attn` (empty or one per block), and optionally a
    `downsample` / `upsample`. The names are those of the published state dicts."""

    def __init__(self) -> None:
        super().__init__()
        self.block, self.attn = nn.ModuleList(), nn.ModuleList()

    def blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


def _middle(channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1 = ResBlock(channels, channels), attention(channels)
    mid.block_2 = ResBlock(channels, channels)
    return mid


class FactorizedEncoder3d(nn.Module):
    """Video (B, 3, T, H, W) in [-1, 1] -> latents (B, z_channels, 1 + (T - 1) / ct, H / cs, W / cs)."""

    def __init__(self, config: CosmosConfig) -> None:
        super().__init__()
        self.patcher3d = HaarPatcher3d(config.patch_size)
        channels, num_levels = config.channels, len(config.channels_mult)
        self.conv_in = factorized_conv(config.in_channels * config.patch_size**3, channels)
        side, block_in = config.resolution // config.patch_size, channels
        self.down = nn.ModuleList()
        for index, mult in enumerate(config.channels_mult):
            level = _Level()
            for _ in range(config.num_res_blocks):
                level.block.append(ResBlock(block_in, channels * mult))
                block_in = channels * mult
                if side in config.attn_resolutions:
                    level.attn.append(attention(block_in))
            if index != num_levels - 1:
                spatial, temporal = index < config.num_spatial_downs, index < config.num_temporal_downs
                level.downsample = HybridDownsample(block_in, spatial, temporal)
                side //= 2  # (NVIDIA's code halves it even for a time-only step; kept for the same layout)
            self.down.append(level)
        self.mid = _middle(block_in)
        self.norm_out = FrameNorm(block_in)
        self.conv_out = factorized_conv(block_in, config.z_channels)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.patcher3d(video))  # (B, channels, T', H/p, W/p)
        for level in self.down:
            h = level.blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class FactorizedDecoder3d(nn.Module):
    """Latents (B, z_channels, t, h, w) -> video (B, 3, 1 + (t - 1) * ct, h * cs, w * cs), about [-1, 1]."""

    def __init__(self, config: CosmosConfig) -> None:
        super().__init__()
        self.unpatcher3d = HaarUnpatcher3d(config.patch_size)  # registered first, as in the published files
        channels, num_levels = config.channels, len(config.channels_mult)
        block_in = channels * config.channels_mult[-1]
        side = config.resolution // config.patch_size // 2 ** (num_levels - 1)
        self.conv_in = factorized_conv(config.z_channels, block_in)
        self.mid = _middle(block_in)
        self.up = nn.ModuleList()
        for index in reversed(range(num_levels)):  # coarsest first; up[index] is level `index`
            level = _Level()
            for _ in range(config.num_res_blocks + 1):
                level.block.append(ResBlock(block_in, channels * config.channels_mult[index]))
                block_in = channels * config.channels_mult[index]
                if side in config.attn_resolutions:
                    level.attn.append(attention(block_in))
            if index != 0:
                level.upsample = HybridUpsample(block_in, *self._up_axes(config, num_levels - 1 - index))
                side *= 2
            self.up.insert(0, level)
        self.norm_out = FrameNorm(block_in)
        self.conv_out = factorized_conv(block_in, config.in_channels * config.patch_size**3)

    @staticmethod
    def _up_axes(config: CosmosConfig, step: int) -> tuple[bool, bool]:
        """(spatial, temporal) for the `step`-th up-sampling, counted from the coarsest level, by NVIDIA's rule:
        time at steps 1 .. temporal_ups (0 .. temporal_ups - 1 in legacy_mode), space at those steps and, if
        there are more spatial steps, at steps < spatial_ups. DV8x16x16: step 0 space, step 1 space and time."""
        spatial_ups, temporal_ups = config.num_spatial_downs, config.num_temporal_downs
        temporal = step < temporal_ups if config.legacy_mode else 0 < step < temporal_ups + 1
        spatial = temporal or (step < spatial_ups and spatial_ups > temporal_ups)
        return spatial, temporal

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            h = level.blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        h = self.conv_out(F.silu(self.norm_out(h)))  # (B, 3 * p**3, T', H/p, W/p)
        return self.unpatcher3d(h)


# ---------------------------------------------------------------------------------------------------------
# The two halves as published, and the image tokenizer


class CosmosEncoder(nn.Module):
    """Video (B, 3, T, H, W) in [-1, 1] -> (indices (B, t, h, w) int64, codes (B, 6, t, h, w) float32).
    Its state dict is that of `encoder.jit`."""

    def __init__(self, config: CosmosConfig) -> None:
        super().__init__()
        self.encoder = FactorizedEncoder3d(config)
        self.quant_conv = CausalConv3d(config.z_channels, config.embedding_dim, 1)
        self.quantizer = FSQ(config.levels)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.quantizer(self.quant_conv(self.encoder(video)))


class CosmosDecoder(nn.Module):
    """Indices (B, t, h, w) -> video (B, 3, 1 + (t - 1) * 8, 16h, 16w), about [-1, 1] (not clamped).
    Its state dict is that of `decoder.jit`."""

    def __init__(self, config: CosmosConfig) -> None:
        super().__init__()
        self.inv_quant = nn.Module()  # the published files nest the FSQ here
        self.inv_quant.quantizer = FSQ(config.levels)
        self.post_quant_conv = CausalConv3d(config.embedding_dim, config.z_channels, 1)
        self.decoder = FactorizedDecoder3d(config)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        codes = self.inv_quant.quantizer.indices_to_codes(indices).movedim(-1, 1)  # (B, 6, t, h, w)
        return self.decoder(self.post_quant_conv(codes.to(self.post_quant_conv.conv3d.weight.dtype)))


def load_jit_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The state dict of a TorchScript file such as the published `decoder.jit`, on the CPU.

    `torch.jit.load` reads a TorchScript archive: tensors plus TorchScript code, which is compiled by the
    TorchScript runtime, not unpickled as Python, so loading runs no arbitrary Python; the module's code is
    never called here either. Only its state dict is kept.
    """
    try:
        with warnings.catch_warnings():  # torch >= 2.9 calls jit.load deprecated; the published files are TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            return dict(torch.jit.load(path, map_location="cpu").state_dict())
    except RuntimeError as error:
        raise CheckpointError(f"{path}: not a readable TorchScript file ({str(error).splitlines()[0]})") from None


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str, config: CosmosConfig) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{source} does not fit {config}:\n{error}") from None


def _tokenizer_from_jit(
    location: str, config: CosmosConfig | None, revision: str | None
) -> tuple["CosmosDiscreteTokenizer", torch.dtype]:
    """Our tokenizer holding the weights of the published encoder.jit + decoder.jit in a folder or hub repo,
    and the dtype they were published in."""
    decoder_path = resolve_subpath(location, DECODER_JIT, revision=revision, required=False)
    if decoder_path is None:
        raise CheckpointError(
            f"{location}: no Cosmos tokenizer found: neither {DECODER_WEIGHTS} (save_pretrained's layout) nor "
            f"{DECODER_JIT} (the published TorchScript files; nvidia/Cosmos-1.0-Tokenizer-DV8x16x16 is gated: accept "
            "its license and log in to the hub first)"
        )
    encoder_path = resolve_subpath(location, ENCODER_JIT, revision=revision)
    model = CosmosDiscreteTokenizer(config or CosmosConfig.dv8x16x16())
    decoder_state = load_jit_state_dict(decoder_path)
    _load_strict(model.encoder, load_jit_state_dict(encoder_path), encoder_path, model.config)
    _load_strict(model.decoder, decoder_state, decoder_path, model.config)
    published_dtype = next(t.dtype for t in decoder_state.values() if t.is_floating_point())
    return model.eval(), published_dtype


class CosmosDiscreteTokenizer(nn.Module):
    """Images (B, 3, H, W) in [0, 1] <-> indices (B, H/16, W/16) in [0, 64000), one image as a 1-frame video.

    `encoder` / `decoder` hold the published encoder.jit / decoder.jit state dicts. Computes in the dtype of
    its parameters (float32 unless moved); indices come back int64, images float32.
    """

    def __init__(self, config: CosmosConfig | None = None) -> None:
        super().__init__()
        self.config = config or CosmosConfig.dv8x16x16()
        self.encoder = CosmosEncoder(self.config)
        self.decoder = CosmosDecoder(self.config)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def downsample_factor(self) -> int:
        return self.config.spatial_compression

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], H and W multiples of 16 -> indices (B, H/16, W/16)."""
        factor = self.downsample_factor
        if images.dim() != 4 or images.shape[-1] % factor or images.shape[-2] % factor:
            raise ValueError(f"encode expects images (B, 3, H, W), H and W multiples of {factor}; got {images.shape}")
        video = (images * 2 - 1).unsqueeze(2).to(self.encoder.quant_conv.conv3d.weight.dtype)  # (B, 3, 1, H, W)
        indices, _ = self.encoder(video)  # (B, 1, h, w)
        return indices[:, 0]

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, h, w) -> images (B, 3, 16h, 16w), float32 in [0, 1]."""
        if indices.dim() != 3:
            raise ValueError(f"decode expects indices (B, h, w), got shape {tuple(indices.shape)}")
        low, high = (int(indices.min()), int(indices.max())) if indices.numel() else (0, 0)
        if low < 0 or high >= self.codebook_size:
            raise ValueError(f"decode: indices must lie in [0, {self.codebook_size}), got values in [{low}, {high}]")
        video = self.decoder(indices.unsqueeze(1))  # (B, 3, 1, H, W)
        return (video[:, :, 0].float().clamp(-1, 1) + 1) / 2

    def save_pretrained(self, folder: str, dtype: torch.dtype | None = None) -> None:
        """Write config.json, encoder.safetensors and decoder.safetensors; floating tensors cast to `dtype` if given."""
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, CONFIG_NAME), "w") as f:
            json.dump(asdict(self.config), f, indent=2)
        for module, filename in ((self.encoder, ENCODER_WEIGHTS), (self.decoder, DECODER_WEIGHTS)):
            state = {
                key: (tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor).contiguous()
                for key, tensor in module.state_dict().items()
            }
            save_file(state, os.path.join(folder, filename), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(
        cls, location: str, *, config: CosmosConfig | None = None, revision: str | None = None
    ) -> "CosmosDiscreteTokenizer":
        """Load from a local folder or hub repo holding either save_pretrained's files or the published
        encoder.jit + decoder.jit (whose config is DV8x16x16 unless `config` says otherwise; the hub repo's own
        config.json is not ours and is ignored). Weights load strictly, into float32 parameters, on the CPU."""
        from safetensors.torch import load_file

        decoder_weights = resolve_subpath(location, DECODER_WEIGHTS, revision=revision, required=False)
        if decoder_weights is not None:
            if config is None:
                config_path = resolve_subpath(location, CONFIG_NAME, revision=revision)
                config = CosmosConfig.from_dict(read_json_file(config_path), source=config_path)
            encoder_weights = resolve_subpath(location, ENCODER_WEIGHTS, revision=revision)
            model = cls(config)
            _load_strict(model.encoder, load_file(encoder_weights), encoder_weights, config)
            _load_strict(model.decoder, load_file(decoder_weights), decoder_weights, config)
            return model.eval()
        return _tokenizer_from_jit(location, config, revision)[0]


def convert_jit_to_safetensors(
    jit_dir: str, out_dir: str, *, config: CosmosConfig | None = None, revision: str | None = None
) -> str:
    """Convert a folder or hub repo with the published encoder.jit + decoder.jit into save_pretrained's layout.

    The weights are checked against our modules (strict load) and written in the dtype they were published
    in (bf16 for nvidia/Cosmos-1.0-Tokenizer-DV8x16x16). Returns `out_dir`.
    """
    model, published_dtype = _tokenizer_from_jit(jit_dir, config, revision)
    model.save_pretrained(out_dir, dtype=published_dtype)
    return out_dir
