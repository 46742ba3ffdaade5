"""`clip_score`: image-text agreement under an open_clip model.

Formulas in use in the literature, all on L2-normalised embeddings of the image and of the caption
`caption_template.format(prompt=...)`:

- `cosine`     cos(image, text)                       SimpleAR's GRPO reward (ViT-H-14, laion2b, "A photo of {prompt}")
- `clipscore`  2.5 * max(cos, 0)                      CLIPScore (Hessel et al., 2021)
- `100cos`     100 * cos                              the "CLIP score" of most T2I papers
"""

from __future__ import annotations

import torch

from .clip import load_open_clip
from .loading import RewardConfigError
from .registry import register_reward

FORMULAS = {
    "cosine": lambda cos: cos,
    "clipscore": lambda cos: 2.5 * cos.clamp(min=0),
    "100cos": lambda cos: 100 * cos,
}


@register_reward("clip_score")
class ClipScore:
    """CLIP image-text score. `model`: an open_clip architecture name (`ViT-H-14`), `hf-hub:ORG/REPO` or
    `local-dir:DIR`; `pretrained`: a tag (`laion2b_s32b_b79k`, `openai`) or a local weights file."""

    def __init__(
        self,
        model: str = "ViT-H-14",
        pretrained: str | None = "laion2b_s32b_b79k",
        formula: str = "cosine",
        caption_template: str = "A photo of {prompt}",
        device: str | None = None,
        precision: str = "fp32",
        batch_size: int = 32,
        force_quick_gelu: bool | None = None,
    ) -> None:
        if formula not in FORMULAS:
            raise RewardConfigError(f"clip_score: formula must be one of {sorted(FORMULAS)}, got {formula!r}")
        if "{prompt}" not in caption_template:
            raise RewardConfigError(f"clip_score: caption_template must contain '{{prompt}}', got {caption_template!r}")
        self.clip = load_open_clip(model, pretrained, device, precision, force_quick_gelu)
        self.formula, self.caption_template, self.batch_size = formula, caption_template, batch_size

    def captions(self, prompts: list[str]) -> list[str]:
        return [self.caption_template.format(prompt=prompt) for prompt in prompts]

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """`(B, D)` L2-normalised CLIP image embeddings, float32 (the last call's, for the same tensor): the
        image-embedding capability the diversity monitor uses (`RewardSet.image_embedder`)."""
        return self.clip.embed_images(images, self.batch_size)

    @torch.no_grad()
    def __call__(self, prompts: list[str], images: torch.Tensor, **columns) -> list[float]:
        image_features = self.clip.image_features(images, self.batch_size)
        text_features = self.clip.text_features(self.captions(prompts))
        cosine = (image_features * text_features).sum(-1)
        return FORMULAS[self.formula](cosine).tolist()
