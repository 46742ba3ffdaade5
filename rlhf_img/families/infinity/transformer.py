"""The Infinity transformer: bitwise next-scale prediction conditioned on Flan-T5 features.

Written from the architecture of FoundationVision/Infinity (module and parameter names follow its
released state dicts, so `infinity_2b_reg.pth` loads key for key). One forward reads top to bottom:

    text (B, Lt, Ct5) -> RMSNorm -> attention pool -> cond (B, D)         [start token + AdaLN source]
                      -> MLP                    -> text_kv (B, Lt, D)     [cross-attention memory]
    tokens (B, L, C) = [cond + pos_start ; word_embed(scale inputs)] + level embedding per scale
    blocks: AdaLN(shared_ada_lin(cond) + ada_gss) -> self-attention (cosine q/k, learned per-head scale,
            2D RoPE on the final grid, block-causal across scales) -> cross-attention (LayerNorm) -> GELU FFN
    head:   AdaLN(cond) -> linear to 2 logits per bit (B, L, 2 * bits)

Token `l` of scale `k` predicts the bits of that same token; its input is the running sum of the codes
of scales < k, resized to scale k's grid (see `infinity_codes.py`). The first token (scale 0, 1x1) is
the pooled text plus a learned start embedding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from .schedules import full_schedule


class InfinityConfig(PretrainedConfig):
    """Architecture of an Infinity transformer. `bits_per_token` is the VAE's code width `d` (times 4 when
    the family applies a 2x2 spatial patchify, as Infinity-8B does)."""

    model_type = "rlhf_img_infinity"
    auto_map = {}  # read by TRL and the auto classes when rebuilding a reference model; not remote code

    def __init__(
        self,
        depth: int = 32,
        embed_dim: int = 2048,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        bits_per_token: int = 32,
        text_channels: int = 2048,
        text_maxlen: int = 512,
        block_chunks: int = 8,
        num_level_embeddings: int = 15,
        norm_eps: float = 1e-6,
        rope_max_positions: int = 128,
        rope_base: float = 10000.0,
        initializer_range: float = 0.02,
        **kwargs,
    ) -> None:
        self.depth, self.embed_dim, self.num_heads, self.mlp_ratio = depth, embed_dim, num_heads, mlp_ratio
        self.bits_per_token, self.text_channels, self.text_maxlen = bits_per_token, text_channels, text_maxlen
        self.block_chunks, self.num_level_embeddings, self.norm_eps = block_chunks, num_level_embeddings, norm_eps
        self.rope_max_positions, self.rope_base, self.initializer_range = (
            rope_max_positions,
            rope_base,
            initializer_range,
        )
        super().__init__(**kwargs)

    @property
    def ffn_hidden(self) -> int:
        return round(self.embed_dim * self.mlp_ratio / 256) * 256

    @property
    def pool_heads(self) -> int:
        """Heads of the text attention pool: text width / 128 (64 per head above a 4096-wide model)."""
        return self.text_channels // (64 if self.embed_dim > 4096 else 128)


# ---------------------------------------------------------------------------------------------- RoPE
def rope_angles(
    schedule: list[tuple[int, int]], aspect_ratio: float, head_dim: int, max_positions: int, base: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin `(L, head_dim / 2)` of the 2D rotary embedding for every token of `schedule`.

    Each scale's rows and columns are spread over the last grid of the 13-scale template of this aspect
    ratio (row i of an h-row scale sits at round(i * H / h)), so a coarse token and the fine tokens it
    covers share positions. The first half of the rotated pairs encodes the row, the second the column.
    """
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, dtype=torch.int64).float() / half))  # (half / 2,)
    final_h, final_w = full_schedule(aspect_ratio)[-1]
    rows, cols = [], []
    for h, w in schedule:
        row = (torch.arange(h) * (final_h / h)).round().int().clamp(max=max_positions - 1)
        col = (torch.arange(w) * (final_w / w)).round().int().clamp(max=max_positions - 1)
        rows.append(row.view(h, 1).expand(h, w).reshape(-1))
        cols.append(col.view(1, w).expand(h, w).reshape(-1))
    row_angle = torch.outer(torch.cat(rows).float(), inv_freq)  # (L, half / 2)
    col_angle = torch.outer(torch.cat(cols).float(), inv_freq)
    angles = torch.cat([row_angle, col_angle], dim=-1)  # (L, half)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of `x` `(B, H, L, c)` by the angles `(L, c / 2)`, in float32."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, H, L, c/2, 2)
    first, second = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([cos * first - sin * second, sin * first + cos * second], dim=-1)
    return rotated.flatten(-2)


# ---------------------------------------------------------------------------------------------- layers
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).to(x.dtype)


class SelfAttention(nn.Module):
    """Cosine attention: q and k are L2-normalised per head, q scaled by a learned per-head factor (<= 100)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None,
        cache: list | None,
    ) -> torch.Tensor:
        batch, length, dim = x.shape
        bias = torch.cat([self.q_bias, self.zero_k_bias, self.v_bias])
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, c)
        scale = self.scale_mul_1H11.clamp_max(math.log(100.0)).exp()
        q = F.normalize(q.float(), dim=-1, eps=1e-12) * scale
        k = F.normalize(k.float(), dim=-1, eps=1e-12)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:  # KV cache for next-scale sampling: [k, v] of the scales seen so far
            if cache:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
        out = F.scaled_dot_product_attention(q, k, v.to(q.dtype), attn_mask=attn_mask, scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim).to(x.dtype))


class CrossAttention(nn.Module):
    """Attention from image tokens (or, for the text pool, one learned query per head) to text tokens."""

    def __init__(self, dim: int, kv_dim: int, num_heads: int, pool: bool = False) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.pool = num_heads, dim // num_heads, pool
        if pool:
            self.mat_q = nn.Parameter(torch.zeros(1, num_heads, self.head_dim))
        else:
            self.mat_q = nn.Linear(dim, dim)
        self.mat_kv = nn.Linear(kv_dim, 2 * dim, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor | None, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """`x` `(B, L, C)` (None for the pool), `text` `(B, Lt, kv_dim)`, `text_mask` `(B, Lt)` bool -> `(B, L, C)`."""
        batch, text_len = text.shape[:2]
        kv = F.linear(text, self.mat_kv.weight, torch.cat([self.zero_k_bias, self.v_bias]))
        k, v = kv.view(batch, text_len, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.pool:
            q = self.mat_q.to(k.dtype).unsqueeze(2).expand(batch, -1, -1, -1)  # (B, H, 1, c)
        else:
            q = self.mat_q(x).view(batch, x.size(1), self.num_heads, self.head_dim).transpose(1, 2)
        mask = text_mask.view(batch, 1, 1, text_len)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L, c)
        return self.proj(out.transpose(1, 2).flatten(2))


class TextAttentivePool(nn.Module):
    def __init__(self, text_channels: int, dim: int, num_heads: int) -> None:
        super().__init__()
        self.ca = CrossAttention(dim, text_channels, num_heads, pool=True)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return self.ca(None, text, text_mask).squeeze(1)  # (B, D)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SharedAdaLin(nn.Linear):
    """cond `(B, D)` -> six modulation vectors `(B, 1, 6, C)`, shared by all blocks."""

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return super().forward(cond).view(-1, 1, 6, self.out_features // 6)


class InfinityBlock(GradientCheckpointingLayer):
    def __init__(self, config: InfinityConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.eps = config.norm_eps
        self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, dim) / dim**0.5)  # per-block offset of the shared AdaLN
        self.sa = SelfAttention(dim, config.num_heads)
        self.ca = CrossAttention(dim, dim, config.num_heads)
        self.ffn = FeedForward(dim, config.ffn_hidden)
        self.ca_norm = nn.LayerNorm(dim, eps=config.norm_eps)

    def _modulated_norm(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), (x.size(-1),), eps=self.eps) * (scale + 1) + shift

    def forward(
        self,
        x: torch.Tensor,
        modulation: torch.Tensor,
        text_kv: torch.Tensor,
        text_mask: torch.Tensor,
        rope_cos: torch.Tensor,
        rope_sin: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cache: list | None = None,
    ) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss + modulation).unbind(2)  # each (B, 1, C)
        x = x + self.sa(self._modulated_norm(x, scale1, shift1), (rope_cos, rope_sin), attn_mask, cache) * gamma1
        x = x + self.ca(self.ca_norm(x), text_kv, text_mask).float()
        return x + self.ffn(self._modulated_norm(x, scale2, shift2)) * gamma2


class BlockChunk(nn.Module):
    """A group of consecutive blocks: the released checkpoints name blocks `block_chunks.{c}.module.{j}`."""

    def __init__(self, blocks: list[InfinityBlock]) -> None:
        super().__init__()
        self.module = nn.ModuleList(blocks)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, dim: int, cond_dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, x.size(-1)).unbind(2)
        return F.layer_norm(x, (x.size(-1),), eps=self.eps) * (scale + 1) + shift


# ---------------------------------------------------------------------------------------------- model
def _no_text_generation(*args, **kwargs):
    raise NotImplementedError("InfinityTransformer does not generate text; sample with the infinity policy")


class InfinityTransformer(PreTrainedModel):
    """The trainable part of an Infinity policy. `forward` is teacher-forced over whole scale schedules;
    `prepare_text` + `forward_scale` run the KV-cached next-scale loop one scale at a time."""

    config_class = InfinityConfig
    base_model_prefix = "infinity"
    main_input_name = "text_features"
    supports_gradient_checkpointing = True
    _no_split_modules = ["InfinityBlock"]
    _supports_sdpa = True

    def __init__(self, config: InfinityConfig) -> None:
        super().__init__(config)
        dim, text_dim = config.embed_dim, config.text_channels
        if config.depth % config.block_chunks:
            raise ValueError(f"depth {config.depth} is not a multiple of block_chunks {config.block_chunks}")
        self.cfg_uncond = nn.Parameter(torch.randn(config.text_maxlen, text_dim) / text_dim**0.5)
        self.text_norm = RMSNorm(text_dim, config.norm_eps)
        self.text_proj_for_sos = TextAttentivePool(text_dim, dim, config.pool_heads)
        self.text_proj_for_ca = nn.Sequential(
            nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.pos_start = nn.Parameter(torch.zeros(1, 1, dim))
        self.lvl_embed = nn.Embedding(config.num_level_embeddings, dim)
        self.word_embed = nn.Linear(config.bits_per_token, dim)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(dim, 6 * dim))
        per_chunk = config.depth // config.block_chunks
        blocks = [InfinityBlock(config) for _ in range(config.depth)]
        self.block_chunks = nn.ModuleList(
            BlockChunk(blocks[c * per_chunk : (c + 1) * per_chunk]) for c in range(config.block_chunks)
        )
        self.head_nm = AdaLNBeforeHead(dim, dim, config.norm_eps)
        self.head = nn.Linear(dim, 2 * config.bits_per_token)
        self.generation_config = GenerationConfig()  # TRL writes pad_token_id here; sampling never reads it
        # peft's causal-LM wrapper (TRL's default LoRA task type) binds this; an instance attribute, so that
        # transformers does not take the class for a text generator
        self.prepare_inputs_for_generation = _no_text_generation
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.trunc_normal_(module.weight, std=std)
        elif isinstance(module, (nn.LayerNorm, RMSNorm)):
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, SelfAttention):
            init.constant_(module.scale_mul_1H11, math.log(4.0))
            init.zeros_(module.q_bias)
            init.zeros_(module.v_bias)
            init.zeros_(module.zero_k_bias)
        elif isinstance(module, CrossAttention):
            if module.pool:
                init.trunc_normal_(module.mat_q, std=std)
            init.zeros_(module.v_bias)
            init.zeros_(module.zero_k_bias)
        elif isinstance(module, InfinityBlock):
            init.trunc_normal_(module.ada_gss, std=module.ada_gss.size(-1) ** -0.5)
        elif isinstance(module, InfinityTransformer):
            init.trunc_normal_(module.cfg_uncond, std=module.cfg_uncond.size(-1) ** -0.5)
            init.trunc_normal_(module.pos_start, std=std)

    @property
    def blocks(self) -> list[InfinityBlock]:
        return [block for chunk in self.block_chunks for block in chunk.module]

    # ------------------------------------------------------------------------------------------ pieces
    def unconditional_text(self, text_mask: torch.Tensor) -> torch.Tensor:
        """The learned null condition laid over each row's own text length `(B, Lt, Ct5)` (as Infinity does)."""
        batch, length = text_mask.shape
        if length > self.cfg_uncond.size(0):
            raise ValueError(f"text of {length} tokens exceeds text_maxlen {self.cfg_uncond.size(0)}")
        return self.cfg_uncond[:length].unsqueeze(0).expand(batch, -1, -1)

    def prepare_text(
        self, text: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """T5 features `(B, Lt, Ct5)` -> pooled condition `(B, D)`, block modulation `(B, 1, 6, C)`, text memory `(B, Lt, D)`."""
        text = self.text_norm(text.float())
        cond = self.text_proj_for_sos(text, text_mask).float()
        return cond, self.shared_ada_lin(cond).float(), self.text_proj_for_ca(text)

    def logits(self, hidden: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Two logits per bit `(B, L, 2 * bits)`, always float32."""
        return self.head(self.head_nm(hidden.float(), cond.float())).float()

    def _run_blocks(self, x, modulation, text_kv, text_mask, rope, attn_mask, caches):
        for index, block in enumerate(self.blocks):
            cache = None if caches is None else caches[index]
            x = block(x, modulation, text_kv, text_mask, rope[0], rope[1], attn_mask=attn_mask, cache=cache)
        return x

    def _level_embeddings(self, schedule: list[tuple[int, int]], first_scale: int, device) -> torch.Tensor:
        levels = torch.cat([torch.full((h * w,), first_scale + i) for i, (h, w) in enumerate(schedule)])
        return self.lvl_embed(levels.to(device))  # (L, C)

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        text_features: torch.Tensor,
        text_mask: torch.Tensor,
        scale_inputs: torch.Tensor,
        schedule: list[tuple[int, int]],
        aspect_ratio: float = 1.0,
        null_text_rows: torch.Tensor | None = None,
        **causal_lm_kwargs,
    ) -> torch.Tensor:
        """Teacher-forced logits `(B, L, 2 * bits)` for every token of `schedule`.

        `null_text_rows` `(B,)` bool: rows whose text is replaced by the learned null text (the unconditional
        branch), inside this forward so that the null text is read (and trained) like every other weight, also
        when ZeRO-3 partitions it.
        `scale_inputs` `(B, L - 1, bits)`: the inputs of scales 1.. (scale 0 is the text start token).
        Attention is block-causal: a token sees every token of its own and earlier scales.
        `causal_lm_kwargs`: peft's causal-LM wrapper (TRL's default LoRA task type) passes `input_ids=None`,
        `labels=None`, ...; they must all be None here.
        """
        given = sorted(k for k, v in causal_lm_kwargs.items() if v is not None)
        if given:
            raise TypeError(f"InfinityTransformer.forward got unsupported arguments {given}")
        if null_text_rows is not None:
            null = self.unconditional_text(text_mask).to(text_features.dtype)  # (B, Lt, Ct5)
            text_features = torch.where(null_text_rows.view(-1, 1, 1), null, text_features)
        cond, modulation, text_kv = self.prepare_text(text_features, text_mask)
        start = (cond.unsqueeze(1) + self.pos_start).float()  # (B, 1, C)
        x = torch.cat([start, self.word_embed(scale_inputs.to(self.word_embed.weight.dtype)).float()], dim=1)
        x = x + self._level_embeddings(schedule, 0, x.device)
        scale_of = torch.cat([torch.full((h * w,), i) for i, (h, w) in enumerate(schedule)]).to(x.device)
        attn_mask = scale_of.view(1, -1) <= scale_of.view(-1, 1)  # (L, L): key scale <= query scale
        rope = [
            t.to(x.device)
            for t in rope_angles(
                schedule,
                aspect_ratio,
                self.config.embed_dim // self.config.num_heads,
                self.config.rope_max_positions,
                self.config.rope_base,
            )
        ]
        x = self._run_blocks(x, modulation, text_kv, text_mask, rope, attn_mask, None)
        return self.logits(x, cond)

    def forward_scale(
        self,
        x: torch.Tensor,
        scale_index: int,
        schedule: list[tuple[int, int]],
        text_state: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        text_mask: torch.Tensor,
        caches: list[list],
        aspect_ratio: float = 1.0,
    ) -> torch.Tensor:
        """One step of the KV-cached loop: logits `(B, h*w, 2 * bits)` of scale `scale_index`.

        `x` is the start token `(B, 1, C)` for scale 0, else the embedded scale input `(B, h*w, C)`.
        `caches`: one list per block, filled as scales go by.
        """
        cond, modulation, text_kv = text_state
        x = x.float() + self._level_embeddings([schedule[scale_index]], scale_index, x.device)
        offset = sum(h * w for h, w in schedule[:scale_index])
        cos, sin = rope_angles(
            schedule[: scale_index + 1],
            aspect_ratio,
            self.config.embed_dim // self.config.num_heads,
            self.config.rope_max_positions,
            self.config.rope_base,
        )
        rope = (cos[offset:].to(x.device), sin[offset:].to(x.device))
        x = self._run_blocks(x, modulation, text_kv, text_mask, rope, None, caches)
        return self.logits(x, cond)

    def start_tokens(self, cond: torch.Tensor) -> torch.Tensor:
        return (cond.unsqueeze(1) + self.pos_start).float()
