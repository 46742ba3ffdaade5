"""Our LlamaGen VQ encoding against FoundationVision/LlamaGen's on identical random weights: the encoder latent,
the L2-normalised nearest-code lookup, the quantized latent and the autoencoded pixels, in float32 and float64.

The reference outputs are `tests/data/llamagen_parity/encoder_reference.safetensors`, written by
`tools/parity/llamagen.py` (its docstring says how) with the VQ weights of `vq.safetensors` next to it: the
reference's `quant_conv(encoder(x))`, `encode(x)` (quantized latent, indices) and `forward(x)` for four random
8x8 images `x = images * 2 - 1`. Ours is `quantize_images` (what `LlamaGenPolicy.encode_images` runs) on the
same `images` in [0, 1], and our `decode` of our codes.
"""

import copy
import json
import os

import pytest
import torch
from numerics import assert_close_scaled
from safetensors.torch import load_file
from transformers import JanusVQVAE

from rlhf_img.checkpoints import CheckpointError
from rlhf_img.families.llamagen.vq import (
    DROPPED_VQ_KEYS,
    infer_vq_config,
    llamagen_key,
    load_vq_state,
    quantize_images,
    vq_16,
)

DATA = os.path.join(os.path.dirname(__file__), "data", "llamagen_parity")


def _vq_state() -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(os.path.join(DATA, "vq.safetensors")).items()}  # float16-exact weights


@pytest.fixture(scope="module")
def replayed():
    with open(os.path.join(DATA, "cfg.json")) as f:
        grid = json.load(f)["grid"]
    state = _vq_state()
    vq = JanusVQVAE(infer_vq_config(state, grid)).eval()
    load_vq_state(vq, state, DATA)
    reference = load_file(os.path.join(DATA, "encoder_reference.safetensors"))
    ours = {}
    for suffix, dtype in (("", torch.float32), ("_float64", torch.float64)):
        module = copy.deepcopy(vq).to(dtype)
        encoding = quantize_images(module, reference["images"].to(dtype))
        with torch.no_grad():
            autoencoded = module.decode(encoding.codes)
        ours.update(
            {
                f"latent{suffix}": encoding.latent,
                f"codes{suffix}": encoding.codes,
                f"quantized{suffix}": encoding.quantized,
                f"autoencoded{suffix}": autoencoded,
            }
        )
    return ours, reference


def test_released_vq_16_encoder_keys_are_all_loaded_strictly():
    with open(os.path.join(DATA, "llamagen_reference_keys", "vq_16_keys.json")) as f:
        released = {k: v for k, v in json.load(f).items() if k not in DROPPED_VQ_KEYS}
    with torch.device("meta"):
        ours = {llamagen_key(k): list(v.shape) for k, v in JanusVQVAE(vq_16()).state_dict().items()}
    encoding_side = {k: v for k, v in released.items() if k.startswith(("encoder.", "quant_conv.", "quantize."))}
    assert len(encoding_side) == 147  # 144 encoder tensors, quant_conv weight and bias, the codebook
    assert {k: v for k, v in encoding_side.items() if ours.get(k) != v} == {}


def test_a_vq_file_without_an_encoder_tensor_is_refused_naming_it():
    state = _vq_state()
    del state["encoder.conv_blocks.1.res.0.conv1.weight"]
    vq = JanusVQVAE(infer_vq_config(_vq_state(), grid_size=4))
    with pytest.raises(CheckpointError, match=r"missing 1: \['encoder\.conv_blocks\.1\.res\.0\.conv1\.weight'\]"):
        load_vq_state(vq, state, "vq.safetensors")


@pytest.mark.parametrize("suffix", ["", "_float64"])
def test_codes_equal_the_reference_encode_indices(replayed, suffix):
    ours, reference = replayed
    assert ours[f"codes{suffix}"].dtype == torch.long and ours[f"codes{suffix}"].shape == (4, 16)
    assert torch.equal(ours[f"codes{suffix}"], reference[f"codes{suffix}"])
    # the harness's closest call between the nearest and second-nearest code is 1.7e-3 (distance of unit
    # vectors), four orders of magnitude above float32 rounding: equality is not luck


def test_float32_latents_match_the_reference(replayed):
    ours, reference = replayed
    assert_close_scaled(ours["latent"], reference["latent"], relative=1e-5)  # measured 0 (values up to 0.75)
    # the reference returns z + (z_q - z) (straight-through), ours the unit codebook entry: a rounding apart
    assert_close_scaled(ours["quantized"], reference["quantized"], relative=1e-5)  # measured 3.0e-8 at 0.78


def test_float64_latents_match_the_reference(replayed):
    ours, reference = replayed
    assert ours["latent_float64"].dtype == torch.float64
    assert_close_scaled(ours["latent_float64"], reference["latent_float64"], relative=1e-12)  # measured 0
    assert_close_scaled(ours["quantized_float64"], reference["quantized_float64"], relative=1e-12)  # measured 5.6e-17


@pytest.mark.parametrize(("suffix", "relative"), [("", 2e-5), ("_float64", 1e-12)])
def test_decoding_our_codes_equals_the_reference_autoencoding(replayed, suffix, relative):
    """Our `decode(encode(x))` against the reference's `forward(x)` (decoder of its straight-through latent)."""
    ours, reference = replayed
    assert ours[f"autoencoded{suffix}"].shape == (4, 3, 8, 8)
    # measured 2.6e-6 (float32) and 6.3e-15 (float64) on values up to 1.7
    assert_close_scaled(ours[f"autoencoded{suffix}"], reference[f"autoencoded{suffix}"], relative=relative)
