"""DeepSpeed ZeRO-2 and ZeRO-3 really run, on this CPU (DS_ACCELERATOR=cpu, gloo), through the shipped accelerate
configs exactly as a user launches them, with only `--mixed_precision no` added (no bf16 on this CPU).

ZeRO-3 partitions every parameter at load (`zero3_init_flag: true`, as shipped): the loaders' size checks read the
full shape (`ds_shape`), sampling runs inside TRL's gather, the chunked log-prob pass keeps its chunks (a backward
recompute would see the released weights), and the 16-bit save gathers the model again."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO

pytestmark = pytest.mark.slow  # each launch starts DeepSpeed processes (about 10 s on 2 cores before training)

deepspeed = pytest.importorskip("deepspeed", reason="the `deepspeed` extra (make test installs it)")

RECIPE = os.path.join(REPO, "recipes", "tiny-random-jpeg.yaml")


def ds_env(**extra: str) -> dict:
    """The environment of every launch here: DeepSpeed on the CPU, offline, one thread per process."""
    return {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def accelerate_command(config: str, processes: int, *target: str) -> list[str]:
    """`accelerate launch --config_file recipes/accelerate/<config> --num_processes N --mixed_precision no TARGET`."""
    return [
        os.path.join(os.path.dirname(sys.executable), "accelerate"),
        "launch",
        "--config_file",
        os.path.join(REPO, "recipes", "accelerate", config),
        "--num_processes",
        str(processes),
        "--mixed_precision",
        "no",
        "--main_process_port",
        "0",
        *target,
    ]


def launch(
    config: str, processes: int, output_dir, *overrides: str, recipe: str = RECIPE
) -> subprocess.CompletedProcess:
    """`accelerate launch ... -m rlhf_img.cli train RECIPE --output_dir OUT ...` on CPU (default recipe:
    recipes/tiny-random-jpeg.yaml)."""
    command = accelerate_command(
        config, processes, "-m", "rlhf_img.cli", "train", recipe, "--output_dir", str(output_dir), *overrides
    )
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=ds_env(), cwd=REPO)


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

    zero2, zero3 = (
        load_file(os.path.join(out, "adapter_model.safetensors"))
        for out, _ in (zero2_and_zero3_lora_runs["zero2.yaml"], zero2_and_zero3_lora_runs["zero3.yaml"])
    )
    assert zero2.keys() == zero3.keys() and all(value.numel() > 0 for value in zero3.values())
    for (
        key
    ) in zero2:  # measured: at most 4.9e-5 apart after two steps at lr 1e-2 (sharded reductions round differently)
        scale = float(zero2[key].abs().max()) or 1.0
        assert float((zero2[key] - zero3[key]).abs().max()) <= 1e-3 * scale, key


# Full fine-tuning with a KL reference under ZeRO-3, 6 steps saved every 2; a constant learning rate keeps the
# resume comparison about the resume alone.
ZERO3_FULL = [
    "--logging_steps",
    "1",
    "--use_peft",
    "false",
    "--beta",
    "0.04",
    "--learning_rate",
    "1e-4",
    "--lr_scheduler_type",
    "constant",
    "--save_strategy",
    "steps",
    "--save_steps",
    "2",
    "--max_steps",
    "6",
]


@pytest.fixture(scope="module")
def zero3_full_runs(tmp_path_factory) -> dict:
    """ZERO3_FULL on 1 process x batch 64 and on 2 processes x batch 32: {processes: output folder}."""
    runs = {}
    for processes, batch in ((1, "64"), (2, "32")):
        out = tmp_path_factory.mktemp(f"zero3-full-{processes}")
        result = launch("zero3.yaml", processes, out, *ZERO3_FULL, "--per_device_train_batch_size", batch)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[processes] = out
    return runs


def test_zero3_full_fine_tuning_with_kl_logs_the_same_on_one_and_two_processes(zero3_full_runs):
    """1 process x batch 64 and 2 processes x batch 32: the same rollouts (per-sample random streams), rewards,
    KL to the reference and loss; the gathered 16-bit save reloads to the same images."""
    one, two = zero3_full_runs[1], zero3_full_runs[2]
    assert len(history(one)) == 6
    for a, b in zip(history(one), history(two), strict=True):
        assert a["reward"] == b["reward"] and a["reward_std"] == b["reward_std"]  # measured: identical
        for key in ("loss", "kl", "grad_norm"):  # measured: at most 8.5e-9 (loss 1.4e-4), 8.2e-8 (grad_norm 1.02)
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


# The CLI with the trainer's RNG-state save blocked at step STOP_IN_SAVE, on every rank: by then DeepSpeed has
# written its sharded model and optimizer states (`global_stepN/`), not the RNG / trainer state nor the completion
# marker -- a save cut short. Each rank leaves its pid for the test, which SIGKILLs them there.
BLOCKING_RUN = """
import os, sys, time
import transformers
from rlhf_img.cli import main
save_rng = transformers.Trainer._save_rng_state
def blocking(self, output_dir):
    if self.state.global_step == int(os.environ["STOP_IN_SAVE"]):
        with open(os.environ["SENTINEL"] + "-" + os.environ["RANK"], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(600)
    return save_rng(self, output_dir)
transformers.Trainer._save_rng_state = blocking
sys.exit(main(sys.argv[1:]))
"""


def killed_in_zero3_save(output_dir, stop_in_save: int, *overrides: str) -> None:
    """Launch 2 DeepSpeed processes, wait until both are inside the save of checkpoint-`stop_in_save`, SIGKILL
    both workers (torchrun starts each in its own session) and the launcher."""
    import signal
    import time

    script = output_dir.parent / "blocking_run.py"
    script.write_text(BLOCKING_RUN)
    sentinel = output_dir.parent / "in-save"
    env = ds_env(STOP_IN_SAVE=str(stop_in_save), SENTINEL=str(sentinel))
    command = accelerate_command(
        "zero3.yaml", 2, str(script), "train", RECIPE, "--output_dir", str(output_dir), *overrides
    )
    launcher = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    pid_files = [sentinel.parent / f"in-save-{rank}" for rank in (0, 1)]
    deadline = time.monotonic() + 300
    while not all(path.exists() and path.read_text() for path in pid_files):
        if launcher.poll() is not None:
            pytest.fail(f"run ended before the save it should be killed in:\n{launcher.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(launcher.pid, signal.SIGKILL)
            pytest.fail("run did not reach the save in time")
        time.sleep(0.1)
    for path in pid_files:
        os.kill(int(path.read_text()), signal.SIGKILL)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait(timeout=60)
    launcher.stderr.close()


def test_zero3_killed_in_a_save_resumes_from_deepspeeds_last_complete_checkpoint_identically(zero3_full_runs, tmp_path):
    """The 2-process ZERO3_FULL run SIGKILLed inside the save of checkpoint-4 (DeepSpeed's sharded states written,
    the RNG state and completion marker not), then resumed with `--resume_from_checkpoint true`: it skips the
    half-written checkpoint-4, restarts from checkpoint-2 (DeepSpeed's own layout: `global_step2/` plus the marker)
    and logs steps 3-6 as the unbroken run (the fixture's) did."""
    from rlhf_img.resume import MARKER, checkpoints

    common = [*ZERO3_FULL, "--per_device_train_batch_size", "32"]
    killed = tmp_path / "killed"
    killed_in_zero3_save(killed, 4, *common)
    found = {os.path.basename(path): complete for _, path, complete in checkpoints(str(killed))}
    assert found == {"checkpoint-2": True, "checkpoint-4": False}
    assert (killed / "checkpoint-2" / "global_step2").is_dir() and (killed / "checkpoint-4" / "global_step4").is_dir()
    result = launch("zero3.yaml", 2, killed, *common, "--resume_from_checkpoint", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint-4: incomplete" in result.stderr
    expected, got = history(zero3_full_runs[2]), history(killed)
    assert [entry["step"] for entry in got] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(expected, got, strict=True):  # measured: identical to the last bit on this CPU
        for key in ("reward", "reward_std", "loss", "kl", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-6 * max(abs(a[key]), 1e-6), (a["step"], key, a[key], b[key])
    assert (killed / "checkpoint-4" / MARKER).exists() and (killed / "checkpoint-6" / MARKER).exists()


FAMILY_LORA_RECIPES = {
    "causal_vq": "tiny-random-jpeg.yaml",
    "emu3": "emu3-gen-grpo-geneval-lora.yaml",
    "simplear": "simplear-0.5b-grpo-clip-lora.yaml",
    "janus": "janus-pro-1b-grpo-geneval-lora.yaml",
    "llamagen": "llamagen-xl-grpo-lora.yaml",
    "infinity": "infinity-2b-grpo-clip.yaml",
}
FAMILY_FULL_RECIPES = {  # Emu3 ships no full recipe: its LoRA recipe with `--use_peft false`
    "causal_vq": "tiny-random-jpeg.yaml",
    "emu3": "emu3-gen-grpo-geneval-lora.yaml",
    "simplear": "simplear-0.5b-grpo-clip.yaml",
    "janus": "janus-pro-7b-grpo-geneval.yaml",
    "llamagen": "llamagen-xl-grpo.yaml",
    "infinity": "infinity-2b-grpo-clip-full.yaml",
}
FINAL_EVAL = ["--eval_every", "2", "--eval_max_prompts", "2", "--eval_images_per_prompt", "2", "--eval_seed", "3"]


def prepare_family_run(family: str, recipe: str, root, *extra: str, convert: bool = False):
    """The overrides that run the family's shipped `recipe` on its stand-in (converted to this project's layout
    first where `convert` and the family has a converter) for 2 steps, with the in-loop eval sampling the final
    weights; returns (recipe path, overrides, output folder)."""
    from tiny_models import tiny_clip_recipe_overrides

    from rlhf_img.cli import main
    from rlhf_img.families import FAMILIES

    tiny = FAMILIES[family].stand_in(str(root / "stand-in"))
    checkpoint, family_config = tiny.checkpoint, tiny.load_kwargs.get("family_config")
    if convert and tiny.converter:
        checkpoint = str(root / "converted")
        command = ["convert", tiny.converter, tiny.checkpoint, checkpoint, "--dtype", "float32"]
        assert main(command + (["--family_config", json.dumps(family_config)] if family_config else [])) == 0
        with open(os.path.join(checkpoint, f"{family}.json")) as f:
            family_config = json.load(f)
    overrides, out = tiny_clip_recipe_overrides(str(root))
    overrides += [
        "--model_name_or_path",
        checkpoint,
        "--family_config",
        json.dumps(family_config or {}),
        "--num_generations",
        "4",
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
        *FINAL_EVAL,
        "--eval_prompts",
        str(root / "prompts.txt"),
        *extra,
    ]
    if tiny.load_kwargs.get("visual_tokenizer"):
        overrides += ["--visual_tokenizer", tiny.load_kwargs["visual_tokenizer"]]
    return os.path.join(REPO, "recipes", recipe), overrides, out  # the overrides name the output folder


FULL_FINE_TUNING = ["--use_peft", "false", "--beta", "0.04", "--learning_rate", "1e-4", "--warmup_steps", "0"]
# The order of the runs inside a launch. A launch's runs share its processes, so a module first imported inside
# DeepSpeed's `zero.Init` is imported there only once: Janus goes first, its full fine-tuning (a frozen reference
# built after the policy) before any LoRA run, as that is where a class first defined inside `zero.Init` once broke
# (shared_loading.define_submodel_classes says how).
FAMILY_ORDER = ["janus", *sorted(set(FAMILY_FULL_RECIPES) - {"janus"})]
FAMILY_RUNS = [("full", family, config) for config in ("zero2.yaml", "zero3.yaml") for family in FAMILY_ORDER] + [
    ("lora", family, "zero3.yaml") for family in FAMILY_ORDER
]


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory) -> dict:
    """Every run of FAMILY_RUNS, 2 processes, 2 steps: one `accelerate launch` per ZeRO config running its runs in
    turn (deepspeed_runs.py). Returns {(kind, family, config): (exit code or None, the run's stdout, the launch's
    stderr, recipe, overrides, output folder)}."""
    prepared = {}
    for kind, family, config in FAMILY_RUNS:
        root = tmp_path_factory.mktemp(f"{kind}-{family}-{config.removesuffix('.yaml')}")
        if kind == "lora":
            prepared[kind, family, config] = prepare_family_run(family, FAMILY_LORA_RECIPES[family], root)
        else:  # beta > 0: KL > 0 at step 2 needs an update at step 1
            recipe = FAMILY_FULL_RECIPES[family]
            prepared[kind, family, config] = prepare_family_run(family, recipe, root, *FULL_FINE_TUNING, convert=True)
    runs = {}
    for config in ("zero2.yaml", "zero3.yaml"):
        keys = [key for key in prepared if key[2] == config]
        plan = tmp_path_factory.mktemp("plans") / f"{config}.json"
        plan.write_text(json.dumps([[recipe, *overrides] for recipe, overrides, _ in map(prepared.get, keys)]))
        script = os.path.join(REPO, "tests", "distributed", "deepspeed_runs.py")
        command = accelerate_command(config, 2, script, str(plan))
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ds_env(), cwd=REPO)
        parts = re.split(r"^=== run (\d+) exit (\S+)\n", result.stdout, flags=re.MULTILINE)
        codes = {int(index): (code, stdout) for stdout, index, code in zip(parts[::3], parts[1::3], parts[2::3])}
        for index, key in enumerate(keys):
            code, stdout = codes.get(index, (None, ""))
            runs[key] = (None if code is None else int(code), stdout, result.stderr, *prepared[key])
    return runs


def finished_family_run(family_runs: dict, key: tuple) -> tuple:
    """The run's (recipe, overrides, output folder), once it is known to have exited 0 after training 2 steps."""
    code, stdout, stderr, recipe, overrides, out = family_runs[key]
    assert code == 0, f"{key}: exit {code}\n{stderr[-3000:]}"
    assert "rlhf-img: trained 2 steps" in stdout
    return recipe, overrides, out


def assert_reloads_with_the_same_images(family: str, out: str, recipe: str, overrides: list[str]) -> None:
    """The saved output, loaded as the family in this (single, non-DeepSpeed) process, samples the images the
    trained weights sampled inside the run: the in-loop eval's grid of step 2 (same prompts, seeds, chunking),
    compared on its image tiles (the captions carry rewards) to one uint8 level."""
    import numpy as np
    from PIL import Image

    from rlhf_img.eval.evaluate import generate_images
    from rlhf_img.families import detect_family, load_policy
    from rlhf_img.images import captioned_grid
    from rlhf_img.in_loop_eval import load_eval_prompts
    from rlhf_img.recipes import parse_recipe

    assert detect_family(out) == family
    args = parse_recipe(recipe, overrides)[0]
    rows = load_eval_prompts(args.eval_prompts, args.eval_max_prompts)
    policy = load_policy(out, dtype="float32")
    with torch.no_grad():
        images = generate_images(
            policy,
            rows,
            args.eval_images_per_prompt,
            args.sampling,
            args.eval_seed,
            batch_prompts=max(1, args.per_device_eval_batch_size // args.eval_images_per_prompt),
            progress=False,
        )
    blank = [""] * len(images)
    reloaded = np.asarray(captioned_grid(images, blank, columns=args.eval_images_per_prompt), dtype=np.int16)
    tiles = np.asarray(captioned_grid(torch.zeros_like(images), blank, columns=args.eval_images_per_prompt)) == 0
    logged = np.asarray(Image.open(os.path.join(out, "eval", "step_000002.png")).convert("RGB"), dtype=np.int16)
    assert logged.shape == reloaded.shape and tiles.any()
    assert np.abs(logged - reloaded)[tiles].max() <= 1, family  # measured: identical; SimpleAR 1 level on 0.02%


@pytest.mark.parametrize("family", sorted(FAMILY_LORA_RECIPES))
def test_every_family_trains_its_lora_recipe_under_zero3_and_reloads_with_the_same_images(family, family_runs):
    """The family's shipped LoRA recipe (its own LoRA targets) on its stand-in, ZeRO-3 (every parameter partitioned
    at load, the frozen text encoder and VQ / VAE kept whole), 2 processes, 2 steps; the output (an adapter over
    the stand-in) reloads as the family, merged, and samples the images the run's final weights sampled."""
    recipe, overrides, out = finished_family_run(family_runs, ("lora", family, "zero3.yaml"))
    assert_reloads_with_the_same_images(family, out, recipe, overrides)


@pytest.mark.parametrize("config", ["zero2.yaml", "zero3.yaml"])
@pytest.mark.parametrize("family", sorted(FAMILY_FULL_RECIPES))
def test_every_family_fine_tunes_fully_with_a_kl_reference_and_reloads_with_the_same_images(
    family, config, family_runs
):
    """The family's shipped full-fine-tuning recipe with beta > 0 (TRL builds the frozen reference: sharded too
    under ZeRO-3, whole under ZeRO-2) on its stand-in, converted to this project's layout where the family has a
    converter, 2 processes, 2 steps; the saved model (gathered from its partitions under ZeRO-3,
    `zero3_save_16bit_model`) reloads as the family and samples the images the run's final weights sampled."""
    recipe, overrides, out = finished_family_run(family_runs, ("full", family, config))
    assert all("kl" in entry for entry in history(out)) and any(entry["kl"] > 0 for entry in history(out))
    assert os.path.exists(os.path.join(out, "model.safetensors"))
    assert_reloads_with_the_same_images(family, out, recipe, overrides)
