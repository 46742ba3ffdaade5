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
    from rlhf_img.families.simplear.tiny import save_tiny_simplear

    return save_tiny_simplear(str(tmp_path_factory.mktemp("simplear")), seed=0)


def test_simplear_layout_prompt_template_and_restricted_sampling(tiny_simplear):
    from rlhf_img import Sampling, load_policy
    from rlhf_img.families.simplear.loading import COSMOS_CODES

    lm, cosmos = tiny_simplear
    policy = load_policy(lm, "simplear", visual_tokenizer=cosmos, dtype="float32", family_config={"resolution": 64})
    tokenizer = policy.processing_class
    assert policy.config.image_code_offset == len(tokenizer)
    assert policy.model.get_output_embeddings().weight.shape[0] == len(tokenizer) + COSMOS_CODES
    assert policy.config.grid == (4, 4)
    ids = policy.encode_prompts(["a red apple"]).input_ids[0].tolist()
    assert tokenizer.decode(ids) == "<|t2i|>A photo of a red apple<|soi|>"
    assert tokenizer.decode(list(policy.adapter.unconditional_ids)) == "<|t2i|><|soi|>"
    rollout = policy.sample(policy.model, policy.encode_prompts(["a cat", "a dog"]),
                            Sampling(cfg_mode="guided", cfg_scale=3.0), generator=torch.Generator().manual_seed(0))
    assert rollout.actions.shape == (2, 16)
    assert 0 <= int(rollout.actions.min()) and int(rollout.actions.max()) < COSMOS_CODES
    images = policy.decode(rollout.actions)
    assert images.shape == (2, 3, 64, 64) and 0 <= float(images.min()) and float(images.max()) <= 1


def test_simplear_loads_the_cosmos_tokenizer_converted_from_torchscript(tiny_simplear, tmp_path):
    from rlhf_img import load_policy
    from rlhf_img.cli import main
    from rlhf_img.families.simplear.cosmos import CosmosDiscreteTokenizer

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
    policy = load_policy(lm, "simplear", visual_tokenizer=str(out), dtype="float32", family_config={"resolution": 32})
    codes = torch.randint(0, 64000, (2, 4), generator=torch.Generator().manual_seed(1))
    assert torch.equal(policy.decode(codes), tokenizer.decode(codes.view(2, 2, 2)))


def test_simplear_rejects_a_checkpoint_without_its_special_tokens(tiny_checkpoint):
    from rlhf_img import load_policy
    from rlhf_img.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="special tokens"):
        load_policy(tiny_checkpoint, "simplear", visual_tokenizer="unused")


def test_simplear_sft_recipe_trains_on_image_caption_pairs(tiny_simplear, tmp_path):
    import numpy as np
    from PIL import Image

    from rlhf_img import load_policy
    from rlhf_img.cli import main

    lm, cosmos = tiny_simplear
    rows = []
    for index in range(4):
        array = (np.random.default_rng(index).random((40, 48, 3)) * 255).astype(np.uint8)
        Image.fromarray(array).save(tmp_path / f"img{index}.png")
        rows.append(json.dumps({"image": f"img{index}.png", "caption": f"picture number {index}"}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "sft"
    code = main(["sft", os.path.join(REPO, "recipes", "simplear-sft.yaml"), "--model_name_or_path", lm,
                 "--visual_tokenizer", cosmos, "--dataset", str(tmp_path / "pairs.jsonl"), "--resolution", "32",
                 "--dtype", "float32", "--bf16", "false", "--use_cpu", "true", "--max_steps", "2",
                 "--gradient_accumulation_steps", "1", "--gradient_checkpointing", "false", "--save_strategy", "no",
                 "--output_dir", str(out), "--disable_tqdm", "true"])
    assert code == 0
    history = json.load(open(out / "trainer_state.json"))["log_history"]
    assert any("train_loss" in entry for entry in history)
    policy = load_policy(str(out), "simplear", visual_tokenizer=cosmos, dtype="float32", family_config={"resolution": 32})
    assert policy.config.grid == (2, 2)


def test_simplear_sft_sequences_are_prompt_then_cosmos_codes_with_loss_on_codes(tiny_simplear, tmp_path):
    import numpy as np
    from PIL import Image

    from rlhf_img import load_policy
    from rlhf_img.families.simplear.sft import (
        SimpleARSFTConfig,
        build_examples,
        load_image,
    )

    lm, cosmos = tiny_simplear
    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps({"image": "a.png", "caption": "a red apple"})
                                                    for _ in range(20)) + "\n")
    config = SimpleARSFTConfig(output_dir=str(tmp_path / "o"), dataset=str(tmp_path / "pairs.jsonl"), resolution=32,
                               caption_dropout=0.5, seed=0, use_cpu=True)
    policy = load_policy(lm, "simplear", visual_tokenizer=cosmos, dtype="float32", family_config={"resolution": 32})
    examples = build_examples(config, policy)
    tokenizer, offset = policy.processing_class, policy.config.image_code_offset
    codes = (policy.visual_tokenizer.encode(load_image("a.png", str(tmp_path), 32)[None]).flatten() + offset).tolist()
    texts = set()
    for example in examples:
        prompt, image = example["input_ids"][:-4], example["input_ids"][-4:]
        assert image == codes and example["labels"] == [-100] * len(prompt) + codes
        texts.add(tokenizer.decode(prompt))
    assert texts == {"<|t2i|>a red apple<|soi|>", "<|t2i|><|soi|>"}  # captions dropped at the given rate
