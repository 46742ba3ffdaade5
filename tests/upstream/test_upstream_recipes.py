"""The shipped upstream recipes (`recipes/encode/*.yaml`, and the SFT / pretraining recipes that train on their
output) on each family's tiny stand-in, through the command line in this process.

Each encode recipe runs as a user would run it, with only what a CPU and a stand-in need overridden (the
checkpoint and its visual tokenizer / family_config, float32, small shards and batches, a folder of rendered shapes
images); each SFT recipe then trains 2 steps on the folder its encode recipe wrote, keeping the recipe's own
LoRA / full, from_scratch, caption-dropout, optimiser and checkpointing choices, and its output must load back,
found by `detect_family`, as the recipe's family. What the stand-ins cannot check: anything at the real
checkpoints' size, on GPUs, or the published numbers (the recipes' headers say what is untested).
"""

from __future__ import annotations

import glob
import json
import math
import os
import runpy

import pytest
import yaml
from conftest import REPO

from .encode_helpers import render_pairs, write_image_folder

RECIPES = os.path.join(REPO, "recipes")
NUM_IMAGES = 4  # 2 shards of 2; 2 SFT steps of 2 rows

# encode recipe -> (family, the SFT / pretraining recipes that train on its output)
PIPELINES = {
    "encode/simplear-512.yaml": ("simplear", ["simplear-0.5b-pretrain-512.yaml"]),
    "encode/simplear-1024.yaml": ("simplear", ["simplear-0.5b-sft-1024.yaml"]),
    "encode/janus-pro-384.yaml": ("janus", ["janus-pro-1b-sft.yaml", "janus-pro-7b-sft.yaml"]),
    "encode/llamagen-256.yaml": ("llamagen", ["llamagen-xl-pretrain-256.yaml"]),
    "encode/infinity-1024.yaml": ("infinity", ["infinity-2b-sft.yaml"]),
}
SFT_RECIPES = {sft: encode for encode, (_, sfts) in PIPELINES.items() for sft in sfts}
# an SFT recipe whose dataset is its encode recipe run with another checkpoint: the output_dir its header names
ENCODED_ELSEWHERE = {"janus-pro-7b-sft.yaml": "--model_name_or_path deepseek-community/Janus-Pro-7B"}


def read_recipe(name: str) -> dict:
    with open(os.path.join(RECIPES, name)) as f:
        return yaml.safe_load(f)


def run_cli(argv: list[str]) -> int:
    """`rlhf-img ARGV` in this process: its exit code (a usage error exits through SystemExit)."""
    from rlhf_img.cli import main

    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1


# ------------------------------------------------------------------------------------------- the recipes agree


def test_every_upstream_recipe_in_recipes_is_run_here():
    encode = {os.path.relpath(path, RECIPES) for path in glob.glob(os.path.join(RECIPES, "encode", "*.yaml"))}
    training = {
        os.path.basename(path)
        for pattern in ("*-sft*.yaml", "*-pretrain-*.yaml")
        for path in glob.glob(os.path.join(RECIPES, pattern))
    }
    training -= {"shapes-sft.yaml"}  # the shapes world's own SFT (no checkpoint, no encode step)
    assert encode == set(PIPELINES)
    assert training == set(SFT_RECIPES)


@pytest.mark.parametrize("sft_recipe", sorted(SFT_RECIPES))
def test_each_sft_recipe_reads_what_its_encode_recipe_writes_for_the_same_family_and_image_size(sft_recipe):
    encode_recipe = SFT_RECIPES[sft_recipe]
    encode, sft = read_recipe(encode_recipe), read_recipe(sft_recipe)
    family = PIPELINES[encode_recipe][0]
    assert encode["model_family"] == sft["model_family"] == family
    if sft_recipe in ENCODED_ELSEWHERE:  # the header names the encode command that writes its dataset
        with open(os.path.join(RECIPES, sft_recipe)) as f:
            header = f.read()
        assert ENCODED_ELSEWHERE[sft_recipe] in header and f"--output_dir {sft['dataset']}" in header
    else:
        assert sft["dataset"] == encode["output_dir"]
    shared = set(encode.get("family_config") or {}) & set(sft.get("family_config") or {})
    assert {key: encode["family_config"][key] for key in shared} == {key: sft["family_config"][key] for key in shared}


# ------------------------------------------------------------------------------------- the recipes run (stand-ins)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("pairs")
    write_image_folder(folder, render_pairs(NUM_IMAGES, seed=3))
    return str(folder)


@pytest.fixture(scope="module")
def stand_in_overrides(tmp_path_factory):
    """family -> the command-line overrides that point a recipe at the family's stand-in (built once a module)."""
    from rlhf_img.families import FAMILIES

    built: dict[str, list[str]] = {}

    def overrides(family: str) -> list[str]:
        if family not in built:
            tiny = FAMILIES[family].stand_in(str(tmp_path_factory.mktemp(f"{family}-stand-in")))
            flags = ["--model_name_or_path", tiny.checkpoint, "--dtype", "float32"]
            if tiny.load_kwargs.get("visual_tokenizer"):
                flags += ["--visual_tokenizer", tiny.load_kwargs["visual_tokenizer"]]
            if tiny.load_kwargs.get("family_config"):
                flags += ["--family_config", json.dumps(tiny.load_kwargs["family_config"])]
            built[family] = flags
        return built[family]

    return overrides


@pytest.fixture(scope="module")
def encoded(stand_in_overrides, image_folder, tmp_path_factory):
    """encode recipe -> (exit code, output folder) of `rlhf-img encode RECIPE` on the stand-in (run once a module)."""
    runs: dict[str, tuple[int, str]] = {}

    def encode(recipe: str) -> tuple[int, str]:
        if recipe not in runs:
            output_dir = str(tmp_path_factory.mktemp("encoded") / "out")
            code = run_cli(
                [
                    "encode",
                    os.path.join(RECIPES, recipe),
                    *stand_in_overrides(PIPELINES[recipe][0]),
                    "--dataset",
                    image_folder,
                    "--output_dir",
                    output_dir,
                    "--shard_size",
                    "2",
                    "--batch_size",
                    "2",
                    "--num_workers",
                    "0",
                    "--use_cpu",
                    "true",
                ]
            )
            runs[recipe] = (code, output_dir)
        return runs[recipe]

    return encode


@pytest.mark.slow  # real commands on stand-ins: all of this file's runs take ~1 min on 2 cores
@pytest.mark.parametrize("encode_recipe", sorted(PIPELINES))
def test_encode_recipe_encodes_every_image_on_the_family_stand_in(encode_recipe, encoded):
    from rlhf_img.upstream.shards import EncodedInfo, open_encoded

    code, output_dir = encoded(encode_recipe)
    assert code == 0
    info = EncodedInfo.read(output_dir)
    assert info.family == PIPELINES[encode_recipe][0]
    assert (info.num_encoded, info.num_skipped) == (NUM_IMAGES, 0)
    dataset = open_encoded(output_dir)
    assert len(dataset) == NUM_IMAGES and all(len(actions) == info.num_actions for actions in dataset["actions"])


@pytest.mark.slow
@pytest.mark.parametrize("sft_recipe", sorted(SFT_RECIPES))
def test_sft_recipe_trains_two_steps_and_its_output_loads_as_the_family(
    sft_recipe, encoded, stand_in_overrides, tmp_path
):
    from rlhf_img.families import detect_family, load_policy
    from rlhf_img.upstream.shards import EncodedInfo

    encode_recipe = SFT_RECIPES[sft_recipe]
    family = PIPELINES[encode_recipe][0]
    code, dataset = encoded(encode_recipe)
    assert code == 0, f"{encode_recipe} did not encode"
    output_dir = str(tmp_path / "out")
    code = run_cli(
        [
            "sft",
            os.path.join(RECIPES, sft_recipe),
            *stand_in_overrides(family),
            "--dataset",
            dataset,
            "--output_dir",
            output_dir,
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--gradient_accumulation_steps",
            "1",
            "--bf16",
            "false",
            "--use_cpu",
            "true",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--dataloader_num_workers",
            "0",
            "--disable_tqdm",
            "true",
        ]
    )
    assert code == 0
    with open(os.path.join(output_dir, "trainer_state.json")) as f:
        state = json.load(f)
    assert state["global_step"] == 2
    assert math.isfinite(state["log_history"][-1]["train_loss"])
    lora = os.path.exists(os.path.join(output_dir, "adapter_config.json"))
    assert lora == bool(read_recipe(sft_recipe).get("use_peft", False))  # the recipe's own LoRA / full choice
    assert detect_family(output_dir) == family
    policy = load_policy(output_dir)
    assert (policy.num_actions, list(policy.image_size)) == (
        EncodedInfo.read(dataset).num_actions,
        EncodedInfo.read(dataset).image_size,
    )


# ---------------------------------------------------------------------------- SimpleAR's starting point (header)


def test_the_lines_in_the_simplear_pretraining_header_make_an_initial_folder_the_family_loads(
    tmp_path, stand_in_overrides
):
    """The header's lines that turn Qwen2.5-0.5B-Instruct into SimpleAR's starting point, run as written on a tiny
    Qwen2 folder (its path swapped in): the result is found and loaded as `simplear`, with SimpleAR's special tokens
    and 64,000 code rows, every new row (input and output) the mean of the old ones, as SimpleAR's train.py does."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from rlhf_img.families import detect_family, load_policy
    from rlhf_img.families.causal_vq.tiny import byte_level_tokenizer
    from rlhf_img.families.simplear.loading import COSMOS_CODES, SPECIAL_TOKENS

    recipe = os.path.join(RECIPES, "simplear-0.5b-pretrain-512.yaml")
    with open(recipe) as f:
        lines = f.read().splitlines()
    start = lines.index("#   python - <<'PY'")
    code = "\n".join(line[len("#   ") :] for line in lines[start + 1 : lines.index("#   PY")])
    plain, initial = str(tmp_path / "qwen"), str(tmp_path / "init")
    tokenizer = byte_level_tokenizer()
    Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tokenizer) + 8,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            tie_word_embeddings=True,
        )
    ).save_pretrained(plain)
    tokenizer.save_pretrained(plain)
    script = tmp_path / "make_init.py"
    script.write_text(code.replace("Qwen/Qwen2.5-0.5B-Instruct", plain).replace("runs/simplear-0.5b-init", initial))
    runpy.run_path(str(script))
    flags = stand_in_overrides("simplear")
    assert detect_family(initial) == "simplear"
    policy = load_policy(
        initial,
        visual_tokenizer=flags[flags.index("--visual_tokenizer") + 1],
        family_config={"resolution": 32},
        dtype="float32",
    )
    text_rows = len(AutoTokenizer.from_pretrained(plain))  # the rows the lines keep
    extended = AutoTokenizer.from_pretrained(initial)
    assert all(token in extended.get_vocab() for token in SPECIAL_TOKENS)
    assert policy.config.image_code_offset == len(extended)  # code c is token len(tokenizer) + c, as in SimpleAR
    for weight in (policy.model.get_input_embeddings().weight, policy.model.get_output_embeddings().weight):
        assert weight.shape[0] == len(extended) + COSMOS_CODES
        torch.testing.assert_close(
            weight[text_rows:], weight[:text_rows].mean(0).expand_as(weight[text_rows:]), rtol=0, atol=1e-2
        )  # bfloat16 weights
