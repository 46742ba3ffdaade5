"""Reference outputs of FoundationVision/Infinity's own modules for `tests/test_infinity_parity.py`.

    PYTHONPATH=/tmp/parity-deps python tools/parity/infinity.py \
        --reference /path/to/Infinity --out tests/data/infinity_parity [--compare]

`--reference` is a checkout of https://github.com/FoundationVision/Infinity (none of its code is in this
repository; it is imported from the checkout at run time). Its modules import `einops`, `pytz` and `imageio`,
which this project does not depend on (and `timm`, which comes with open_clip): install them outside the
project's environment, e.g. `pip install --no-deps --target /tmp/parity-deps einops pytz imageio`, and put
that folder on PYTHONPATH.

The reference is run on the CPU in float32 with three runtime shims, none of which edits the checkout:
  * `flash_attn` (CUDA-only, not installed) is replaced by a module whose `flash_attn_varlen_kvpacked_func`
    (the only one the modules call in this configuration) is an exact `scaled_dot_product_attention`, one
    sequence at a time;
  * the cross-attention's cast of float32 queries and keys/values to bfloat16 (for the flash kernel) is
    turned off: a `TorchFunctionMode` makes `.to(dtype=torch.bfloat16)` a no-op inside `CrossAttention.forward`;
  * `torch.compile` (the reference compiles its fused AdaLN norms) is disabled (TORCHDYNAMO_DISABLE=1), so the
    same functions run eagerly.
The transformer is built with the arguments of the reference's inference loader (`tools/run_infinity.py`:
`shared_aln=True`, `fused_norm=True`, `pad_to_multiplier=128`, `rope2d_each_sa_layer=1`,
`rope2d_normalized_by_hw=2`, `add_lvl_embeding_only_first_block=1`, `use_bit_label=1`,
`inference_mode=True`) and `cond_drop_rate=0`. Weights: the reference's own initialisation, parameters it
initialises to a constant perturbed by 0.05 * N(0, 1) so that they matter.

Written to `--out` (layout described in its README.md):
  square/    depth 2, width 64, 2 heads, 2 block chunks, T5 width 256, 8 bits per token, schedule 1,2,4,6 (the
             first four scales of the square template), VAE base 32 channels, stride 2:
             cfg.json, model.safetensors, vae.safetensors, reference.safetensors
  patchify/  the same with Infinity-8B's 2x2 spatial patchify (32 bits per token), schedule 1,2,4 (no VAE file)
  infinity_reference_keys/  key names and shapes of the released 2B and 8B transformers and their VAEs
             (d32; d14 with patchify), from the reference modules built on the meta device
"""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # before torch is imported: torch.compile runs eagerly

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

SEED = 0
BATCH, TEXT_LENGTHS = 2, (5, 11)
TINY = dict(depth=2, embed_dim=64, num_heads=2, block_chunks=2, text_channels=256, text_maxlen=16, mlp_ratio=4)
TINY_VAE = dict(codebook_dim=8, vae_base_ch=32, vae_ch_mult=[1, 2], vae_patch_size=2)
CASES = {  # name: (apply_spatial_patchify, number of scales of the square template, whether the VAE is run and saved)
    "square": (0, 4, True),
    "patchify": (1, 3, False),
}
CFG_SCALE, TAU = 3.0, 0.5
# the reference's inference loader (tools/run_infinity.py: load_infinity and its argument defaults)
LOADER_KWARGS = dict(
    shared_aln=True,
    checkpointing="full-block",
    customized_flash_attn=False,
    fused_norm=True,
    pad_to_multiplier=128,
    use_flex_attn=False,
    add_lvl_embeding_only_first_block=1,
    use_bit_label=1,
    rope2d_each_sa_layer=1,
    rope2d_normalized_by_hw=2,
    inference_mode=True,
    train_h_div_w_list=[1.0],
    cond_drop_rate=0.0,
)
RELEASED = {  # tools/run_infinity.py: load_transformer's model kwargs and load_visual_tokenizer's VAE settings
    "infinity_2b": (
        dict(depth=32, embed_dim=2048, num_heads=2048 // 128, drop_path_rate=0.1, mlp_ratio=4, block_chunks=8),
        0,
    ),
    "infinity_8b": (dict(depth=40, embed_dim=3584, num_heads=28, drop_path_rate=0.1, mlp_ratio=4, block_chunks=8), 1),
}
RELEASED_VAES = {
    "vae_d32": dict(codebook_dim=32, patch_size=16, ch_mult=[1, 2, 4, 4, 4]),
    "vae_d14_patchify": dict(codebook_dim=14, patch_size=8, ch_mult=[1, 2, 4, 4]),
}


# ------------------------------------------------------------------------------------------- shims
def _sdpa_varlen_kvpacked(
    q,
    kv,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q=None,
    max_seqlen_k=None,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    **_,
):
    """flash-attn's varlen kv-packed attention, exactly: q (Nq, H, c), kv (Nk, 2, H, c) -> (Nq, H, c)."""
    assert dropout_p == 0 and not causal
    outputs = []
    for i in range(cu_seqlens_q.numel() - 1):
        qi = q[cu_seqlens_q[i] : cu_seqlens_q[i + 1]].transpose(0, 1)  # (H, Lq, c)
        ki, vi = kv[cu_seqlens_k[i] : cu_seqlens_k[i + 1]].unbind(1)
        out = F.scaled_dot_product_attention(qi, ki.transpose(0, 1), vi.transpose(0, 1), scale=softmax_scale)
        outputs.append(out.transpose(0, 1))
    return torch.cat(outputs)


def _sdpa_dense(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):
    """flash-attn's dense attention on (B, L, H, c) tensors (not called with customized_flash_attn=False)."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale, is_causal=causal
    )
    return out.transpose(1, 2)


class _NoBFloat16Casts(TorchFunctionMode):
    """Inside the reference's CrossAttention.forward: `.to(dtype=torch.bfloat16)` returns the tensor unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to and (kwargs.get("dtype") is torch.bfloat16 or torch.bfloat16 in args[1:]):
            return args[0]
        return func(*args, **kwargs)


def import_reference(path: str):
    if not os.path.isdir(os.path.join(path, "infinity", "models")):
        sys.exit(f"--reference {path}: not a checkout of FoundationVision/Infinity (no infinity/models/)")
    shim = types.ModuleType("flash_attn")
    shim.flash_attn_func, shim.flash_attn_varlen_kvpacked_func = _sdpa_dense, _sdpa_varlen_kvpacked
    sys.modules["flash_attn"] = shim  # flash_attn.ops (fused kernels) stays missing: the reference falls back
    # the reference's `infinity/` has no __init__.py (a namespace package), so this script's own folder, first on
    # sys.path and holding infinity.py, would win the name: take it off
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    sys.path.insert(0, os.path.abspath(path))
    try:
        import infinity.models.basic as basic
        import infinity.models.bsq_vae.vae as vae_module
        import infinity.models.infinity as infinity_module
        from infinity.utils.dynamic_resolution import dynamic_resolution_h_w
    except ImportError as error:
        sys.exit(
            f"cannot import the reference ({error}); install its dependencies outside this project, e.g. "
            "pip install --no-deps --target /tmp/parity-deps einops pytz imageio, and set PYTHONPATH=/tmp/parity-deps"
        )
    finally:  # the reference bound the shim's functions at import; other libraries must not see a `flash_attn`
        del sys.modules["flash_attn"]
    cross_attention_forward = basic.CrossAttention.forward

    def forward_in_float32(self, *args, **kwargs):
        with _NoBFloat16Casts():
            return cross_attention_forward(self, *args, **kwargs)

    basic.CrossAttention.forward = forward_in_float32
    return types.SimpleNamespace(
        Infinity=infinity_module.Infinity,
        infinity_module=infinity_module,
        vae_module=vae_module,
        dynamic_resolution_h_w=dynamic_resolution_h_w,
    )


def git_commit(path: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


# ------------------------------------------------------------------------------------------- building
def build_vae(ref, codebook_dim: int, patch_size: int, ch_mult: list[int], base_ch: int | None = None):
    """The reference's `vae_model` (its BSQ-VAE builder, no checkpoint); `base_ch` overrides its width 128."""
    autoencoder = ref.vae_module.AutoEncoder

    def with_width(args):
        if base_ch is not None:
            args.base_ch = base_ch
        return autoencoder(args)

    ref.vae_module.AutoEncoder = with_width
    try:
        return ref.vae_module.vae_model(
            None,
            "dynamic",
            codebook_dim,
            2**codebook_dim,
            test_mode=True,
            patch_size=patch_size,
            encoder_ch_mult=ch_mult,
            decoder_ch_mult=ch_mult,
        )
    finally:
        ref.vae_module.AutoEncoder = autoencoder


def build_transformer(ref, vae, model_kwargs: dict, patchify: int, text_channels: int, text_maxlen: int):
    return ref.Infinity(
        vae_local=vae,
        text_channels=text_channels,
        text_maxlen=text_maxlen,
        apply_spatial_patchify=patchify,
        **LOADER_KWARGS,
        **model_kwargs,
    )


def perturb_constants(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.05) -> list[str]:
    """Add scale * N(0, 1) to every parameter whose entries are all equal (LayerNorm/GroupNorm weights and biases,
    zero-initialised attention biases, the constant attention scale)."""
    names = []
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if bool(parameter.min() == parameter.max()):
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
                names.append(name)
    return names


def quiet(fn, *args, **kwargs):
    """The reference prints a lot while building; keep stdout for this script's own lines."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------------------------- keys
def reference_keys(ref) -> dict[str, dict[str, list[int]]]:
    """Key names and shapes of the released configurations, from the reference modules with their parameters on
    the meta device (accelerate's `init_empty_weights`: parameters are moved to `meta` as they are registered,
    so nothing of the 2B/8B weights is allocated; the constructors' own computations still run on the CPU)."""
    from accelerate import init_empty_weights

    out = {}
    with init_empty_weights():
        vaes = {name: quiet(build_vae, ref, **kwargs) for name, kwargs in RELEASED_VAES.items()}
        for name, vae in vaes.items():
            out[name] = {k: list(v.shape) for k, v in vae.state_dict().items()}
        for name, (kwargs, patchify) in RELEASED.items():
            vae = vaes["vae_d14_patchify" if patchify else "vae_d32"]
            model = quiet(build_transformer, ref, vae, kwargs, patchify, text_channels=2048, text_maxlen=512)
            out[name] = {k: list(v.shape) for k, v in model.state_dict().items()}
    return out


# ------------------------------------------------------------------------------------------- tiny runs
def text_condition(features: torch.Tensor, lengths: list[int]):
    """(B, L, C) features -> the reference's packed text condition (kv_compact, lens, cu_seqlens_k, max_seqlen_k)."""
    lens = torch.tensor(lengths, dtype=torch.int32)
    kv_compact = torch.cat([f[:n] for f, n in zip(features, lengths)])
    return kv_compact, list(lengths), F.pad(lens.cumsum(0, dtype=torch.int32), (1, 0)), max(lengths)


def unconditional(model, condition):
    """The same condition with every prompt's features replaced by the learned null text of its length."""
    kv_compact, lens, cu_seqlens_k, max_seqlen_k = condition
    return torch.cat([model.cfg_uncond[:n] for n in lens]), lens, cu_seqlens_k, max_seqlen_k


@torch.no_grad()
def run_case(ref, name: str, patchify: int, num_scales: int, with_vae: bool, seed: int) -> dict:
    torch.manual_seed(seed)
    vae = quiet(
        build_vae,
        ref,
        TINY_VAE["codebook_dim"],
        TINY_VAE["vae_patch_size"],
        TINY_VAE["vae_ch_mult"],
        TINY_VAE["vae_base_ch"],
    )
    model = quiet(
        build_transformer,
        ref,
        vae,
        dict(
            depth=TINY["depth"],
            embed_dim=TINY["embed_dim"],
            num_heads=TINY["num_heads"],
            mlp_ratio=TINY["mlp_ratio"],
            block_chunks=TINY["block_chunks"],
        ),
        patchify,
        TINY["text_channels"],
        TINY["text_maxlen"],
    )
    generator = torch.Generator().manual_seed(seed + 1)
    perturb_constants(model, generator)
    perturb_constants(vae, generator)
    model.eval(), vae.eval()

    template = [(1, h, w) for _, h, w in ref.dynamic_resolution_h_w[1.0]["1M"]["scales"]]
    schedule = template[:num_scales]
    # a prefix of a template: the RoPE table of the full template (positions are laid on its final grid) serves it
    model.rope2d_freqs_grid[str(tuple(schedule))] = model.rope2d_freqs_grid[str(tuple(template))]
    vae_schedule = [(t, 2 * h, 2 * w) for t, h, w in schedule] if patchify else schedule
    d = TINY_VAE["codebook_dim"]
    bits_per_token = d * (4 if patchify else 1)

    # inputs, from the same generator: T5-like features (zero past each prompt's length, as a padded T5 batch
    # reads), random bits, an image in [-1, 1]
    text_features = torch.randn(BATCH, max(TEXT_LENGTHS) + 1, TINY["text_channels"], generator=generator)
    for row, length in enumerate(TEXT_LENGTHS):
        text_features[row, length:] = 0
    bit_labels = torch.randint(0, 2, (BATCH, sum(h * w for _, h, w in schedule), bits_per_token), generator=generator)
    image = (
        torch.rand(
            BATCH,
            3,
            vae_schedule[-1][1] * TINY_VAE["vae_patch_size"],
            vae_schedule[-1][2] * TINY_VAE["vae_patch_size"],
            generator=generator,
        )
        * 2
        - 1
    )
    condition = text_condition(text_features, list(TEXT_LENGTHS))

    # per-scale bits in the VAE's layout (B, 1, h', w', d), as the reference sampler turns a token's bits into
    # codes (pixel_shuffle of the 4d bits of a token onto its 2x2 VAE positions with patchify)
    forced, start = [], 0
    for _, h, w in schedule:
        bits = bit_labels[:, start : start + h * w].reshape(BATCH, h, w, bits_per_token)
        start += h * w
        if patchify:
            bits = F.pixel_shuffle(bits.permute(0, 3, 1, 2).float(), 2).permute(0, 2, 3, 1).long()
        forced.append(bits.unsqueeze(1))

    # KV-cached sampling loop of the reference with every scale's bits forced (gt_leak), CFG on logits: record
    # the guided logits it samples from and the inputs it feeds the next scales (= the teacher-forcing inputs)
    guided, next_inputs = [], []
    sampler = ref.infinity_module.sample_with_top_k_top_p_also_inplace_modifying_logits_

    def recording_sampler(logits_BlV, *args, **kwargs):
        guided.append(logits_BlV.clone())
        return sampler(logits_BlV, *args, **kwargs)

    hook = model.word_embed.register_forward_pre_hook(lambda module, args: next_inputs.append(args[0].clone()))
    ref.infinity_module.sample_with_top_k_top_p_also_inplace_modifying_logits_ = recording_sampler
    try:
        model.autoregressive_infer_cfg(
            vae=vae,
            scale_schedule=schedule,
            label_B_or_BLT=condition,
            B=BATCH,
            g_seed=seed,
            cfg_list=[CFG_SCALE] * len(schedule),
            tau_list=[TAU] * len(schedule),
            cfg_insertion_layer=[0],
            vae_type=1,
            returns_vemb=1,
            gt_leak=len(schedule),
            gt_ls_Bl=forced,
            top_k=0,
            top_p=0.0,
            inference_mode=True,
        )
    finally:
        ref.infinity_module.sample_with_top_k_top_p_also_inplace_modifying_logits_ = sampler
        hook.remove()
    x_BLC_wo_prefix = torch.cat(next_inputs[: len(schedule) - 1], dim=1)
    kv_cached_guided = torch.cat([g.reshape(BATCH, -1, bits_per_token, 2) for g in guided], dim=1)

    # teacher forcing: the conditional forward, and the same with every prompt replaced by the null text
    teacher = model(condition, x_BLC_wo_prefix.clone(), schedule)
    uncond = model(unconditional(model, condition), x_BLC_wo_prefix.clone(), schedule)

    reference = {
        "text_features": text_features,
        "text_lens": torch.tensor(TEXT_LENGTHS),
        "bit_labels": bit_labels,
        "x_BLC_wo_prefix": x_BLC_wo_prefix,
        "teacher_forced_logits": teacher,
        "uncond_teacher_forced_logits": uncond,
        "kv_cached_guided_logits": kv_cached_guided,
    }
    if with_vae:
        _, decoded = vae.decode_from_indices(forced, vae_schedule, "bit_label")
        _, _, _, all_bit_indices, _, _ = vae.encode(image, scale_schedule=vae_schedule)
        reference["image"] = image
        reference["decoded"] = decoded
        reference["encoded_bit_labels"] = torch.cat([b.reshape(BATCH, -1, d) for b in all_bit_indices], dim=1).long()
        encoder_features = vae.encode_for_raw_features(image, vae_schedule)[0]  # for --compare only, not written
    cfg = {
        **TINY,
        "codebook_dim": d,
        "vae_base_ch": TINY_VAE["vae_base_ch"],
        "vae_ch_mult": TINY_VAE["vae_ch_mult"],
        "vae_patch_size": TINY_VAE["vae_patch_size"],
        "apply_spatial_patchify": patchify,
        "scale_schedule": [list(s) for s in schedule],
        "allow_schedule_prefix": True,
        "h_div_w": 1.0,
        "cfg_scale": CFG_SCALE,
        "tau": TAU,
    }
    return {
        "cfg": cfg,
        "model": model.state_dict(),
        "vae": vae.state_dict() if with_vae else None,
        "reference": reference,
        "encoder_features": encoder_features if with_vae else None,
    }


def write_case(folder: str, result: dict) -> None:
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "cfg.json"), "w") as f:
        json.dump(result["cfg"], f, indent=1)

    def tensors(state):  # the VAE registers its quantiser twice (quantizer, quantize): write both, unshared
        return {k: v.detach().clone().contiguous() for k, v in state.items()}

    save_file(tensors(result["model"]), os.path.join(folder, "model.safetensors"))
    if result["vae"] is not None:
        save_file(tensors(result["vae"]), os.path.join(folder, "vae.safetensors"))
    save_file(tensors(result["reference"]), os.path.join(folder, "reference.safetensors"))


@torch.no_grad()
def compare_with_ours(result: dict) -> dict[str, float]:
    """This project's modules (`rlhf_img.families.infinity`) on the same weights and inputs, replayed as
    tests/test_infinity_parity.py does: max abs differences, and the reference's max abs for scale."""
    from rlhf_img.families.infinity.bsq_vae import BSQVAE, BSQVAEConfig, load_vae_state_dict
    from rlhf_img.families.infinity.codes import ScaleCodes
    from rlhf_img.families.infinity.loading import load_transformer_state
    from rlhf_img.families.infinity.transformer import InfinityConfig, InfinityTransformer

    cfg, reference = result["cfg"], result["reference"]
    patchify = bool(cfg["apply_spatial_patchify"])
    model = InfinityTransformer(
        InfinityConfig(
            depth=cfg["depth"],
            embed_dim=cfg["embed_dim"],
            num_heads=cfg["num_heads"],
            mlp_ratio=cfg["mlp_ratio"],
            bits_per_token=cfg["codebook_dim"] * (4 if patchify else 1),
            text_channels=cfg["text_channels"],
            text_maxlen=cfg["text_maxlen"],
            block_chunks=cfg["block_chunks"],
        )
    ).eval()
    load_transformer_state(model, {k: v.clone() for k, v in result["model"].items()}, "reference")
    codes = ScaleCodes([(h, w) for _, h, w in cfg["scale_schedule"]], cfg["codebook_dim"], patchify)
    text = reference["text_features"]
    mask = torch.arange(text.size(1))[None] < reference["text_lens"][:, None]
    actions = reference["bit_labels"].reshape(text.size(0), -1).long()

    def diff(ours, key):
        return float((ours.double() - reference[key].double()).abs().max()), float(reference[key].abs().max())

    inputs = codes.teacher_inputs(actions)
    figures = {"teacher_inputs_identical": bool(torch.equal(inputs, reference["x_BLC_wo_prefix"]))}
    figures["teacher_forced_logits"] = diff(model(text, mask, inputs, codes.grids), "teacher_forced_logits")
    figures["uncond_teacher_forced_logits"] = diff(
        model(model.unconditional_text(mask), mask, inputs, codes.grids), "uncond_teacher_forced_logits"
    )
    both = torch.cat([mask, mask])
    state = model.prepare_text(torch.cat([text, model.unconditional_text(mask)]), both)
    caches, x, summed, guided = [[] for _ in model.blocks], model.start_tokens(state[0]), None, []
    for index, bits in enumerate(codes.split(actions)):
        step = model.forward_scale(x, index, codes.grids, state, both, caches)
        cond, unc = step[: text.size(0)], step[text.size(0) :]
        guided.append(
            ((unc + cfg["cfg_scale"] * (cond - unc)) / cfg["tau"]).reshape(text.size(0), -1, codes.bits_per_token, 2)
        )
        summed = codes.accumulate(summed, bits, index)
        if index + 1 < len(codes.grids):
            x = model.word_embed(codes.scale_input(summed, index + 1)).repeat(2, 1, 1)
    figures["kv_cached_guided_logits"] = diff(torch.cat(guided, 1), "kv_cached_guided_logits")
    if result["vae"] is not None:
        vae = BSQVAE(
            BSQVAEConfig(
                codebook_dim=cfg["codebook_dim"],
                patch_size=cfg["vae_patch_size"],
                base_channels=cfg["vae_base_ch"],
                channel_multipliers=cfg["vae_ch_mult"],
            )
        ).eval()
        load_vae_state_dict(vae, {k: v.clone() for k, v in result["vae"].items()}, "reference")
        figures["decoded"] = diff(vae.decode(codes.summed_codes(actions)), "decoded")
        features = vae.encoder(reference["image"])
        figures["encoder_features"] = (
            float((features - result["encoder_features"]).abs().max()),
            float(result["encoder_features"].abs().max()),
        )
        encoded = codes.actions_from_latent_bits(vae.multiscale_bits(reference["image"], codes.vae_grids))
        figures["encoded_bits_differing"] = int(
            (encoded != reference["encoded_bit_labels"].reshape(encoded.size(0), -1)).sum()
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="a checkout of github.com/FoundationVision/Infinity")
    parser.add_argument("--out", default="tests/data/infinity_parity")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--skip-keys", action="store_true", help="do not rewrite infinity_reference_keys/")
    parser.add_argument("--compare", action="store_true", help="also compare this project's modules (prints figures)")
    args = parser.parse_args()

    ref = import_reference(args.reference)
    for name, (patchify, num_scales, with_vae) in CASES.items():
        result = run_case(ref, name, patchify, num_scales, with_vae, args.seed)
        write_case(os.path.join(args.out, name), result)
        print(f"wrote {os.path.join(args.out, name)}")
        if args.compare:
            for key, value in compare_with_ours(result).items():
                shown = (
                    f"max abs diff {value[0]:.3g} (reference max abs {value[1]:.3g})"
                    if isinstance(value, tuple)
                    else value
                )
                print(f"  {key}: {shown}")
    if not args.skip_keys:
        folder = os.path.join(args.out, "infinity_reference_keys")
        os.makedirs(folder, exist_ok=True)
        for name, keys in reference_keys(ref).items():
            with open(os.path.join(folder, f"{name}_keys.json"), "w") as f:
                json.dump(keys, f, indent=0)
        print(f"wrote {folder}")
    print(f"reference commit {git_commit(args.reference)}")


if __name__ == "__main__":
    main()
