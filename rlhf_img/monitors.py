"""Rollout monitors for the dashboards: is the policy collapsing within a prompt's group?

GRPO learns only from differences inside a group (the images of one prompt). When the images of a group
become near-identical, every advantage goes to 0 and learning stalls, often long before the reward curve
shows it. Logged per rollout batch (TRL averages them over the logging window):

- `monitors/image_diversity`: mean pairwise RMS pixel distance between the decoded images of a group
  (images in [0, 1], compared at most 64x64 after area downsampling), averaged over groups. 0 = identical.
- `monitors/clip_diversity`: mean pairwise cosine distance (1 - cos) of the CLIP image embeddings of a group,
  when a reward embeds images (the CLIP-based ones: `RewardSet.image_embedder()`); its embeddings of the batch
  it just scored are reused, no second CLIP is loaded.

The other collapse signals are TRL's own metrics, computed by the loss pass: `entropy` (mean per-token
entropy of the image-code distribution the loss scores), `frac_reward_zero_std` (share of groups whose
rewards have no spread) and `sampling/sampling_logp_difference/*` (sampler-vs-trainer log-prob drift).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .rewards.reward_set import ImageEmbedder

MAX_SIDE = 64  # pixel diversity is measured at most at 64x64: enough to see collapse, cheap to gather


def group_diversity(features: torch.Tensor, group_size: int, metric: str) -> float:
    """Mean over groups of the mean pairwise distance inside each group of `group_size` consecutive rows.

    `metric`: 'rms' (root-mean-square difference per feature) or 'cosine' (1 - cosine similarity).
    NaN when there are no pairs (group size 1)."""
    if metric not in ("rms", "cosine"):
        raise ValueError(f"metric must be 'rms' or 'cosine', got {metric!r}")
    count, dim = features.shape
    if group_size < 2 or count % group_size != 0:
        return float("nan")
    groups = features.double().view(count // group_size, group_size, dim)
    if metric == "rms":
        distances = torch.cdist(groups, groups) / dim**0.5
    else:
        unit = F.normalize(groups, dim=-1)
        distances = 1 - unit @ unit.transpose(1, 2)
    pairs = group_size * (group_size - 1)  # ordered pairs off the diagonal (the diagonal is 0)
    return (distances.sum(dim=(1, 2)) / pairs).mean().item()


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """`(B, 3, H, W)` -> `(B, 3 * h * w)` float32 with h, w <= `MAX_SIDE` (area-averaged)."""
    height, width = images.shape[-2:]
    if max(height, width) > MAX_SIDE:
        scale = MAX_SIDE / max(height, width)
        images = F.adaptive_avg_pool2d(images.float(), (max(1, round(height * scale)), max(1, round(width * scale))))
    return images.float().flatten(1)


@torch.no_grad()
def rollout_monitors(
    images: torch.Tensor, group_size: int, gather, embed_images: ImageEmbedder | None = None
) -> dict[str, float]:
    """The diversity monitors of one rollout batch. `images`: this process's decoded images; `gather`: the
    accelerator's gather (groups may span processes; only small per-image vectors cross them); `embed_images`:
    a reward's image-embedding capability (`RewardSet.image_embedder()`), None for no `clip_diversity`."""
    metrics = {"monitors/image_diversity": group_diversity(gather(pixel_features(images)), group_size, "rms")}
    if embed_images is not None:
        embeddings = embed_images(images)  # (B, D), L2-normalised
        metrics["monitors/clip_diversity"] = group_diversity(gather(embeddings.to(images.device)), group_size, "cosine")
    return metrics
