"""`rlhf-img convert infinity`: Infinity's released `.pth` files -> this project's safetensors layout."""

from __future__ import annotations

from ..registry import register_converter
from ..shared_loading import save_converted
from .loading import RELEASED_2B_FILES, load


def convert_released(checkpoint: str, output_dir: str, family_config: dict, dtype: str = "bfloat16") -> str:
    """Released Infinity files -> this project's layout in `output_dir` (safetensors throughout): the
    transformer as a transformers model (`config.json`, `model.safetensors`), `vae/`, `infinity.json` and the
    T5 tokenizer. The T5 encoder stays where `text_encoder` points. Needed for full fine-tuning with a KL
    term (TRL rebuilds the reference model from the saved transformers folder)."""
    return save_converted(load(checkpoint, dtype=dtype, family_config=family_config), output_dir)


@register_converter(
    "infinity", family="infinity",
    help="a folder or hub repo with Infinity's .pth files (e.g. FoundationVision/Infinity) -> OUT loadable with "
    "model_family infinity and no family_config (transformer as a transformers model, vae/, infinity.json, T5 "
    "tokenizer); --family_config: the released files as YAML/JSON, default '{size: 2b, transformer: "
    "infinity_2b_reg.pth, vae: infinity_vae_d32reg.pth, text_encoder: google/flan-t5-xl}'; --dtype: of the written "
    "transformer. The .pth files are read with torch.load(weights_only=True), which refuses anything but tensors "
    "and plain containers.",
)
def convert_infinity(source: str, output_dir: str, options) -> str:
    family = options.family_config or RELEASED_2B_FILES
    out = convert_released(source, output_dir, family, dtype=options.dtype)
    return f"{out} (config.json, model.safetensors, infinity.json, vae/, tokenizer)"
