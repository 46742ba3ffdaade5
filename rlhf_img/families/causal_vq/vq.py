"""A small VQ-VAE image tokenizer: the visual tokenizer of the `causal_vq` family's own checkpoints.

Plain convolutional encoder / decoder around a nearest-neighbour codebook (van den Oord et al., 2017).
Saved as `config.json` + `model.safetensors` through huggingface_hub's `PyTorchModelHubMixin`, so it
loads from a local folder or a hub id like any other checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..registry import register_visual_tokenizer


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(8, channels), num_channels=channels)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = _norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


@register_visual_tokenizer("vq")
class VQTokenizer(nn.Module, PyTorchModelHubMixin):
    """Images `(B, 3, H, W)` in [0, 1] <-> codes `(B, H/f, W/f)` in `[0, codebook_size)`, f = 2**len(channels).

    Args:
        codebook_size: number of codes K.
        code_dim: codebook vector size D.
        channels: conv width at each resolution, finest first; one 2x down/up-sampling per entry.
        beta: commitment-loss weight (training only).
    """

    def __init__(
        self, codebook_size: int = 512, code_dim: int = 16, channels: tuple[int, ...] = (32, 64), beta: float = 0.25
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        self.codebook_size, self.code_dim, self.channels, self.beta = codebook_size, code_dim, channels, beta
        self.downsample_factor = 2 ** len(channels)

        enc: list[nn.Module] = [nn.Conv2d(3, channels[0], 3, padding=1)]
        for i, c in enumerate(channels):
            c_next = channels[min(i + 1, len(channels) - 1)]
            enc += [ResidualBlock(c), nn.Conv2d(c, c_next, 4, stride=2, padding=1)]
        enc += [ResidualBlock(channels[-1]), _norm(channels[-1]), nn.SiLU(), nn.Conv2d(channels[-1], code_dim, 1)]
        self.encoder = nn.Sequential(*enc)

        self.codebook = nn.Embedding(codebook_size, code_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)

        dec: list[nn.Module] = [nn.Conv2d(code_dim, channels[-1], 3, padding=1), ResidualBlock(channels[-1])]
        for i, c in reversed(list(enumerate(channels))):
            c_next = channels[max(i - 1, 0)]
            dec += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(c, c_next, 3, padding=1),
                ResidualBlock(c_next),
            ]
        dec += [_norm(channels[0]), nn.SiLU(), nn.Conv2d(channels[0], 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codes for latents `(B, D, h, w)` -> (quantised latents, indices `(B, h, w)`)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.code_dim)  # (N, D)
        distances = (
            flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.weight.t() + self.codebook.weight.pow(2).sum(1)
        )
        indices = distances.argmin(1).view(z.size(0), z.size(2), z.size(3))
        return self.codes_to_latents(indices), indices

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codebook(codes).permute(0, 3, 1, 2)  # (B, D, h, w)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images `(B, 3, H, W)` in [0, 1] -> codes `(B, H/f, W/f)`."""
        return self.quantize(self.encoder(images * 2 - 1))[1]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `(B, h, w)` -> images `(B, 3, h*f, w*f)`, float in [0, 1]."""
        x = self.decoder(self.codes_to_latents(codes))
        return ((x.clamp(-1, 1) + 1) / 2).float()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction in [-1, 1], VQ loss, codes). Straight-through gradient estimator."""
        z = self.encoder(images * 2 - 1)
        zq, codes = self.quantize(z)
        vq_loss = F.mse_loss(zq, z.detach()) + self.beta * F.mse_loss(z, zq.detach())
        zq = z + (zq - z).detach()
        return self.decoder(zq), vq_loss, codes
