"""Our LlamaGen modules against FoundationVision/LlamaGen's: key names and shapes of the released GPT-XL t2i and
VQ-16, and outputs on identical random weights (see tests/data/llamagen_parity/README.md)."""

import json
import os

import pytest
import torch
from numerics import assert_close_scaled
from safetensors.torch import load_file
from transformers import JanusVQVAE

from rlhf_img.families.llamagen.gpt import LlamaGenGPT
from rlhf_img.families.llamagen.loading import gpt_config, infer_gpt_config, load_gpt_state
from rlhf_img.families.llamagen.vq import DROPPED_VQ_KEYS, infer_vq_config, llamagen_key, load_vq_state, vq_16

DATA = os.path.join(os.path.dirname(__file__), "data", "llamagen_parity")


def _reference_keys(name: str) -> dict[str, list[int]]:
    with open(os.path.join(DATA, "llamagen_reference_keys", f"{name}_keys.json")) as f:
        return json.load(f)


def test_gpt_xl_state_dict_keys_and_shapes_match_the_reference_modules():
    reference = _reference_keys("gpt_xl_t2i")
    with torch.device("meta"):
        ours = {k: list(v.shape) for k, v in LlamaGenGPT(gpt_config("GPT-XL")).state_dict().items()}
    assert sorted(set(reference) ^ set(ours)) == []
    assert {k: v for k, v in ours.items() if reference[k] != v} == {}
    assert len(ours) == 258 and sum(torch.Size(v).numel() for v in ours.values()) > 775e6


def test_vq_16_state_dict_keys_and_shapes_match_the_reference_modules_after_the_rename():
    reference = {k: v for k, v in _reference_keys("vq_16").items() if k not in DROPPED_VQ_KEYS}
    with torch.device("meta"):
        ours = {llamagen_key(k): list(v.shape) for k, v in JanusVQVAE(vq_16()).state_dict().items()}
    assert sorted(set(reference) ^ set(ours)) == []
    assert {k: v for k, v in ours.items() if reference[k] != v} == {}


@pytest.fixture(scope="module")
def replayed():
    with open(os.path.join(DATA, "cfg.json")) as f:
        cfg = json.load(f)
    gpt_state = {k: v.float() for k, v in load_file(os.path.join(DATA, "gpt.safetensors")).items()}
    vq_state = {k: v.float() for k, v in load_file(os.path.join(DATA, "vq.safetensors")).items()}
    model = LlamaGenGPT(infer_gpt_config(gpt_state, cfg["gpt"]["n_head"], DATA)).eval()
    load_gpt_state(model, gpt_state, DATA)
    vq = JanusVQVAE(infer_vq_config(vq_state, cfg["grid"])).eval()
    load_vq_state(vq, vq_state, DATA)
    reference = load_file(os.path.join(DATA, "reference.safetensors"))
    with torch.no_grad():
        ours = _replay(model, vq, reference, cfg)
    return ours, reference


def _replay(model, vq, reference, cfg) -> dict[str, torch.Tensor]:
    """As the harness's `replay`: teacher-forced logits, the KV-cached loop on the reference's codes, decoding."""
    features, mask, codes = reference["caption_features"], reference["caption_mask"].bool(), reference["codes"]
    batch, grid, scale = codes.size(0), cfg["grid"], cfg["cfg_scale"]
    out = {
        "teacher_forced_logits": model(codes[:, :-1], features, mask, grid_size=grid),
        "uncond_teacher_forced_logits": model(codes[:, :-1], model.unconditional_captions(batch), mask, grid_size=grid),
    }
    for key, guided in (("kv_cached_logits", False), ("kv_cached_guided_logits", True)):
        rows = torch.cat([features, model.unconditional_captions(batch)]) if guided else features
        row_mask = torch.cat([mask, mask]) if guided else mask
        cache = model.new_cache(codes.size(1))
        logits, steps = model.prefill(rows, row_mask, cache, grid), []
        for step in range(codes.size(1)):
            cond, uncond = logits[:batch], logits[batch:]
            steps.append(uncond + scale * (cond - uncond) if guided else cond)
            if step + 1 < codes.size(1):
                logits = model.decode_step(
                    torch.cat([codes[:, step]] * (2 if guided else 1)), step, row_mask, cache, grid
                )
        out[key] = torch.stack(steps, dim=1)
    out["decoded"] = vq.decode(codes)
    return out


@pytest.mark.parametrize("key", ["teacher_forced_logits", "uncond_teacher_forced_logits"])
def test_teacher_forced_logits_match_the_reference_on_identical_weights(replayed, key):
    ours, reference = replayed
    assert_close_scaled(ours[key], reference[key], relative=1e-5)  # measured 0 (values up to 12-16)


@pytest.mark.parametrize("key", ["kv_cached_logits", "kv_cached_guided_logits"])
def test_kv_cached_logits_match_the_reference_sampling_loop(replayed, key):
    ours, reference = replayed
    assert_close_scaled(ours[key], reference[key], relative=2e-5)  # measured 2.9e-6 at 12.4, 1.1e-5 at 37.7 (CFG 3)


def test_decoded_pixels_match_the_reference_decode_code(replayed):
    ours, reference = replayed
    assert ours["decoded"].shape == reference["decoded"].shape == (2, 3, 8, 8)
    assert_close_scaled(ours["decoded"], reference["decoded"], relative=1e-5)  # measured 0 (values up to 1.3)
