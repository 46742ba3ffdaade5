"""Upstream SFT pieces every next-token family shares: examples with the loss on the image codes only, their
collation, and writing a trained LM as a `causal_vq` checkpoint."""

from __future__ import annotations

import os
import shutil

import torch

from .configuration import CausalVQConfig


def image_token_example(prompt_ids: list[int], image_token_ids: list[int]) -> dict:
    """One training sequence: prompt tokens (no loss) then the image's code tokens (loss)."""
    return {"input_ids": prompt_ids + image_token_ids, "labels": [-100] * len(prompt_ids) + image_token_ids}


def collate(pad_id: int):
    def collate_fn(batch: list[dict]) -> dict:
        length = max(len(example["input_ids"]) for example in batch)
        ids = torch.full((len(batch), length), pad_id)
        labels = torch.full((len(batch), length), -100)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for i, example in enumerate(batch):  # right padding: positions stay 0..n-1 like at sampling time
            n = len(example["input_ids"])
            ids[i, :n] = torch.tensor(example["input_ids"])
            labels[i, :n] = torch.tensor(example["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate_fn


def save_causal_vq(path: str, model, tokenizer, visual_tokenizer_dir: str, config: CausalVQConfig) -> None:
    """Write `model`, `tokenizer`, a copy of the visual tokenizer folder and `causal_vq.json` to `path`."""
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    target = os.path.join(path, "visual_tokenizer")
    if os.path.abspath(target) != os.path.abspath(visual_tokenizer_dir):
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        for name in ("config.json", "model.safetensors"):
            shutil.copy(os.path.join(visual_tokenizer_dir, name), target)
    config.save(path)
