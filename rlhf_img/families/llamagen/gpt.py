"""LlamaGen's text-to-image GPT (Sun et al., 2024; FoundationVision/LlamaGen `autoregressive/models/gpt.py`).

Written from the architecture of the public code; module and parameter names follow its state dicts, so the
released `t2i_XL_stage1_256.pt` loads key for key. One forward reads top to bottom:

    caption features (B, P, Ccap) -> cap_proj MLP (GELU-tanh, no biases)      [P = cls_token_num = 120]
    image codes (B, n)            -> tok_embeddings                            (B, n, D)
    x = [prefix ; codes]                                                       (B, P + n, D)
    blocks: x + wo(attn(RMSNorm(x)))   fused wqkv, 2D RoPE, causal + caption-padding mask
            x + w2(silu(w1(RMSNorm(x))) * w3(...))                            (SwiGLU)
    RMSNorm -> output (untied)                                                 logits (B, n + 1, V) float32

Positions: 2D RoPE with interleaved pairs `(x0, x1)`; half of the pairs rotate by the row, half by the column
of the image grid. The P caption positions get a rotation of ZERO (cos = sin = 0, not the identity), as the
reference builds its table, so q and k of caption tokens are 0: caption information reaches image tokens only
through the values. Caption features are left-padded (valid tokens last); padded caption columns are masked
for every query and each position always sees itself (the reference's mask with its forced diagonal).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    DynamicCache,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


class LlamaGenConfig(PretrainedConfig):
    """Architecture of a LlamaGen t2i GPT. `block_size` is the number of image tokens (grid²: 256 at 256 px,
    1024 at 512 px); the weights do not depend on it, only the RoPE table does."""

    model_type = "rlhf_img_llamagen"
    # the names transformers' DynamicCache / StaticCache read (layer count) map onto the reference's names
    attribute_map = {"num_hidden_layers": "n_layer", "num_attention_heads": "n_head", "hidden_size": "dim"}
    auto_map = {}  # read by TRL and the auto classes when rebuilding a reference model; not remote code

    def __init__(
        self,
        dim: int = 1280,
        n_layer: int = 36,
        n_head: int = 20,
        intermediate_size: int | None = None,
        multiple_of: int = 256,
        vocab_size: int = 16384,
        caption_dim: int = 2048,
        cls_token_num: int = 120,
        uncond_token_num: int = 120,
        block_size: int = 256,
        rope_base: float = 10000.0,
        norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        **kwargs,
    ) -> None:
        self.dim, self.n_layer, self.n_head, self.multiple_of = dim, n_layer, n_head, multiple_of
        # SwiGLU width as the reference computes it: find_multiple(int(2 * 4 * dim / 3), multiple_of)
        self.intermediate_size = intermediate_size or find_multiple(int(2 * (4 * dim) / 3), multiple_of)
        self.vocab_size, self.caption_dim = vocab_size, caption_dim
        self.cls_token_num, self.uncond_token_num, self.block_size = cls_token_num, uncond_token_num, block_size
        self.rope_base, self.norm_eps, self.initializer_range = rope_base, norm_eps, initializer_range
        super().__init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def grid_size(self) -> int:
        grid = round(self.block_size**0.5)
        if grid * grid != self.block_size:
            raise ValueError(f"block_size {self.block_size} is not a square number of image tokens")
        return grid


# ---------------------------------------------------------------------------------------------- RoPE
def rope_table(grid_size: int, head_dim: int, base: float, prefix_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin `(P + grid², head_dim / 2)` float32: zeros for the P caption positions, then the grid row-major.

    The first half of the rotated pairs takes the row angle, the second half the column angle (the reference's
    `precompute_freqs_cis_2d`, computed the same way)."""
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))  # (head_dim / 4,)
    angles = torch.outer(torch.arange(grid_size), inv_freq)  # (grid, head_dim / 4)
    grid = torch.cat(
        [angles[:, None, :].expand(-1, grid_size, -1), angles[None, :, :].expand(grid_size, -1, -1)], dim=-1
    )
    grid = grid.flatten(0, 1)  # (grid², head_dim / 2): row angles, then column angles
    zeros = torch.zeros(prefix_length, half)
    return torch.cat([zeros, torch.cos(grid)]), torch.cat([zeros, torch.sin(grid)])


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the interleaved pairs of `x` `(B, L, H, c)` by `(L, c / 2)` angles (or `(B, L, c / 2)`: per row), in
    float32, back to x's dtype."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, L, H, c/2, 2)
    first, second = pairs[..., 0], pairs[..., 1]
    if cos.dim() == 2:
        cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    rotated = torch.stack([first * cos - second * sin, second * cos + first * sin], dim=-1)
    return rotated.flatten(3).type_as(x)


def slot_attention_mask(key_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Boolean `(R, 1, n, S)` for queries at `positions` `(R, n)` over the S slots `key_mask` `(R, S)` marks
    attendable: causal, padded caption slots hidden, each position always sees itself (the reference's forced
    diagonal: a padded caption row attends to itself, never to nothing).

    A slot's index is its position (the caption fills slots 0..P-1, image token s sits at P + s), so this works on
    a growing cache and on a static one whose unwritten slots are open in `key_mask` (the causal rule hides them).
    Tensor ops only: one compiled decode step serves every step."""
    key = torch.arange(key_mask.size(1), device=key_mask.device).view(1, 1, -1)  # (1, 1, S)
    query = positions.unsqueeze(-1)  # (R, n, 1)
    mask = (key_mask.bool().unsqueeze(1) & (key <= query)) | (key == query)  # (R, n, S)
    return mask.unsqueeze(1)


# ---------------------------------------------------------------------------------------------- layers
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(torch.mean(x32 * x32, dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class CaptionMLP(nn.Module):
    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CaptionEmbedder(nn.Module):
    """T5 features -> the GPT's prefix. `uncond_embedding` `(120, Ccap)` is the null caption used for CFG: a
    persistent buffer in the reference (saved in the checkpoint, never trained), kept as one here."""

    def __init__(self, caption_dim: int, dim: int, token_num: int) -> None:
        super().__init__()
        self.cap_proj = CaptionMLP(caption_dim, dim)
        self.register_buffer("uncond_embedding", torch.randn(token_num, caption_dim) / caption_dim**0.5)

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        return self.cap_proj(caption.to(self.cap_proj.fc1.weight.dtype))


class Attention(nn.Module):
    def __init__(self, config: LlamaGenConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.dim = config.n_head, config.head_dim, config.dim
        self.wqkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)

    def forward(self, x, cos, sin, mask, cache, layer: int) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = self.wqkv(x).split(self.dim, dim=-1)
        q = apply_rope(q.view(batch, length, self.n_head, self.head_dim), cos, sin).transpose(1, 2)  # (B, H, L, c)
        k = apply_rope(k.view(batch, length, self.n_head, self.head_dim), cos, sin).transpose(1, 2)
        v = v.view(batch, length, self.n_head, self.head_dim).transpose(1, 2)
        if cache is not None:  # a transformers Cache (DynamicCache, StaticCache): keys of every slot so far
            k, v = cache.update(k, v, layer)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(batch, length, self.dim))


class FeedForward(nn.Module):
    def __init__(self, config: LlamaGenConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.dim, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(GradientCheckpointingLayer):
    def __init__(self, config: LlamaGenConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)

    def forward(self, x, cos, sin, mask, cache=None, layer: int = 0) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, cache, layer)
        return h + self.feed_forward(self.ffn_norm(h))


# ---------------------------------------------------------------------------------------------- model
def _no_text_generation(*args, **kwargs):
    raise NotImplementedError("LlamaGenGPT does not generate text; sample with the llamagen policy")


class LlamaGenGPT(PreTrainedModel):
    """The trainable part of a LlamaGen policy. `forward` is teacher-forced; `forward_cached` is the KV-cached
    forward the shared sampling engine runs (`rlhf_img/sampling/engine.py`, through the family's adapter)."""

    config_class = LlamaGenConfig
    base_model_prefix = "llamagen"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TransformerBlock"]
    _supports_sdpa = True

    def __init__(self, config: LlamaGenConfig) -> None:
        super().__init__(config)
        self.cls_embedding = CaptionEmbedder(config.caption_dim, config.dim, config.uncond_token_num)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.generation_config = GenerationConfig()  # TRL writes pad_token_id here; sampling never reads it
        # peft's causal-LM wrapper binds this; an instance attribute, so transformers does not take the class
        # for a text generator
        self.prepare_inputs_for_generation = _no_text_generation
        self._rope_cache: dict = {}
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The reference's initialisation: N(0, 0.02) linears and embeddings, unit RMSNorm, zero output head."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, CaptionEmbedder):
            init.normal_(module.uncond_embedding, std=module.uncond_embedding.size(-1) ** -0.5)
        if module is self:
            init.zeros_(module.output.weight)

    def get_input_embeddings(self) -> nn.Module:
        return self.tok_embeddings

    def get_output_embeddings(self) -> nn.Module:
        return self.output

    # ------------------------------------------------------------------------------------------ pieces
    def rope(self, grid_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (grid_size, str(device))
        if key not in self._rope_cache:
            cos, sin = rope_table(grid_size, self.config.head_dim, self.config.rope_base, self.config.cls_token_num)
            self._rope_cache[key] = (cos.to(device), sin.to(device))
        return self._rope_cache[key]

    def unconditional_captions(self, rows: int) -> torch.Tensor:
        """The null caption for `rows` rows `(R, 120, Ccap)` (the same attention mask as the prompt applies)."""
        return self.cls_embedding.uncond_embedding.unsqueeze(0).expand(rows, -1, -1)

    def prefix(self, caption_features: torch.Tensor) -> torch.Tensor:
        """Caption features `(R, >= P, Ccap)` -> the GPT's first P positions `(R, P, D)`."""
        return self.cls_embedding(caption_features)[:, : self.config.cls_token_num]

    def _blocks(self, x, cos, sin, mask, cache=None) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, cache, index)
        return self.norm(x)

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        caption_features: torch.Tensor,
        caption_mask: torch.Tensor,
        grid_size: int | None = None,
        return_hidden_states: bool = False,
        **causal_lm_kwargs,
    ) -> torch.Tensor:
        """Teacher-forced logits `(B, n + 1, V)` float32 for image tokens 0..n given image codes `input_ids`
        `(B, n)` (the first n codes) and left-padded caption features `(B, P, Ccap)` with their mask `(B, P)`.
        `return_hidden_states`: the final normed hidden states `(B, n + 1, D)` the output layer would read
        instead, for a scorer that applies the head a chunk at a time.

        `causal_lm_kwargs`: peft's causal-LM wrapper (TRL's default LoRA task type) passes `attention_mask=None`,
        `labels=None`, ...; they must all be None here."""
        given = sorted(k for k, v in causal_lm_kwargs.items() if v is not None)
        if given:
            raise TypeError(f"LlamaGenGPT.forward got unsupported arguments {given}")
        prefix_length = self.config.cls_token_num
        x = torch.cat([self.prefix(caption_features), self.tok_embeddings(input_ids)], dim=1)  # (B, P + n, D)
        cos, sin = self.rope(grid_size or self.config.grid_size, x.device)
        rows, length = x.shape[:2]
        key_mask = torch.cat(
            [caption_mask.bool(), caption_mask.new_ones(rows, length - prefix_length, dtype=torch.bool)], 1
        )
        mask = slot_attention_mask(key_mask, torch.arange(length, device=x.device).expand(rows, -1))
        hidden = self._blocks(x, cos[:length], sin[:length], mask)[:, prefix_length - 1 :]
        return hidden if return_hidden_states else self.output(hidden).float()

    def forward_cached(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache,
        grid_size: int,
    ) -> torch.Tensor:
        """Final normed hidden states `(R, n, D)` of `inputs_embeds` `(R, n, D)` at `position_ids` `(R, n)`, writing
        `cache` (a transformers `DynamicCache` or `StaticCache`); `attention_mask` `(R, S)` marks the attendable
        cache slots after this write (caption padding 0, everything else 1)."""
        table_cos, table_sin = self.rope(grid_size, inputs_embeds.device)
        mask = slot_attention_mask(attention_mask, position_ids)
        return self._blocks(inputs_embeds, table_cos[position_ids], table_sin[position_ids], mask, cache)

    # the reference's loop pieces, on `forward_cached` (tools/parity/llamagen.py replays them against the reference)
    def prefill(self, caption_features, caption_mask, cache, grid_size: int) -> torch.Tensor:
        """Run the caption prefix into `cache`; logits `(R, V)` of the first image token."""
        prefix = self.prefix(caption_features)
        positions = torch.arange(prefix.size(1), device=prefix.device).expand(prefix.size(0), -1)
        hidden = self.forward_cached(prefix, caption_mask, positions, cache, grid_size)
        return self.output(hidden[:, -1]).float()

    def decode_step(self, codes: torch.Tensor, step: int, caption_mask, cache, grid_size: int) -> torch.Tensor:
        """Feed image token `step` `(R,)` (at position P + step); logits `(R, V)` of token `step + 1`."""
        rows, position = codes.size(0), self.config.cls_token_num + step
        mask = torch.cat([caption_mask.bool(), caption_mask.new_ones(rows, step + 1, dtype=torch.bool)], dim=1)
        positions = torch.full((rows, 1), position, dtype=torch.long, device=codes.device)
        hidden = self.forward_cached(self.tok_embeddings(codes.unsqueeze(1)), mask, positions, cache, grid_size)
        return self.output(hidden[:, -1]).float()

    def new_cache(self, num_tokens: int) -> DynamicCache:
        """A cache for the caption prefix and `num_tokens` image tokens (a growing transformers cache)."""
        return DynamicCache(config=self.config)
