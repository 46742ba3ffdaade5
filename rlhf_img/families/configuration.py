"""The base of every family's config file (`causal_vq.json`, `janus.json`, `llamagen.json`, `infinity.json`, ...).

A family config is a dataclass written next to every checkpoint the project saves, so the folder loads as that
family again. The base gives each of them the same behaviour: one file-name attribute, unknown keys refused in one
line naming the file, a `validate` hook for the family's own rules, JSON save and load. It imports no modeling code.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, TypeVar

from ..checkpoints import CheckpointError, read_json_file, resolve_subpath

ConfigT = TypeVar("ConfigT", bound="FamilyConfig")


@dataclass
class FamilyConfig:
    """Base of family configs. Subclasses set `file_name` (e.g. `"janus.json"`) and `family` (its registered name),
    declare their keys as dataclass fields, and may override `validate` (raise `CheckpointError` naming `source`)."""

    file_name: ClassVar[str] = ""
    family: ClassVar[str] = ""

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict[str, Any], source: str) -> ConfigT:
        """A config from `data`, read from `source` (a path, or e.g. "family_config"); one-line errors name it."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: a {cls.family} config must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise CheckpointError(f"{source}: unknown {cls.family} config key(s) {unknown}")
        config = cls(**cls.normalize(dict(data), source))
        config.validate(source)
        return config

    @classmethod
    def normalize(cls, data: dict[str, Any], source: str) -> dict[str, Any]:
        """Turn JSON values into field values (e.g. lists into tuples) before the dataclass is built."""
        return data

    def validate(self, source: str) -> None:
        """The family's own rules on its values; raise `CheckpointError(f"{source}: ...")`."""

    @classmethod
    def load(
        cls: type[ConfigT],
        checkpoint: str,
        overrides: dict[str, Any] | None = None,
        revision: str | None = None,
        required: bool | None = None,
    ) -> ConfigT:
        """The config file of `checkpoint` (folder or hub id) with `overrides` applied; without the file,
        `overrides` alone (a released layout configured by the user). `required`: whether a missing file is an
        error (default: unless `overrides` are given)."""
        required = not overrides if required is None else required
        path = resolve_subpath(checkpoint, cls.file_name, revision=revision, required=required)
        data = read_json_file(path) if path else {}
        data.update(overrides or {})
        return cls.from_dict(data, path or "family_config")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (tuples as lists)."""
        return json.loads(json.dumps(asdict(self)))

    def save(self, directory: str) -> str:
        """Write `directory/<file_name>`; returns its path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, self.file_name)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
        return path
