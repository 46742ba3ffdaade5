"""`aesthetic`: the LAION aesthetic predictor v2 (improved-aesthetic-predictor), an MLP on CLIP ViT-L/14
image embeddings that predicts the mean 1-10 rating people give an image.

The released head `sac+logos+ava1-l14-linearMSE.pth` is a plain state dict of an `nn.Sequential` named
`layers`: Linear(768, 1024), Dropout(0.2), Linear(1024, 128), Dropout(0.2), Linear(128, 64), Dropout(0.1),
Linear(64, 16), Linear(16, 1) (no activations), so its keys are `layers.{0,2,4,6,7}.{weight,bias}`. Its input
is the L2-normalised image embedding of OpenAI's CLIP ViT-L/14 (QuickGELU).
"""

from __future__ import annotations

import torch
from torch import nn

from .clip import load_open_clip, load_state_dict_file
from .loading import RewardConfigError
from .registry import register_reward

WEIGHTS_HINT = (
    "sac+logos+ava1-l14-linearMSE.pth from https://github.com/christophschuhmann/improved-aesthetic-predictor"
)


class AestheticMLP(nn.Module):
    """The LAION aesthetic v2 head: `(B, input_dim)` normalised CLIP image embeddings -> `(B,)` scores."""

    def __init__(self, input_dim: int = 768) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)

    @classmethod
    def from_file(cls, path: str, owner: str = "AestheticMLP") -> "AestheticMLP":
        """Load a `.pth` / `.safetensors` with the released key names; the input width comes from the file."""
        state_dict = load_state_dict_file(path, owner)
        if "layers.0.weight" not in state_dict:
            raise ValueError(
                f"{owner}: {path} is not an aesthetic MLP state dict (no 'layers.0.weight'; "
                f"keys: {sorted(state_dict)[:5]})"
            )
        head = cls(input_dim=state_dict["layers.0.weight"].shape[1])
        head.load_state_dict(state_dict)
        return head.eval().requires_grad_(False)


@register_reward("aesthetic")
class AestheticReward:
    """LAION aesthetic score (about 1-10) of each image; the prompt is not used.

    `weights`: the head's `.pth` / `.safetensors`. `clip_model` / `clip_pretrained`: the open_clip model whose
    embeddings the head was trained on (default: OpenAI's ViT-L/14), as for `load_open_clip`.
    `force_quick_gelu`: default taken from open_clip's record of the pretrained tag (True for `openai`)."""

    def __init__(
        self,
        weights: str | None = None,
        clip_model: str = "ViT-L-14",
        clip_pretrained: str | None = "openai",
        device: str | None = None,
        batch_size: int = 32,
        precision: str = "fp32",
        force_quick_gelu: bool | None = None,
    ) -> None:
        owner = "reward 'aesthetic'"
        if not weights:
            raise RewardConfigError(f"{owner} needs kwargs.weights: a local path to {WEIGHTS_HINT}")
        head = AestheticMLP.from_file(weights, owner)
        if force_quick_gelu is None:
            force_quick_gelu = _tag_uses_quick_gelu(clip_model, clip_pretrained)
        self.clip = load_open_clip(clip_model, clip_pretrained, device, precision, force_quick_gelu)
        embed_dim = getattr(self.clip.model.visual, "output_dim", None)
        if embed_dim is not None and embed_dim != head.input_dim:
            raise ValueError(
                f"{owner}: {weights} expects {head.input_dim}-d embeddings but {clip_model} gives "
                f"{embed_dim}-d ones; use the CLIP model the head was trained on"
            )
        self.head = head.to(self.clip.device)
        self.batch_size = batch_size

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """`(B, D)` L2-normalised CLIP image embeddings, float32 (the last call's, for the same tensor): the
        image-embedding capability the diversity monitor uses (`RewardSet.image_embedder`)."""
        return self.clip.embed_images(images, self.batch_size)

    @torch.no_grad()
    def __call__(self, prompts: list[str], images: torch.Tensor, **columns) -> list[float]:
        embeddings = self.clip.image_features(images, self.batch_size)  # (B, D), L2-normalised
        return self.head(embeddings).tolist()


def _tag_uses_quick_gelu(model: str, pretrained: str | None) -> bool:
    """Whether open_clip records that weights `pretrained` of `model` were trained with QuickGELU (OpenAI's
    and MetaCLIP's were); False for local files and `hf-hub:` / `local-dir:` models (their config says)."""
    import open_clip

    if not pretrained or ":" in model:
        return False
    return bool(open_clip.get_pretrained_cfg(model, pretrained).get("quick_gelu", False))
