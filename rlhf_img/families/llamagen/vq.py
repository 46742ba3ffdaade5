"""LlamaGen's VQ tokenizer as transformers' `JanusVQVAE`.

Janus's VQ model is LlamaGen's `tokenizer/tokenizer_image/vq_model.py` reformatted, and transformers ships it
as `JanusVQVAE`: the same taming-style encoder/decoder (GroupNorm(32), swish, attention at the lowest
resolution and in the middle block), the same L2-normalised codebook lookup. A LlamaGen state dict loads into
it after a rename of the container modules (`conv_blocks` -> `down`/`up`, `res` -> `block`, `mid.0/1/2` ->
`mid.block_1/attn_1/block_2`); the only key left over is the training-time usage counter
`quantize.codebook_used`, which is dropped. `tests/test_llamagen_parity.py` checks the decoded pixels against
the reference's `decode_code` on identical weights.
"""

from __future__ import annotations

import re

import torch
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
        embed_dim=embed_dim, num_embeddings=num_embeddings, latent_channels=latent_channels, base_channels=base,
        channel_multiplier=multipliers, num_res_blocks=res_blocks, num_patches=grid_size,
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
