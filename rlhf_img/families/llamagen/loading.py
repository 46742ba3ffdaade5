"""Loading LlamaGen checkpoints: the released `.pt` files, or this project's layout; and conversion.

Released (FoundationVision/LlamaGen; hub repo `peizesun/llamagen_t2i`): `t2i_XL_stage1_256.pt` /
`t2i_XL_stage2_512.pt` (GPT-XL) and `vq_ds16_t2i.pt` (VQ-16), torch files holding the weights under `"model"`
(the training scripts' format; `"module"` and `"state_dict"` are accepted as the reference's sampler accepts
them). They are read with `torch.load(weights_only=True)` (only tensors and plain containers; the training
scripts' `argparse.Namespace` of arguments is allowed, as plain data). Keys are checked strictly, unlike the
reference's `strict=False`: a missing, unexpected or wrongly shaped key is an error naming it. Tolerated,
deliberately: the per-layer KV-cache buffers a model that has sampled carries in its state dict
(`layers.N.attention.kv_cache.{k,v}_cache`: dropped, exactly those), a `_orig_mod.` prefix on every key (a
`torch.compile`d model's state dict: stripped; a prefix on some keys only is an error), and the VQ's usage
counter `quantize.codebook_used` (dropped).

This project's layout (`rlhf-img convert llamagen`, or a training run): `config.json` + `model.safetensors`
(`LlamaGenGPT`, a transformers model), `llamagen.json` (`LlamaGenFamilyConfig`), `vq/` (transformers'
`JanusVQVAE`), the T5 tokenizer files; a LoRA run saves the adapter and `llamagen.json` names its base.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import replace

import torch
from transformers import AutoConfig, AutoModelForCausalLM, JanusVQVAE

from ...checkpoints import (
    CheckpointError,
    check_state_dict,
    is_local,
    read_json_file,
    resolve_subfolder,
    resolve_subpath,
)
from ..shared_loading import (
    WEIGHT_SUFFIXES,
    load_text_encoder,
    load_with_adapter,
    read_weights,
    resolve_file,
    whole_on_every_rank,
)
from .configuration import CONFIG_NAME, LlamaGenFamilyConfig
from .gpt import LlamaGenConfig, LlamaGenGPT
from .policy import LlamaGenPolicy
from .vq import infer_vq_config, is_llamagen_layout, load_vq_state

AutoConfig.register(LlamaGenConfig.model_type, LlamaGenConfig, exist_ok=True)
# TRL rebuilds a full-fine-tuning reference model with AutoModelForCausalLM.from_pretrained(path)
AutoModelForCausalLM.register(LlamaGenConfig, LlamaGenGPT, exist_ok=True)

# The reference's GPT_models (autoregressive/models/gpt.py): name -> (n_layer, n_head, dim). Only GPT-XL t2i
# weights are released.
GPT_SIZES = {
    "GPT-B": (12, 12, 768),
    "GPT-L": (24, 16, 1024),
    "GPT-XL": (36, 20, 1280),
    "GPT-XXL": (48, 24, 1536),
    "GPT-XXXL": (48, 40, 2560),
    "GPT-1B": (22, 32, 2048),
    "GPT-3B": (24, 32, 3200),
    "GPT-7B": (32, 32, 4096),
}
RELEASED_GPT_PATTERN = "t2i_*.pt"
RELEASED_VQ_PATTERN = "vq_*.pt"
# The files of the hub repo peizesun/llamagen_t2i for the 256 px stage-1 model, as a family_config.
RELEASED_STAGE1_FILES = {
    "gpt": "t2i_XL_stage1_256.pt",
    "vq": "vq_ds16_t2i.pt",
    "size": "GPT-XL",
    "image_size": 256,
    "text_encoder": "google/flan-t5-xl",
}
_KV_CACHE_KEY = re.compile(r"^layers\.\d+\.attention\.kv_cache\.[kv]_cache$")
_COMPILED_PREFIX = "_orig_mod."


def gpt_config(size: str, **kwargs) -> LlamaGenConfig:
    """A named size as the reference's t2i sampler builds it (caption dim 2048, 120 caption tokens)."""
    if size not in GPT_SIZES:
        raise CheckpointError(f"llamagen: unknown size {size!r}; known: {list(GPT_SIZES)}")
    n_layer, n_head, dim = GPT_SIZES[size]
    return LlamaGenConfig(dim=dim, n_layer=n_layer, n_head=n_head, **kwargs)


# ------------------------------------------------------------------------------------ released files
def read_released(path: str) -> dict[str, torch.Tensor]:
    """The state dict of a released LlamaGen torch file (under "model", "module" or "state_dict", as the reference's
    sampler accepts them), or of a `.safetensors` file; read weights-only."""
    return read_weights(path, entries=("model", "module", "state_dict"))


def clean_gpt_state(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Drop exactly the KV-cache buffers of a model saved after sampling; strip a `_orig_mod.` prefix that
    every key carries (torch.compile); a prefix on only some keys is an error."""
    prefixed = [k for k in state if k.startswith(_COMPILED_PREFIX)]
    if prefixed and len(prefixed) != len(state):
        raise CheckpointError(
            f"{source}: {len(prefixed)} of {len(state)} keys carry torch.compile's "
            f"'{_COMPILED_PREFIX}' prefix (e.g. {prefixed[0]!r}); expected all or none"
        )
    if prefixed:
        state = {k[len(_COMPILED_PREFIX) :]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if not _KV_CACHE_KEY.match(k)}


def infer_gpt_config(state: dict[str, torch.Tensor], num_heads: int | None, source: str) -> LlamaGenConfig:
    """A `LlamaGenConfig` read off a state dict's shapes; the head count (not in any shape) from the named size
    whose width and depth match, else `num_heads`."""
    try:
        vocab_size, dim = state["tok_embeddings.weight"].shape
        n_layer = len(
            {k.split(".")[1] for k in state if k.startswith("layers.") and k.endswith(".attention.wqkv.weight")}
        )
        intermediate = state["layers.0.feed_forward.w1.weight"].shape[0]
        uncond_tokens, caption_dim = state["cls_embedding.uncond_embedding"].shape
    except KeyError as error:
        raise CheckpointError(f"{source}: not a LlamaGen t2i GPT state dict (no {error.args[0]!r})") from None
    if num_heads is None:
        named = [heads for layers, heads, width in GPT_SIZES.values() if (layers, width) == (n_layer, dim)]
        if not named:
            raise CheckpointError(
                f"{source}: width {dim} and depth {n_layer} match no named size {list(GPT_SIZES)}; "
                "set family_config num_heads"
            )
        num_heads = named[0]
    return LlamaGenConfig(
        dim=dim,
        n_layer=n_layer,
        n_head=num_heads,
        intermediate_size=intermediate,
        vocab_size=vocab_size,
        caption_dim=caption_dim,
        cls_token_num=uncond_tokens,
        uncond_token_num=uncond_tokens,
    )


def load_gpt_state(model: LlamaGenGPT, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load of a released GPT state dict (after `clean_gpt_state`)."""
    state = clean_gpt_state(state, source)
    check_state_dict(model.state_dict(), state, source)
    model.load_state_dict(state, strict=True, assign=True)


def _load_released_gpt(path: str, config: LlamaGenFamilyConfig, dtype: torch.dtype, name: str) -> LlamaGenGPT:
    state = read_released(path)
    if config.size:
        architecture = gpt_config(config.size)
        if config.num_heads:
            architecture.n_head = config.num_heads
    else:
        architecture = infer_gpt_config(clean_gpt_state(state, path), config.num_heads, path)
    architecture._name_or_path = name
    with torch.device("meta"):  # no second copy of the weights: the file's tensors are assigned in place
        model = LlamaGenGPT(architecture)
    load_gpt_state(model, state, path)
    return model.to(dtype)


def _load_gpt(checkpoint: str, config: LlamaGenFamilyConfig, dtype: torch.dtype, revision: str | None) -> LlamaGenGPT:
    base_config = replace(config, base_checkpoint=None)
    merged = load_with_adapter(
        checkpoint,
        revision,
        config.base_checkpoint,
        lambda base: _load_gpt(base, base_config, dtype, None),
        CONFIG_NAME,
    )
    if merged is not None:  # a LoRA run: base from `base_checkpoint`, adapter merged in
        return merged
    if config.gpt == "model.safetensors" and resolve_subpath(checkpoint, "config.json", revision, required=False):
        return LlamaGenGPT.from_pretrained(checkpoint, revision=revision, dtype=dtype)
    return _load_released_gpt(resolve_file(config.gpt, checkpoint, revision), config, dtype, checkpoint)


def _load_vq(location: str, checkpoint: str, revision: str | None) -> JanusVQVAE:
    """A VQ folder saved by this project (`JanusVQVAE`), or a released `.pt` in LlamaGen's key layout."""
    if location.endswith(WEIGHT_SUFFIXES):
        path = resolve_file(location, checkpoint, revision)
        state = read_released(path)
        if not is_llamagen_layout(state):
            raise CheckpointError(f"{path}: not a LlamaGen VQ state dict (no encoder.conv_blocks.*)")
        vq = JanusVQVAE(infer_vq_config(state, grid_size=16))
        load_vq_state(vq, state, path)
        return vq
    folder = resolve_subfolder(checkpoint, location, revision, "llamagen: VQ folder")
    try:
        return JanusVQVAE.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(f"cannot load the VQ from {folder}: {error}") from None


def released_files(checkpoint: str) -> dict:
    """The family_config of a local folder of released files: its one `t2i_*.pt` and one `vq_*.pt`."""
    found = {}
    for key, pattern in (("gpt", RELEASED_GPT_PATTERN), ("vq", RELEASED_VQ_PATTERN)):
        names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(checkpoint, pattern)))
        if len(names) > 1:
            raise CheckpointError(
                f"{checkpoint}: several {pattern} files {names}; name one in family_config ({key}: ...)"
            )
        if names:
            found[key] = names[0]
    return found


def _image_size_from_name(name: str) -> int:
    match = re.search(r"_(\d+)\.pt$", os.path.basename(name))
    return int(match.group(1)) if match else 256


def load(
    checkpoint: str,
    *,
    visual_tokenizer: str | None = None,
    dtype: str | torch.dtype = "bfloat16",
    family_config: dict | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> LlamaGenPolicy:
    """A LlamaGen policy from a folder or hub repo. `family_config` (see `LlamaGenFamilyConfig`) overrides
    `llamagen.json`, or describes released files (a local folder's single `t2i_*.pt` / `vq_*.pt` are found by
    themselves); `visual_tokenizer` overrides the VQ location."""
    if is_local(checkpoint) and not os.path.isdir(checkpoint):
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    config_file = resolve_subpath(checkpoint, CONFIG_NAME, revision=revision, required=False)
    if config_file:
        data = read_json_file(config_file)
    elif is_local(checkpoint):
        data = released_files(checkpoint)
    elif family_config:
        data = {}
    else:
        raise CheckpointError(
            f"{checkpoint}: no {CONFIG_NAME}; give family_config with the released files, e.g. {RELEASED_STAGE1_FILES}"
        )
    data.update(family_config or {})
    config = LlamaGenFamilyConfig.from_dict(data, source=config_file or "family_config")
    if visual_tokenizer:
        config.vq = visual_tokenizer
    if config.image_size is None:
        config.image_size = _image_size_from_name(config.gpt)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype

    model = _load_gpt(checkpoint, config, torch_dtype, revision)
    with whole_on_every_rank():  # frozen: never partitioned by ZeRO-3
        vq = _load_vq(config.vq, checkpoint, revision).eval().requires_grad_(False)
    tokenizer, text_encoder, config.text_encoder = load_text_encoder(
        config.text_encoder, config.text_encoder_dtype, checkpoint, revision
    )
    policy = LlamaGenPolicy(model, tokenizer, text_encoder, vq, config)
    model.config.block_size = policy.num_actions  # the grid it runs at, recorded in a saved config.json
    return policy
