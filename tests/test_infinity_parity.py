"""Our Infinity modules against FoundationVision/Infinity's: key names and shapes for the released 2B and 8B
configs, and outputs on identical random weights (see tests/data/infinity_parity/README.md)."""

import json
import os

import pytest
import torch
from numerics import assert_close_scaled
from safetensors.torch import load_file

from rlhf_img.families.infinity.bsq_vae import BSQVAE, BSQVAEConfig, load_vae_state_dict
from rlhf_img.families.infinity.codes import ScaleCodes
from rlhf_img.families.infinity.loading import infinity_2b, infinity_8b, load_transformer_state, vae_d14, vae_d32
from rlhf_img.families.infinity.transformer import InfinityConfig, InfinityTransformer

DATA = os.path.join(os.path.dirname(__file__), "data", "infinity_parity")


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize(
    "name, build",
    [
        ("infinity_2b", lambda: InfinityTransformer(infinity_2b())),
        ("infinity_8b", lambda: InfinityTransformer(infinity_8b())),
        ("vae_d32", lambda: BSQVAE(vae_d32())),
        ("vae_d14_patchify", lambda: BSQVAE(vae_d14())),
    ],
)
def test_state_dict_keys_and_shapes_match_the_reference_modules(name, build):
    with open(os.path.join(DATA, "infinity_reference_keys", f"{name}_keys.json")) as f:
        reference = json.load(f)
    # the reference autoencoder also registers its quantiser as `quantize` (an alias of `quantizer`)
    reference = {k: v for k, v in reference.items() if not k.startswith("quantize.")}
    with torch.device("meta"):
        ours = _shapes(build())
    assert sorted(set(reference) - set(ours)) == [] and sorted(set(ours) - set(reference)) == []
    assert {k: v for k, v in ours.items() if reference[k] != v} == {}


def _load(name: str):
    folder = os.path.join(DATA, name)
    with open(os.path.join(folder, "cfg.json")) as f:
        cfg = json.load(f)
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
    load_transformer_state(model, load_file(os.path.join(folder, "model.safetensors")), folder)
    codes = ScaleCodes([(h, w) for _, h, w in cfg["scale_schedule"]], cfg["codebook_dim"], patchify)
    reference = load_file(os.path.join(folder, "reference.safetensors"))
    text = reference["text_features"]
    mask = torch.arange(text.size(1))[None] < reference["text_lens"][:, None]
    actions = reference["bit_labels"].reshape(text.size(0), -1).long()
    return cfg, folder, model, codes, reference, text, mask, actions


@pytest.mark.parametrize("name", ["square", "patchify"])
@torch.no_grad()
def test_logits_match_the_reference_on_identical_weights(name):
    cfg, _, model, codes, reference, text, mask, actions = _load(name)
    inputs = codes.teacher_inputs(actions)
    assert torch.equal(inputs, reference["x_BLC_wo_prefix"])
    logits = model(text, mask, inputs, codes.grids)
    assert_close_scaled(logits, reference["teacher_forced_logits"], relative=2e-5)  # measured 4.8e-7 at 1.6-2.1
    uncond = model(model.unconditional_text(mask), mask, inputs, codes.grids)
    assert_close_scaled(uncond, reference["uncond_teacher_forced_logits"], relative=2e-5)
    # the KV-cached loop, guided on logits as the reference sampler does (both halves / tau, then CFG)
    both_mask = torch.cat([mask, mask])
    state = model.prepare_text(torch.cat([text, model.unconditional_text(mask)]), both_mask)
    caches, x, summed, guided = [[] for _ in model.blocks], model.start_tokens(state[0]), None, []
    for index, bits in enumerate(codes.split(actions)):
        step = model.forward_scale(x, index, codes.grids, state, both_mask, caches)
        cond, unc = step[: text.size(0)], step[text.size(0) :]
        guided.append(
            ((unc + cfg["cfg_scale"] * (cond - unc)) / cfg["tau"]).reshape(text.size(0), -1, codes.bits_per_token, 2)
        )
        summed = codes.accumulate(summed, bits, index)
        if index + 1 < len(codes.grids):
            x = model.word_embed(codes.scale_input(summed, index + 1)).repeat(2, 1, 1)
    assert_close_scaled(torch.cat(guided, 1), reference["kv_cached_guided_logits"], relative=2e-5)  # 3.2e-6 at 5.4


@torch.no_grad()
def test_vae_decodes_and_encodes_like_the_reference():
    cfg, folder, _, codes, reference, _, _, actions = _load("square")
    vae = BSQVAE(
        BSQVAEConfig(
            codebook_dim=cfg["codebook_dim"],
            patch_size=cfg["vae_patch_size"],
            base_channels=cfg["vae_base_ch"],
            channel_multipliers=cfg["vae_ch_mult"],
        )
    ).eval()
    load_vae_state_dict(vae, load_file(os.path.join(folder, "vae.safetensors")), folder)
    assert_close_scaled(vae.decode(codes.summed_codes(actions)), reference["decoded"], relative=5e-5)  # 3.5e-6 at 1
    encoded = codes.actions_from_latent_bits(vae.multiscale_bits(reference["image"], codes.vae_grids))
    assert torch.equal(encoded, reference["encoded_bit_labels"].reshape(encoded.size(0), -1).long())
