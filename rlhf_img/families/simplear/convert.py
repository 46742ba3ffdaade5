"""`rlhf-img convert cosmos`: NVIDIA's Cosmos tokenizer TorchScript files -> this project's safetensors layout
(the conversion itself is `cosmos.convert_jit_to_safetensors`, next to the modules whose state dicts it checks)."""

from __future__ import annotations

from ...checkpoints import read_json_file
from ..registry import register_converter
from .configuration import CosmosConfig
from .cosmos import convert_jit_to_safetensors


@register_converter(
    "cosmos",
    family="simplear",
    help="a folder or hub repo with NVIDIA's Cosmos tokenizer TorchScript files (encoder.jit + decoder.jit, e.g. "
    "nvidia/Cosmos-1.0-Tokenizer-DV8x16x16) -> OUT with config.json, encoder.safetensors, decoder.safetensors "
    "(checked by a strict load into our modules; written in the published dtype; --config: a Cosmos config.json "
    "for non-default architectures). The .jit files are opened with torch.jit.load: TorchScript's own runtime "
    "compiles their TorchScript code (no Python pickle), and only their state dicts are kept; their forward is "
    "never called.",
)
def convert_cosmos(source: str, output_dir: str, options) -> str:
    config = CosmosConfig.from_dict(read_json_file(options.config), options.config) if options.config else None
    out = convert_jit_to_safetensors(source, output_dir, config=config)
    return f"{out}/config.json, encoder.safetensors, decoder.safetensors"
