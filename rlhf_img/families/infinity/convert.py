"""`rlhf-img convert infinity`: Infinity's released `.pth` files -> this project's safetensors layout."""

from __future__ import annotations

from ..registry import register_converter
from ..shared_loading import save_converted
from .loading import RELEASED_2B_FILES, load


@register_converter(
    "infinity",
    family="infinity",
    help="a folder or hub repo with Infinity's .pth files (e.g. FoundationVision/Infinity) -> OUT loadable with "
    "model_family infinity and no family_config (transformer as a transformers model, vae/, infinity.json, T5 "
    "tokenizer); --family_config: the released files as YAML/JSON, default '{size: 2b, transformer: "
    "infinity_2b_reg.pth, vae: infinity_vae_d32reg.pth, text_encoder: google/flan-t5-xl}'; --dtype: of the written "
    "transformer. The .pth files are read with torch.load(weights_only=True), which refuses anything but tensors "
    "and plain containers.",
)
def convert_infinity(source: str, output_dir: str, options) -> str:
    family = options.family_config or RELEASED_2B_FILES
    # the transformer as a transformers model: TRL rebuilds a full-fine-tuning KL reference from that folder
    out = save_converted(load(source, dtype=options.dtype, family_config=family), output_dir)
    return f"{out} (config.json, model.safetensors, infinity.json, vae/, tokenizer)"
