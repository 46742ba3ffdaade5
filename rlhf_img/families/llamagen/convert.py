"""`rlhf-img convert llamagen`: LlamaGen's released `.pt` files -> this project's safetensors layout."""

from __future__ import annotations

import os

from ..registry import register_converter
from ..shared_loading import save_converted
from .loading import RELEASED_STAGE1_FILES, load


@register_converter(
    "llamagen",
    family="llamagen",
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
    # the GPT as a transformers model: TRL rebuilds a full-fine-tuning KL reference from that folder
    out = save_converted(load(source, dtype=options.dtype, family_config=family), output_dir)
    return f"{out} (config.json, model.safetensors, llamagen.json, vq/, tokenizer)"
