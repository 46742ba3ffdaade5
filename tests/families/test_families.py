"""The family registry: detection from a checkpoint's own files, clear errors, and trained outputs that reload
as the family they came from (SimpleAR included)."""

import json
import os
import shutil

import pytest
import torch
from conftest import grpo_args

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def tiny_simplear(tmp_path_factory):
    from rlhf_img.families.simplear.tiny import save_tiny_simplear

    return save_tiny_simplear(str(tmp_path_factory.mktemp("simplear")), seed=0)


@pytest.fixture(scope="module")
def tiny_infinity(tmp_path_factory):
    from rlhf_img.families.infinity.tiny import save_tiny_infinity

    return save_tiny_infinity(str(tmp_path_factory.mktemp("infinity") / "released"), seed=0)


def test_each_family_is_detected_from_its_own_files(tiny_checkpoint, tiny_simplear, tiny_infinity):
    from rlhf_img import detect_family

    assert detect_family(tiny_checkpoint) == "causal_vq"  # causal_vq.json
    assert detect_family(tiny_simplear[0]) == "simplear"  # released layout: SimpleAR's special tokens
    assert detect_family(tiny_infinity) == "infinity"  # released layout: infinity_*.pth files


def test_a_config_file_outranks_a_released_layout(tiny_simplear, tmp_path):
    """A folder with SimpleAR's tokenizer and this project's causal_vq.json is a causal_vq checkpoint."""
    from rlhf_img import detect_family

    folder = tmp_path / "lm"
    shutil.copytree(tiny_simplear[0], folder)
    (folder / "causal_vq.json").write_text(json.dumps({"image_code_offset": 0, "image_code_count": 4, "grid": [1, 1]}))
    assert detect_family(str(folder)) == "causal_vq"


def test_unknown_and_ambiguous_folders_name_what_was_looked_for(tmp_path, tiny_checkpoint):
    from rlhf_img import detect_family, load_policy
    from rlhf_img.checkpoints import CheckpointError

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError) as unknown:
        load_policy(str(empty))
    message = str(unknown.value)
    assert "\n" not in message and "set model_family" in message
    for looked_for in ("causal_vq.json", "simplear.json", "infinity.json", "infinity_*.pth", "<|t2i|>"):
        assert looked_for in message
    both = tmp_path / "both"
    shutil.copytree(tiny_checkpoint, both)
    (both / "infinity.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"several families \['causal_vq', 'infinity'\]; set model_family"):
        detect_family(str(both))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        detect_family(str(tmp_path / "missing"))


def test_load_policy_names_the_new_argument_order(tiny_checkpoint):
    from rlhf_img import load_policy

    with pytest.raises(TypeError, match=r"load_policy\(checkpoint, model_family=None"):
        load_policy("causal_vq", tiny_checkpoint)


def test_train_and_eval_find_the_family_without_model_family(tiny_checkpoint, tmp_path, capsys):
    from rlhf_img.cli import main

    assert (
        main(
            [
                "eval",
                tiny_checkpoint,
                "--images_per_prompt",
                "1",
                "--prompts",
                "shapes-held-out",
                "--output_dir",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "eval" / "table.json").read_text())["overall"] >= 0


def test_a_simplear_run_reloads_as_simplear_and_samples_the_same_images(tiny_simplear, tmp_path):
    """Train one step, save, reload from the output folder alone (family, resolution, prompt prefix and Cosmos
    tokenizer from its own files): the same seed gives the same images as the trained policy."""
    from rlhf_img import ImageGRPOTrainer, Sampling, detect_family, load_policy

    lm, cosmos = tiny_simplear
    policy = load_policy(
        lm,
        "simplear",
        visual_tokenizer=cosmos,
        dtype="float32",
        family_config={"resolution": 32, "prompt_prefix": "An image of "},
    )
    args = grpo_args(
        tmp_path,
        max_steps=1,
        learning_rate=0.05,
        per_device_train_batch_size=4,
        num_generations=4,
        rewards=[{"name": "jpeg_compressibility"}],
    )
    from datasets import Dataset

    trainer = ImageGRPOTrainer(policy, args, Dataset.from_dict({"prompt": ["a cat", "a dog"] * 4}))
    trainer.train()
    trainer.save_model(args.output_dir)
    for name in ("simplear.json", "visual_tokenizer/encoder.safetensors", "model.safetensors"):
        assert os.path.exists(os.path.join(args.output_dir, name)), name
    assert not os.path.exists(os.path.join(args.output_dir, "causal_vq.json"))
    assert detect_family(args.output_dir) == "simplear"

    reloaded = load_policy(args.output_dir, dtype="float32")
    assert type(reloaded).__name__ == "SimpleARPolicy"
    assert reloaded.config.grid == (2, 2)
    assert reloaded.config.prompt_template == policy.config.prompt_template
    assert os.path.samefile(reloaded.config.visual_tokenizer, os.path.join(args.output_dir, "visual_tokenizer"))
    sampling = Sampling(cfg_mode="guided", cfg_scale=2.0)
    trained = policy.model.eval()
    batch = policy.encode_prompts(["a cat", "a dog"])
    expected = policy.sample(trained, batch, sampling, generator=torch.Generator().manual_seed(3)).actions
    again = reloaded.sample(
        reloaded.model,
        reloaded.encode_prompts(["a cat", "a dog"]),
        sampling,
        generator=torch.Generator().manual_seed(3),
    ).actions
    assert torch.equal(expected, again)
    assert torch.equal(policy.decode(expected), reloaded.decode(again))


def test_every_family_policy_satisfies_the_protocol(tiny_checkpoint, tiny_simplear, tiny_infinity):
    from rlhf_img import Policy, load_policy
    from rlhf_img.families.infinity.tiny import tiny_infinity_family_config

    lm, cosmos = tiny_simplear
    policies = [
        load_policy(tiny_checkpoint),
        load_policy(lm, visual_tokenizer=cosmos, dtype="float32", family_config={"resolution": 32}),
        load_policy(tiny_infinity, dtype="float32", family_config=tiny_infinity_family_config(tiny_infinity)),
    ]
    assert [type(p).__name__ for p in policies] == ["CausalVQPolicy", "SimpleARPolicy", "InfinityPolicy"]
    assert all(isinstance(p, Policy) for p in policies)


def test_a_new_family_is_one_registration(tmp_path, tiny_checkpoint):
    """What a family package does: register `load` with a detector; load_policy and detection pick it up."""
    from rlhf_img import detect_family, load_policy, register_family
    from rlhf_img.families import FAMILIES
    from rlhf_img.families import detect_family as detect_again
    from rlhf_img.families.registry import CONFIG_MATCH, NO_MATCH

    calls = []

    def detect(checkpoint, revision=None):
        return CONFIG_MATCH if os.path.exists(os.path.join(checkpoint, "toy.json")) else NO_MATCH

    @register_family("toy", detect=detect, looks_for="toy.json", help="a test family")
    def load(checkpoint, **kwargs):
        calls.append((checkpoint, kwargs))
        return load_policy(tiny_checkpoint, "causal_vq")

    try:
        folder = tmp_path / "toy"
        folder.mkdir()
        (folder / "toy.json").write_text("{}")
        assert detect_family(str(folder)) == detect_again(str(folder)) == "toy"
        assert load_policy(str(folder), dtype="float32").num_actions == 16
        assert calls[0][0] == str(folder) and calls[0][1]["dtype"] == "float32"
        with pytest.raises(ValueError, match="already registered"):
            register_family("toy", detect=detect, looks_for="toy.json", help="again")(load)
    finally:
        FAMILIES.pop("toy", None)
