"""Our Cosmos DV8x16x16 tokenizer (rlhf_img/families/simplear/cosmos.py): the published checkpoint layout, loading from
TorchScript and safetensors, FSQ, and image shapes; these tests use a tiny config with the same module tree.
Numerical parity with NVIDIA's code: tests/test_cosmos_parity.py replays outputs recorded by
tools/parity/cosmos.py."""

import copy
import json
import os
import warnings

import pytest
import torch
from conftest import REPO
from numerics import assert_close_scaled
from safetensors.torch import load_file

from rlhf_img.checkpoints import CheckpointError
from rlhf_img.families.simplear.cosmos import (
    FSQ,
    CosmosConfig,
    CosmosDiscreteTokenizer,
    convert_jit_to_safetensors,
    load_jit_state_dict,
)

KEYS_FILE = os.path.join(REPO, "tests", "data", "cosmos_dv8x16x16_keys.json")
# the published tokenizer ships as TorchScript, which torch >= 2.9 calls deprecated
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny() -> CosmosDiscreteTokenizer:
    torch.manual_seed(0)
    model = CosmosDiscreteTokenizer(CosmosConfig.tiny()).eval()
    with torch.no_grad():  # norms start at weight 1, bias 0: move every parameter so round trips test them
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


@pytest.fixture(scope="module")
def tiny_jit_dir(tiny, tmp_path_factory) -> str:
    """Our tiny halves traced to TorchScript, in the hub repo's layout (whose config.json is not ours)."""
    folder = tmp_path_factory.mktemp("cosmos_jit")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        video = torch.rand(1, 3, 1, 64, 64) * 2 - 1
        indices = torch.randint(0, 64000, (1, 1, 4, 4))
        torch.jit.save(torch.jit.trace(tiny.encoder, video, check_trace=False), str(folder / "encoder.jit"))
        torch.jit.save(torch.jit.trace(tiny.decoder, indices, check_trace=False), str(folder / "decoder.jit"))
    (folder / "config.json").write_text(json.dumps({"architectures": ["CosmosTokenizer"]}))
    return str(folder)


def _images_and_indices(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 64, 64, generator=generator)
    return images, torch.randint(0, 64000, (2, 4, 4), generator=generator)


def test_full_size_modules_have_exactly_the_published_jit_keys_and_shapes():
    expected = json.load(open(KEYS_FILE))
    with torch.device("meta"):
        model = CosmosDiscreteTokenizer(CosmosConfig.dv8x16x16())
    for part in ("encoder", "decoder"):
        ours = [[key, list(tensor.shape)] for key, tensor in getattr(model, part).state_dict().items()]
        assert ours == expected[part], part


def test_tiny_tokenizer_loads_from_published_style_jit_files_with_identical_outputs(tiny, tiny_jit_dir):
    loaded = CosmosDiscreteTokenizer.from_pretrained(tiny_jit_dir, config=CosmosConfig.tiny())
    assert list(load_jit_state_dict(os.path.join(tiny_jit_dir, "decoder.jit"))) == list(tiny.decoder.state_dict())
    images, indices = _images_and_indices()
    with torch.no_grad():
        assert torch.equal(loaded.encode(images), tiny.encode(images))
        assert torch.equal(loaded.decode(indices), tiny.decode(indices))


def test_save_pretrained_round_trip_is_exact(tiny, tmp_path):
    tiny.save_pretrained(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "decoder.safetensors", "encoder.safetensors"]
    loaded = CosmosDiscreteTokenizer.from_pretrained(str(tmp_path))
    assert loaded.config == tiny.config
    for key, tensor in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    images, indices = _images_and_indices()
    with torch.no_grad():
        assert torch.equal(loaded.encode(images), tiny.encode(images))
        assert torch.equal(loaded.decode(indices), tiny.decode(indices))


def test_convert_jit_to_safetensors_keeps_the_weights_and_their_published_dtype(tiny_jit_dir, tmp_path):
    bf16_dir = tmp_path / "bf16_jit"  # the published files hold bf16 weights
    bf16_dir.mkdir()
    for name in ("encoder.jit", "decoder.jit"):
        torch.jit.save(torch.jit.load(os.path.join(tiny_jit_dir, name)).to(torch.bfloat16), str(bf16_dir / name))
    out = convert_jit_to_safetensors(str(bf16_dir), str(tmp_path / "converted"), config=CosmosConfig.tiny())
    written = load_file(os.path.join(out, "decoder.safetensors"))
    assert {tensor.dtype for tensor in written.values() if tensor.is_floating_point()} == {torch.bfloat16}
    from_jit = CosmosDiscreteTokenizer.from_pretrained(str(bf16_dir), config=CosmosConfig.tiny())
    converted = CosmosDiscreteTokenizer.from_pretrained(out)
    assert converted.config == CosmosConfig.tiny()
    images, indices = _images_and_indices()
    with torch.no_grad():
        assert torch.equal(converted.decode(indices), from_jit.decode(indices))
        assert torch.equal(converted.encode(images), from_jit.encode(images))


def test_loading_errors_name_the_missing_file_or_the_mismatch(tiny_jit_dir, tmp_path):
    with pytest.raises(CheckpointError, match="decoder.jit"):
        CosmosDiscreteTokenizer.from_pretrained(str(tmp_path))
    with pytest.raises(CheckpointError, match="does not fit"):
        CosmosDiscreteTokenizer.from_pretrained(tiny_jit_dir, config=CosmosConfig.tiny(channels=4))


def test_fsq_indices_to_codes_to_indices_is_the_identity_over_all_64000_codes():
    fsq = FSQ((8, 8, 8, 5, 5, 5))
    indices = torch.arange(64000)
    codes = fsq.indices_to_codes(indices)  # (64000, 6)
    assert codes.shape == (64000, 6) and torch.equal(fsq.implicit_codebook, codes)
    assert torch.equal(fsq.codes_to_indices(codes), indices)
    assert torch.unique(codes, dim=0).shape[0] == 64000
    for channel, levels in enumerate((8, 8, 8, 5, 5, 5)):  # n / (L // 2) for integers n in [-(L // 2), L - 1 - L // 2]
        expected = torch.arange(levels) / (levels // 2) - 1
        assert torch.equal(torch.unique(codes[:, channel]), expected)
    assert codes.min() == -1 and codes.max() == 1
    # mixed radix, channel 0 least significant: index 1 and index 8 step channels 0 and 1 by one level
    assert fsq.indices_to_codes(torch.tensor(1)).tolist() == [-0.75, -1, -1, -1, -1, -1]
    assert fsq.indices_to_codes(torch.tensor(8)).tolist() == [-1, -0.75, -1, -1, -1, -1]


def test_fsq_quantizes_latents_onto_codebook_entries_with_matching_indices():
    fsq = FSQ((8, 8, 8, 5, 5, 5))
    indices, codes = fsq(3 * torch.randn(2, 6, 1, 4, 4, generator=torch.Generator().manual_seed(0)))
    assert indices.shape == (2, 1, 4, 4) and codes.shape == (2, 6, 1, 4, 4)
    assert torch.equal(fsq.implicit_codebook[indices].movedim(-1, 1), codes)


def test_a_64x64_image_becomes_a_4x4_grid_and_decodes_to_an_image_in_unit_range(tiny):
    images, _ = _images_and_indices()
    indices = tiny.encode(images)
    assert indices.shape == (2, 4, 4) and indices.dtype == torch.int64
    assert 0 <= indices.min() and indices.max() < 64000
    with torch.no_grad():
        decoded = tiny.decode(indices)
    assert decoded.shape == (2, 3, 64, 64) and decoded.dtype == torch.float32
    assert 0 <= decoded.min() and decoded.max() <= 1
    assert tiny.encode(torch.rand(1, 3, 64, 128)).shape == (1, 4, 8)


def test_decode_and_encode_reject_bad_inputs(tiny):
    with pytest.raises(ValueError, match="64000"):
        tiny.decode(torch.full((1, 4, 4), 64000))
    with pytest.raises(ValueError, match="multiples of 16"):
        tiny.encode(torch.rand(1, 3, 60, 64))


def test_tokens_of_the_first_frame_do_not_depend_on_later_frames(tiny):
    """Causality is exact arithmetic: in float64 the first frame's latents agree to rounding, on any CPU."""
    encoder = copy.deepcopy(tiny.encoder).double()
    video = torch.rand(1, 3, 9, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        latents = encoder.quant_conv(encoder.encoder(video))  # (1, 6, 2, 4, 4)
        first_frame_alone = encoder.quant_conv(encoder.encoder(video[:, :, :1]))  # (1, 6, 1, 4, 4)
    assert latents.shape == (1, 6, 2, 4, 4)
    assert_close_scaled(latents[:, :, :1], first_frame_alone, relative=1e-10)
