"""The strict loaders' two tolerated differences from our own state dicts, and nothing more:

* Cosmos: NVIDIA's Cosmos-Tokenizer code builds two convs that the DV8x16x16 forward never calls
  (`encoder.down.1.downsample.conv2.conv3d.*`, `decoder.up.2.upsample.conv1.conv3d.*`); a `.jit` or state dict
  holding them loads (they are dropped), any other extra key still fails.
* Infinity: a transformer state dict without the `zero_k_bias` buffers (constant zeros) loads, with identical
  outputs; any other missing key still fails.
"""

import json
import os
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rlhf_img.checkpoints import CheckpointError
from rlhf_img.families.infinity.codes import ScaleCodes
from rlhf_img.families.infinity.loading import _load_released_transformer, load_transformer_state
from rlhf_img.families.infinity.transformer import InfinityConfig, InfinityTransformer
from rlhf_img.families.simplear.cosmos import CosmosConfig, CosmosDiscreteTokenizer, reference_only_keys

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")
COSMOS_UNUSED_KEYS = {
    "encoder": ("encoder.down.1.downsample.conv2.conv3d.weight", "encoder.down.1.downsample.conv2.conv3d.bias"),
    "decoder": ("decoder.up.2.upsample.conv1.conv3d.weight", "decoder.up.2.upsample.conv1.conv3d.bias"),
}
INFINITY_DATA = os.path.join(os.path.dirname(__file__), "data", "infinity_parity", "square")


def write_torchscript(state: dict[str, torch.Tensor], path: str) -> None:
    """A TorchScript archive whose state dict is `state` (nested modules named after the key paths): what our
    `.jit` loader reads from the published files, without any code of theirs."""
    root = nn.Module()
    for key, tensor in state.items():
        *path_parts, leaf = key.split(".")
        module = root
        for part in path_parts:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, tensor.clone())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(root), path)


# ------------------------------------------------------------------------------------------------- Cosmos
@pytest.fixture(scope="module")
def tiny() -> CosmosDiscreteTokenizer:
    torch.manual_seed(0)
    model = CosmosDiscreteTokenizer(CosmosConfig.tiny()).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def _with_unused_convs(part: str, state: dict[str, torch.Tensor], config: CosmosConfig) -> dict[str, torch.Tensor]:
    """`state` plus the conv NVIDIA's code builds and never calls: a (C, C, 3, 1, 1) time conv (and its bias) at
    the level's width C, encoder level 1 / decoder level 2."""
    width = config.channels * config.channels_mult[1 if part == "encoder" else 2]
    weight_key, bias_key = COSMOS_UNUSED_KEYS[part]
    return {**state, weight_key: torch.randn(width, width, 3, 1, 1), bias_key: torch.randn(width)}


def _write(folder, layout: str, states: dict[str, dict[str, torch.Tensor]], config: CosmosConfig) -> None:
    os.makedirs(folder, exist_ok=True)
    for part, state in states.items():
        if layout == "torchscript":
            write_torchscript(state, os.path.join(folder, f"{part}.jit"))
        else:
            save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(folder, f"{part}.safetensors"))
    if layout == "safetensors":
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump({"channels": config.channels, "z_channels": config.z_channels}, f)


def _load(folder, layout: str, config: CosmosConfig) -> CosmosDiscreteTokenizer:
    return CosmosDiscreteTokenizer.from_pretrained(str(folder), config=config if layout == "torchscript" else None)


def test_the_reference_only_keys_of_dv8x16x16_are_exactly_the_four_unused_conv_tensors():
    assert reference_only_keys(CosmosConfig.dv8x16x16()) == {
        part: set(keys) for part, keys in COSMOS_UNUSED_KEYS.items()
    }
    assert reference_only_keys(CosmosConfig.tiny()) == reference_only_keys(CosmosConfig.dv8x16x16())


@pytest.mark.parametrize("layout", ["safetensors", "torchscript"])
def test_cosmos_loads_with_and_without_the_unused_reference_convs_with_identical_outputs(tiny, tmp_path, layout):
    config = tiny.config
    plain = {part: getattr(tiny, part).state_dict() for part in ("encoder", "decoder")}
    _write(tmp_path / "ours", layout, plain, config)
    _write(tmp_path / "reference", layout, {p: _with_unused_convs(p, s, config) for p, s in plain.items()}, config)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    indices = torch.randint(0, 64000, (2, 4, 4), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for name in ("ours", "reference"):
            loaded = _load(tmp_path / name, layout, config)
            assert torch.equal(loaded.encode(images), tiny.encode(images)), name
            assert torch.equal(loaded.decode(indices), tiny.decode(indices)), name


@pytest.mark.parametrize("layout", ["safetensors", "torchscript"])
@pytest.mark.parametrize(
    "part, extra",
    [
        ("encoder", "encoder.down.0.downsample.conv4.conv3d.weight"),
        ("decoder", "decoder.up.1.upsample.conv1.conv3d.scale"),
    ],
)
def test_cosmos_any_other_extra_key_still_fails_naming_it(tiny, tmp_path, layout, part, extra):
    config = tiny.config
    states = {p: _with_unused_convs(p, getattr(tiny, p).state_dict(), config) for p in ("encoder", "decoder")}
    states[part][extra] = torch.zeros(3)
    _write(tmp_path, layout, states, config)
    with pytest.raises(CheckpointError, match="does not fit") as error:
        _load(tmp_path, layout, config)
    message = str(error.value)
    assert extra in message
    assert not any(key in message for keys in COSMOS_UNUSED_KEYS.values() for key in keys), message


# ----------------------------------------------------------------------------------------------- Infinity
def _tiny_infinity():
    with open(os.path.join(INFINITY_DATA, "cfg.json")) as f:
        cfg = json.load(f)
    config = InfinityConfig(
        depth=cfg["depth"],
        embed_dim=cfg["embed_dim"],
        num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_ratio"],
        bits_per_token=cfg["codebook_dim"],
        text_channels=cfg["text_channels"],
        text_maxlen=cfg["text_maxlen"],
        block_chunks=cfg["block_chunks"],
    )
    return cfg, config, load_file(os.path.join(INFINITY_DATA, "model.safetensors"))


@torch.no_grad()
def _logits(model: InfinityTransformer, cfg: dict) -> torch.Tensor:
    reference = load_file(os.path.join(INFINITY_DATA, "reference.safetensors"))
    codes = ScaleCodes([(h, w) for _, h, w in cfg["scale_schedule"]], cfg["codebook_dim"])
    text = reference["text_features"]
    mask = torch.arange(text.size(1))[None] < reference["text_lens"][:, None]
    actions = reference["bit_labels"].reshape(text.size(0), -1).long()
    return model.eval()(text, mask, codes.teacher_inputs(actions), codes.grids)


def _without(state: dict[str, torch.Tensor], *suffixes: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith(suffixes)}


def test_infinity_loads_without_the_zero_k_bias_buffers_with_identical_outputs(tmp_path):
    cfg, config, state = _tiny_infinity()
    zero_k_bias = [k for k in state if k.endswith(".zero_k_bias")]
    assert len(zero_k_bias) == 2 * cfg["depth"] + 1  # self- and cross-attention per block, the text pool
    with_buffers, without_buffers = InfinityTransformer(config), InfinityTransformer(config)
    load_transformer_state(with_buffers, dict(state), "with")
    load_transformer_state(without_buffers, _without(state, ".zero_k_bias"), "without")
    assert all(torch.equal(without_buffers.state_dict()[k], torch.zeros_like(state[k])) for k in zero_k_bias)
    expected = _logits(with_buffers, cfg)
    assert torch.equal(_logits(without_buffers, cfg), expected)
    # a released file goes through the meta-device build, whose buffers must come from the file (or be made)
    torch.save(_without(state, ".zero_k_bias"), tmp_path / "released.pth")
    released = _load_released_transformer(str(tmp_path / "released.pth"), None, torch.float32, "released")
    assert torch.equal(_logits(released, cfg), expected)


@pytest.mark.parametrize("missing", ["head.bias", "block_chunks.1.module.0.sa.q_bias"])
def test_infinity_any_other_missing_key_still_fails_naming_it(tmp_path, missing):
    cfg, config, state = _tiny_infinity()
    state = _without(state, ".zero_k_bias", missing)
    with pytest.raises(CheckpointError, match="missing 1") as error:
        load_transformer_state(InfinityTransformer(config), state, "tiny")
    assert missing in str(error.value) and "zero_k_bias" not in str(error.value)
    torch.save(state, tmp_path / "released.pth")
    with pytest.raises(CheckpointError, match="missing 1") as error:
        _load_released_transformer(str(tmp_path / "released.pth"), None, torch.float32, "released")
    assert missing in str(error.value) and "zero_k_bias" not in str(error.value)
