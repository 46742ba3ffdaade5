"""Reading the YAML files users write (recipes, reward-server configs) with one-line errors."""

from __future__ import annotations

import os
from typing import Any

import yaml


class YamlFileError(ValueError):
    """A YAML file that is missing, unreadable, not YAML, or not a mapping; the message is one line."""


def read_yaml_mapping(path: str, what: str, not_a_mapping: str) -> dict[str, Any]:
    """The mapping in `path` (an empty file is `{}`). `what` names the file kind in "not found" errors;
    `not_a_mapping` is the message when the top level is not a mapping."""
    if not os.path.isfile(path):
        raise YamlFileError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except UnicodeDecodeError as error:
        raise YamlFileError(
            f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); save it as UTF-8"
        ) from None
    except yaml.YAMLError as error:
        raise YamlFileError(f"{path}: invalid YAML ({' '.join(str(error).split())})") from None
    except OSError as error:
        raise YamlFileError(f"{path}: cannot read ({error})") from None
    if not isinstance(data, dict):
        raise YamlFileError(f"{path}: {not_a_mapping}")
    return data
