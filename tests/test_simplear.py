"""The `simplear` family on tiny stand-ins saved in the released on-disk formats: a Qwen2 folder with
SimpleAR's special tokens and a `len(tokenizer) + 64000` vocabulary, and a Cosmos tokenizer (TorchScript
files converted by `rlhf-img convert cosmos`, and safetensors)."""

import json
import os

import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def tiny_simplear(tmp_path_factory):
    from rlhf_img.models.tiny import save_tiny_simplear

    return save_tiny_simplear(str(tmp_path_factory.mktemp("simplear")), seed=0)


def test_simplear_layout_prompt_template_and_restricted_sampling(tiny_simplear):
    from rlhf_img.models import Sampling, load_policy
    from rlhf_img.models.simplear import COSMOS_CODES

    lm, cosmos = tiny_simplear
    policy = load_policy("simplear", lm, visual_tokenizer=cosmos, dtype="float32", family_config={"resolution": 64})
    tokenizer = policy.processing_class
    assert policy.config.image_code_offset == len(tokenizer)
    assert policy.model.get_output_embeddings().weight.shape[0] == len(tokenizer) + COSMOS_CODES
    assert policy.config.grid == (4, 4)
    ids = policy.encode_prompts(["a red apple"]).input_ids[0].tolist()
    assert tokenizer.decode(ids) == "<|t2i|>A photo of a red apple<|soi|>"
    assert tokenizer.decode(policy._uncond.input_ids[0].tolist()) == "<|t2i|><|soi|>"
    rollout = policy.sample(policy.model, policy.encode_prompts(["a cat", "a dog"]),
                            Sampling(cfg_mode="guided", cfg_scale=3.0), generator=torch.Generator().manual_seed(0))
    assert rollout.actions.shape == (2, 16)
    assert 0 <= int(rollout.actions.min()) and int(rollout.actions.max()) < COSMOS_CODES
    images = policy.decode(rollout.actions)
    assert images.shape == (2, 3, 64, 64) and 0 <= float(images.min()) and float(images.max()) <= 1


def test_simplear_loads_the_cosmos_tokenizer_converted_from_torchscript(tiny_simplear, tmp_path):
    from rlhf_img.cli import main
    from rlhf_img.models import load_policy
    from rlhf_img.models.cosmos import CosmosDiscreteTokenizer

    lm, cosmos = tiny_simplear
    tokenizer = CosmosDiscreteTokenizer.from_pretrained(cosmos)
    jit_dir = tmp_path / "published"
    jit_dir.mkdir()
    with torch.no_grad():
        video = torch.rand(1, 3, 1, 32, 32) * 2 - 1
        indices = torch.randint(0, 64000, (1, 1, 2, 2))
        torch.jit.save(torch.jit.trace(tokenizer.encoder, video, check_trace=False), str(jit_dir / "encoder.jit"))
        torch.jit.save(torch.jit.trace(tokenizer.decoder, indices, check_trace=False), str(jit_dir / "decoder.jit"))
    with open(os.path.join(cosmos, "config.json")) as f:
        (tmp_path / "cosmos_config.json").write_text(f.read())
    out = tmp_path / "converted"
    assert main(["convert", "cosmos", str(jit_dir), str(out), "--config", str(tmp_path / "cosmos_config.json")]) == 0
    policy = load_policy("simplear", lm, visual_tokenizer=str(out), dtype="float32", family_config={"resolution": 32})
    codes = torch.randint(0, 64000, (2, 4), generator=torch.Generator().manual_seed(1))
    assert torch.equal(policy.decode(codes), tokenizer.decode(codes.view(2, 2, 2)))


def test_simplear_rejects_a_checkpoint_without_its_special_tokens(tiny_checkpoint):
    from rlhf_img.models import CheckpointError, load_policy

    with pytest.raises(CheckpointError, match="special tokens"):
        load_policy("simplear", tiny_checkpoint, visual_tokenizer="unused")


@pytest.mark.parametrize("recipe", ["simplear-0.5b-grpo-clip.yaml", "simplear-0.5b-grpo-clip-lora.yaml"])
def test_simplear_paper_recipe_trains_on_tiny_stand_ins(recipe, tiny_simplear, tmp_path):
    """The recipe as shipped, with overrides pointing at the tiny stand-ins and a tiny CLIP."""
    from tiny_models import save_tiny_open_clip

    from rlhf_img.cli import main

    lm, cosmos = tiny_simplear
    clip_dir = save_tiny_open_clip(str(tmp_path / "clip"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple\na dog on a beach\n")
    rewards = [{"name": "clip_score", "kwargs": {"model": f"local-dir:{clip_dir}", "pretrained": None,
                                                 "formula": "cosine", "caption_template": "A photo of {prompt}"}}]
    out = tmp_path / "out"
    code = main(["train", os.path.join(REPO, "recipes", recipe), "--model_name_or_path", lm, "--visual_tokenizer", cosmos,
                 "--family_config", json.dumps({"resolution": 32, "prompt_prefix": "A photo of "}),
                 "--rewards", json.dumps(rewards), "--dataset", str(prompts), "--dtype", "float32", "--bf16", "false",
                 "--use_cpu", "true", "--max_steps", "2", "--gradient_accumulation_steps", "1",
                 "--report_to", "none", "--save_strategy", "no", "--output_dir", str(out), "--disable_tqdm", "true"])
    assert code == 0
    history = json.load(open(out / "trainer_state.json"))["log_history"]
    assert any("rewards/clip_score/mean" in entry for entry in history)
