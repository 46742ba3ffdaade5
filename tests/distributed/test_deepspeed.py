"""DeepSpeed ZeRO-2 and ZeRO-3 really run, on this CPU (DS_ACCELERATOR=cpu, gloo), through the shipped accelerate
configs exactly as a user launches them, with only `--mixed_precision no` added (no bf16 on this CPU).

ZeRO-3 partitions every parameter at load (`zero3_init_flag: true`, as shipped): the loaders' size checks read the
full shape (`ds_shape`), sampling runs inside TRL's gather, the chunked log-prob pass keeps its chunks (a backward
recompute would see the released weights), and the 16-bit save gathers the model again."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.slow  # each case launches DeepSpeed processes (about 15 s each)

deepspeed = pytest.importorskip("deepspeed", reason="the `deepspeed` extra (make test installs it)")

RECIPE = os.path.join(REPO, "recipes", "tiny-random-jpeg.yaml")


def launch(config: str, processes: int, output_dir, *overrides: str) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file recipes/accelerate/<config> --num_processes N --mixed_precision no -m
    rlhf_img.cli train recipes/tiny-random-jpeg.yaml ...` on CPU."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1"}
    command = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--config_file",
               os.path.join(REPO, "recipes", "accelerate", config), "--num_processes", str(processes),
               "--mixed_precision", "no", "--main_process_port", "0", "-m", "rlhf_img.cli", "train", RECIPE,
               "--output_dir", str(output_dir), *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)


def history(output_dir) -> list[dict]:
    with open(os.path.join(output_dir, "trainer_state.json")) as f:
        return [entry for entry in json.load(f)["log_history"] if "loss" in entry]


def sample_images(checkpoint: str) -> torch.Tensor:
    from rlhf_img import Sampling, load_policy

    policy = load_policy(checkpoint)
    batch = policy.encode_prompts(["a red circle", "two blue squares"])
    rollout = policy.sample(policy.model, batch, Sampling(), generator=torch.Generator().manual_seed(0))
    return policy.decode(rollout.actions)


@pytest.fixture(scope="module")
def zero2_and_zero3_lora_runs(tmp_path_factory):
    """The two commands of the issue: the shipped LoRA recipe, 2 processes, 2 steps, ZeRO-2 and ZeRO-3."""
    runs = {}
    for config in ("zero2.yaml", "zero3.yaml"):
        out = tmp_path_factory.mktemp(config.removesuffix(".yaml"))
        result = launch(config, 2, out, "--max_steps", "2", "--logging_steps", "1")
        assert result.returncode == 0, result.stderr[-3000:]
        runs[config] = (out, result)
    return runs


@pytest.mark.parametrize("config", ["zero2.yaml", "zero3.yaml"])
def test_the_shipped_zero_configs_train_two_steps_and_save_a_loadable_adapter(zero2_and_zero3_lora_runs, config):
    out, result = zero2_and_zero3_lora_runs[config]
    assert "rlhf-img: trained 2 steps" in result.stdout
    assert len(history(out)) == 2 and all(isinstance(entry["reward"], float) for entry in history(out))
    images = sample_images(str(out))  # the saved adapter reloads as causal_vq (merged into its base)
    assert images.shape == (2, 3, 16, 16) and images.std() > 0


def test_zero2_and_zero3_train_the_same_adapter(zero2_and_zero3_lora_runs):
    from safetensors.torch import load_file

    zero2, zero3 = (load_file(os.path.join(out, "adapter_model.safetensors"))
                    for out, _ in (zero2_and_zero3_lora_runs["zero2.yaml"], zero2_and_zero3_lora_runs["zero3.yaml"]))
    assert zero2.keys() == zero3.keys() and all(value.numel() > 0 for value in zero3.values())
    for key in zero2:  # measured: at most 4.9e-5 apart after two steps at lr 1e-2 (sharded reductions round differently)
        scale = float(zero2[key].abs().max()) or 1.0
        assert float((zero2[key] - zero3[key]).abs().max()) <= 1e-3 * scale, key


def test_zero3_full_fine_tuning_with_kl_logs_the_same_on_one_and_two_processes(tmp_path):
    """1 process x batch 64 and 2 processes x batch 32: the same rollouts (per-sample random streams), rewards,
    KL to the reference and loss; the gathered 16-bit save reloads to the same images."""
    common = ["--max_steps", "3", "--logging_steps", "1", "--use_peft", "false", "--beta", "0.04",
              "--learning_rate", "1e-4"]
    one, two = tmp_path / "one", tmp_path / "two"
    for processes, batch, out in ((1, "64", one), (2, "32", two)):
        result = launch("zero3.yaml", processes, out, *common, "--per_device_train_batch_size", batch)
        assert result.returncode == 0, result.stderr[-3000:]
    for a, b in zip(history(one), history(two), strict=True):
        assert a["reward"] == b["reward"] and a["reward_std"] == b["reward_std"]  # measured: identical
        for key in ("loss", "kl", "grad_norm"):  # measured: at most 7.5e-9 (loss 4e-7), 1.5e-8 (grad_norm 0.96)
            scale = max(abs(a[key]), abs(b[key]), 1e-6)
            assert abs(a[key] - b[key]) <= 1e-3 * scale + 1e-7, (key, a[key], b[key])
    assert any(entry["kl"] > 0 for entry in history(two))  # the reference model ran
    assert torch.equal(sample_images(str(one)), sample_images(str(two)))


def test_a_run_that_cannot_fill_one_generation_batch_exits_1_naming_the_keys(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    result = launch("zero2.yaml", 2, tmp_path / "out", "--dataset", str(prompts), "--max_steps", "2")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("rlhf-img: error")]
    assert len(lines) == 1 and "the dataset has 2 prompts but one generation batch takes 16" in lines[0]
    assert "per_device_train_batch_size" in lines[0] and not os.path.exists(tmp_path / "out" / "trainer_state.json")


FAMILY_LORA_RECIPES = {"causal_vq": "tiny-random-jpeg.yaml", "simplear": "simplear-0.5b-grpo-clip-lora.yaml",
                       "janus": "janus-pro-1b-grpo-geneval-lora.yaml", "llamagen": "llamagen-xl-grpo-lora.yaml",
                       "infinity": "infinity-2b-grpo-clip.yaml"}


@pytest.mark.parametrize("family", sorted(FAMILY_LORA_RECIPES))
def test_every_family_trains_its_lora_recipe_under_zero3_and_reloads(family, tmp_path):
    """The family's shipped LoRA recipe on its stand-in, ZeRO-3 (every parameter partitioned at load, the frozen
    text encoder and VQ / VAE kept whole), 2 processes, 2 steps; the output reloads as the family."""
    from tiny_models import tiny_clip_recipe_overrides

    from rlhf_img.families import FAMILIES, detect_family

    tiny = FAMILIES[family].stand_in(str(tmp_path / "stand-in"))
    overrides, out = tiny_clip_recipe_overrides(str(tmp_path))
    model = ["--model_name_or_path", tiny.checkpoint, "--family_config", json.dumps(tiny.load_kwargs.get("family_config") or {})]
    if tiny.load_kwargs.get("visual_tokenizer"):
        model += ["--visual_tokenizer", tiny.load_kwargs["visual_tokenizer"]]
    recipe = os.path.join(REPO, "recipes", FAMILY_LORA_RECIPES[family])
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    command = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--config_file",
               os.path.join(REPO, "recipes", "accelerate", "zero3.yaml"), "--num_processes", "2", "--mixed_precision",
               "no", "--main_process_port", "0", "-m", "rlhf_img.cli", "train", recipe, *model, *overrides,
               "--num_generations", "4", "--per_device_train_batch_size", "4"]  # the recipe's own LoRA targets
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rlhf-img: trained 2 steps" in result.stdout
    assert detect_family(out) == family


def test_zero3_resume_from_deepspeeds_checkpoint_continues_identically(tmp_path):
    """A 4-step run, and a 2-step run resumed to 4 from its ZeRO-3 checkpoint (DeepSpeed's own layout: sharded
    model and optimizer states under `global_step2/`, plus the completion marker): steps 3 and 4 log the same. A
    constant learning rate, so that stopping at step 2 is the unbroken run's first half (a linear schedule over
    `max_steps: 2` would already have decayed differently)."""
    common = ["--logging_steps", "1", "--use_peft", "false", "--beta", "0.04", "--learning_rate", "1e-4",
              "--lr_scheduler_type", "constant", "--per_device_train_batch_size", "32", "--save_strategy", "steps",
              "--save_steps", "2"]
    unbroken, resumed = tmp_path / "unbroken", tmp_path / "resumed"
    for out, steps, extra in ((unbroken, "4", []), (resumed, "2", []), (resumed, "4", ["--resume_from_checkpoint", "true"])):
        result = launch("zero3.yaml", 2, out, *common, "--max_steps", steps, *extra)
        assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = resumed / "checkpoint-2"
    assert (checkpoint / "checkpoint_complete.json").exists() and (checkpoint / "global_step2").is_dir()
    expected, got = history(unbroken), history(resumed)
    assert [entry["step"] for entry in got] == [1, 2, 3, 4]
    for a, b in zip(expected, got, strict=True):  # measured: identical to the last bit on this CPU
        for key in ("reward", "reward_std", "loss", "kl", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-6 * max(abs(a[key]), 1e-6), (a["step"], key, a[key], b[key])


FAMILY_FULL_RECIPES = {"causal_vq": "tiny-random-jpeg.yaml", "simplear": "simplear-0.5b-grpo-clip.yaml",
                       "janus": "janus-pro-7b-grpo-geneval.yaml", "llamagen": "llamagen-xl-grpo.yaml",
                       "infinity": "infinity-2b-grpo-clip-full.yaml"}
JANUS_ZERO3_FULL = pytest.mark.xfail(
    strict=True, reason="known: under ZeRO-3 full fine-tuning, transformers' `kernels` layer wrapper on Janus' "
    "LlamaAttention finds no `_kernel_funcs` in the training forward (LoRA under ZeRO-3 runs); not solved yet")


@pytest.mark.parametrize("family", [pytest.param(name, marks=JANUS_ZERO3_FULL) if name == "janus" else name
                                    for name in sorted(FAMILY_FULL_RECIPES)])
def test_every_family_fine_tunes_fully_with_a_kl_reference_under_zero3(family, tmp_path):
    """The family's shipped full-fine-tuning recipe (beta > 0: TRL builds the frozen reference under ZeRO-3 too) on
    its stand-in, converted to this project's layout where the family has a converter, 2 processes, 2 steps; the
    16-bit save reloads as the family."""
    from tiny_models import tiny_clip_recipe_overrides

    from rlhf_img.cli import main
    from rlhf_img.families import FAMILIES, detect_family

    tiny = FAMILIES[family].stand_in(str(tmp_path / "stand-in"))
    checkpoint, family_config = tiny.checkpoint, tiny.load_kwargs.get("family_config")
    if tiny.converter:
        checkpoint = str(tmp_path / "converted")
        convert = ["convert", tiny.converter, tiny.checkpoint, checkpoint, "--dtype", "float32"]
        assert main(convert + (["--family_config", json.dumps(family_config)] if family_config else [])) == 0
        with open(os.path.join(checkpoint, f"{family}.json")) as f:
            family_config = json.load(f)
    overrides, out = tiny_clip_recipe_overrides(str(tmp_path))
    model = ["--model_name_or_path", checkpoint, "--family_config", json.dumps(family_config or {})]
    if tiny.load_kwargs.get("visual_tokenizer"):
        model += ["--visual_tokenizer", tiny.load_kwargs["visual_tokenizer"]]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    command = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--config_file",
               os.path.join(REPO, "recipes", "accelerate", "zero3.yaml"), "--num_processes", "2", "--mixed_precision",
               "no", "--main_process_port", "0", "-m", "rlhf_img.cli", "train",
               os.path.join(REPO, "recipes", FAMILY_FULL_RECIPES[family]), *model, *overrides, "--use_peft", "false",
               "--beta", "0.04", "--logging_steps", "1", "--num_generations", "4", "--per_device_train_batch_size", "4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rlhf-img: trained 2 steps" in result.stdout
    assert all("kl" in entry for entry in history(out))
    assert detect_family(out) == family and os.path.exists(os.path.join(out, "model.safetensors"))
