"""The `janus` family's quirks on a tiny random `JanusForConditionalGeneration` saved in the released on-disk
format (a transformers Janus folder with its processor): loading and detection, prompts, log-probs against a
float64 computation through Janus' own modules, decoding through the model's VQ, LoRA confined to the language
model, full fine-tuning (+KL) keeping the frozen parts, and every shipped Janus recipe for two steps. The family
contract (samplers, scoring under every CFG mode, reload) is `tests/families/test_contract.py`.
Parity with transformers' own `generate` is in test_janus_parity.py."""

import copy
import json
import os

import pytest
import torch
import yaml
from conftest import REPO, grpo_args
from numerics import assert_close_scaled

from rlhf_img import (
    ImageGRPOTrainer,
    ImageModelConfig,
    Policy,
    Sampling,
    detect_family,
    load_policy,
)
from rlhf_img.policy import CFG_MODES

PROMPTS = ["a red apple on a table", "two dogs", "x"]
RECIPES = ["janus-pro-7b-grpo-t2i-r1.yaml", "janus-pro-7b-grpo-geneval.yaml", "janus-pro-1b-grpo-geneval-lora.yaml"]
FROZEN_PREFIXES = (
    "model.vision_model.",
    "model.aligner.",
    "model.vqmodel.",
    "model.generation_embeddings.",
    "model.generation_aligner.",
    "model.generation_head.",
)


@pytest.fixture(scope="module")
def tiny_janus(tmp_path_factory):
    from rlhf_img.families.janus.tiny import save_tiny_janus

    return save_tiny_janus(str(tmp_path_factory.mktemp("janus") / "Janus-Pro-tiny"), seed=0)


@pytest.fixture(scope="module")
def policy(tiny_janus):
    return load_policy(tiny_janus, dtype="float32")


def lora_recipe_targets() -> list[str]:
    with open(os.path.join(REPO, "recipes", "janus-pro-1b-grpo-geneval-lora.yaml")) as f:
        return yaml.safe_load(f)["lora_target_modules"]


def test_loads_transformers_janus_folder_with_only_the_language_model_trainable(tiny_janus, policy):
    assert detect_family(tiny_janus) == "janus"  # released layout: config.json with model_type "janus"
    assert isinstance(policy, Policy) and type(policy.model).__name__ == "JanusForConditionalGeneration"
    assert (policy.num_actions, policy.code_count, policy.grid) == (16, 64, 4)
    for name, parameter in policy.model.named_parameters():
        assert parameter.requires_grad == name.startswith("model.language_model."), name
    assert any(name.startswith(FROZEN_PREFIXES[0]) for name, _ in policy.model.named_parameters())


def test_prompts_are_janus_chat_format_left_padded_with_begin_of_image(policy):
    batch = policy.encode_prompts(PROMPTS)
    tokenizer = policy.processing_class.tokenizer
    assert batch.attention_mask[:, -1].all() and not batch.attention_mask[2, 0]  # left padding
    text = tokenizer.decode(batch.input_ids[0][batch.attention_mask[0].bool()])
    assert text == "<｜begin▁of▁sentence｜><|User|>: a red apple on a table\n\n<|Assistant|>:<begin_of_image>"
    uncond = policy.unconditional_ids(batch.input_ids)
    kept = uncond != policy.pad_id
    assert torch.equal(uncond[kept], batch.input_ids[kept])
    assert set(uncond[kept].tolist()) == {policy.bos_id, policy.boi_id}
    assert (uncond.shape, kept.sum().item()) == (batch.input_ids.shape, 2 * len(PROMPTS))


def test_a_prompt_template_from_family_config_is_kept_in_janus_json(tiny_janus, tmp_path):
    policy = load_policy(
        tiny_janus, "janus", dtype="float32", family_config={"prompt_template": "User: {prompt}\n\nAssistant:"}
    )
    ids = policy.encode_prompts(["a cat"]).input_ids[0]
    assert (
        policy.processing_class.tokenizer.decode(ids)
        == "<｜begin▁of▁sentence｜>User: a cat\n\nAssistant:<begin_of_image>"
    )
    policy.save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / "janus.json").read_text()) == {"prompt_template": "User: {prompt}\n\nAssistant:"}


def test_deepseeks_remote_code_layout_is_refused_with_a_pointer_to_the_converted_repos(tmp_path):
    from rlhf_img.checkpoints import CheckpointError

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "multi_modality"}))
    with pytest.raises(CheckpointError, match="deepseek-community/Janus-Pro-1B"):
        load_policy(str(tmp_path), "janus")
    with pytest.raises(CheckpointError, match="set model_family"):
        detect_family(str(tmp_path))


def direct_logprobs(policy, model, codes, sampling, detach_uncond=False):
    """One unpadded forward per prompt and branch, no cache, no wrappers: prompt embeddings then every code's
    generation embedding, logits from the generation head, guidance written out, log-softmax at temperature."""
    rows = []
    for prompt, row in zip(PROMPTS, codes):
        ids = policy.encode_prompts([prompt]).input_ids  # (1, L): a single prompt has no padding

        def branch(prompt_ids):
            embeds = torch.cat(
                [model.get_input_embeddings()(prompt_ids), model.prepare_embeddings_for_image_generation(row[None])], 1
            )
            hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state[0]
            length = prompt_ids.size(1)
            return model.model.generation_head(hidden[length - 1 : length - 1 + row.numel()])

        logits = branch(ids)
        if sampling.cfg_mode in ("guided", "guided_detached_uncond"):
            uncond = branch(policy.unconditional_ids(ids))
            uncond = uncond.detach() if detach_uncond else uncond
            logits = uncond + sampling.cfg_scale * (logits - uncond)
        logp = torch.log_softmax(logits / sampling.temperature, -1)
        rows.append(logp.gather(-1, row[:, None]).squeeze(-1))
    return torch.stack(rows)


@pytest.mark.parametrize("cfg_mode", CFG_MODES)
def test_logprobs_equal_a_float64_direct_computation(policy, cfg_mode):
    sampling = Sampling(cfg_mode=cfg_mode, cfg_scale=3.0, temperature=0.8)
    codes = torch.randint(0, policy.code_count, (len(PROMPTS), 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = policy.logprobs(policy.model, policy.encode_prompts(PROMPTS), codes, sampling)
        expected = direct_logprobs(policy, copy.deepcopy(policy.model).double(), codes, sampling)
    assert expected.dtype == torch.float64
    assert_close_scaled(ours, expected, relative=1e-5)


def _gradients(model, logps):
    model.zero_grad()
    logps.sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_guided_gradients_reach_only_the_language_model_and_detaching_changes_them(policy):
    batch = policy.encode_prompts(PROMPTS)
    codes = torch.randint(0, policy.code_count, (len(PROMPTS), 16), generator=torch.Generator().manual_seed(2))
    full = _gradients(policy.model, policy.logprobs(policy.model, batch, codes, Sampling("guided", 3.0))[0])
    detached = _gradients(
        policy.model, policy.logprobs(policy.model, batch, codes, Sampling("guided_detached_uncond", 3.0))[0]
    )
    assert full and all(name.startswith("model.language_model.") for name in full)
    reference = copy.deepcopy(policy.model).double()
    expected = _gradients(reference, direct_logprobs(policy, reference, codes, Sampling("guided", 3.0)))
    for name in expected:
        assert_close_scaled(full[name], expected[name], relative=1e-4)
    name = "model.language_model.embed_tokens.weight"
    assert not torch.allclose(full[name], detached[name])
    policy.model.zero_grad()


def test_decode_is_the_models_vq_in_unit_range(policy):
    codes = torch.randint(0, policy.code_count, (2, 16), generator=torch.Generator().manual_seed(3))
    images = policy.decode(codes)
    assert images.shape == (2, 3, 32, 32) and not images.requires_grad
    with torch.no_grad():
        expected = ((policy.model.decode_image_tokens(codes).permute(0, 3, 1, 2) + 1) / 2).clamp(0, 1)
    assert torch.equal(images, expected) and images.std() > 0


def _frozen_state(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if name.startswith(FROZEN_PREFIXES)}


def _assert_reloads_with_the_same_images(trained_policy, output_dir):
    assert detect_family(output_dir) == "janus"  # janus.json
    reloaded = load_policy(output_dir, dtype="float32")
    sampling = Sampling(cfg_mode="guided", cfg_scale=2.0)
    trained_policy.model.eval()
    expected = trained_policy.sample(
        trained_policy.model,
        trained_policy.encode_prompts(["a cat", "a dog"]),
        sampling,
        generator=torch.Generator().manual_seed(3),
    ).actions
    again = reloaded.sample(
        reloaded.model,
        reloaded.encode_prompts(["a cat", "a dog"]),
        sampling,
        generator=torch.Generator().manual_seed(3),
    ).actions
    assert torch.equal(expected, again)
    assert torch.equal(trained_policy.decode(expected), reloaded.decode(again))


def test_lora_grpo_step_trains_adapters_in_the_language_model_only_and_reloads(tiny_janus, tmp_path):
    from datasets import Dataset
    from trl import get_peft_config

    policy = load_policy(tiny_janus, dtype="float32")
    frozen, base = _frozen_state(policy.model), {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    lora = get_peft_config(ImageModelConfig(use_peft=True, lora_target_modules=lora_recipe_targets(), lora_r=4))
    args = grpo_args(
        tmp_path,
        max_steps=1,
        learning_rate=0.05,
        per_device_train_batch_size=4,
        num_generations=4,
        cfg_mode="guided",
        cfg_scale=3.0,
        beta=0.04,
        rewards=[{"name": "jpeg_compressibility"}],
    )
    trainer = ImageGRPOTrainer(policy, args, Dataset.from_dict({"prompt": ["a cat", "a dog"] * 4}), peft_config=lora)
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["sampling/sampling_logp_difference/mean"] < 1e-5 and "kl" in logged
    adapters = {name for name, _ in policy.model.named_modules() if name.endswith(".lora_A")}
    assert len(adapters) == 2 * 7  # every linear of both language-model layers, nothing else
    assert all(".language_model." in name for name in adapters)
    trained = {n: p for n, p in policy.model.named_parameters() if "lora_B" in n}
    assert any(p.abs().sum() > 0 for p in trained.values())
    assert trainer.model.get_base_model() is policy.model  # peft wraps in place; the policy keeps its own model
    base_now = dict(trainer.model.get_base_model().named_parameters())
    assert all(torch.equal(value, base_now[name]) for name, value in base.items() if name in base_now)
    assert all(torch.equal(value, base_now[name]) for name, value in frozen.items())
    trainer.save_model(args.output_dir)
    assert os.path.exists(os.path.join(args.output_dir, "adapter_model.safetensors"))
    _assert_reloads_with_the_same_images(policy, args.output_dir)


def test_lora_on_the_vision_tower_is_refused(tiny_janus, tmp_path):
    from datasets import Dataset
    from trl import get_peft_config

    policy = load_policy(tiny_janus, dtype="float32")
    lora = get_peft_config(ImageModelConfig(use_peft=True, lora_target_modules="all-linear", lora_r=4))
    args = grpo_args(
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=4,
        rewards=[{"name": "jpeg_compressibility"}],
    )
    with pytest.raises(ValueError, match="outside the language model"):
        ImageGRPOTrainer(policy, args, Dataset.from_dict({"prompt": ["a cat"] * 4}), peft_config=lora)


def test_full_fine_tuning_with_kl_rebuilds_the_reference_and_keeps_the_frozen_parts(tiny_janus, tmp_path):
    from datasets import Dataset

    policy = load_policy(tiny_janus, dtype="float32")
    frozen = _frozen_state(policy.model)
    language = {
        n: p.detach().clone() for n, p in policy.model.named_parameters() if n.startswith("model.language_model.")
    }
    args = grpo_args(
        tmp_path,
        max_steps=1,
        learning_rate=1e-3,
        per_device_train_batch_size=4,
        num_generations=4,
        cfg_mode="sample_only",
        cfg_scale=3.0,
        beta=0.1,
        rewards=[{"name": "jpeg_compressibility"}],
    )
    trainer = ImageGRPOTrainer(policy, args, Dataset.from_dict({"prompt": ["a cat", "a dog"] * 4}))
    assert type(trainer.ref_model).__name__ == "JanusForConditionalGeneration"  # TRL reloads it from the folder
    assert trainer.ref_model.config._name_or_path == tiny_janus
    trainer.train()
    assert "kl" in trainer.state.log_history[0]
    now = dict(policy.model.named_parameters())
    assert all(torch.equal(value, now[name]) for name, value in frozen.items())
    assert any(not torch.equal(value, now[name]) for name, value in language.items())
    trainer.save_model(args.output_dir)
    for name in ("config.json", "model.safetensors", "janus.json", "processor_config.json", "chat_template.jinja"):
        assert os.path.exists(os.path.join(args.output_dir, name)), name
    _assert_reloads_with_the_same_images(policy, args.output_dir)


def test_lora_recipe_targets_every_language_model_linear_of_janus_pro_1b_and_nothing_else():
    """Built on the meta device with Janus-Pro-1B's shapes (24 Llama layers, width 2048): the recipe's names match
    exactly the language model's linear layers, by peft's own matching rule."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from transformers import JanusConfig, JanusForConditionalGeneration, LlamaConfig

    text = LlamaConfig(
        vocab_size=102400,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=16,
    )
    config = JanusConfig(text_config=text, vq_config={"projection_dim": 2048, "image_token_embed_dim": 2048})
    with torch.device("meta"):
        model = JanusForConditionalGeneration(config)
    lora = LoraConfig(target_modules=lora_recipe_targets())
    targeted = {name for name, _ in model.named_modules() if check_target_module_exists(lora, name)}
    linears = {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith("model.language_model.")
    }
    assert targeted == linears and len(linears) == 24 * 7


def _tiny_hps_weights(root) -> tuple[str, str]:
    """An HPS-format checkpoint ({'state_dict': ...}) of a tiny open_clip model registered under a name."""
    import open_clip
    from safetensors.torch import load_file
    from tiny_models import TINY_CLIP_CONFIG, save_tiny_open_clip

    name = "rlhf-img-test-tiny-clip"
    os.makedirs(os.path.join(root, "configs"), exist_ok=True)
    with open(os.path.join(root, "configs", f"{name}.json"), "w") as f:
        json.dump(TINY_CLIP_CONFIG, f)
    open_clip.add_model_config(os.path.join(root, "configs", f"{name}.json"))
    save_tiny_open_clip(os.path.join(root, "clip"))
    weights = os.path.join(root, "HPS_tiny_compressed.pt")
    torch.save({"state_dict": load_file(os.path.join(root, "clip", "open_clip_model.safetensors"))}, weights)
    return name, weights


@pytest.mark.parametrize("recipe", RECIPES)
def test_shipped_recipe_runs_two_steps_on_the_tiny_stand_in(recipe, tiny_janus, tmp_path):
    """The recipe as shipped, with overrides: the tiny Janus folder, GenEval-format prompts, the same reward names
    on tiny stand-ins (GenEval's rules on the shapes detector; HPSv2 on a tiny CLIP), CPU, float32, 2 steps."""
    from rlhf_img.cli import main

    with open(os.path.join(REPO, "recipes", recipe)) as f:
        shipped = yaml.safe_load(f)
    rewards = []
    for entry in shipped["rewards"]:
        if entry["name"] == "hpsv2":
            clip_name, weights = _tiny_hps_weights(str(tmp_path / "hps"))
            rewards.append({"name": "hpsv2", "kwargs": {"weights": weights, "clip_model": clip_name, "device": "cpu"}})
        else:
            assert entry["name"] == "geneval"
            rewards.append({"name": "geneval", "kwargs": {"mode": "dense", "detector": "shapes"}})
    out = tmp_path / "out"
    code = main(
        [
            "train",
            os.path.join(REPO, "recipes", recipe),
            "--model_name_or_path",
            tiny_janus,
            "--dataset",
            os.path.join(REPO, "recipes", "prompts", "shapes-train.jsonl"),
            "--max_prompts",
            "2",
            "--rewards",
            json.dumps(rewards),
            "--dtype",
            "float32",
            "--bf16",
            "false",
            "--use_cpu",
            "true",
            "--max_steps",
            "2",
            "--gradient_accumulation_steps",
            "1",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--output_dir",
            str(out),
            "--disable_tqdm",
            "true",
        ]
    )
    assert code == 0
    history = json.load(open(out / "trainer_state.json"))["log_history"]
    assert sum("rewards/geneval/mean" in entry for entry in history) == 2
    assert detect_family(str(out)) == "janus"
