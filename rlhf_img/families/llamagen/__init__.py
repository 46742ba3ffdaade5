"""`llamagen`: LlamaGen text-to-image (FoundationVision/LlamaGen): GPT + Flan-T5-XL caption features + VQ-16.

`policy.py` (family config + policy: T5 features, KV-cached CFG sampling, teacher-forced log-probs, decoding),
`loading.py` (released `.pt` files with strict key checks, this project's layout, conversion), `gpt.py` (the
GPT, a transformers model), `vq.py` (the VQ-16 decoder as transformers' `JanusVQVAE`), `tiny.py` (stand-ins in
the released format).
"""

from __future__ import annotations

import glob
import os

from ...checkpoints import has_file, is_local
from ..registry import CONFIG_MATCH, LAYOUT_MATCH, NO_MATCH, StandIn, register_converter, register_family
from . import loading
from .loading import RELEASED_GPT_PATTERN
from .policy import FAMILY_CONFIG_NAME, LlamaGenFamilyConfig, LlamaGenPolicy


def detect(checkpoint: str, revision: str | None = None) -> int:
    """`llamagen.json` (a converted or trained folder), else a local folder of released `t2i_*.pt` files."""
    if has_file(checkpoint, FAMILY_CONFIG_NAME, revision):
        return CONFIG_MATCH
    if is_local(checkpoint) and glob.glob(os.path.join(checkpoint, RELEASED_GPT_PATTERN)):
        return LAYOUT_MATCH
    return NO_MATCH


def stand_in(folder: str) -> StandIn:
    from .tiny import save_tiny_llamagen, tiny_llamagen_family_config

    path = save_tiny_llamagen(folder, seed=0)
    return StandIn(path, {"dtype": "float32", "family_config": tiny_llamagen_family_config(path)},
                   ["wqkv", "wo", "w1", "w2", "w3"])


@register_converter(
    "llamagen", family="llamagen",
    help="a folder with LlamaGen's t2i_*.pt and vq_*.pt (or the hub repo peizesun/llamagen_t2i) -> OUT loadable "
    "with model_family llamagen (GPT as a transformers model, vq/, llamagen.json, T5 tokenizer); --family_config: "
    "see LlamaGenFamilyConfig (default: the folder's t2i_*.pt / vq_*.pt; for a hub repo the 256 px stage-1 files); "
    "--dtype: of the written GPT. The .pt files are read with torch.load(weights_only=True), which refuses anything "
    "but tensors and plain containers.",
)
def convert_llamagen(source: str, output_dir: str, options) -> str:
    from .loading import RELEASED_STAGE1_FILES, convert_released

    family = options.family_config  # a mapping, or None
    if family is None and not os.path.isdir(source):
        family = RELEASED_STAGE1_FILES  # a hub repo (peizesun/llamagen_t2i): the 256 px stage-1 files
    out = convert_released(source, output_dir, family, dtype=options.dtype)
    return f"{out} (config.json, model.safetensors, llamagen.json, vq/, tokenizer)"


load = register_family(
    "llamagen",
    stand_in=stand_in,
    detect=detect,
    looks_for=f"{FAMILY_CONFIG_NAME}, or released {RELEASED_GPT_PATTERN} files",
    help="LlamaGen t2i: GPT with 2D RoPE + Flan-T5-XL caption features + VQ-16 (FoundationVision/LlamaGen)",
)(loading.load)

__all__ = ["FAMILY_CONFIG_NAME", "LlamaGenFamilyConfig", "LlamaGenPolicy", "load"]
