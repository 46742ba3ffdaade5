"""The `infinity` family's quirks: released-layout loading with a strict key check, scale schedules, per-bit
log-probs against a computation written out by hand, non-square templates, image encoding, conversion, and the
recipes' keys (they run for two steps in the contract suite). What every family must do (samplers, scoring under every CFG mode, decoding, LoRA / full steps
with reload) is the contract suite's: `tests/families/test_contract.py`."""

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
from rlhf_img.families.infinity.loading import (
    infer_config,
    infinity_2b,
    infinity_8b,
    vae_d14,
    vae_d32,
)
from rlhf_img.families.infinity.schedules import num_tokens, scale_schedule
from rlhf_img.families.infinity.tiny import (
    save_tiny_infinity,
    tiny_infinity_family_config,
)

PROMPTS = ["a red circle", "two blue squares on the left of a green triangle"]


@pytest.fixture(scope="module")
def tiny_infinity(tmp_path_factory) -> str:
    return save_tiny_infinity(str(tmp_path_factory.mktemp("ckpt") / "tiny-infinity"), seed=0)


@pytest.fixture(scope="module")
def policy(tiny_infinity):
    return load_policy(
        tiny_infinity, "infinity", dtype="float32", family_config=tiny_infinity_family_config(tiny_infinity)
    )


def test_released_schedules_have_the_published_token_counts():
    assert num_tokens(scale_schedule(1.0, "1M")) == 10521 and len(scale_schedule(1.0, "1M")) == 13
    assert len(scale_schedule(1.0, "0.25M")) == 10 and scale_schedule(1.0, "0.25M")[-1] == (32, 32)
    assert len(scale_schedule(1.0, "0.06M")) == 7
    assert scale_schedule(0.5, "1M")[-1] == (45, 90)  # wide template: the transpose of 2.0's grids
    assert scale_schedule(0.52, "1M") == scale_schedule(0.5, "1M")  # snapped to the nearest template


def test_released_sizes_have_the_documented_shapes():
    two = infinity_2b()
    assert (two.depth, two.embed_dim, two.num_heads, two.bits_per_token) == (32, 2048, 16, 32)
    eight = infinity_8b()
    assert (eight.depth, eight.embed_dim, eight.num_heads, eight.bits_per_token) == (40, 3584, 28, 56)
    assert vae_d14().codebook_dim * 4 == eight.bits_per_token and vae_d32().patch_size == 16


def test_tiny_released_layout_loads_through_the_public_path(policy, tiny_infinity):
    state = torch.load(os.path.join(tiny_infinity, "infinity_tiny.pth"), weights_only=True)
    assert any(k.startswith("block_chunks.1.module.0.") for k in state)
    assert "vae" in torch.load(os.path.join(tiny_infinity, "infinity_vae_tiny.pth"), weights_only=True)
    assert policy.grids == [(1, 1), (2, 2), (4, 4), (6, 6)]
    assert policy.num_actions == (1 + 4 + 16 + 36) * 8 and policy.image_size == (12, 12)
    assert infer_config(state).depth == 2 and infer_config(state).block_chunks == 2


@pytest.mark.parametrize("edit", ["missing", "unexpected", "shape"])
def test_a_mismatched_state_dict_is_an_error_naming_the_keys(tmp_path, tiny_infinity, edit):
    state = torch.load(os.path.join(tiny_infinity, "infinity_tiny.pth"), weights_only=True)
    if edit == "missing":
        del state["block_chunks.1.module.0.sa.q_bias"]
    elif edit == "unexpected":
        state["semantic_head.weight"] = torch.zeros(2)
    else:
        state["head.weight"] = torch.zeros(3, 64)
    folder = tmp_path / "broken"
    folder.mkdir()
    torch.save(state, folder / "infinity_tiny.pth")
    config = tiny_infinity_family_config(tiny_infinity)
    config["vae"] = os.path.join(tiny_infinity, "infinity_vae_tiny.pth")
    expected = {
        "missing": "block_chunks.1.module.0.sa.q_bias",
        "unexpected": "semantic_head.weight",
        "shape": "head.weight",
    }
    with pytest.raises(CheckpointError, match=expected[edit].replace(".", r"\.")):
        load_policy(str(folder), "infinity", dtype="float32", family_config=config)


def test_named_size_checks_the_released_file_strictly(tiny_infinity):
    config = {**tiny_infinity_family_config(tiny_infinity), "size": "2b"}
    with pytest.raises(CheckpointError, match="does not match"):
        load_policy(tiny_infinity, "infinity", dtype="float32", family_config=config)


def test_logprob_equals_an_independent_per_bit_computation(policy):
    """Teacher-forced log-probs vs the KV-cached per-scale logits with guidance, temperature and top-p per bit
    written out by hand: log softmax over the two logits, and 0 for a bit whose rival top-p removed."""
    sampling = Sampling(cfg_mode="guided", cfg_scale=2.5, temperature=0.6, top_p=0.9)
    batch = policy.encode_prompts(PROMPTS)
    torch.manual_seed(1)
    actions = policy.sample(policy.model, batch, sampling).actions
    net, codes = policy.model, policy.codes
    text, mask = policy.text_features(batch)
    with torch.no_grad():
        both_text = torch.cat([text, net.unconditional_text(mask)])
        both_mask = torch.cat([mask, mask])
        state = net.prepare_text(both_text, both_mask)
        caches = [[] for _ in net.blocks]
        x, summed, expected = net.start_tokens(state[0]), None, []
        for index, bits in enumerate(codes.split(actions)):
            logits = net.forward_scale(x, index, codes.grids, state, both_mask, caches)
            logits = logits.view(4, -1, codes.bits_per_token, 2)
            guided = (logits[2:] + 2.5 * (logits[:2] - logits[2:])) / 0.6  # (B, tokens, bits, 2)
            taken = bits.reshape(2, -1, codes.bits_per_token)
            logp = torch.log_softmax(guided, -1).gather(-1, taken.unsqueeze(-1)).squeeze(-1)
            rival_prob = torch.softmax(guided, -1).gather(-1, (1 - taken).unsqueeze(-1)).squeeze(-1)
            expected.append(torch.where(rival_prob <= 1 - 0.9, torch.zeros_like(logp), logp).flatten(1))
            summed = codes.accumulate(summed, bits, index)
            if index + 1 < len(codes.grids):
                x = net.word_embed(codes.scale_input(summed, index + 1)).repeat(2, 1, 1)
    logps, _ = policy.logprobs(policy.model, batch, actions, sampling)
    expected = torch.cat(expected, dim=1)
    assert_close_scaled(logps, expected, relative=1e-5)
    assert_close_scaled(
        logps.sum(1), expected.sum(1), relative=1e-5
    )  # a rollout's log-prob: sum over scales, tokens, bits


def test_non_square_template_and_decoding(tiny_infinity):
    config = {**tiny_infinity_family_config(tiny_infinity), "aspect_ratio": 0.5}
    policy = load_policy(tiny_infinity, "infinity", dtype="float32", family_config=config)
    assert policy.grids == [(1, 1), (2, 2), (2, 4), (3, 6)]
    rollout = policy.sample(policy.model, policy.encode_prompts(PROMPTS), Sampling())
    images = policy.decode(rollout.actions)
    assert images.shape == (2, 3, 6, 12) and 0 <= images.min() and images.max() <= 1


def test_encoded_images_decode_like_their_bits(policy):
    """SFT's tokenisation: image -> multi-scale bits -> actions, and actions -> the same summed latent."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, *policy.image_size)
    actions = policy.encode_images(images)
    assert actions.shape == (2, policy.num_actions)
    latent = policy.vae.encoder(images * 2 - 1)
    summed = policy.codes.summed_codes(actions)
    # residual quantisation: the summed codes approximate the latent's direction better than zero
    assert torch.nn.functional.cosine_similarity(summed.flatten(1), latent.flatten(1)).min() > 0.3


def test_lora_grpo_step_saves_an_adapter_that_reloads(tmp_path, policy, tiny_infinity):
    def brightness(prompts, images, **kwargs):
        return images.mean(dim=(1, 2, 3)).tolist()

    dataset = Dataset.from_dict({"prompt": [f"prompt {i}" for i in range(8)]})
    args = grpo_args(tmp_path, cfg_mode="guided", cfg_scale=2.0, top_p=0.97, learning_rate=1e-3, logging_steps=1)
    fresh = load_policy(
        tiny_infinity, "infinity", dtype="float32", family_config=tiny_infinity_family_config(tiny_infinity)
    )
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=["mat_qkv", "proj", "fc1", "fc2"])
    trainer = ImageGRPOTrainer(fresh, args, dataset, reward_funcs=[brightness], peft_config=peft)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "sampling/sampling_logp_difference/max" in h]
    assert len(logged) == 2 and logged[0]["sampling/sampling_logp_difference/max"] < 1e-4
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = load_policy(str(tmp_path / "saved"), "infinity", dtype="float32")
    assert reloaded.num_actions == policy.num_actions
    # the merged adapter changed the weights the adapter targets, and only those
    before, after = policy.model.state_dict(), reloaded.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.split(".")[-2] in {"mat_qkv", "proj", "fc1", "fc2"} for k in changed)


def test_convert_then_full_fine_tuning_with_kl(tmp_path, tiny_infinity):
    family = json.dumps({**tiny_infinity_family_config(tiny_infinity)})
    out = tmp_path / "converted"
    assert main(["convert", "infinity", tiny_infinity, str(out), "--family_config", family, "--dtype", "float32"]) == 0
    assert {"config.json", "model.safetensors", "infinity.json", "vae"} <= set(os.listdir(out))
    policy = load_policy(str(out), "infinity", dtype="float32")
    dataset = Dataset.from_dict({"prompt": [f"prompt {i}" for i in range(8)]})
    args = grpo_args(tmp_path, beta=0.04, learning_rate=1e-3, logging_steps=1)

    def brightness(prompts, images, **kwargs):
        return images.mean(dim=(1, 2, 3)).tolist()

    trainer = ImageGRPOTrainer(policy, args, dataset, reward_funcs=[brightness])
    trainer.train()
    assert trainer.ref_model is not None and "kl" in trainer.state.log_history[-2]


def test_full_fine_tuning_with_kl_on_a_released_file_is_a_clear_cli_error(tmp_path, tiny_infinity, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model_family: infinity\nmodel_name_or_path: {tiny_infinity}\ndtype: float32\n"
        f"family_config: {json.dumps(tiny_infinity_family_config(tiny_infinity))}\n"
        f"dataset: {prompts}\nrewards: [{{name: jpeg_compressibility}}]\nbeta: 0.04\nuse_cpu: true\n"
        f"output_dir: {tmp_path / 'out'}\nreport_to: none\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(recipe)])
    assert exit_info.value.code == 2 and "rlhf-img convert infinity" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_infinity_recipes_parse():
    from rlhf_img.recipes import parse_recipe

    for name in ("infinity-2b-grpo-clip.yaml", "infinity-2b-grpo-clip-full.yaml", "infinity-2b-grpo-geneval.yaml"):
        overrides = ["--bf16", "false", "--use_cpu", "true"]
        if "geneval" in name:  # its `dataset` is a placeholder the user replaces on the command line
            overrides += ["--dataset", "my-geneval-prompts.jsonl"]
        args, model_args, _ = parse_recipe(os.path.join(REPO, "recipes", name), overrides)
        assert model_args.model_family == "infinity" and args.reward_specs and args.cfg_mode == "guided"
