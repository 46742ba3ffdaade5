"""Tiny random-weight reward models saved in their real on-disk formats (tests never download)."""

from __future__ import annotations

import json
import os

import torch

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def save_tiny_open_clip(path: str, seed: int = 0, quick_gelu: bool = False) -> str:
    """An open_clip `local-dir:` folder (open_clip_config.json + open_clip_model.safetensors), the layout of
    open_clip's hub repos. Returns the folder."""
    import open_clip
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    model_cfg = {**TINY_CLIP_CONFIG, "quick_gelu": quick_gelu}
    preprocess_cfg = {
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    with open(os.path.join(path, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, f)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**{k: v for k, v in model_cfg.items()})
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(path, "open_clip_model.safetensors")
    )
    return path


def tiny_clip_recipe_overrides(root) -> tuple[list[str], str]:
    """Command-line overrides that run a shipped CLIP recipe for 2 steps on CPU with a tiny CLIP reward and two
    prompts, all written under `root`; returns (overrides, output folder). The model keys stay the caller's."""
    clip_dir = save_tiny_open_clip(os.path.join(root, "clip"))
    prompts = os.path.join(root, "prompts.txt")
    with open(prompts, "w") as f:
        f.write("a red apple\na dog on a beach\n")
    rewards = [
        {
            "name": "clip_score",
            "kwargs": {
                "model": f"local-dir:{clip_dir}",
                "pretrained": None,
                "formula": "cosine",
                "caption_template": "A photo of {prompt}",
            },
        }
    ]
    out = os.path.join(root, "out")
    overrides = [
        "--rewards",
        json.dumps(rewards),
        "--dataset",
        prompts,
        "--dtype",
        "float32",
        "--bf16",
        "false",
        "--use_cpu",
        "true",
        "--max_steps",
        "2",
        "--gradient_accumulation_steps",
        "1",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--output_dir",
        out,
        "--disable_tqdm",
        "true",
    ]
    return overrides, out


def save_tiny_mask2former(path: str, seed: int = 0, favoured_class: int | None = None) -> str:
    """A transformers Mask2Former (Swin backbone, 80 COCO labels) folder with its image-processor config in the
    layout of `facebook/mask2former-swin-small-coco-instance` (fixed-size resize, size_divisor 32).

    `favoured_class`: bias the class head so every query predicts that class confidently (random weights
    otherwise give scores ~0.01, below GenEval's thresholds)."""
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        num_labels=80,
        hidden_dim=32,
        mask_feature_size=32,
        feature_size=32,
        encoder_feedforward_dim=64,
        dim_feedforward=64,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        num_queries=12,
        common_stride=4,
        use_pretrained_backbone=False,
    )
    torch.manual_seed(seed)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    if favoured_class is not None:
        with torch.no_grad():
            model.class_predictor.bias.zero_()
            model.class_predictor.bias[favoured_class] = 20.0
    model.save_pretrained(path)
    Mask2FormerImageProcessor(
        size={"height": 64, "width": 64}, size_divisor=32, num_labels=80, ignore_index=255
    ).save_pretrained(path)
    return path
