import os

# Tests never touch the network, and dashboards stay on disk.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A random-weight causal_vq checkpoint (Qwen2 LM + VQ) in the real on-disk format."""
    from rlhf_img.families.causal_vq.tiny import save_tiny_causal_vq

    return save_tiny_causal_vq(str(tmp_path_factory.mktemp("ckpt") / "tiny-qwen2"), arch="qwen2", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_checkpoint(tmp_path_factory) -> str:
    from rlhf_img.families.causal_vq.tiny import save_tiny_causal_vq

    return save_tiny_causal_vq(str(tmp_path_factory.mktemp("ckpt") / "tiny-llama"), arch="llama", seed=1)


@pytest.fixture
def brightness_reward_file(tmp_path) -> str:
    """A custom reward living in a user file, loaded by path like a user's would be."""
    path = tmp_path / "my_rewards.py"
    path.write_text(
        "def brightness(prompts, images, **kwargs):\n"
        "    return images.mean(dim=(1, 2, 3)).tolist()\n\n"
        "def broken(prompts, images, **kwargs):\n"
        "    raise RuntimeError('detector crashed')\n"
    )
    return str(path)


@pytest.fixture
def prompt_file(tmp_path) -> str:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(f"prompt number {i}" for i in range(16)) + "\n")
    return str(path)


def write_recipe(path, **keys) -> str:
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(keys, f)
    return str(path)


def grpo_args(tmp_path, **overrides):
    """An `ImageGRPOConfig` for tiny CPU runs: no dashboards, no checkpoints, no KL unless asked."""
    from rlhf_img import ImageGRPOConfig

    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_steps=2,
        beta=0.0,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        activation_checkpointing=False,
        seed=0,
    )
    return ImageGRPOConfig(**{**defaults, **overrides})
