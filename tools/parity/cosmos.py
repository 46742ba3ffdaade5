"""Reference outputs of NVIDIA's Cosmos tokenizer code for `tests/test_cosmos_parity.py`.

Builds the DV8x16x16 discrete video tokenizer of NVIDIA/Cosmos-Tokenizer (its `discrete_video` config:
Haar patching, factorized causal 3D convs, FSQ levels (8, 8, 8, 5, 5, 5), 8x16x16 compression) with tiny
widths, from the reference's own initialisation, and writes its weights, inputs and outputs:

    PYTHONPATH=/tmp/parity-deps python tools/parity/cosmos.py \
        --reference /path/to/Cosmos-Tokenizer --out tests/data/cosmos_parity [--compare] [--full]

`--reference` is a checkout of https://github.com/NVIDIA/Cosmos-Tokenizer (none of its code is in this
repository; it is imported from the checkout at run time). It imports `einops` and `loguru`, which this
project does not depend on: install them outside the project's environment, e.g.
`pip install --no-deps --target /tmp/parity-deps einops loguru`, and put that folder on PYTHONPATH.

What is written to `--out` (see the README.md written there):
  config.json          our `CosmosConfig` fields for the same architecture (for `CosmosDiscreteTokenizer`)
  reference_config.json the keyword arguments the reference tokenizer was built with
  encoder.safetensors / decoder.safetensors
                       the state dicts of the reference's `encoder_jit()` / `decoder_jit()` modules traced with
                       `torch.jit.trace`, i.e. the layout of the published `encoder.jit` / `decoder.jit`,
                       including the convs the DV8x16x16 forward never calls (see below). Parameters are
                       rounded to bfloat16 (the published files are bf16) and stored as bf16 to keep the
                       files small; the FSQ's 64,000 x 6 `implicit_codebook` buffer is left out (1.5 MB, a
                       pure function of the levels) and its SHA-256 recorded instead.
  reference.safetensors inputs and the reference's outputs, all computed in float32 on the CPU.

`--compare` also loads the reference's state dicts into this project's modules
(`rlhf_img.families.simplear.cosmos`) through its loaders, both as safetensors (save_pretrained's layout) and
as TorchScript files traced from the reference (the hub's layout), and prints the differences. `--full` does the same comparison in memory for the full-width
DV8x16x16 (nothing of it is written).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import warnings

import torch

# The images: a batch of two 64x64 images (one-frame videos), and one 9-frame 32x32 video (9 frames -> 2
# latent frames) so that the temporal paths (causal time padding, time down/up-sampling, causal temporal
# attention) see more than one frame. Pixels are multiples of 1/255 and stored as uint8.
IMAGE_SHAPE = (2, 3, 64, 64)
VIDEO_SHAPE = (1, 3, 9, 32, 32)
RANDOM_INDEX_SHAPE = (2, 1, 2, 2)  # (B, t, h, w) codes drawn uniformly from the 64,000
TINY = {"channels": 4, "z_channels": 4}  # every other field: the reference's DV8x16x16 (`discrete_video`) config
FSQ_CODEBOOK_KEYS = ("quantizer.implicit_codebook", "inv_quant.quantizer.implicit_codebook")
# fields shared by the reference's config dict and our CosmosConfig
OUR_CONFIG_FIELDS = (
    "channels",
    "channels_mult",
    "num_res_blocks",
    "attn_resolutions",
    "resolution",
    "z_channels",
    "levels",
    "patch_size",
    "spatial_compression",
    "temporal_compression",
    "legacy_mode",
    "in_channels",
)


def import_reference(path: str):
    if not os.path.isdir(os.path.join(path, "cosmos_tokenizer")):
        sys.exit(f"--reference {path}: not a checkout of NVIDIA/Cosmos-Tokenizer (no cosmos_tokenizer/ folder)")
    sys.path.insert(0, os.path.abspath(path))
    try:
        from cosmos_tokenizer.networks import TokenizerConfigs, TokenizerModels
    except ImportError as error:
        sys.exit(
            f"cannot import the reference ({error}); install its dependencies outside this project, e.g. "
            "pip install --no-deps --target /tmp/parity-deps einops loguru, and set PYTHONPATH=/tmp/parity-deps"
        )
    return TokenizerConfigs, TokenizerModels


def git_commit(path: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def build_reference(TokenizerConfigs, TokenizerModels, overrides: dict, seed: int):
    """The reference DV tokenizer from its own initialisation; parameters that it initialises to a constant
    (GroupNorm weights 1 and biases 0) are perturbed so that they matter; every parameter is then rounded to
    bfloat16 (and kept in float32)."""
    config = dict(TokenizerConfigs.DV.value)
    config.update(overrides)
    torch.manual_seed(seed)
    model = TokenizerModels.DV.value(**config)
    generator = torch.Generator().manual_seed(seed + 1)
    perturbed = []
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.numel() > 1 and bool(parameter.min() == parameter.max()):
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
                perturbed.append(name)
            parameter.copy_(parameter.to(torch.bfloat16).float())
    # the reference's `to` also sets the FSQ's output dtype (bfloat16 unless a dtype is given)
    model = model.to(dtype=torch.float32).eval()
    return model, config, perturbed


def make_inputs(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "images_uint8": torch.randint(0, 256, IMAGE_SHAPE, generator=generator, dtype=torch.uint8),
        "video_uint8": torch.randint(0, 256, VIDEO_SHAPE, generator=generator, dtype=torch.uint8),
        "random_indices": torch.randint(0, 64000, RANDOM_INDEX_SHAPE, generator=generator, dtype=torch.int32),
    }


def to_video(pixels_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1], as a (B, 3, T, H, W) video (images become one-frame videos)."""
    x = pixels_uint8.float() / 255 * 2 - 1
    return x.unsqueeze(2) if x.dim() == 4 else x


@torch.no_grad()
def run_reference(
    model, encoder, decoder, inputs: dict[str, torch.Tensor], names=("images", "video")
) -> dict[str, torch.Tensor]:
    """Latents (the quant_conv output, before FSQ), indices and codes of the images and the video, and the
    decoder's output for the reference's own indices and for random ones."""
    captured = []
    hook = model.quant_conv.register_forward_hook(lambda module, args, output: captured.append(output.clone()))
    out = {}
    try:
        for name in names:
            indices, codes, _ = encoder(to_video(inputs[f"{name}_uint8"]))
            if captured:  # a traced encoder does not call the eager quant_conv
                out[f"{name}_latents"] = captured.pop()
            out[f"{name}_indices"], out[f"{name}_codes"] = indices, codes
            out[f"{name}_decoded"] = decoder(indices)
    finally:
        hook.remove()
    out["random_indices_decoded"] = decoder(inputs["random_indices"])
    return out


def trace(encoder, decoder, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        video = to_video(inputs["images_uint8"])
        traced_encoder = torch.jit.trace(encoder, video, check_trace=False)
        traced_decoder = torch.jit.trace(decoder, encoder(video)[0], check_trace=False)
    return traced_encoder, traced_decoder


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def our_config(config: dict) -> dict:
    return {key: config[key] for key in OUR_CONFIG_FIELDS}


def save_state(state: dict[str, torch.Tensor], path: str) -> dict[str, str]:
    """Floating parameters as bf16 (they hold bf16 values already), buffers as they are; the FSQ codebook left
    out. Returns the SHA-256 of each left-out codebook (its float32 bytes)."""
    from safetensors.torch import save_file

    hashes, kept = {}, {}
    for key, tensor in state.items():
        if key in FSQ_CODEBOOK_KEYS:
            hashes[key] = hashlib.sha256(tensor.float().contiguous().numpy().tobytes()).hexdigest()
            continue
        is_buffer = key.endswith(("._levels", "._basis", ".wavelets", "._arange", ".patch_size_buffer"))
        kept[key] = (tensor if is_buffer or not tensor.is_floating_point() else tensor.to(torch.bfloat16)).contiguous()
    save_file(kept, path, metadata={"format": "pt"})
    return hashes


def compare_with_ours(reference_out, inputs, encoder_state, decoder_state, config, traced=None) -> dict[str, float]:
    """Our modules on the reference's weights (strict load, through our loaders), against the reference."""
    from rlhf_img.families.simplear.cosmos import CosmosConfig, CosmosDiscreteTokenizer

    ours_config = CosmosConfig(**our_config(config))
    with tempfile.TemporaryDirectory() as folder:
        if traced is not None:  # the published layout: TorchScript files, read by our .jit loader
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.9 calls torch.jit deprecated
                torch.jit.save(traced[0], os.path.join(folder, "encoder.jit"))
                torch.jit.save(traced[1], os.path.join(folder, "decoder.jit"))
        else:
            from safetensors.torch import save_file

            with open(os.path.join(folder, "config.json"), "w") as f:
                json.dump(our_config(config), f)
            save_file(
                {k: v.contiguous() for k, v in encoder_state.items()}, os.path.join(folder, "encoder.safetensors")
            )
            save_file(
                {k: v.contiguous() for k, v in decoder_state.items()}, os.path.join(folder, "decoder.safetensors")
            )
        model = CosmosDiscreteTokenizer.from_pretrained(folder, config=ours_config if traced is not None else None)
    figures = {}
    with torch.no_grad():
        for name in ("images", "video"):
            video = to_video(inputs[f"{name}_uint8"])
            latents = model.encoder.quant_conv(model.encoder.encoder(video))
            indices, _ = model.encoder(video)
            reference_indices = reference_out[f"{name}_indices"].long()
            figures[f"{name}_latents_max_abs_diff"] = max_abs(latents, reference_out[f"{name}_latents"])
            figures[f"{name}_latents_max_abs"] = float(reference_out[f"{name}_latents"].abs().max())
            figures[f"{name}_indices_differing"] = int((indices != reference_indices).sum())
            figures[f"{name}_indices_total"] = indices.numel()
            decoded = model.decoder(reference_indices)
            figures[f"{name}_decoded_max_abs_diff"] = max_abs(decoded, reference_out[f"{name}_decoded"])
            figures[f"{name}_decoded_max_abs"] = float(reference_out[f"{name}_decoded"].abs().max())
        decoded = model.decoder(inputs["random_indices"].long())
        figures["random_indices_decoded_max_abs_diff"] = max_abs(decoded, reference_out["random_indices_decoded"])
        figures["random_indices_decoded_max_abs"] = float(reference_out["random_indices_decoded"].abs().max())
    return figures


def print_figures(title: str, figures: dict) -> None:
    print(title)
    for key, value in figures.items():
        print(f"  {key}: {value:.3g}" if isinstance(value, float) else f"  {key}: {value}")


def write_readme(
    out: str,
    commit: str,
    config: dict,
    perturbed: list[str],
    extra_keys: dict,
    jit_diffs: dict,
    hashes: dict,
    seed: int,
) -> None:
    lines = [
        "Reference outputs of NVIDIA's Cosmos tokenizer code, for `tests/test_cosmos_parity.py`.",
        "",
        "Written by `tools/parity/cosmos.py` (see its docstring and docs/contributing/parity-data.md):",
        "",
        "```bash",
        "PYTHONPATH=/tmp/parity-deps python tools/parity/cosmos.py --reference /path/to/Cosmos-Tokenizer --out tests/data/cosmos_parity",
        "```",
        "",
        f"- reference: https://github.com/NVIDIA/Cosmos-Tokenizer at commit `{commit}`; torch {torch.__version__}; seed {seed}.",
        f"- architecture: the reference's `discrete_video` (DV8x16x16) config with {json.dumps(TINY)}"
        f" (`reference_config.json`; the same in our fields: `config.json`).",
        "- weights: the reference's own initialisation; parameters it initialises to a constant (the GroupNorm"
        f" weights and biases, {len(perturbed)} tensors) perturbed by 0.1 * N(0, 1); every parameter rounded to"
        " bfloat16 and stored as bf16; both sides compute in float32 on the CPU.",
        "- `encoder.safetensors` / `decoder.safetensors`: the state dicts of the reference's `encoder_jit()` /"
        " `decoder_jit()` traced with `torch.jit.trace` (the layout of the published `encoder.jit` /"
        " `decoder.jit`), except the FSQ's `implicit_codebook` (64,000 x 6 float32, a function of the levels),"
        " left out; SHA-256 of its float32 bytes:",
    ]
    lines += [f"  - `{key}`: `{digest}`" for key, digest in hashes.items()]
    lines += [
        "- modules the reference builds but the DV8x16x16 forward never calls (its hybrid down/up-samplers"
        " always build both the spatial and the temporal conv), kept in the files as the reference writes them:",
    ]
    lines += [f"  - {part}: " + ", ".join(f"`{k}`" for k in keys) for part, keys in extra_keys.items()]
    lines += [
        "- `reference.safetensors`: inputs `images_uint8` (2x3x64x64), `video_uint8` (1x3x9x32x32), pixels"
        " mapped to [-1, 1] as `x / 255 * 2 - 1`, `random_indices` (2x1x2x2 codes); for `images` and `video`:"
        " `*_latents` (the quant_conv output, before FSQ), `*_indices`, `*_codes`, `*_decoded` (the decoder"
        " on those indices); `random_indices_decoded`.",
        "- the one-frame inputs (the images, the random indices) through the traced TorchScript modules gave"
        f" outputs identical to the eager modules (max abs difference: {max(jit_diffs.values()):.3g}); a trace"
        " fixes the frame count it was traced with, so the video is run through the eager modules only.",
        "",
    ]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines))


def unused_keys(model, config: dict) -> dict[str, list[str]]:
    """Keys of the convs the reference builds but never calls for this config: a hybrid downsampler that is
    spatial-only (no time step at that level) still holds `conv2` (its time conv); a hybrid upsampler that is
    spatial-only still holds `conv1`."""
    keys = {"encoder": [], "decoder": []}
    for index, level in enumerate(model.encoder.down):
        sampler = getattr(level, "downsample", None)
        if sampler is not None and not sampler.temporal_down:
            keys["encoder"] += [f"encoder.down.{index}.downsample.conv2.conv3d.{p}" for p in ("weight", "bias")]
        if sampler is not None and not sampler.spatial_down:
            keys["encoder"] += [f"encoder.down.{index}.downsample.conv1.conv3d.{p}" for p in ("weight", "bias")]
    for index, level in enumerate(model.decoder.up):
        sampler = getattr(level, "upsample", None)
        if sampler is not None and not sampler.temporal_up:
            keys["decoder"] += [f"decoder.up.{index}.upsample.conv1.conv3d.{p}" for p in ("weight", "bias")]
        if sampler is not None and not sampler.spatial_up:
            keys["decoder"] += [f"decoder.up.{index}.upsample.conv2.conv3d.{p}" for p in ("weight", "bias")]
    return keys


def full_size_check(TokenizerConfigs, TokenizerModels, seed: int) -> None:
    """The full-width DV8x16x16 on both sides, in memory (through TorchScript files, as published)."""
    model, config, _ = build_reference(TokenizerConfigs, TokenizerModels, {}, seed)
    encoder, decoder = model.encoder_jit(), model.decoder_jit()
    inputs = make_inputs(seed)
    reference_out = run_reference(model, encoder, decoder, inputs)
    traced = trace(encoder, decoder, inputs)
    print_figures(
        "full DV8x16x16, our modules loaded from TorchScript files traced from the reference:",
        compare_with_ours(reference_out, inputs, None, None, config, traced=traced),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="a checkout of github.com/NVIDIA/Cosmos-Tokenizer")
    parser.add_argument("--out", default="tests/data/cosmos_parity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", action="store_true", help="also compare this project's modules (prints figures)")
    parser.add_argument("--full", action="store_true", help="also compare the full-width DV8x16x16 (in memory)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    TokenizerConfigs, TokenizerModels = import_reference(args.reference)
    model, config, perturbed = build_reference(TokenizerConfigs, TokenizerModels, TINY, args.seed)
    encoder, decoder = model.encoder_jit(), model.decoder_jit()
    inputs = make_inputs(args.seed)
    reference_out = run_reference(model, encoder, decoder, inputs)

    traced = trace(encoder, decoder, inputs)
    # a trace fixes the frame count it saw (the reference branches on it in Python): one-frame inputs only
    traced_out = run_reference(model, *traced, inputs, names=("images",))
    jit_diffs = {key: max_abs(traced_out[key], reference_out[key]) for key in traced_out}

    from safetensors.torch import save_file

    os.makedirs(args.out, exist_ok=True)
    encoder_state, decoder_state = dict(traced[0].state_dict()), dict(traced[1].state_dict())
    hashes = save_state(encoder_state, os.path.join(args.out, "encoder.safetensors"))
    hashes.update(save_state(decoder_state, os.path.join(args.out, "decoder.safetensors")))
    tensors = {**inputs, **{key: value.contiguous() for key, value in reference_out.items()}}
    save_file(
        tensors,
        os.path.join(args.out, "reference.safetensors"),
        metadata={
            "reference_commit": git_commit(args.reference),
            "seed": str(args.seed),
            "torch": torch.__version__,
            "fsq_codebook_sha256": json.dumps(hashes),
            "jit_max_abs_diff": json.dumps(jit_diffs),
        },
    )
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(our_config(config), f, indent=2)
    with open(os.path.join(args.out, "reference_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    extra = unused_keys(model, config)
    write_readme(args.out, git_commit(args.reference), config, perturbed, extra, jit_diffs, hashes, args.seed)
    print(
        f"wrote {args.out}: traced TorchScript vs eager max abs diff {max(jit_diffs.values()):.3g}; "
        f"unused reference modules {extra}"
    )

    if args.compare:
        print_figures(
            "tiny, our modules loaded from the reference's state dicts as safetensors:",
            compare_with_ours(reference_out, inputs, encoder_state, decoder_state, config),
        )
        print_figures(
            "tiny, our modules loaded from TorchScript files traced from the reference:",
            compare_with_ours(reference_out, inputs, None, None, config, traced=traced),
        )
    if args.full:
        full_size_check(TokenizerConfigs, TokenizerModels, args.seed)


if __name__ == "__main__":
    main()
