"""`rlhf-img convert llamagen`: LlamaGen's released `.pt` files -> this project's safetensors layout."""

from __future__ import annotations

import os

from ..registry import register_converter
from ..shared_loading import save_converted
from .loading import RELEASED_STAGE1_FILES, load


def convert_released(checkpoint: str, output_dir: str, family_config: dict | None = None, dtype: str = "bfloat16") -> str:
    """Released LlamaGen files -> this project's layout in `output_dir` (safetensors throughout): the GPT as a
    transformers model (`config.json`, `model.safetensors`), `vq/`, `llamagen.json` and the T5 tokenizer. The
    T5 encoder stays where `text_encoder` points. Needed for full fine-tuning with a KL term (TRL rebuilds the
    reference model from the saved transformers folder)."""
    return save_converted(load(checkpoint, dtype=dtype, family_config=family_config), output_dir)


@register_converter(
    "llamagen", family="llamagen",
    help="a folder with LlamaGen's t2i_*.pt and vq_*.pt (or the hub repo peizesun/llamagen_t2i) -> OUT loadable "
    "with model_family llamagen (GPT as a transformers model, vq/, llamagen.json, T5 tokenizer); --family_config: "
    "see LlamaGenFamilyConfig (default: the folder's t2i_*.pt / vq_*.pt; for a hub repo the 256 px stage-1 files); "
    "--dtype: of the written GPT. The .pt files are read with torch.load(weights_only=True), which refuses anything "
    "but tensors and plain containers.",
)
def convert_llamagen(source: str, output_dir: str, options) -> str:
    family = options.family_config  # a mapping, or None
    if family is None and not os.path.isdir(source):
        family = RELEASED_STAGE1_FILES  # a hub repo (peizesun/llamagen_t2i): the 256 px stage-1 files
    out = convert_released(source, output_dir, family, dtype=options.dtype)
    return f"{out} (config.json, model.safetensors, llamagen.json, vq/, tokenizer)"
