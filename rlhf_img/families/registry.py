"""Name -> model family, and name -> visual tokenizer class (open_clip-style registries).

A family package registers itself with `@register_family(...)` on its `load` function (with an optional `stand_in`
hook) and its converters of released files with `@register_converter(...)`; the trainer, the commands
(`rlhf-img families`, `convert`, `create-tiny`, the `model_family` help) and evaluation only ever read these registries.
Visual tokenizers are registered the same way, so a family can decode with another family's tokenizer
(`causal_vq` with the Cosmos tokenizer of `simplear`) without importing that package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..checkpoints import CheckpointError, is_local
from ..policy import Policy

# How strongly a checkpoint's files say "this family" (`detect` returns one of these).
NO_MATCH = 0
LAYOUT_MATCH = 1  # a released layout recognised by its contents (e.g. SimpleAR's special tokens)
CONFIG_MATCH = 2  # the family's own config file, as written by this project (`causal_vq.json`, ...)


@dataclass(frozen=True)
class Family:
    """A registered model family.

    `load(checkpoint, *, visual_tokenizer, dtype, family_config, revision, trust_remote_code) -> Policy`.
    `detect(checkpoint, revision) -> NO_MATCH | LAYOUT_MATCH | CONFIG_MATCH` from the checkpoint's own files
    (only small JSON/tokenizer files are read; weights are never downloaded to detect).
    `looks_for`: what `detect` looks for, in words, for the error when nothing matches.
    `stand_in`: optional `(folder) -> StandIn`: writes a tiny random-weight checkpoint in the family's real on-disk
    format; the family contract suite (`tests/families/`) runs over every registered family that has one.
    """

    name: str
    load: Callable[..., Policy]
    detect: Callable[[str, str | None], int]
    looks_for: str
    help: str
    stand_in: Callable[[str], "StandIn"] | None = None


@dataclass(frozen=True)
class StandIn:
    """A tiny checkpoint of a family, as its `stand_in` hook wrote it: `load_policy(checkpoint, **load_kwargs)`
    loads it; `lora_target_modules` are the modules a LoRA run on it adapts (what the family's recipes target).
    `runs_in_float64`: False for a network that pins parts of its computation to float32 (as its reference does),
    so a float64 copy of it is not a meaningful comparison. `converter`: the registered converter that turns the
    stand-in (a released layout) into this project's layout, which full fine-tuning with a KL term needs (TRL
    rebuilds the reference from a transformers folder); None when the stand-in is already in it."""

    checkpoint: str
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    lora_target_modules: list[str] | str = "all-linear"
    runs_in_float64: bool = True
    converter: str | None = None


FAMILIES: dict[str, Family] = {}


def register_family(
    name: str,
    *,
    detect: Callable[[str, str | None], int],
    looks_for: str,
    help: str,
    stand_in: Callable[[str], StandIn] | None = None,
) -> Callable[[Callable[..., Policy]], Callable[..., Policy]]:
    """Register a family's `load` function under `name` (see `Family` for the arguments)."""

    def decorator(load: Callable[..., Policy]) -> Callable[..., Policy]:
        if name in FAMILIES:
            raise ValueError(f"model family {name!r} is already registered")
        FAMILIES[name] = Family(name, load, detect, looks_for, help, stand_in)
        return load

    return decorator


@dataclass(frozen=True)
class Converter:
    """`rlhf-img convert NAME SOURCE OUT`: released files -> this project's safetensors layout.

    `run(source, output_dir, options) -> what was written` (one line); `options` holds the command's flags
    (`config`: a path or None, `family_config`: a mapping or None, `dtype`), each converter reads the ones its
    `help` names."""

    name: str
    family: str
    help: str
    run: Callable[[str, str, Any], str]


CONVERTERS: dict[str, Converter] = {}


def register_converter(name: str, *, family: str, help: str) -> Callable[[Callable], Callable]:
    """Register a converter of released files under `name` (listed by `rlhf-img convert --help`)."""

    def decorator(run: Callable[[str, str, Any], str]) -> Callable[[str, str, Any], str]:
        if name in CONVERTERS:
            raise ValueError(f"converter {name!r} is already registered")
        CONVERTERS[name] = Converter(name, family, help, run)
        return run

    return decorator


VISUAL_TOKENIZERS: dict[str, type] = {}


def register_visual_tokenizer(name: str) -> Callable[[type], type]:
    """Register a visual tokenizer class (with `from_pretrained(location)`) under the name family configs use."""

    def decorator(cls: type) -> type:
        if name in VISUAL_TOKENIZERS:
            raise ValueError(f"visual tokenizer {name!r} is already registered")
        VISUAL_TOKENIZERS[name] = cls
        return cls

    return decorator


def load_visual_tokenizer(kind: str, location: str) -> nn.Module:
    """A registered visual tokenizer loaded from a folder or hub id, with errors that name the location."""
    if kind not in VISUAL_TOKENIZERS:
        raise CheckpointError(f"unknown visual_tokenizer_class {kind!r}; known: {sorted(VISUAL_TOKENIZERS)}")
    if is_local(location) and not os.path.isdir(location):
        raise CheckpointError(f"visual tokenizer not found: {location}")
    try:
        return VISUAL_TOKENIZERS[kind].from_pretrained(location)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot load visual tokenizer {location!r}: {error}") from None
