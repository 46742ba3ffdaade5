"""The `causal_vq` family config (`causal_vq.json`): where the image codes sit in the LM's vocabulary, the grid,
the prompt template and the visual tokenizer. No modeling code is imported here."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...checkpoints import CheckpointError
from ..configuration import FamilyConfig

CONFIG_NAME = "causal_vq.json"


@dataclass
class CausalVQConfig(FamilyConfig):
    """The family config. `prompt_template` must contain `{prompt}`; the unconditional prompt is the template
    filled with an empty caption unless `uncond_prompt` is given. `special_tokens` must each be one token."""

    file_name = CONFIG_NAME
    family = "causal_vq"

    image_code_offset: int
    image_code_count: int
    grid: tuple[int, int]
    prompt_template: str = "{prompt}"
    uncond_prompt: str | None = None
    special_tokens: list[str] = field(default_factory=list)
    add_special_tokens: bool = True
    visual_tokenizer: str = "visual_tokenizer"
    visual_tokenizer_class: str = "vq"

    @classmethod
    def normalize(cls, data: dict, source: str) -> dict:
        missing = {"image_code_offset", "image_code_count", "grid"} - set(data)
        if missing:
            raise CheckpointError(f"{source}: causal_vq config is missing {sorted(missing)}")
        data["grid"] = tuple(int(x) for x in data["grid"])
        return data

    def validate(self, source: str) -> None:
        if "{prompt}" not in self.prompt_template:
            raise CheckpointError(f"{source}: prompt_template must contain '{{prompt}}'")

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]
