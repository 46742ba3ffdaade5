"""The `llamagen` family's quirks: released-layout loading with strict key checks, detection, left-padded caption
features, guided log-probs against the GPT's two branches run by hand, LoRA through checkpointed blocks,
conversion and the recipes' keys. The family contract (the shipped recipes for two steps included) (samplers, scoring under every CFG
mode, decoding, LoRA / full steps with reload) is `tests/families/test_contract.py`."""

import argparse
import json
import os

import pytest
import torch
from conftest import REPO, grpo_args
from datasets import Dataset
from numerics import assert_close_scaled
from peft import LoraConfig

from rlhf_img import ImageGRPOTrainer, Sampling, load_policy
from rlhf_img.checkpoints import CheckpointError
from rlhf_img.cli import main
from rlhf_img.families import detect_family
from rlhf_img.families.llamagen import LlamaGenPolicy
from rlhf_img.families.llamagen.tiny import (
    TINY_GPT_FILE,
    TINY_VQ_FILE,
    save_tiny_llamagen,
    tiny_llamagen_family_config,
)
from rlhf_img.policy import Policy

PROMPTS = ["A red circle", "two blue squares on the left of a green triangle"]


@pytest.fixture(scope="module")
def tiny_llamagen(tmp_path_factory) -> str:
    return save_tiny_llamagen(str(tmp_path_factory.mktemp("ckpt") / "tiny-llamagen"), seed=0)


@pytest.fixture(scope="module")
def policy(tiny_llamagen):
    return load_policy(
        tiny_llamagen, "llamagen", dtype="float32", family_config=tiny_llamagen_family_config(tiny_llamagen)
    )


def _brightness(prompts, images, **kwargs):
    return images.mean(dim=(1, 2, 3)).tolist()


def _copy_with(tmp_path, tiny_llamagen, gpt_state=None, vq_state=None, name="broken") -> str:
    """A folder with the tiny files, one of them replaced by `{"model": state}`."""
    folder = tmp_path / name
    folder.mkdir()
    for file, state in ((TINY_GPT_FILE, gpt_state), (TINY_VQ_FILE, vq_state)):
        data = torch.load(os.path.join(tiny_llamagen, file), weights_only=False)
        torch.save({**data, "model": state} if state is not None else data, folder / file)
    return str(folder)


def _gpt_state(tiny_llamagen) -> dict:
    return torch.load(os.path.join(tiny_llamagen, TINY_GPT_FILE), weights_only=False)["model"]


def test_tiny_released_layout_is_detected_and_loads(policy, tiny_llamagen):
    data = torch.load(os.path.join(tiny_llamagen, TINY_GPT_FILE), weights_only=False)
    assert set(data) == {"model", "steps", "args"} and isinstance(data["args"], argparse.Namespace)
    assert "quantize.codebook_used" in torch.load(os.path.join(tiny_llamagen, TINY_VQ_FILE), weights_only=True)["model"]
    assert detect_family(tiny_llamagen) == "llamagen"
    detected = load_policy(tiny_llamagen, dtype="float32", family_config=tiny_llamagen_family_config(tiny_llamagen))
    assert isinstance(detected, LlamaGenPolicy) and isinstance(detected, Policy)
    assert (policy.grid_size, policy.num_actions, policy.image_size) == (4, 16, (8, 8))  # `_8.pt`, VQ stride 2
    assert policy.model.cls_embedding.uncond_embedding.shape == (120, 32)


def test_a_width_that_matches_no_named_size_asks_for_num_heads(tmp_path, tiny_llamagen):
    with pytest.raises(CheckpointError, match="num_heads"):
        load_policy(
            tiny_llamagen,
            "llamagen",
            dtype="float32",
            family_config={"text_encoder": os.path.join(tiny_llamagen, "t5")},
        )


def test_named_size_checks_the_released_file_strictly(tiny_llamagen):
    config = {**tiny_llamagen_family_config(tiny_llamagen), "size": "GPT-XL"}
    with pytest.raises(CheckpointError, match="does not match"):
        load_policy(tiny_llamagen, "llamagen", dtype="float32", family_config=config)


@pytest.mark.parametrize("edit", ["missing", "unexpected", "shape", "partial_compile_prefix"])
def test_a_mismatched_gpt_state_dict_is_an_error_naming_the_keys(tmp_path, tiny_llamagen, edit):
    state = _gpt_state(tiny_llamagen)
    expected = {
        "missing": "cls_embedding.uncond_embedding",
        "unexpected": "class_embedding.weight",
        "shape": "output.weight",
        "partial_compile_prefix": "_orig_mod.norm.weight",
    }[edit]
    if edit == "missing":
        del state["cls_embedding.uncond_embedding"]  # the reference's strict=False would load a random null caption
    elif edit == "unexpected":
        state["class_embedding.weight"] = torch.zeros(2)
    elif edit == "shape":
        state["output.weight"] = torch.zeros(3, 64)
    else:
        state["_orig_mod.norm.weight"] = state.pop("norm.weight")
    folder = _copy_with(tmp_path, tiny_llamagen, gpt_state=state)
    with pytest.raises(CheckpointError, match=expected.replace(".", r"\.")):
        load_policy(folder, "llamagen", dtype="float32", family_config=tiny_llamagen_family_config(tiny_llamagen))


def test_kv_cache_buffers_are_dropped_and_a_compile_prefix_on_every_key_is_stripped(tmp_path, tiny_llamagen, policy):
    state = _gpt_state(tiny_llamagen)
    state = {f"_orig_mod.{k}": v for k, v in state.items()}
    for layer in range(2):  # what a reference model that has run generate() carries in its state dict
        state[f"_orig_mod.layers.{layer}.attention.kv_cache.k_cache"] = torch.zeros(4, 2, 136, 32)
        state[f"_orig_mod.layers.{layer}.attention.kv_cache.v_cache"] = torch.zeros(4, 2, 136, 32)
    folder = _copy_with(tmp_path, tiny_llamagen, gpt_state=state)
    loaded = load_policy(folder, "llamagen", dtype="float32", family_config=tiny_llamagen_family_config(tiny_llamagen))
    expected = policy.model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.model.state_dict().items())


def test_a_mismatched_vq_state_dict_is_an_error_in_llamagen_names(tmp_path, tiny_llamagen):
    state = torch.load(os.path.join(tiny_llamagen, TINY_VQ_FILE), weights_only=True)["model"]
    del state["decoder.conv_blocks.0.res.1.conv2.weight"]
    folder = _copy_with(tmp_path, tiny_llamagen, vq_state=state)
    with pytest.raises(CheckpointError, match=r"missing 1: \['decoder\.conv_blocks\.0\.res\.1\.conv2\.weight'\]"):
        load_policy(folder, "llamagen", dtype="float32", family_config=tiny_llamagen_family_config(tiny_llamagen))


def test_files_without_a_model_entry_or_with_code_are_refused(tmp_path, tiny_llamagen):
    folder = tmp_path / "bad"
    folder.mkdir()
    torch.save({"weights": _gpt_state(tiny_llamagen)}, folder / TINY_GPT_FILE)
    config = {**tiny_llamagen_family_config(tiny_llamagen), "vq": os.path.join(tiny_llamagen, TINY_VQ_FILE)}
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_policy(str(folder), "llamagen", dtype="float32", family_config=config)
    torch.save({"model": _gpt_state(tiny_llamagen), "hook": Sampling()}, folder / TINY_GPT_FILE)  # a pickled object
    with pytest.raises(CheckpointError, match="weights-only"):
        load_policy(str(folder), "llamagen", dtype="float32", family_config=config)


def test_caption_features_are_left_padded_as_the_reference_sampler_does(policy):
    batch = policy.encode_prompts(PROMPTS)
    assert batch.input_ids.shape == (2, 120) and bool(batch.attention_mask[:, 0].all())  # right-padded T5 ids
    features, mask = policy.text_features(batch)
    raw = policy.text_encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    for row in range(2):  # sample_t2i.py: cat([emb[valid:], emb[:valid]]), mask flipped, features * mask
        valid = int(batch.attention_mask[row].sum())
        expected = torch.cat([raw[row, valid:], raw[row, :valid]]) * mask[row, :, None]
        assert torch.equal(mask[row], batch.attention_mask[row].flip(0).bool())
        assert_close_scaled(features[row], expected, relative=1e-6)
        assert bool((features[row, : 120 - valid] == 0).all())
    lowered = policy.encode_prompts([p.upper() for p in PROMPTS])
    assert torch.equal(lowered.input_ids, batch.input_ids)  # captions are lower-cased, as LlamaGen's cleaning does


def test_guided_logprobs_equal_an_independent_computation(policy):
    """Teacher-forced guided log-probs vs the GPT's two branches run separately, guided and truncated by hand."""
    sampling = Sampling(cfg_mode="guided", cfg_scale=3.0, temperature=0.7, top_k=10)
    batch = policy.encode_prompts(PROMPTS)
    actions = policy.sample(policy.model, batch, sampling, generator=torch.Generator().manual_seed(1)).actions
    features, mask = policy.text_features(batch)
    net = policy.model
    with torch.no_grad():
        cond = net(actions[:, :-1], features, mask)
        uncond = net(actions[:, :-1], net.unconditional_captions(2), mask)  # the same mask on both halves
        guided = (uncond + 3.0 * (cond - uncond)) / 0.7
        kth = guided.topk(10, dim=-1).values[..., -1:]
        guided = guided.masked_fill(guided < kth, float("-inf"))
        expected = torch.log_softmax(guided, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    logps, _ = policy.logprobs(policy.model, batch, actions, sampling)
    assert_close_scaled(logps, expected, relative=1e-5)


def test_lora_grpo_step_saves_an_adapter_that_reloads(tmp_path, policy, tiny_llamagen):
    dataset = Dataset.from_dict({"prompt": [f"prompt {i}" for i in range(8)]})
    args = grpo_args(
        tmp_path,
        cfg_mode="guided",
        cfg_scale=4.0,
        learning_rate=1e-2,
        logging_steps=1,
        beta=0.1,
        max_steps=1,
        activation_checkpointing=True,
    )  # LoRA weights must still get gradients through checkpointed blocks
    fresh = load_policy(
        tiny_llamagen, "llamagen", dtype="float32", family_config=tiny_llamagen_family_config(tiny_llamagen)
    )
    targets = ["wqkv", "wo", "w1", "w2", "w3"]
    trainer = ImageGRPOTrainer(
        fresh,
        args,
        dataset,
        reward_funcs=[_brightness],
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=targets),
    )
    trainer.train()
    logged = [h for h in trainer.state.log_history if "sampling/sampling_logp_difference/max" in h]
    assert len(logged) == 1 and logged[0]["sampling/sampling_logp_difference/max"] < 1e-4
    assert "kl" in logged[-1]  # the reference is the adapter-disabled model
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = load_policy(str(tmp_path / "saved"), dtype="float32")  # found from llamagen.json
    assert reloaded.num_actions == policy.num_actions
    before, after = policy.model.state_dict(), reloaded.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.split(".")[-2] in targets for k in changed)


def test_convert_round_trip_keeps_the_weights_and_the_decoder(tmp_path, tiny_llamagen, policy):
    out = tmp_path / "converted"
    family = json.dumps(tiny_llamagen_family_config(tiny_llamagen))
    assert main(["convert", "llamagen", tiny_llamagen, str(out), "--family_config", family, "--dtype", "float32"]) == 0
    assert {"config.json", "model.safetensors", "llamagen.json", "vq"} <= set(os.listdir(out))
    converted = load_policy(str(out), dtype="float32")  # found from llamagen.json, no family_config
    before = converted.model.state_dict()
    assert before.keys() == policy.model.state_dict().keys()
    assert all(torch.equal(v, policy.model.state_dict()[k]) for k, v in before.items())
    codes = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(converted.decode(codes), policy.decode(codes))
    # full fine-tuning with beta > 0 from the converted folder (TRL rebuilds the reference from it): see
    # tests/families/test_contract.py::test_every_shipped_recipe_trains_two_steps_on_the_stand_in


def test_llamagen_recipes_parse_with_ar_grpo_sampling():
    from rlhf_img.recipes import parse_recipe

    for name in ("llamagen-xl-grpo.yaml", "llamagen-xl-grpo-lora.yaml"):
        args, model_args, _ = parse_recipe(
            os.path.join(REPO, "recipes", name), ["--bf16", "false", "--use_cpu", "true"]
        )
        assert model_args.model_family == "llamagen" and args.cfg_mode == "sample_only" and args.cfg_scale == 4.0
        assert (args.num_generations, args.beta, args.top_k, args.temperature) == (8, 1.0, 0, 1.0)


def _images(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))  # the stand-in's 8x8 px


def test_encode_images_returns_long_row_major_codes_in_the_codebook(policy):
    codes = policy.encode_images(_images())
    assert codes.dtype == torch.long and codes.shape == (3, policy.num_actions) == (3, policy.grid_size**2)
    assert codes.device == next(policy.vq.parameters()).device and not codes.requires_grad
    assert 0 <= int(codes.min()) and int(codes.max()) < policy.vq.config.num_embeddings
    with pytest.raises(ValueError, match=r"\(B, 3, 8, 8\).*got shape \(3, 3, 16, 16\)"):
        policy.encode_images(torch.rand(3, 3, 16, 16))


def test_decode_of_encode_equals_the_vqs_own_autoencoding(policy):
    """`decode(encode_images(x))` against the VQ's modules run by hand: encoder, quant_conv, the nearest
    L2-normalised code by brute force (cdist), its unit entry, post_quant_conv, decoder. A layout mismatch
    between the codes `encode_images` returns and the ones `decode` reads would scramble the grid."""
    images = _images()
    vq = policy.vq
    with torch.no_grad():
        latent = vq.quant_conv(vq.encoder(images * 2 - 1))  # (B, D, h, w)
        batch, dim, height, width = latent.shape
        cells = torch.nn.functional.normalize(latent.permute(0, 2, 3, 1).reshape(-1, dim), dim=-1)
        codebook = torch.nn.functional.normalize(vq.quantize.embedding.weight, dim=-1)
        nearest = torch.cdist(cells.double(), codebook.double()).argmin(dim=-1)
        quantized = codebook[nearest].view(batch, height, width, dim).permute(0, 3, 1, 2)
        expected = ((vq.decoder(vq.post_quant_conv(quantized)) + 1) / 2).clamp(0, 1)
    codes = policy.encode_images(images)
    assert torch.equal(codes.flatten(), nearest)
    assert_close_scaled(policy.decode(codes), expected, relative=1e-5)


def test_a_saved_vq_folder_encodes_as_the_released_file(tmp_path, tiny_llamagen, policy):
    policy.vq.save_pretrained(str(tmp_path / "vq"))  # this project's layout (convert / a training run): encoder kept
    reloaded = load_policy(
        tiny_llamagen,
        "llamagen",
        dtype="float32",
        visual_tokenizer=str(tmp_path / "vq"),
        family_config=tiny_llamagen_family_config(tiny_llamagen),
    )
    images = _images(seed=1)
    assert torch.equal(reloaded.encode_images(images), policy.encode_images(images))
