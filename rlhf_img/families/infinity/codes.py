"""Bits <-> transformer inputs <-> VAE latents, for one Infinity scale schedule.

Actions are a flat `(B, T)` tensor of bits: scale by scale, tokens row-major within a scale, the
`bits_per_token` bits of a token contiguous. With `patchify` (Infinity-8B) a token holds the bits of a
2x2 block of VAE positions (`pixel_unshuffle` order) and the VAE grid is twice the token grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .bsq_vae import BinarySphericalQuantizer, resize_codes


class ScaleCodes:
    """Everything that turns sampled bits into the next scale's input and the decoder's latent."""

    def __init__(self, grids: list[tuple[int, int]], codebook_dim: int, patchify: bool = False) -> None:
        self.grids = [tuple(g) for g in grids]
        self.patchify = patchify
        self.codebook_dim = codebook_dim
        self.bits_per_token = codebook_dim * (4 if patchify else 1)
        self.vae_grids = [(2 * h, 2 * w) if patchify else (h, w) for h, w in self.grids]
        self.quantizer = BinarySphericalQuantizer(codebook_dim)
        self.tokens_per_scale = [h * w for h, w in self.grids]
        self.num_tokens = sum(self.tokens_per_scale)
        self.num_actions = self.num_tokens * self.bits_per_token

    def split(self, actions: torch.Tensor) -> list[torch.Tensor]:
        """`(B, T)` -> per-scale bits `(B, h, w, bits_per_token)`."""
        batch = actions.size(0)
        chunks = actions.split([n * self.bits_per_token for n in self.tokens_per_scale], dim=1)
        return [chunk.reshape(batch, h, w, self.bits_per_token) for chunk, (h, w) in zip(chunks, self.grids)]

    def latent_codes(self, bits: torch.Tensor) -> torch.Tensor:
        """One scale's bits `(B, h, w, bits_per_token)` -> VAE codes `(B, d, h', w')`."""
        bits = bits.permute(0, 3, 1, 2)  # (B, bits, h, w)
        if self.patchify:
            bits = F.pixel_shuffle(bits.float(), 2)  # (B, d, 2h, 2w)
        return self.quantizer.codes(bits.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def accumulate(self, summed: torch.Tensor | None, bits: torch.Tensor, scale_index: int) -> torch.Tensor:
        """Add one scale's codes, resized to the final VAE grid, to the running sum `(B, d, H, W)`."""
        codes = resize_codes(self.latent_codes(bits), self.vae_grids[-1])
        return codes if summed is None else summed + codes

    def scale_input(self, summed: torch.Tensor, scale_index: int) -> torch.Tensor:
        """The running sum resized to scale `scale_index`'s grid, as tokens `(B, h*w, bits_per_token)`."""
        x = resize_codes(summed, self.vae_grids[scale_index])
        if self.patchify:
            x = F.pixel_unshuffle(x, 2)
        return x.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def teacher_inputs(self, actions: torch.Tensor) -> torch.Tensor:
        """Inputs of scales 1.. for teacher forcing `(B, L - 1, bits_per_token)`; exactly the sampler's inputs."""
        summed, inputs = None, []
        per_scale = self.split(actions)
        for index, bits in enumerate(per_scale[:-1]):
            summed = self.accumulate(summed, bits, index)
            inputs.append(self.scale_input(summed, index + 1))
        if not inputs:
            return actions.new_zeros(actions.size(0), 0, self.bits_per_token, dtype=torch.float32)
        return torch.cat(inputs, dim=1)

    @torch.no_grad()
    def summed_codes(self, actions: torch.Tensor) -> torch.Tensor:
        """The decoder's input `(B, d, H, W)`: all scales' codes, each resized to the final grid, summed."""
        summed = None
        for index, bits in enumerate(self.split(actions)):
            summed = self.accumulate(summed, bits, index)
        return summed

    def actions_from_latent_bits(self, bits_per_scale: list[torch.Tensor]) -> torch.Tensor:
        """VAE bits per scale `(B, h', w', d)` (from `BSQVAE.multiscale_bits`) -> actions `(B, T)`."""
        tokens = []
        for bits in bits_per_scale:
            bits = bits.permute(0, 3, 1, 2).float()  # (B, d, h', w')
            if self.patchify:
                bits = F.pixel_unshuffle(bits, 2)
            tokens.append(bits.permute(0, 2, 3, 1).reshape(bits.size(0), -1))
        return torch.cat(tokens, dim=1).long()
