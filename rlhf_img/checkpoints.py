"""Finding checkpoint files in a local folder or a hub repo, with errors that name what is missing; strict
state-dict checks shared by every family."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class CheckpointError(ValueError):
    """A checkpoint or one of its files is missing or malformed."""


def is_local(location: str) -> bool:
    """A path rather than a hub id: exists, or looks like a path (`./x`, `/x`, `~`, or more than one `/`)."""
    return (
        os.path.exists(location)
        or location.startswith((".", "/", "~"))
        or location.count("/") > 1
        or os.sep != "/"
        and os.sep in location
    )


def resolve_subpath(location: str, filename: str, revision: str | None = None, required: bool = True) -> str | None:
    """Local path of `filename` inside a checkpoint folder or hub repo (downloaded or from the HF cache)."""
    if is_local(location):
        path = os.path.join(location, filename)
        if os.path.exists(path):
            return path
        if required:
            raise CheckpointError(f"{path} not found")
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return hf_hub_download(location, filename, revision=revision)
    except EntryNotFoundError:
        if required:
            raise CheckpointError(f"{location}: the hub repo has no {filename}") from None
        return None
    except (LocalEntryNotFoundError, RepositoryNotFoundError, OSError) as error:
        if not required:
            return None
        raise CheckpointError(
            f"cannot get {filename} of {location!r} from the hub or its cache ({type(error).__name__})"
        ) from None


def read_json_file(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: invalid JSON ({error})") from None


def check_state_dict(expected: dict, given: dict, source: str) -> None:
    """Raise `CheckpointError` naming missing and unexpected keys and wrong shapes (the first few of each)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(expected) & set(given) if tuple(expected[k].shape) != tuple(given[k].shape))
    if not (missing or unexpected or wrong):
        return
    parts = [f"{source}: state dict does not match the architecture"]
    if missing:
        parts.append(f"missing {len(missing)}: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)}: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if wrong:
        shapes = [f"{k} {tuple(given[k].shape)} != {tuple(expected[k].shape)}" for k in wrong[:4]]
        parts.append(f"wrong shapes {len(wrong)}: {shapes}")
    raise CheckpointError("; ".join(parts))


def has_file(location: str, filename: str, revision: str | None = None) -> bool:
    """Whether a checkpoint folder or hub repo holds `filename` (for small files: a hub file is fetched to tell)."""
    return resolve_subpath(location, filename, revision=revision, required=False) is not None


def resolve_subfolder(location: str, subfolder: str, revision: str | None = None, what: str = "folder") -> str:
    """Local path of `subfolder` of a checkpoint folder or hub repo (only that subfolder is downloaded), or of
    `subfolder` itself when it is an absolute path; `CheckpointError` naming `what` when it is not there."""
    if os.path.isabs(subfolder):
        folder = subfolder
    elif is_local(location):
        folder = os.path.join(location, subfolder)
    else:
        from huggingface_hub import snapshot_download

        folder = os.path.join(
            snapshot_download(location, revision=revision, allow_patterns=[f"{subfolder}/*"]), subfolder
        )
    if not os.path.isdir(folder):
        raise CheckpointError(f"{what} not found: {folder}")
    return folder


def parameter_shape(parameter: torch.Tensor) -> torch.Size:
    """The full shape of a parameter, also when DeepSpeed ZeRO-3 has partitioned it: a partitioned parameter is
    an empty placeholder (`shape` (0,)) and keeps its real shape in `ds_shape`."""
    return parameter.ds_shape if hasattr(parameter, "ds_shape") else parameter.shape
