"""The `simplear` family on tiny stand-ins saved in the released on-disk formats: a Qwen2 folder with
SimpleAR's special tokens and a `len(tokenizer) + 64000` vocabulary, and a Cosmos tokenizer (TorchScript
files converted by `rlhf-img convert cosmos`, and safetensors)."""

import os

import pytest
import torch
from numerics import assert_close_scaled

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
    rollout = policy.sample(
        policy.model,
        policy.encode_prompts(["a cat", "a dog"]),
        Sampling(cfg_mode="guided", cfg_scale=3.0),
        generator=torch.Generator().manual_seed(0),
    )
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


def test_simplear_sft_loss_is_the_lm_on_simplears_sequences_over_the_image_codes(tiny_simplear):
    """The shared SFT stage on SimpleAR, against transformers' LM run directly on SimpleAR's SFT sequences
    (wdrink/SimpleAR: `<|t2i|>{prefix}caption<|soi|>` then the Cosmos codes as tokens `len(tokenizer) + code`; a dropped
    caption is `<|t2i|><|soi|>`): per-code log-probs of the logits restricted to the image-code tokens (the
    distribution the sampler draws from; SimpleAR's own loss also spreads mass over text tokens, never sampled)."""
    from rlhf_img import load_policy
    from rlhf_img.upstream.likelihood import action_logprobs

    lm, cosmos = tiny_simplear
    policy = load_policy(lm, "simplear", visual_tokenizer=cosmos, dtype="float32", family_config={"resolution": 32})
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    codes = policy.encode_images(images)  # (2, 4)
    captions = ["a red apple", "two dogs"]
    with torch.no_grad():
        ours = action_logprobs(
            policy, policy.model, policy.encode_prompts(captions), codes, torch.tensor([True, False])
        )
    tokenizer, offset, count = policy.processing_class, policy.config.image_code_offset, policy.config.image_code_count
    assert policy.config.uncond_prompt == "<|t2i|><|soi|>"
    for row, text in enumerate([policy.config.prompt_template.format(prompt="a red apple"), "<|t2i|><|soi|>"]):
        prompt = tokenizer(text).input_ids
        ids = torch.tensor([prompt + (codes[row] + offset).tolist()])
        with torch.no_grad():
            logits = policy.model(input_ids=ids).logits[0, len(prompt) - 1 : -1, offset : offset + count].double()
        expected = logits.log_softmax(-1).gather(-1, codes[row].view(-1, 1)).squeeze(-1)
        assert_close_scaled(ours[row].double(), expected, relative=1e-5)
