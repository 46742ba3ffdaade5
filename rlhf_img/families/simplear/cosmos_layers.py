"""The layers of the Cosmos discrete video tokenizer (see `cosmos.py`): causal 3D convs, residual and
attention blocks, hybrid up/down-sampling, 3D Haar (un)patching, and the factorized encoder/decoder nets.
Module names follow the published TorchScript state dicts."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import CosmosConfig

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
