"""Cosmos-1.0-Tokenizer-DV8x16x16: NVIDIA's causal discrete video tokenizer, SimpleAR's visual tokenizer.

Our own plain PyTorch implementation. Module and buffer names follow the published TorchScript files
(`encoder.jit` / `decoder.jit` of the hub repo nvidia/Cosmos-1.0-Tokenizer-DV8x16x16), so their state dicts
load strictly; the only keys dropped are those of the two convs NVIDIA's code builds but never calls for
DV8x16x16 (`reference_only_keys`). An image is a one-frame video:

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
from dataclasses import asdict

import torch
from torch import nn

from ...checkpoints import CheckpointError, read_json_file, resolve_subpath
from ..registry import register_visual_tokenizer
from .configuration import CosmosConfig
from .cosmos_layers import CausalConv3d, FactorizedDecoder3d, FactorizedEncoder3d

CONFIG_NAME = "config.json"
ENCODER_WEIGHTS, DECODER_WEIGHTS = "encoder.safetensors", "decoder.safetensors"
ENCODER_JIT, DECODER_JIT = "encoder.jit", "decoder.jit"  # the file names of the published hub repo


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


def reference_only_keys(config: CosmosConfig) -> dict[str, set[str]]:
    """State-dict keys, per half (`encoder`, `decoder`), of convs that NVIDIA's code builds for `config` but its
    forward never calls; files written from its modules (the published `.jit` files, or a state dict saved from
    them) may hold them, and the loaders drop them.

    The rule, from the reference's construction (cosmos_tokenizer/modules/layers3d.py): its hybrid down-sampler
    always builds `conv1` (space, 1x3x3, stride 2), `conv2` (time, 3x1x1, time stride 2) and `conv3` (1x1x1), and
    its up-sampler `conv1` (time), `conv2` (space) and `conv3`, whichever axes the level resamples; ours builds
    only the convs a level calls (`HybridDownsample` / `HybridUpsample`). So a level resampling space only
    carries an unused time conv (down-sampler `conv2`, up-sampler `conv1`), a level resampling time only an
    unused space conv, and a level resampling neither all three. For DV8x16x16 (encoder level 1 and decoder
    level 2 resample space only) that is exactly encoder.down.1.downsample.conv2.conv3d.{weight,bias} and
    decoder.up.2.upsample.conv1.conv3d.{weight,bias}.
    """
    num_levels = len(config.channels_mult)
    unused: dict[str, set[str]] = {"encoder": set(), "decoder": set()}
    axes = {  # (part, level) -> (spatial, temporal, prefix, name of the space conv, name of the time conv)
        ("encoder", level): (
            level < config.num_spatial_downs,
            level < config.num_temporal_downs,
            f"encoder.down.{level}.downsample",
            "conv1",
            "conv2",
        )
        for level in range(num_levels - 1)
    }
    axes.update(
        {
            ("decoder", level): (
                *FactorizedDecoder3d._up_axes(config, num_levels - 1 - level),
                f"decoder.up.{level}.upsample",
                "conv2",
                "conv1",
            )
            for level in range(1, num_levels)
        }
    )
    for (part, _), (spatial, temporal, prefix, space_conv, time_conv) in axes.items():
        convs = [space_conv] * (not spatial) + [time_conv] * (not temporal) + ["conv3"] * (not (spatial or temporal))
        unused[part].update(f"{prefix}.{conv}.conv3d.{tensor}" for conv in convs for tensor in ("weight", "bias"))
    return unused


def _load_strict(
    module: nn.Module, part: str, state: dict[str, torch.Tensor], source: str, config: CosmosConfig
) -> None:
    """Strict load of one half (`part`: encoder or decoder), after dropping the keys of the reference's unused
    convs (`reference_only_keys`); any other extra key, a missing key or a wrong shape is an error."""
    dropped = reference_only_keys(config)[part]
    try:
        module.load_state_dict({k: v for k, v in state.items() if k not in dropped}, strict=True)
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
    _load_strict(model.encoder, "encoder", load_jit_state_dict(encoder_path), encoder_path, model.config)
    _load_strict(model.decoder, "decoder", decoder_state, decoder_path, model.config)
    published_dtype = next(t.dtype for t in decoder_state.values() if t.is_floating_point())
    return model.eval(), published_dtype


@register_visual_tokenizer("cosmos")
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
            _load_strict(model.encoder, "encoder", load_file(encoder_weights), encoder_weights, config)
            _load_strict(model.decoder, "decoder", load_file(decoder_weights), decoder_weights, config)
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
