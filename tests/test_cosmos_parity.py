"""Our Cosmos tokenizer (rlhf_img/families/simplear/cosmos.py) against NVIDIA's Cosmos-Tokenizer code: the
outputs recorded in tests/data/cosmos_parity by tools/parity/cosmos.py (see the README.md there) replayed on
identical weights, loaded through our loaders from the reference's own state-dict layout."""

import hashlib
import json
import os
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_loader_tolerance import COSMOS_UNUSED_KEYS, write_torchscript

from rlhf_img.families.simplear.cosmos import CosmosConfig, CosmosDiscreteTokenizer

DATA = os.path.join(os.path.dirname(__file__), "data", "cosmos_parity")
FSQ_CODEBOOK = {"encoder": "quantizer.implicit_codebook", "decoder": "inv_quant.quantizer.implicit_codebook"}
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")


def _close(ours: torch.Tensor, reference: torch.Tensor, ulps: int = 128) -> tuple[float, float]:
    """(max abs difference, its bound): `ulps` float32 rounding steps at the largest reference value, i.e.
    1.5e-5 of the output's scale (128 * 2**-23). Measured: at most 1.3e-6 of it (9.5e-6 on decoded pixels of
    magnitude 7.4, 2.4e-7 on latents of magnitude 0.68)."""
    bound = ulps * torch.finfo(torch.float32).eps * float(reference.abs().max())
    return float((ours.double() - reference.double()).abs().max()), bound


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(os.path.join(DATA, "reference.safetensors"))


@pytest.fixture(scope="module")
def config() -> CosmosConfig:
    with open(os.path.join(DATA, "config.json")) as f:
        return CosmosConfig(**json.load(f))


def reference_state(part: str, config: CosmosConfig) -> dict[str, torch.Tensor]:
    """The reference's state dict of one half as its traced module holds it. The files leave out the FSQ's
    64,000 x 6 codebook (a function of the levels); ours is put back once its hash matches the reference's."""
    state = load_file(os.path.join(DATA, f"{part}.safetensors"))
    with safe_open(os.path.join(DATA, "reference.safetensors"), "pt") as f:
        hashes = json.loads(f.metadata()["fsq_codebook_sha256"])
    ours = getattr(CosmosDiscreteTokenizer(config), part).state_dict()[FSQ_CODEBOOK[part]]
    assert hashlib.sha256(ours.float().contiguous().numpy().tobytes()).hexdigest() == hashes[FSQ_CODEBOOK[part]]
    return {**state, FSQ_CODEBOOK[part]: ours}


@pytest.fixture(scope="module", params=["safetensors", "torchscript"])
def loaded(request, config, tmp_path_factory) -> CosmosDiscreteTokenizer:
    """Our tokenizer loaded by `from_pretrained` from the reference's state dicts: save_pretrained's layout
    (config.json + safetensors) or the published one (encoder.jit + decoder.jit)."""
    folder = tmp_path_factory.mktemp(request.param)
    for part in ("encoder", "decoder"):
        state = reference_state(part, config)
        if request.param == "safetensors":
            save_file(state, str(folder / f"{part}.safetensors"))
        else:
            write_torchscript(state, str(folder / f"{part}.jit"))
    if request.param == "safetensors":
        shutil.copy(os.path.join(DATA, "config.json"), folder / "config.json")
        return CosmosDiscreteTokenizer.from_pretrained(str(folder))
    return CosmosDiscreteTokenizer.from_pretrained(str(folder), config=config)


def _video(pixels: torch.Tensor) -> torch.Tensor:
    x = pixels.float() / 255 * 2 - 1  # as the harness maps them
    return x.unsqueeze(2) if x.dim() == 4 else x


def test_the_recorded_files_hold_the_reference_layout_with_its_unused_convs(config):
    for part in ("encoder", "decoder"):
        ours = set(getattr(CosmosDiscreteTokenizer(config), part).state_dict())
        recorded = set(load_file(os.path.join(DATA, f"{part}.safetensors")))
        assert recorded - ours == set(COSMOS_UNUSED_KEYS[part])
        assert ours - recorded == {FSQ_CODEBOOK[part]}


@pytest.mark.parametrize("name", ["images", "video"])
@torch.no_grad()
def test_encoder_latents_and_indices_match_the_reference(loaded, reference, name):
    video = _video(reference[f"{name}_uint8"])
    latents = loaded.encoder.quant_conv(loaded.encoder.encoder(video))
    difference, bound = _close(latents, reference[f"{name}_latents"])
    assert difference <= bound, (difference, bound)
    indices, codes = loaded.encoder(video)
    # FSQ rounds each latent channel: an index could only differ if a latent sat within float error of a
    # rounding boundary; none does here (0 of 32 image tokens and 0 of 8 video tokens differ)
    assert torch.equal(indices, reference[f"{name}_indices"].long())
    assert torch.equal(codes, reference[f"{name}_codes"])
    if name == "images":
        assert torch.equal(loaded.encode(reference["images_uint8"].float() / 255), indices[:, 0])


@pytest.mark.parametrize("name", ["images", "video", "random_indices"])
@torch.no_grad()
def test_decoder_outputs_match_the_reference(loaded, reference, name):
    indices = reference["random_indices"] if name == "random_indices" else reference[f"{name}_indices"]
    decoded = loaded.decoder(indices.long())
    expected = reference[f"{name}_decoded"]
    assert decoded.shape == expected.shape
    difference, bound = _close(decoded, expected)
    assert difference <= bound, (difference, bound)
