"""Loading pieces that several families share, written once: weights-only reads of released files, file locations
relative to a checkpoint, merging a saved LoRA adapter into its base, the frozen T5 text encoder, and converting
released files by saving a loaded policy in this project's layout."""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from transformers import AutoTokenizer, T5EncoderModel

from ..checkpoints import CheckpointError, is_local, read_json_file, resolve_subpath

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def read_weights(path: str, entries: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file, a sharded `*.index.json`, or a torch file read with
    `torch.load(weights_only=True)` (only tensors and plain containers; a training script's `argparse.Namespace`
    of arguments is allowed, as plain data). `entries`: for a torch file holding a dict, the first entry among them
    that is a dict is the state dict (e.g. LlamaGen's `"model"`); without entries the file is the state dict."""
    if path.endswith(".index.json"):
        weight_map = read_json_file(path).get("weight_map", {})
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(read_weights(os.path.join(os.path.dirname(path), shard)))
        return state
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap" not in str(error):
                    raise
                data = torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) torch file
    except Exception as error:  # pickle errors come in many types; name the file
        raise CheckpointError(
            f"cannot read {path} as a weights-only torch file ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, got {type(data).__name__}")
    if not entries:
        return data
    for entry in entries:
        if isinstance(data.get(entry), dict):
            return data[entry]
    raise CheckpointError(
        f"{path}: no {entries[0]!r} entry (found {sorted(map(str, data))[:8]}); expected "
        f"{{{entries[0]!r}: state_dict, ...}}"
    )


def resolve_file(location: str, checkpoint: str, revision: str | None) -> str:
    """`location` itself when it is an existing absolute path, else that file inside `checkpoint` (folder or hub)."""
    if os.path.isabs(location) and os.path.exists(location):
        return location
    return resolve_subpath(checkpoint, location, revision)


def saved_adapter(checkpoint: str, revision: str | None) -> str | None:
    """The `adapter_config.json` of a folder a LoRA run saved, or None."""
    return resolve_subpath(checkpoint, "adapter_config.json", revision=revision, required=False)


def merge_saved_adapter(checkpoint: str, revision: str | None, base: nn.Module) -> nn.Module:
    """`base` with the LoRA adapter saved in `checkpoint` merged in (a plain module again, as it was released)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, checkpoint, revision=revision).merge_and_unload()


def load_with_adapter(
    checkpoint: str,
    revision: str | None,
    base_checkpoint: str | None,
    load_base: Callable[[str], nn.Module],
    config_name: str,
) -> nn.Module | None:
    """For a LoRA run's folder: the base (`load_base(base_checkpoint)`, named by the family config file
    `config_name`) with the adapter merged; None when `checkpoint` holds no adapter."""
    if saved_adapter(checkpoint, revision) is None:
        return None
    if not base_checkpoint:
        raise CheckpointError(f"{checkpoint}: a LoRA adapter without `base_checkpoint` in {config_name}")
    return merge_saved_adapter(checkpoint, revision, load_base(base_checkpoint))


def load_transformers_model_and_processor(
    checkpoint: str,
    revision: str | None,
    dtype: str | torch.dtype,
    config_class: type,
    model_class: type,
    check_layout: Callable[[str, str | None], None],
) -> tuple[nn.Module, object]:
    """(model, processor) of a family transformers implements itself (Janus, Emu3): `checkpoint` in transformers'
    layout (`check_layout` refuses others), or a LoRA run's folder whose adapter is merged into the base its
    `adapter_config.json` names. The processor comes from the folder when it holds one, else from the base.
    Sub-model classes are defined first (`define_submodel_classes`: DeepSpeed's zero.Init)."""
    from transformers import AutoProcessor

    adapter_config = saved_adapter(checkpoint, revision)
    if adapter_config is None:
        check_layout(checkpoint, revision)
        define_submodel_classes(config_class.from_pretrained(checkpoint, revision=revision))
        model = model_class.from_pretrained(checkpoint, dtype=dtype, revision=revision)
        processor_source, processor_revision = checkpoint, revision
    else:  # a LoRA run's output: merge the adapter into its base
        base = read_json_file(adapter_config)["base_model_name_or_path"]
        check_layout(base, None)
        define_submodel_classes(config_class.from_pretrained(base))
        model = merge_saved_adapter(checkpoint, revision, model_class.from_pretrained(base, dtype=dtype))
        has_processor = resolve_subpath(checkpoint, "processor_config.json", revision=revision, required=False)
        processor_source, processor_revision = (checkpoint, revision) if has_processor else (base, None)
    return model, AutoProcessor.from_pretrained(processor_source, revision=processor_revision)


def _has_tokenizer(checkpoint: str, revision: str | None) -> bool:
    if is_local(checkpoint):
        return bool(glob.glob(os.path.join(checkpoint, "tokenizer*"))) or os.path.exists(
            os.path.join(checkpoint, "spiece.model")
        )
    return resolve_subpath(checkpoint, "tokenizer_config.json", revision, required=False) is not None


def load_text_encoder(
    location: str, dtype: str, checkpoint: str, revision: str | None
) -> tuple[object, nn.Module, str]:
    """The frozen T5 encoder at `location` (hub id, or folder, relative to a local `checkpoint` when it is inside),
    its tokenizer (the checkpoint's own tokenizer files when it has them, as a converted or trained folder does)
    and the resolved location. The encoder is in eval mode with gradients off."""
    if not os.path.isabs(location) and is_local(checkpoint) and os.path.isdir(os.path.join(checkpoint, location)):
        location = os.path.abspath(os.path.join(checkpoint, location))
    tokenizer_location = checkpoint if _has_tokenizer(checkpoint, revision) else location
    tokenizer = AutoTokenizer.from_pretrained(
        tokenizer_location, revision=revision if tokenizer_location == checkpoint else None
    )
    with whole_on_every_rank():
        encoder = T5EncoderModel.from_pretrained(location, dtype=getattr(torch, dtype))
    return tokenizer, encoder.eval().requires_grad_(False), location


def save_converted(policy, output_dir: str) -> str:
    """Write a loaded policy in this project's layout (safetensors throughout): the trainable network as a
    transformers model (`config.json`, `model.safetensors`), the text tokenizer and the family's own files. Full
    fine-tuning with a KL term needs it: TRL rebuilds the reference model from the saved transformers folder."""
    os.makedirs(output_dir, exist_ok=True)
    policy.model.config._name_or_path = output_dir
    policy.model.save_pretrained(output_dir)
    policy.processing_class.save_pretrained(output_dir)
    policy.save_pretrained(output_dir)
    return output_dir


def config_for_saved_model(config, model: nn.Module, weights_field: str, released_fields: Sequence[str], **fixed):
    """A copy of a family config to write next to a saved model: under LoRA (`model` peft-wrapped) the adapter is
    saved and `base_checkpoint` names where the base lives; otherwise the weights are this project's
    `model.safetensors` (`weights_field`), and the fields that only describe released files are cleared."""
    from dataclasses import replace

    config = replace(config, **fixed)
    if hasattr(model, "peft_config"):
        return replace(config, base_checkpoint=config.base_checkpoint or model.get_base_model().config._name_or_path)
    return replace(
        config,
        **{weights_field: "model.safetensors", "base_checkpoint": None},
        **{name: None for name in released_fields},
    )


@contextlib.contextmanager
def whole_on_every_rank() -> Iterator[None]:
    """Build and load the frozen parts of a policy (text encoder, VQ / VAE) whole on every rank.

    Under DeepSpeed ZeRO-3 with `zero3_init_flag` transformers builds every model inside `deepspeed.zero.Init`,
    which partitions its parameters over the ranks; only the modules the DeepSpeed engine owns (the trainable
    model) are ever gathered again, so a partitioned frozen part would run on empty placeholders. Outside ZeRO-3
    this does nothing."""
    from transformers.integrations import deepspeed as hf_deepspeed

    reference = hf_deepspeed._hf_deepspeed_config_weak_ref
    config = reference() if reference is not None else None
    if config is None or not config.is_zero3():
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


def gathered(module: nn.Module) -> contextlib.AbstractContextManager:
    """A context in which `module`'s parameters are whole: gathered from their ZeRO-3 partitions for a part of the
    trainable model used outside its forward (e.g. Janus' VQ decoding images), else nothing to do. Parameters an
    outer context already gathered (TRL's `unwrap_model_for_generation`, as around the in-loop eval) are left to it:
    DeepSpeed refuses nested gathers of the same parameters."""
    parameters = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not parameters:
        return contextlib.nullcontext()
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    partitioned = [p for p in parameters if p.ds_status == ZeroParamStatus.NOT_AVAILABLE]
    return deepspeed.zero.GatheredParameters(partitioned) if partitioned else contextlib.nullcontext()


def define_submodel_classes(config) -> None:
    """Import the modeling module of each sub-model a composite transformers config builds with
    `AutoModel.from_config` (e.g. Janus' Llama language model), before any model is loaded.

    Why: DeepSpeed's `zero.Init` (ZeRO-3, `zero3_init_flag`) wraps the `__init__` of every module class *defined*
    inside its context from `__init_subclass__`, which runs before class decorators, and on exit puts back the
    undecorated `__init__`. Llama's attention is decorated by transformers' `kernels` integration, whose `__init__`
    gives each instance its `_kernel_funcs`: a class first imported inside the policy's load would lose that for
    every later instance, and TRL's reference model (built after) fails its first forward. Imported before, the
    class is patched and restored whole."""
    from transformers import AutoModel

    for name in getattr(config, "sub_configs", {}):
        sub_config = getattr(config, name, None)
        if sub_config is None:
            continue
        try:
            AutoModel._model_mapping[type(sub_config)]  # the lazy mapping imports the modeling module
        except KeyError:
            pass  # a sub-model transformers builds by its own class (defined with the parent's module)
