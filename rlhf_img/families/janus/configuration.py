"""The `janus` family config (`janus.json`): the prompt template. No modeling code is imported here."""

from __future__ import annotations

from dataclasses import dataclass

from ...checkpoints import CheckpointError
from ..configuration import FamilyConfig

CONFIG_NAME = "janus.json"


@dataclass
class JanusFamilyConfig(FamilyConfig):
    """`janus.json`, written next to every trained model. `prompt_template`: None builds prompts with the
    processor's chat template (Janus-Pro: `<|User|>: {prompt}\\n\\n<|Assistant|>:`); a string with `{prompt}`
    replaces it (e.g. T2I-R1's `User: {prompt}\\n\\nAssistant:`). `<begin_of_image>` is appended either way."""

    file_name = CONFIG_NAME
    family = "janus"

    prompt_template: str | None = None

    def validate(self, source: str) -> None:
        if self.prompt_template is not None and "{prompt}" not in self.prompt_template:
            raise CheckpointError(f"{source}: prompt_template must contain '{{prompt}}'")
