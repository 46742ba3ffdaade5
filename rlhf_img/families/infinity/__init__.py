"""`infinity`: Infinity (bitwise next-scale prediction): transformer + Flan-T5 + BSQ-VAE.

`policy.py` (family config + policy), `loading.py` (released `.pth` files, this project's layout, conversion),
`sampler.py` (KV-cached next-scale sampling, teacher-forced bit log-probs), `transformer.py`, `bsq_vae.py`,
`codes.py` (scales <-> bits), `schedules.py`, `tiny.py` (stand-ins in the released format).
"""

from __future__ import annotations

import glob
import os

from ...checkpoints import has_file, is_local
from ..registry import CONFIG_MATCH, LAYOUT_MATCH, NO_MATCH, StandIn, register_converter, register_family
from . import loading
from .policy import FAMILY_CONFIG_NAME, InfinityFamilyConfig, InfinityPolicy

RELEASED_PATTERN = "infinity_*.pth"


def detect(checkpoint: str, revision: str | None = None) -> int:
    """`infinity.json` (a converted or trained folder), else a local folder of released `infinity_*.pth` files."""
    if has_file(checkpoint, FAMILY_CONFIG_NAME, revision):
        return CONFIG_MATCH
    if is_local(checkpoint) and glob.glob(os.path.join(checkpoint, RELEASED_PATTERN)):
        return LAYOUT_MATCH
    return NO_MATCH


def stand_in(folder: str) -> StandIn:
    from .tiny import save_tiny_infinity, tiny_infinity_family_config

    path = save_tiny_infinity(folder, seed=0)
    # the transformer casts text, AdaLN and logits to float32 as the reference does: no float64 run
    return StandIn(path, {"dtype": "float32", "family_config": tiny_infinity_family_config(path)},
                   ["mat_qkv", "proj", "fc1", "fc2"], runs_in_float64=False)


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
    from .loading import RELEASED_2B_FILES, convert_released

    family = options.family_config or RELEASED_2B_FILES
    out = convert_released(source, output_dir, family, dtype=options.dtype)
    return f"{out} (config.json, model.safetensors, infinity.json, vae/, tokenizer)"


load = register_family(
    "infinity",
    stand_in=stand_in,
    detect=detect,
    looks_for=f"{FAMILY_CONFIG_NAME}, or released {RELEASED_PATTERN} files",
    help="Infinity: bitwise next-scale transformer + Flan-T5 + BSQ-VAE (FoundationVision/Infinity)",
)(loading.load)

__all__ = ["FAMILY_CONFIG_NAME", "InfinityFamilyConfig", "InfinityPolicy", "load"]
