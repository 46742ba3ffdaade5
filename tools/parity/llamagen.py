"""Reference outputs of FoundationVision/LlamaGen's own modules for `tests/test_llamagen_parity.py` and
`tests/test_llamagen_encoder_parity.py`.

    python tools/parity/llamagen.py --reference /path/to/LlamaGen --out tests/data/llamagen_parity [--compare]

`--reference` is a checkout of https://github.com/FoundationVision/LlamaGen (none of its code is in this
repository; it is imported from the checkout at run time). The modules used here (`autoregressive/models/gpt.py`,
`autoregressive/models/generate.py`, `tokenizer/tokenizer_image/vq_model.py`, `utils/drop_path.py`) import only
torch, so no extra packages are needed (its T5 embedder, which needs ftfy and bs4, is not used: the caption
features are random inputs here).

The reference is run on the CPU in float32, in eval mode, dropout 0. No shim edits its computation; two things are
arranged around it at run time:
  * its VQ `Encoder` / `Decoder` are built with 32 base channels and one res block per level (their `ch` and
    `num_res_blocks` arguments, which `VQModel` leaves at 128 and 2) so the weights stay small;
  * during `generate()`, its module-level `sample` function (called by `prefill` and `decode_one_token` with the
    guided logits) is replaced by one that records those logits and returns a fixed code per step (teacher forcing
    of the sampling loop), so the KV-cached logits can be replayed on the same codes.
Weights: the reference's own initialisation; parameters it initialises to a constant are perturbed (norm weights
0.05 * N(0, 1); the zero-initialised output head 0.5 * N(0, 1) so logits are not all equal); then every weight
is rounded to float16 precision (and run in float32), so `gpt.safetensors` / `vq.safetensors` hold them exactly
in float16 and stay small.

Written to `--out` (see its README.md): cfg.json, gpt.safetensors, vq.safetensors (the reference modules'
state_dicts, LlamaGen's key names), reference.safetensors (inputs and outputs), and
llamagen_reference_keys/{gpt_xl_t2i,vq_16}_keys.json (key names and shapes of the released GPT-XL t2i and VQ-16,
built from the reference modules with their parameters on the meta device).

The VQ's encoding side, on the same VQ weights (`vq.safetensors`), goes to encoder_reference.safetensors: four
random 8x8 images in [0, 1] (multiples of 1/255, as 8-bit images are; drawn from their own seeded stream, so the
other files are unchanged by it), mapped to [-1, 1] as `images * 2 - 1` (the reference's mean = std = 0.5
normalisation), and for each the reference's `quant_conv(encoder(x))` (`latent`), `encode(x)`'s quantized latent
and indices (`quantized`; `codes`, reshaped `(B, h*w)` as its `extract_codes_t2i.py` does) and `forward(x)`'s
reconstruction (`autoencoded`), in float32 and again on a float64 copy of the same module (`*_float64`).
`--encoder-only` writes just that file: the reference's KV-cached logits (in reference.safetensors) are not
bitwise reproducible from one machine to another (last-bit differences, within the tests' tolerances), so
regenerating the encoder data need not rewrite them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import json
import os
import subprocess
import sys
import types

import torch

SEED = 0
BATCH, CAPTION_LENGTHS = 2, (5, 11)  # valid caption tokens per prompt (left-padded to 120, as the sampler does)
TINY_GPT = dict(
    dim=64, n_layer=2, n_head=2, multiple_of=32, vocab_size=64, caption_dim=32, cls_token_num=120, block_size=16
)  # a 4x4 grid
TINY_VQ = dict(codebook_size=64, codebook_embed_dim=8, z_channels=32, ch_mult=[1, 1], ch=32, num_res_blocks=1)
CFG_SCALE = 3.0
ENCODER_IMAGES = 4  # 8x8 images: the tiny VQ's 4x4 grid, 64 latent cells in all against 64 codes
ENCODER_FILE = "encoder_reference.safetensors"


def import_reference(path: str):
    if not os.path.isfile(os.path.join(path, "autoregressive", "models", "gpt.py")):
        sys.exit(f"--reference {path}: not a checkout of FoundationVision/LlamaGen (no autoregressive/models/gpt.py)")
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    sys.path.insert(0, os.path.abspath(path))
    import autoregressive.models.generate as generate_module
    import autoregressive.models.gpt as gpt_module
    import tokenizer.tokenizer_image.vq_model as vq_module

    return types.SimpleNamespace(gpt=gpt_module, generate=generate_module, vq=vq_module)


def git_commit(path: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


# ------------------------------------------------------------------------------------------- building
def build_gpt(ref):
    args = ref.gpt.ModelArgs(**TINY_GPT, model_type="t2i", token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)
    return ref.gpt.Transformer(args)


def build_vq(ref, ch: int, num_res_blocks: int, **kwargs):
    """The reference's VQModel with its encoder and decoder built at `ch` base channels, `num_res_blocks` per level."""
    encoder, decoder = ref.vq.Encoder, ref.vq.Decoder
    ref.vq.Encoder = functools.partial(encoder, ch=ch, num_res_blocks=num_res_blocks)
    ref.vq.Decoder = functools.partial(decoder, ch=ch, num_res_blocks=num_res_blocks)
    try:
        return ref.vq.VQModel(
            ref.vq.ModelArgs(
                codebook_size=kwargs["codebook_size"],
                codebook_embed_dim=kwargs["codebook_embed_dim"],
                z_channels=kwargs["z_channels"],
                encoder_ch_mult=kwargs["ch_mult"],
                decoder_ch_mult=kwargs["ch_mult"],
            )
        )
    finally:
        ref.vq.Encoder, ref.vq.Decoder = encoder, decoder


@torch.no_grad()
def perturb_and_round(module: torch.nn.Module, generator: torch.Generator) -> list[str]:
    """Perturb every parameter whose entries are all equal (0.5 * N(0, 1) for the zero output head, 0.05 otherwise),
    then round every floating tensor of the state dict to float16 precision."""
    names = []
    for name, parameter in module.named_parameters():
        if bool(parameter.min() == parameter.max()):
            scale = 0.5 if name == "output.weight" else 0.05
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
            names.append(name)
    for tensor in module.state_dict().values():
        if tensor.is_floating_point():
            tensor.copy_(tensor.half().float())
    return names


# ------------------------------------------------------------------------------------------- keys
def reference_keys(ref) -> dict[str, dict[str, list[int]]]:
    """Key names and shapes of GPT-XL t2i (as the t2i sampler builds it: block_size 256, 120 caption tokens) and
    VQ-16, from the reference modules with their parameters on the meta device."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        gpt = ref.gpt.GPT_models["GPT-XL"](block_size=256, cls_token_num=120, model_type="t2i")
        vq = ref.vq.VQ_models["VQ-16"](codebook_size=16384, codebook_embed_dim=8)
    return {
        name: {k: list(v.shape) for k, v in module.state_dict().items()}
        for name, module in (("gpt_xl_t2i", gpt), ("vq_16", vq))
    }


# ------------------------------------------------------------------------------------------- runs
def caption_inputs(generator: torch.Generator):
    """Left-padded caption features `(B, 120, Ccap)` (zero on padding) and the mask `(B, 120)`, as `sample_t2i.py`
    hands them to `generate()` after its left-padding step."""
    length = TINY_GPT["cls_token_num"]
    features = torch.randn(BATCH, length, TINY_GPT["caption_dim"], generator=generator)
    mask = torch.zeros(BATCH, length, dtype=torch.long)
    for row, valid in enumerate(CAPTION_LENGTHS):
        mask[row, length - valid :] = 1
    return features * mask[:, :, None], mask


def teacher_mask(emb_masks: torch.Tensor, total: int) -> torch.Tensor:
    """The mask `generate()` builds (causal, caption padding columns masked, the diagonal forced), for one
    teacher-forced forward over `total` positions: bool `(B, 1, L, L)`."""
    causal = torch.tril(torch.ones(total, total, dtype=torch.bool)).unsqueeze(0).repeat(emb_masks.size(0), 1, 1)
    prefix = emb_masks.size(1)
    causal[:, :, :prefix] = causal[:, :, :prefix] * emb_masks.unsqueeze(1)
    eye = torch.eye(total)
    return (causal * (1 - eye) + eye).bool().unsqueeze(1)


@torch.no_grad()
def run_generate(ref, model, features, emb_masks, codes, cfg_scale):
    """The reference's KV-cached `generate()` with each step's code forced; returns the (guided) logits it sampled
    from at every step `(B, N, V)`."""
    recorded, step = [], [0]

    def forced_sample(logits, **kwargs):
        recorded.append(logits[:, -1, :].clone())
        code = codes[:, step[0] : step[0] + 1].int()
        step[0] += 1
        return code, torch.zeros(1)

    original = ref.generate.sample
    ref.generate.sample = forced_sample
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # torch.backends.cuda.sdp_kernel's deprecation warning
            out = ref.generate.generate(model, features, codes.size(1), emb_masks, cfg_scale=cfg_scale)
    finally:
        ref.generate.sample = original
    assert torch.equal(out.long(), codes), "the forced codes did not come back from generate()"
    return torch.stack(recorded, dim=1)


@torch.no_grad()
def run(ref, seed: int) -> dict:
    torch.manual_seed(seed)
    gpt = build_gpt(ref).eval()
    vq = build_vq(ref, **TINY_VQ).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    perturb_and_round(gpt, generator)
    perturb_and_round(vq, generator)
    gpt_state = {k: v.clone() for k, v in gpt.state_dict().items()}  # before generate() adds its KV-cache buffers
    vq_state = {k: v.clone() for k, v in vq.state_dict().items()}

    grid = round(TINY_GPT["block_size"] ** 0.5)
    prefix = TINY_GPT["cls_token_num"]
    features, emb_masks = caption_inputs(generator)
    codes = torch.randint(0, TINY_GPT["vocab_size"], (BATCH, grid * grid), generator=generator)
    total = prefix + codes.size(1)

    # teacher forcing: one forward over [caption ; all codes] (the "naive inference" path of Transformer.forward),
    # logits of positions 119 .. 119 + N - 1 predict codes 0 .. N - 1
    mask = teacher_mask(emb_masks, total)
    positions = torch.arange(total)
    cond = gpt(codes, features, input_pos=positions, mask=mask)[0][:, prefix - 1 : total - 1]
    null = torch.zeros_like(features) + gpt.cls_embedding.uncond_embedding
    uncond = gpt(codes, null, input_pos=positions, mask=mask)[0][:, prefix - 1 : total - 1]
    cached_cond = run_generate(ref, gpt, features, emb_masks, codes, cfg_scale=1.0)
    cached_guided = run_generate(ref, gpt, features, emb_masks, codes, cfg_scale=CFG_SCALE)

    decoded = vq.decode_code(codes, shape=[BATCH, TINY_VQ["codebook_embed_dim"], grid, grid])
    encoder = run_encoder(vq, grid * 2 ** (len(TINY_VQ["ch_mult"]) - 1), seed)
    reference = {
        "caption_features": features,
        "caption_mask": emb_masks,
        "codes": codes,
        "teacher_forced_logits": cond,
        "uncond_teacher_forced_logits": uncond,
        "kv_cached_logits": cached_cond,
        "kv_cached_guided_logits": cached_guided,
        "decoded": decoded,
    }
    cfg = {
        "gpt": TINY_GPT,
        "vq": TINY_VQ,
        "cfg_scale": CFG_SCALE,
        "caption_lengths": list(CAPTION_LENGTHS),
        "grid": grid,
        "seed": seed,
    }
    return {"cfg": cfg, "gpt": gpt_state, "vq": vq_state, "reference": reference, "encoder": encoder}


@torch.no_grad()
def run_encoder(vq, image_size: int, seed: int) -> dict[str, torch.Tensor]:
    """The reference VQ's own encoding of random images (see the module docstring), in float32 and on a float64
    copy: latents, quantized latents, codes `(B, h*w)` and `forward`'s reconstruction."""
    generator = torch.Generator().manual_seed(seed + 2)  # its own stream: the other reference data keep theirs
    images = torch.randint(0, 256, (ENCODER_IMAGES, 3, image_size, image_size), generator=generator).float() / 255
    out = {"images": images}
    for suffix, dtype in (("", torch.float32), ("_float64", torch.float64)):
        module = copy.deepcopy(vq).to(dtype)
        pixels = images.to(dtype) * 2 - 1
        quantized, _, (_, _, indices) = module.encode(pixels)
        out[f"latent{suffix}"] = module.quant_conv(module.encoder(pixels))
        out[f"quantized{suffix}"] = quantized
        out[f"codes{suffix}"] = indices.reshape(images.size(0), -1)
        out[f"autoencoded{suffix}"] = module(pixels)[0]
    return out


def write(folder: str, result: dict, encoder_only: bool = False) -> None:
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    save_file({k: v.contiguous() for k, v in result["encoder"].items()}, os.path.join(folder, ENCODER_FILE))
    if encoder_only:
        return
    with open(os.path.join(folder, "cfg.json"), "w") as f:
        json.dump(result["cfg"], f, indent=1)

    def half(state):  # float weights are float16-exact (perturb_and_round); the VQ's usage counter too (zeros)
        return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}

    save_file(half(result["gpt"]), os.path.join(folder, "gpt.safetensors"))
    save_file(half(result["vq"]), os.path.join(folder, "vq.safetensors"))
    save_file(
        {k: v.contiguous() for k, v in result["reference"].items()}, os.path.join(folder, "reference.safetensors")
    )


# ------------------------------------------------------------------------------------------- ours
@torch.no_grad()
def compare_with_ours(result: dict) -> dict[str, tuple[float, float]]:
    """This project's modules on the same weights and inputs, replayed as tests/test_llamagen_parity.py does:
    (max abs difference, reference max abs) per output."""
    from transformers import JanusVQVAE

    from rlhf_img.families.llamagen.gpt import LlamaGenGPT
    from rlhf_img.families.llamagen.loading import infer_gpt_config, load_gpt_state
    from rlhf_img.families.llamagen.vq import infer_vq_config, load_vq_state

    cfg, reference = result["cfg"], result["reference"]
    gpt_state = {k: v.half().float() if v.is_floating_point() else v for k, v in result["gpt"].items()}
    vq_state = {k: v.half().float() if v.is_floating_point() else v for k, v in result["vq"].items()}
    model = LlamaGenGPT(infer_gpt_config(gpt_state, cfg["gpt"]["n_head"], "reference")).eval()
    load_gpt_state(model, gpt_state, "reference")
    vq = JanusVQVAE(infer_vq_config(vq_state, cfg["grid"])).eval()
    load_vq_state(vq, vq_state, "reference")
    ours = replay(model, vq, reference, cfg)
    figures = {
        key: (float((value.double() - reference[key].double()).abs().max()), float(reference[key].abs().max()))
        for key, value in ours.items()
    }
    encoder = result["encoder"]
    for key, value in replay_encoder(vq, encoder).items():
        figures[f"encoder {key}"] = (
            float((value.double() - encoder[key].double()).abs().max()),
            float(encoder[key].abs().max()),
        )
    return figures


def closest_call(latent: torch.Tensor, codebook: torch.Tensor) -> float:
    """The smallest gap between the nearest and the second-nearest (L2-normalised) code over all latent cells:
    how far a rounding difference is from flipping a code."""
    cells = torch.nn.functional.normalize(latent.permute(0, 2, 3, 1).reshape(-1, latent.size(1)).double(), dim=-1)
    distances = torch.cdist(cells, torch.nn.functional.normalize(codebook.double(), dim=-1))
    nearest = distances.topk(2, dim=-1, largest=False).values
    return float((nearest[:, 1] - nearest[:, 0]).min())


def replay_encoder(vq, encoder: dict) -> dict[str, torch.Tensor]:
    """Our encoding of the reference's images (`quantize_images`, as `LlamaGenPolicy.encode_images` runs it) in
    float32 and on a float64 copy; `autoencoded` is our `decode` of our codes."""
    from rlhf_img.families.llamagen.vq import quantize_images

    out = {}
    for suffix, dtype in (("", torch.float32), ("_float64", torch.float64)):
        module = copy.deepcopy(vq).to(dtype)
        encoding = quantize_images(module, encoder["images"].to(dtype))
        out.update(
            {
                f"latent{suffix}": encoding.latent,
                f"quantized{suffix}": encoding.quantized,
                f"codes{suffix}": encoding.codes,
                f"autoencoded{suffix}": module.decode(encoding.codes),
            }
        )
    return out


def replay(model, vq, reference: dict, cfg: dict) -> dict[str, torch.Tensor]:
    """Our outputs for the reference's inputs: teacher-forced logits (conditional, null caption), the KV-cached
    loop without and with guidance on the same codes, decoded pixels."""
    features, mask, codes = reference["caption_features"], reference["caption_mask"].bool(), reference["codes"]
    batch, grid, scale = codes.size(0), cfg["grid"], cfg["cfg_scale"]
    out = {
        "teacher_forced_logits": model(codes[:, :-1], features, mask, grid_size=grid),
        "uncond_teacher_forced_logits": model(codes[:, :-1], model.unconditional_captions(batch), mask, grid_size=grid),
    }
    for key, guided in (("kv_cached_logits", False), ("kv_cached_guided_logits", True)):
        rows, row_mask = (
            (torch.cat([features, model.unconditional_captions(batch)]), torch.cat([mask, mask]))
            if guided
            else (features, mask)
        )
        cache = model.new_cache(codes.size(1))
        logits, steps = model.prefill(rows, row_mask, cache, grid), []
        for step in range(codes.size(1)):
            cond, uncond = logits[:batch], logits[batch:]
            steps.append(uncond + scale * (cond - uncond) if guided else cond)
            if step + 1 < codes.size(1):
                token = torch.cat([codes[:, step]] * (2 if guided else 1))
                logits = model.decode_step(token, step, row_mask, cache, grid)
        out[key] = torch.stack(steps, dim=1)
    out["decoded"] = vq.decode(codes)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="a checkout of github.com/FoundationVision/LlamaGen")
    parser.add_argument("--out", default="tests/data/llamagen_parity")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--compare", action="store_true", help="also compare this project's modules (prints figures)")
    parser.add_argument("--encoder-only", action="store_true", help=f"write only {ENCODER_FILE}")
    args = parser.parse_args()

    ref = import_reference(args.reference)
    result = run(ref, args.seed)
    write(args.out, result, encoder_only=args.encoder_only)
    print(f"wrote {os.path.join(args.out, ENCODER_FILE) if args.encoder_only else args.out}")
    if not args.encoder_only:
        folder = os.path.join(args.out, "llamagen_reference_keys")
        os.makedirs(folder, exist_ok=True)
        for name, keys in reference_keys(ref).items():
            with open(os.path.join(folder, f"{name}_keys.json"), "w") as f:
                json.dump(keys, f, indent=0)
        print(f"wrote {folder}")
    if args.compare:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        for key, (diff, magnitude) in compare_with_ours(result).items():
            print(f"  {key}: max abs diff {diff:.3g} (reference max abs {magnitude:.3g})")
        encoder = result["encoder"]
        for suffix in ("", "_float64"):
            print(
                f"  encoder codes{suffix}: closest call (second-nearest minus nearest distance) "
                f"{closest_call(encoder['latent' + suffix], result['vq']['quantize.embedding.weight']):.3g}; "
                f"{int(encoder['codes' + suffix].unique().numel())} distinct codes of "
                f"{encoder['codes' + suffix].numel()}"
            )
    print(f"reference commit {git_commit(args.reference)}")


if __name__ == "__main__":
    main()
