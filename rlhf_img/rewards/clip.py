"""CLIP plumbing shared by the CLIP-based rewards: loading open_clip models from every place they live, and
CLIP preprocessing done on tensors.

Rollout images arrive as `(B, 3, H, W)` float tensors in [0, 1] on the policy's device. Going through
PIL (as `open_clip`'s transforms do) would copy them to the CPU and quantise them; `preprocess_images`
does the same steps on the tensor instead: resize the shorter side with antialiased bicubic
interpolation, centre crop, normalise with the model's mean/std.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

# OpenAI CLIP's normalisation (also open_clip's default and transformers' CLIPImageProcessor's)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

SCHEMAS = ("hf-hub:", "local-dir:")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def normalize_pixels(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """`(B, 3, H, W)` in [0, 1] -> `(x - mean) / std` per channel, on the tensor's device and dtype."""
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


def preprocess_images(
    images: torch.Tensor, size: int | Sequence[int], mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """`(B, 3, H, W)` in [0, 1] -> CLIP input: shorter side to `size` (bicubic, antialiased), centre crop,
    normalise. Differentiable, stays on the tensor's device."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    images = images.float()
    h, w = images.shape[-2:]
    if height == width:  # torchvision's Resize(int): shorter side to `size`, longer side truncated
        resized = (height, int(height * w / h)) if h <= w else (int(height * h / w), height)
    else:
        scale = max(height / h, width / w)
        resized = (max(height, int(h * scale)), max(width, int(w * scale)))
    if resized != (h, w):
        images = F.interpolate(images, size=resized, mode="bicubic", align_corners=False, antialias=True)
    top, left = round((resized[0] - height) / 2), round((resized[1] - width) / 2)  # torchvision's CenterCrop
    return normalize_pixels(images[..., top : top + height, left : left + width].clamp(0, 1), mean, std)


class LastEmbeddings:
    """The embeddings of the last image batch a reward embedded, keyed on that tensor's identity, so the reward's
    `embed_images` (the diversity monitor asks right after the reward scored the batch) need not run its model
    twice. Holds a weak reference: no image batch is kept alive."""

    def __init__(self) -> None:
        self._images: weakref.ref | None = None
        self._features: torch.Tensor | None = None

    def remember(self, images: torch.Tensor, features: torch.Tensor) -> None:
        self._images, self._features = weakref.ref(images), features

    def get(self, images: torch.Tensor) -> torch.Tensor | None:
        """The remembered embeddings if they were computed from this very tensor, else None."""
        return self._features if self._images is not None and self._images() is images else None


@dataclass
class OpenClip:
    """An open_clip model with its tokenizer and its preprocessing parameters."""

    model: Any
    tokenizer: Callable
    size: int | tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    last: LastEmbeddings = field(default_factory=LastEmbeddings, init=False, repr=False, compare=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """open_clip's transform on tensors: shorter side to the model's size, centre crop, its mean/std."""
        return preprocess_images(images, self.size, self.mean, self.std)

    @torch.no_grad()
    def image_features(
        self,
        images: torch.Tensor,
        batch_size: int = 32,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """L2-normalised image embeddings, `(B, D)` float32. `preprocess` replaces the centre-crop transform
        (HPSv2 letterboxes)."""
        preprocess = preprocess or self.preprocess
        dtype = next(self.model.parameters()).dtype
        chunks = []
        for start in range(0, len(images), batch_size):
            pixels = preprocess(images[start : start + batch_size].to(self.device))
            chunks.append(F.normalize(self.model.encode_image(pixels.to(dtype)).float(), dim=-1))
        features = torch.cat(chunks)
        self.last.remember(images, features)
        return features

    def cached_image_features(self, images: torch.Tensor) -> torch.Tensor | None:
        """The embeddings the last `image_features` call computed, if it was given this very tensor, else None."""
        return self.last.get(images)

    def embed_images(
        self,
        images: torch.Tensor,
        batch_size: int = 32,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """`image_features(images)`, reusing the last call's result when given that very tensor: what the CLIP
        rewards' `embed_images` capability returns (see `rlhf_img/rewards/reward_set.py`)."""
        cached = self.cached_image_features(images)
        return cached if cached is not None else self.image_features(images, batch_size, preprocess)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text embeddings, `(N, D)` float32."""
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            chunks.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        return torch.cat(chunks)


def load_open_clip(
    model: str,
    pretrained: str | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    force_quick_gelu: bool | None = None,
) -> OpenClip:
    """An open_clip model from an architecture name plus `pretrained` (a tag such as `openai` or
    `laion2b_s32b_b79k`, or a local weights file), or from `hf-hub:ORG/REPO` / `local-dir:DIR` (given as
    `model`, or as `pretrained` for convenience). `force_quick_gelu=None` takes open_clip's record of the
    pretrained tag (True for OpenAI's weights, trained with QuickGELU; a plain `ViT-L-14` would only warn);
    hub and local-dir configs say themselves. Raises `FileNotFoundError` naming a missing local file."""
    import open_clip

    if pretrained and pretrained.startswith(SCHEMAS):
        model, pretrained = pretrained, None
    if model.startswith("local-dir:") and not os.path.isdir(model[len("local-dir:") :]):
        raise FileNotFoundError(f"open_clip: local-dir not found: {model[len('local-dir:') :]}")
    if pretrained and not model.startswith(SCHEMAS) and os.sep in pretrained and not os.path.isfile(pretrained):
        raise FileNotFoundError(f"open_clip: weights file not found: {pretrained}")
    if force_quick_gelu is None:
        force_quick_gelu = (
            bool(pretrained)
            and not model.startswith(SCHEMAS)
            and bool(open_clip.get_pretrained_cfg(model, pretrained).get("quick_gelu", False))
        )
    device = torch.device(device) if device is not None else default_device()
    clip_model = open_clip.create_model(
        model,
        pretrained=None if model.startswith(SCHEMAS) else pretrained,
        precision=precision,
        device=device,
        force_quick_gelu=force_quick_gelu,
    )
    clip_model.eval().requires_grad_(False)
    preprocess = open_clip.get_model_preprocess_cfg(clip_model)
    return OpenClip(
        model=clip_model,
        tokenizer=open_clip.get_tokenizer(model),
        size=preprocess.get("size", 224),
        mean=tuple(preprocess.get("mean", CLIP_MEAN)),
        std=tuple(preprocess.get("std", CLIP_STD)),
    )


def load_state_dict_file(path: str, owner: str) -> dict[str, Any]:
    """A state dict (or a checkpoint dict) from a local `.safetensors` file or a torch pickle (`.pt`, `.pth`,
    `.bin`; loaded with `weights_only=True`, so no code in the file runs). `owner` names the caller in errors,
    e.g. `"reward 'hpsv2'"`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{owner}: weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickles holding more than tensors and containers are refused by weights_only
        raise ValueError(
            f"{owner}: cannot load {path} as weights ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); re-save its state dict with "
            "torch.save or safetensors"
        ) from None
