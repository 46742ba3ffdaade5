"""`simplear`: SimpleAR (Qwen2.5 LM + NVIDIA's Cosmos DV8x16x16 codes), on `causal_vq`'s policy and sampler.

`loading.py` (the released layout and this project's `simplear.json`), `cosmos.py` + `cosmos_layers.py` (the
Cosmos tokenizer, our implementation with the published state-dict layout), `sft.py` (upstream SFT on
image/caption pairs), `tiny.py` (stand-ins in the released format).
"""

from __future__ import annotations

from ...checkpoints import has_file, resolve_subpath
from ..registry import CONFIG_MATCH, LAYOUT_MATCH, NO_MATCH, StandIn, register_converter, register_family
from . import loading
from .cosmos import CosmosConfig, CosmosDiscreteTokenizer
from .loading import CONFIG_NAME, SPECIAL_TOKENS, SimpleARPolicy

TOKENIZER_FILES = ("tokenizer_config.json", "added_tokens.json", "special_tokens_map.json", "tokenizer.json")


def detect(checkpoint: str, revision: str | None = None) -> int:
    """`simplear.json` (a folder this project wrote), else a tokenizer that declares SimpleAR's special tokens."""
    if has_file(checkpoint, CONFIG_NAME, revision):
        return CONFIG_MATCH
    for name in TOKENIZER_FILES:
        path = resolve_subpath(checkpoint, name, revision=revision, required=False)
        if path is not None:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            if all(token in text for token in SPECIAL_TOKENS):
                return LAYOUT_MATCH
    return NO_MATCH


def _sft():
    from .sft import SimpleARSFTConfig, run_simplear_sft

    return SimpleARSFTConfig, run_simplear_sft


def stand_in(folder: str) -> StandIn:
    from .tiny import save_tiny_simplear

    lm, cosmos = save_tiny_simplear(folder, seed=0)
    return StandIn(lm, {"visual_tokenizer": cosmos, "dtype": "float32", "family_config": {"resolution": 32}})


@register_converter(
    "cosmos", family="simplear",
    help="a folder or hub repo with NVIDIA's Cosmos tokenizer TorchScript files (encoder.jit + decoder.jit, e.g. "
    "nvidia/Cosmos-1.0-Tokenizer-DV8x16x16) -> OUT with config.json, encoder.safetensors, decoder.safetensors "
    "(checked by a strict load into our modules; written in the published dtype; --config: a Cosmos config.json "
    "for non-default architectures). The .jit files are opened with torch.jit.load: TorchScript's own runtime "
    "compiles their TorchScript code (no Python pickle), and only their state dicts are kept; their forward is "
    "never called.",
)
def convert_cosmos(source: str, output_dir: str, options) -> str:
    from ...checkpoints import read_json_file
    from .cosmos import CosmosConfig, convert_jit_to_safetensors

    config = CosmosConfig.from_dict(read_json_file(options.config), options.config) if options.config else None
    out = convert_jit_to_safetensors(source, output_dir, config=config)
    return f"{out}/config.json, encoder.safetensors, decoder.safetensors"


load = register_family(
    "simplear",
    stand_in=stand_in,
    detect=detect,
    looks_for=f"{CONFIG_NAME}, or a tokenizer with SimpleAR's special tokens {' '.join(SPECIAL_TOKENS)}",
    help="SimpleAR: Qwen2.5 + Cosmos DV8x16x16 codes (released Daniel0724/SimpleAR-* folders)",
    sft=_sft,
)(loading.load)

__all__ = ["CONFIG_NAME", "CosmosConfig", "CosmosDiscreteTokenizer", "SimpleARPolicy", "load"]
