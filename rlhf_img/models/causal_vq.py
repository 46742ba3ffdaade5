"""`causal_vq`: any transformers causal LM whose vocabulary holds a contiguous block of image codes, plus a
VQ decoder that turns an `(h, w)` grid of codes into pixels.

On disk a checkpoint is a transformers model folder (or hub repo) with two additions:

    causal_vq.json        the family config (`CausalVQConfig` below)
    visual_tokenizer/     the VQ tokenizer (config.json + model.safetensors), unless the config names another

Image code `c` is token id `image_code_offset + c` (SimpleAR's layout: offset = len(text tokenizer)).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..rollouts.sampler import sample_image_codes, score_image_codes, unwrap_causal_lm
from .policy import PromptBatch, Rollout, Sampling
from .resolve import CheckpointError, is_local, read_json_file, resolve_subpath
from .visual_tokenizers import load_visual_tokenizer

CONFIG_NAME = "causal_vq.json"


@dataclass
class CausalVQConfig:
    """The family config. `prompt_template` must contain `{prompt}`; the unconditional prompt is the template
    filled with an empty caption unless `uncond_prompt` is given. `special_tokens` must each be one token."""

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
    def from_dict(cls, data: dict, source: str) -> "CausalVQConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise CheckpointError(f"{source}: unknown causal_vq config key(s) {sorted(unknown)}")
        missing = {"image_code_offset", "image_code_count", "grid"} - set(data)
        if missing:
            raise CheckpointError(f"{source}: causal_vq config is missing {sorted(missing)}")
        data = dict(data)
        data["grid"] = tuple(int(x) for x in data["grid"])
        if "{prompt}" not in data.get("prompt_template", "{prompt}"):
            raise CheckpointError(f"{source}: prompt_template must contain '{{prompt}}'")
        return cls(**data)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def save(self, directory: str) -> str:
        """Write `directory/causal_vq.json`; returns its path."""
        os.makedirs(directory, exist_ok=True)
        data = asdict(self)
        data["grid"] = list(data["grid"])
        path = os.path.join(directory, CONFIG_NAME)
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
        return path


class CausalVQPolicy:
    """The `causal_vq` implementation of the policy interface (see `models/policy.py`)."""

    def __init__(self, model: nn.Module, tokenizer, visual_tokenizer: nn.Module, config: CausalVQConfig) -> None:
        self.model, self.processing_class, self.visual_tokenizer, self.config = model, tokenizer, visual_tokenizer, config
        self.num_actions = config.num_tokens
        self._check()
        uncond = config.uncond_prompt if config.uncond_prompt is not None else config.prompt_template.format(prompt="")
        self._uncond = self._tokenize([uncond])
        if self._uncond.input_ids.numel() == 0:
            raise CheckpointError("causal_vq: the unconditional prompt tokenizes to nothing; set `uncond_prompt`")

    def _check(self) -> None:
        cfg, tok = self.config, self.processing_class
        vocab = self.model.get_output_embeddings().weight.shape[0]
        if cfg.image_code_offset + cfg.image_code_count > vocab:
            raise CheckpointError(
                f"causal_vq: image codes [{cfg.image_code_offset}, {cfg.image_code_offset + cfg.image_code_count}) "
                f"exceed the LM head's {vocab} rows"
            )
        for token in cfg.special_tokens:
            ids = tok(token, add_special_tokens=False).input_ids
            if len(ids) != 1:
                raise CheckpointError(f"causal_vq: special token {token!r} is not a single token of the tokenizer")
        codebook = getattr(self.visual_tokenizer, "codebook_size", None)
        if codebook is not None and codebook != cfg.image_code_count:
            raise CheckpointError(
                f"causal_vq: image_code_count {cfg.image_code_count} != visual tokenizer codebook size {codebook}"
            )

    @property
    def pad_token_id(self) -> int:
        tok = self.processing_class
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def _tokenize(self, texts: list[str]) -> PromptBatch:
        encoded = self.processing_class(
            texts,
            padding=True,
            padding_side="left",
            return_tensors="pt",
            add_special_tokens=self.config.add_special_tokens,
        )
        return PromptBatch(encoded.input_ids, encoded.attention_mask)

    def encode_prompts(self, prompts: list[str], device: torch.device | str = "cpu") -> PromptBatch:
        batch = self._tokenize([self.config.prompt_template.format(prompt=p) for p in prompts])
        return PromptBatch(batch.input_ids.to(device), batch.attention_mask.to(device))

    def _uncond_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self._uncond.input_ids.to(device), self._uncond.attention_mask.to(device)

    def _code_kwargs(self) -> dict:
        return dict(
            code_offset=self.config.image_code_offset, code_count=self.config.image_code_count, pad_id=self.pad_token_id
        )

    def sample(
        self, model: nn.Module, prompts: PromptBatch, sampling: Sampling, generator: torch.Generator | None = None
    ) -> Rollout:
        uncond_ids, uncond_mask = self._uncond_on(prompts.input_ids.device)

        return sample_image_codes(
            unwrap_causal_lm(model),
            prompts.input_ids,
            prompts.attention_mask,
            uncond_ids,
            uncond_mask,
            num_tokens=self.num_actions,
            sampling=sampling,
            generator=generator,
            **self._code_kwargs(),
        )

    def logprobs(
        self, model: nn.Module, prompts: PromptBatch, actions: torch.Tensor, sampling: Sampling
    ) -> tuple[torch.Tensor, torch.Tensor]:
        uncond_ids, uncond_mask = self._uncond_on(prompts.input_ids.device)
        return score_image_codes(
            model,
            prompts.input_ids,
            prompts.attention_mask,
            uncond_ids,
            uncond_mask,
            actions,
            sampling=sampling,
            **self._code_kwargs(),
        )

    @torch.no_grad()
    def decode(self, actions: torch.Tensor) -> torch.Tensor:
        h, w = self.config.grid
        device = next(self.visual_tokenizer.parameters()).device
        return self.visual_tokenizer.decode(actions.view(-1, h, w).to(device))

    def to(self, device: torch.device | str) -> "CausalVQPolicy":
        self.visual_tokenizer.to(device)
        return self

    def save_pretrained(self, output_dir: str) -> None:
        """Write `causal_vq.json` and the visual tokenizer so `output_dir` loads as a `causal_vq` checkpoint."""
        replace(self.config, visual_tokenizer="visual_tokenizer").save(output_dir)
        self.visual_tokenizer.save_pretrained(os.path.join(output_dir, "visual_tokenizer"))


def _load_tokenizer(checkpoint: str, revision: str | None, trust_remote_code: bool):
    """The checkpoint's text tokenizer, padding with EOS when it defines no pad token (left padding at sampling)."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_lm(checkpoint: str, dtype: torch.dtype | str, revision: str | None, trust_remote_code: bool) -> nn.Module:
    """The LM; a folder holding a peft adapter loads its base and merges the adapter in."""
    adapter_config = resolve_subpath(checkpoint, "adapter_config.json", revision=revision, required=False)
    kwargs = dict(dtype=dtype, revision=revision, trust_remote_code=trust_remote_code)
    if adapter_config is None:
        return AutoModelForCausalLM.from_pretrained(checkpoint, **kwargs)
    from peft import PeftModel

    base = read_json_file(adapter_config)["base_model_name_or_path"]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, trust_remote_code=trust_remote_code)
    return PeftModel.from_pretrained(model, checkpoint, revision=revision).merge_and_unload()


def load(
    checkpoint: str,
    *,
    visual_tokenizer: str | None = None,
    dtype: str | torch.dtype = "float32",
    family_config: dict | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> CausalVQPolicy:
    """Load a `causal_vq` policy from a local folder or hub id.

    `family_config` entries override `causal_vq.json` (or replace it, when the checkpoint is a plain LM
    with an image-code block and no such file); `visual_tokenizer` overrides the config's path.
    """
    if is_local(checkpoint) and not os.path.isdir(checkpoint):
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    config_file = resolve_subpath(checkpoint, CONFIG_NAME, revision=revision, required=not family_config)
    data = read_json_file(config_file) if config_file else {}
    data.update(family_config or {})
    config = CausalVQConfig.from_dict(data, source=config_file or "family_config")

    tokenizer = _load_tokenizer(checkpoint, revision, trust_remote_code)
    model = _load_lm(checkpoint, dtype, revision, trust_remote_code)

    vt_location = visual_tokenizer or config.visual_tokenizer
    if not os.path.isabs(vt_location) and is_local(checkpoint) and os.path.isdir(os.path.join(checkpoint, vt_location)):
        vt_location = os.path.join(checkpoint, vt_location)
    vt = load_visual_tokenizer(config.visual_tokenizer_class, vt_location)
    config.visual_tokenizer = vt_location
    return CausalVQPolicy(model, tokenizer, vt.eval().requires_grad_(False), config)
