"""LlamaGen's VQ tokenizer as transformers' `JanusVQVAE`, and LlamaGen's own codebook lookup for encoding.

Janus's VQ model is LlamaGen's `tokenizer/tokenizer_image/vq_model.py` reformatted, and transformers ships it
as `JanusVQVAE`: the same taming-style encoder/decoder (GroupNorm(32), swish, attention at the lowest
resolution and in the middle block), `quant_conv` / `post_quant_conv` and the codebook. A LlamaGen state dict
(encoder, decoder and codebook: all of `vq_ds16_t2i.pt`) loads into it after a rename of the container modules
(`conv_blocks` -> `down`/`up`, `res` -> `block`, `mid.0/1/2` -> `mid.block_1/attn_1/block_2`); the only key
left over is the training-time usage counter `quantize.codebook_used`, which is dropped.

Decoding uses `JanusVQVAE.decode` (its lookup L2-normalises the codebook entries, as LlamaGen's `decode_code`
does). Encoding does not use `JanusVQVAE.encode`: its quantiser picks the nearest *raw* codebook row, whereas
LlamaGen (`codebook_l2_norm=True`, the released VQ-16) L2-normalises both the latent and the codebook before
the nearest-code search, so the two pick different codes. `quantize_images` runs the module's own encoder and
`quant_conv`, then LlamaGen's lookup (`nearest_codes`). `tests/test_llamagen_parity.py` checks the decoded
pixels against the reference's `decode_code`, and `tests/test_llamagen_encoder_parity.py` the latents, codes
and autoencoded pixels against its `encode` / `forward`, on identical weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import JanusVQVAE, JanusVQVAEConfig

from ...checkpoints import CheckpointError, check_state_dict

# training-time state of the reference's quantiser (a ring buffer of recent code indices), not a weight
DROPPED_VQ_KEYS = ("quantize.codebook_used",)

_RENAMES = (
    (re.compile(r"^encoder\.conv_blocks\."), "encoder.down."),
    (re.compile(r"^decoder\.conv_blocks\."), "decoder.up."),
    (re.compile(r"\.res\.(\d+)\."), r".block.\1."),
    (re.compile(r"^(encoder|decoder)\.mid\.0\."), r"\1.mid.block_1."),
    (re.compile(r"^(encoder|decoder)\.mid\.1\."), r"\1.mid.attn_1."),
    (re.compile(r"^(encoder|decoder)\.mid\.2\."), r"\1.mid.block_2."),
)


def vq_16(grid_size: int = 16) -> JanusVQVAEConfig:
    """VQ-16 (`vq_ds16_t2i.pt`): 16384 codes of dimension 8, base 128 channels, multipliers (1, 1, 2, 2, 4)."""
    return JanusVQVAEConfig(num_patches=grid_size)


def janus_key(key: str) -> str:
    """A LlamaGen VQ key -> the `JanusVQVAE` key of the same tensor."""
    for pattern, replacement in _RENAMES:
        key = pattern.sub(replacement, key)
    return key


def llamagen_key(key: str) -> str:
    """A `JanusVQVAE` key -> LlamaGen's name (the inverse of `janus_key`)."""
    key = re.sub(r"^encoder\.down\.", "encoder.conv_blocks.", key)
    key = re.sub(r"^decoder\.up\.", "decoder.conv_blocks.", key)
    key = re.sub(r"\.block\.(\d+)\.", r".res.\1.", key)
    for index, name in enumerate(("block_1", "attn_1", "block_2")):
        key = re.sub(rf"^(encoder|decoder)\.mid\.{name}\.", rf"\1.mid.{index}.", key)
    return key


def is_llamagen_layout(state: dict) -> bool:
    return any(".conv_blocks." in k for k in state)


def infer_vq_config(state: dict[str, torch.Tensor], grid_size: int) -> JanusVQVAEConfig:
    """A `JanusVQVAEConfig` read off a LlamaGen VQ state dict's shapes (codebook, widths, levels, res blocks)."""
    try:
        num_embeddings, embed_dim = state["quantize.embedding.weight"].shape
        latent_channels = state["quant_conv.weight"].shape[1]
        base = state["encoder.conv_in.weight"].shape[0]
        levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.conv_blocks.")})
        multipliers = [state[f"encoder.conv_blocks.{level}.res.0.conv1.weight"].shape[0] // base for level in levels]
        res_blocks = len({k.split(".")[4] for k in state if k.startswith("encoder.conv_blocks.0.res.")})
    except KeyError as error:
        raise CheckpointError(f"not a LlamaGen VQ state dict (no {error.args[0]!r})") from None
    return JanusVQVAEConfig(
        embed_dim=embed_dim,
        num_embeddings=num_embeddings,
        latent_channels=latent_channels,
        base_channels=base,
        channel_multiplier=multipliers,
        num_res_blocks=res_blocks,
        num_patches=grid_size,
    )


def load_vq_state(vq: JanusVQVAE, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load of a LlamaGen VQ state dict (LlamaGen's names) into `vq`: every key present, none extra,
    every shape equal; only `quantize.codebook_used` is dropped. Errors name keys in LlamaGen's spelling."""
    state = {k: v for k, v in state.items() if k not in DROPPED_VQ_KEYS}
    expected = {llamagen_key(k): v for k, v in vq.state_dict().items()}
    check_state_dict(expected, state, source)
    vq.load_state_dict({janus_key(k): v for k, v in state.items()}, strict=True)


def set_grid(vq: JanusVQVAE, grid_size: int) -> JanusVQVAE:
    """The token grid `decode` expects (16 at 256 px, 32 at 512 px); the weights do not depend on it."""
    vq.config.num_patches = grid_size
    vq.quantize.quant_state_dims = [grid_size, grid_size]
    return vq


# Rows of latent vectors compared with the whole codebook at once: bounds the (rows, codebook size) distance
# matrix (4096 x 16384 float32 = 256 MiB for VQ-16) whatever the batch; rows are independent, so the codes
# do not depend on it.
LOOKUP_ROWS = 4096


@dataclass
class VQEncoding:
    """What `quantize_images` computes, for a batch of B images of h x w latent cells (`h = H / stride`).

    `latent`: `quant_conv(encoder(pixels))` `(B, D, h, w)`, before the lookup (D = codebook dimension);
    `codes`: `(B, h*w)` long, row-major over the latent grid (the layout `JanusVQVAE.decode` takes);
    `quantized`: the L2-normalised codebook entries of `codes` `(B, D, h, w)`, what the decoder is fed."""

    latent: torch.Tensor
    codes: torch.Tensor
    quantized: torch.Tensor


def nearest_codes(latent: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """LlamaGen's lookup (`VectorQuantizer` with `codebook_l2_norm`): latent vectors `(N, D)` and codebook
    `(K, D)` both L2-normalised, the code at the smallest squared Euclidean distance, `(N,)` long.

    The distance is expanded as |z|^2 + |e|^2 - 2 z.e, as the reference computes it, so that near-ties round
    the same way; on unit vectors it ranks codes exactly as cosine similarity does. Computed in at least
    float32 even for a half-precision VQ, where rounding would otherwise decide close calls."""
    dtype = torch.promote_types(latent.dtype, torch.float32)
    latent = F.normalize(latent.to(dtype), p=2, dim=-1)
    codebook = F.normalize(codebook.to(dtype), p=2, dim=-1)
    codebook_norms = codebook.pow(2).sum(dim=-1)  # (K,)
    codes = []
    for rows in latent.split(LOOKUP_ROWS):
        distances = rows.pow(2).sum(dim=-1, keepdim=True) + codebook_norms - 2 * rows @ codebook.T  # (n, K)
        codes.append(distances.argmin(dim=-1))
    return torch.cat(codes) if codes else torch.zeros(0, dtype=torch.long, device=latent.device)


@torch.no_grad()
def quantize_images(vq: JanusVQVAE, images: torch.Tensor) -> VQEncoding:
    """Pixels `(B, 3, H, W)` in [0, 1] -> LlamaGen's encoding (see `VQEncoding`), on the VQ's device and dtype.

    LlamaGen's VQ takes pixels in [-1, 1] (its training and code-extraction scripts normalise with mean = std =
    0.5), so the images are mapped there first. The encoder and `quant_conv` are the module's own; the lookup is
    `nearest_codes`."""
    weight = vq.quant_conv.weight
    pixels = images.to(device=weight.device, dtype=weight.dtype) * 2 - 1
    latent = vq.quant_conv(vq.encoder(pixels))  # (B, D, h, w)
    batch, dim, height, width = latent.shape
    flat = latent.permute(0, 2, 3, 1).reshape(-1, dim)  # (B*h*w, D), row-major over the grid
    codes = nearest_codes(flat, vq.quantize.embedding.weight).view(batch, height * width)
    entries = F.normalize(vq.quantize.embedding.weight, p=2, dim=-1)[codes]  # (B, h*w, D)
    quantized = entries.view(batch, height, width, dim).permute(0, 3, 1, 2).contiguous()
    return VQEncoding(latent=latent, codes=codes, quantized=quantized.to(latent.dtype))
