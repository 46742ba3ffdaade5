"""The `emu3` family's quirks on a tiny random `Emu3ForConditionalGeneration` saved in the released on-disk format (a
transformers Emu3 folder with its processor; `rlhf_img/families/emu3/tiny.py`): detection and loading (BAAI's
remote-code layout refused), BAAI's generation prompt and negative prompt, the grid from the image area and ratio,
CFG on log-probs equal to CFG on logits, log-probs against a float64 forward of the whole token sequence Emu3 writes
(end-of-line tokens included, never scored), the attention dropout and the VQ's BatchNorm in train mode, LoRA kept
off the VQ, and the shipped DPO recipe's header commands. The family contract (samplers, CFG modes, reload, GRPO,
SFT, encode) is the shared suite over the stand-in; parity with transformers' generate is tests/test_emu3_parity.py.
"""

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
    Sampling,
    detect_family,
    load_policy,
)
from rlhf_img.checkpoints import CheckpointError
from rlhf_img.families.emu3.configuration import (
    BAAI_NEGATIVE_PROMPT,
    Emu3FamilyConfig,
    generation_grid,
)
from rlhf_img.families.emu3.tiny import TINY_IMAGE_AREA
from rlhf_img.policy import CFG_MODES

PROMPTS = ["a red apple on a table", "two dogs", "x"]  # different lengths: left padding
TINY = {"image_area": TINY_IMAGE_AREA}
DPO_RECIPE = os.path.join(REPO, "recipes", "emu3-gen-dpo.yaml")
GRPO_RECIPE = os.path.join(REPO, "recipes", "emu3-gen-grpo-geneval-lora.yaml")


@pytest.fixture(scope="module")
def tiny_emu3(tmp_path_factory):
    from rlhf_img.families.emu3.tiny import save_tiny_emu3

    return save_tiny_emu3(str(tmp_path_factory.mktemp("emu3") / "Emu3-Gen-tiny"), seed=0)


@pytest.fixture(scope="module")
def policy(tiny_emu3):
    return load_policy(tiny_emu3, dtype="float32", family_config=TINY)


def test_loads_the_transformers_folder_with_the_text_model_trainable_and_the_vq_frozen(tiny_emu3, policy):
    assert detect_family(tiny_emu3) == "emu3"  # released layout: config.json with model_type "emu3"
    assert type(policy.model).__name__ == "Emu3ForConditionalGeneration"
    assert (policy.grid, policy.num_actions, policy.image_size, policy.code_count) == ((4, 4), 16, (32, 32), 64)
    for name, parameter in policy.model.named_parameters():
        assert parameter.requires_grad == (name.startswith("model.text_model.") or name == "lm_head.weight"), name
    vocabulary = policy.processing_class.tokenizer.get_vocab()
    assert policy.visual_offset == vocabulary["<|visual token000000|>"]
    assert policy.adapter.end_of_line_id == vocabulary["<|extra_200|>"]


def test_prompts_are_baais_generation_prompt_as_the_processor_builds_it(policy):
    """BOS + caption + `<|image start|>` + "h*w" + `<|image token|>`, left-padded; transformers' processor with
    `return_for_image_generation=True` gives the same ids. The negative prompt carries the same image header
    (BAAI's choice), and is one row whatever the prompts."""
    batch = policy.encode_prompts(PROMPTS)
    tokenizer = policy.processing_class.tokenizer
    assert batch.attention_mask[:, -1].all() and not batch.attention_mask[2, 0]  # left padding
    text = tokenizer.decode(batch.input_ids[0][batch.attention_mask[0].bool()])
    assert text == "<|extra_203|>a red apple on a table<|image start|>4*4<|image token|>"
    processed = policy.processing_class(
        text=PROMPTS,
        return_for_image_generation=True,
        image_area=TINY_IMAGE_AREA,
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    assert torch.equal(batch.input_ids, processed.input_ids) and torch.equal(
        batch.attention_mask, processed.attention_mask
    )
    negative = policy.processing_class(
        text=[BAAI_NEGATIVE_PROMPT], return_for_image_generation=True, image_area=TINY_IMAGE_AREA, return_tensors="pt"
    )
    assert list(policy.adapter.unconditional_ids) == negative.input_ids[0].tolist()
    assert tokenizer.decode(policy.adapter.unconditional_ids).endswith("<|image start|>4*4<|image token|>")


def test_image_area_and_ratio_set_the_grid_as_the_processors_do(tiny_emu3, policy):
    assert generation_grid(720 * 720, "1:1", 8) == (90, 90)  # released: 90 * 91 + 3 = 8,193 tokens
    assert generation_grid(512 * 512, "1:1", 8) == (64, 64)  # the GRPO recipe: 64 * 65 + 3
    for area, ratio in ((512 * 512, "16:9"), (720 * 720, "4:3"), (1024, "2:1")):
        processor_grid = policy.processing_class.calculate_generate_size(ratio, area, 8)
        assert generation_grid(area, ratio, 8) == tuple(processor_grid), (area, ratio)
    wide = load_policy(tiny_emu3, dtype="float32", family_config={"image_area": 1024, "ratio": "2:1"})
    assert (wide.grid, wide.num_actions, wide.image_size) == ((3, 6), 18, (24, 48))
    assert wide.decode(torch.zeros(1, 18, dtype=torch.long)).shape == (1, 3, 24, 48)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"image_area": 0}, "image_area"),
        ({"ratio": "square"}, "ratio must be 'width:height'"),
        ({"prompt_template": "no placeholder"}, "prompt_template"),
        ({"attention_dropout": 1.5}, "attention_dropout"),
        ({"decode_batch_size": -1}, "decode_batch_size"),
        ({"image_size": 512}, "unknown emu3 config key"),
    ],
)
def test_bad_family_config_is_refused_in_one_line_naming_the_key(bad, message):
    with pytest.raises(CheckpointError, match=message) as error:
        Emu3FamilyConfig.from_dict(bad, "family_config")
    assert "\n" not in str(error.value) and str(error.value).startswith("family_config")


def test_an_image_too_large_for_the_position_range_is_refused(tiny_emu3):
    with pytest.raises(CheckpointError, match="positions"):  # 9,216 positions, as released: 720x720 is the most
        load_policy(tiny_emu3, dtype="float32", family_config={"image_area": 1024 * 1024})


def test_baais_remote_code_layout_is_refused_with_a_pointer_to_the_converted_repo(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "Emu3", "architectures": ["Emu3ForCausalLM"]}))
    assert detect_family(str(tmp_path)) == "emu3"  # found, so the refusal can say what to use
    with pytest.raises(CheckpointError, match="BAAI/Emu3-Gen-hf") as error:
        load_policy(str(tmp_path))
    assert "\n" not in str(error.value)


def test_cfg_on_log_probs_is_cfg_on_logits_for_the_visual_distribution():
    """transformers' CFG processor (what `generate(guidance_scale=...)` inserts for Emu3) mixes log-softmaxed scores
    over the whole vocabulary, `g * (log_softmax(c) - log_softmax(u)) + log_softmax(u)`, before the prefix constraint
    keeps the visual block; the engine mixes the visual block's logits, `u + g * (c - u)`. Per row the two differ by a
    constant, so after temperature, top-k and softmax over the visual block they are one distribution (float64)."""
    from transformers import UnbatchedClassifierFreeGuidanceLogitsProcessor

    from rlhf_img.sampling.guidance import guide, truncation_mask

    def distribution(guided: torch.Tensor) -> torch.Tensor:  # the shared transform's rule, kept in float64
        scaled = guided / 0.7
        return torch.log_softmax(scaled.masked_fill(~truncation_mask(scaled, 16, 1.0), float("-inf")), -1)

    generator = torch.Generator().manual_seed(0)
    vocab, offset, count, scale = 300, 200, 64, 3.0
    cond, uncond = (torch.randn(4, vocab, generator=generator, dtype=torch.float64) * 3 for _ in range(2))
    processor = UnbatchedClassifierFreeGuidanceLogitsProcessor(scale, model=None)
    processor.get_unconditional_logits = lambda input_ids: uncond[:, None]  # the second forward's logits
    theirs = processor(None, cond)[:, offset : offset + count]  # the prefix constraint keeps the visual block
    ours = guide(cond[:, offset : offset + count], uncond[:, offset : offset + count], scale)
    shift = theirs - ours  # not equal as numbers: they differ by a constant per row
    assert float(shift.abs().min()) > 1.0 and float(shift.std(-1).max()) < 1e-9 * float(shift.abs().max())
    expected, mixed = distribution(theirs), distribution(ours)
    assert torch.equal(expected.isinf(), mixed.isinf())  # the same top-k support
    finite = ~expected.isinf()
    assert_close_scaled(mixed[finite], expected[finite], relative=1e-12)


def direct_logprobs(policy, model, codes, sampling, detach_uncond=False):
    """One unpadded forward per prompt and branch through `Emu3ForConditionalGeneration` itself, no cache: the
    prompt, then the image exactly as Emu3 writes it (`w` visual tokens and end-of-line per row, from transformers'
    own `convert_img2bpe`); full-vocabulary logits at the positions before the visual tokens, the visual block kept
    (the prefix constraint), guidance written out, log-softmax at temperature."""
    mapping = model.vocabulary_mapping
    height, width = policy.grid
    rows = []
    for prompt, row in zip(PROMPTS, codes):
        ids = policy.encode_prompts([prompt]).input_ids  # (1, L): a single prompt has no padding
        image = mapping.convert_img2bpe(row.view(height, width)).flatten().long()  # (h * (w + 1),)
        visual = image != mapping.eol_token_id

        def branch(prompt_ids, image=image, visual=visual):
            logits = model(input_ids=torch.cat([prompt_ids[0], image])[None]).logits[0]  # (L + n, V)
            before = prompt_ids.size(1) - 1 + visual.nonzero().squeeze(1)  # the position predicting each visual token
            return logits[before][:, policy.visual_offset : policy.visual_offset + policy.code_count]

        logits = branch(ids)
        if sampling.cfg_mode in ("guided", "guided_detached_uncond"):
            uncond = branch(policy.unconditional_prompt().input_ids)
            uncond = uncond.detach() if detach_uncond else uncond
            logits = uncond + sampling.cfg_scale * (logits - uncond)
        logp = torch.log_softmax(logits / sampling.temperature, -1)
        rows.append(logp.gather(-1, row[:, None]).squeeze(-1))
    return torch.stack(rows)


@pytest.mark.parametrize("cfg_mode", CFG_MODES)
def test_logprobs_equal_a_float64_forward_of_the_sequence_emu3_writes(policy, cfg_mode):
    sampling = Sampling(cfg_mode=cfg_mode, cfg_scale=3.0, temperature=0.8)
    codes = torch.randint(0, policy.code_count, (len(PROMPTS), 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = policy.logprobs(policy.model, policy.encode_prompts(PROMPTS), codes, sampling)
        expected = direct_logprobs(policy, copy.deepcopy(policy.model).double(), codes, sampling)
    assert expected.dtype == torch.float64
    assert_close_scaled(ours, expected, relative=1e-5)


def test_the_end_of_line_token_is_fed_after_each_row_and_never_drawn(policy):
    """The sampler's KV-cached sequence is Emu3's: a rollout's sampling log-probs are those of the full sequence with
    end-of-line tokens between rows (the float64 forward above), and its actions are visual codes only."""
    sampling = Sampling(cfg_mode="guided", cfg_scale=3.0, temperature=0.8, sampler="static")
    rollout = policy.sample(
        policy.model, policy.encode_prompts(PROMPTS), sampling, generator=torch.Generator().manual_seed(4)
    )
    assert rollout.actions.shape == (len(PROMPTS), 16) and int(rollout.actions.max()) < policy.code_count
    assert [policy.adapter.forced_after(t) for t in range(8)] == [(), (), (), (64,), (), (), (), (64,)]
    with torch.no_grad():
        expected = direct_logprobs(policy, copy.deepcopy(policy.model).double(), rollout.actions, sampling)
    assert_close_scaled(rollout.logprobs, expected, relative=1e-5)
    tokens = policy.image_tokens(rollout.actions)
    assert tokens.shape == (len(PROMPTS), 4 * 5 + 3)
    assert bool((tokens[:, 4:20:5] == policy.adapter.end_of_line_id).all())  # after each row of 4


def test_attention_dropout_is_off_in_train_mode_unless_configured(tiny_emu3, policy):
    """Emu3's released attention dropout (0.1) sits in a float the attention call reads and in the decoder layers'
    `nn.Dropout`; the family sets both to `attention_dropout` (default 0), so train-mode scoring is eval-mode's."""
    batch, codes = policy.encode_prompts(PROMPTS), torch.randint(0, 64, (len(PROMPTS), 16))
    sampling = Sampling(cfg_mode="none")
    with torch.no_grad():
        evaluated = policy.logprobs(policy.model.eval(), batch, codes, sampling)[0]
        trained = policy.logprobs(policy.model.train(), batch, codes, sampling)[0]
        policy.model.eval()
    assert torch.equal(evaluated, trained) and policy.model.config.text_config.attention_dropout == 0.0
    dropping = load_policy(tiny_emu3, dtype="float32", family_config={**TINY, "attention_dropout": 0.1})
    with torch.no_grad():
        noisy = dropping.logprobs(dropping.model.train(), batch, codes, sampling)[0]
    assert float((noisy - evaluated).abs().max()) > 1e-3


def test_decoding_in_train_mode_neither_changes_the_vq_nor_depends_on_the_batch(policy):
    """The VQ's temporal res blocks hold BatchNorm3d layers: decoding keeps it in eval mode whatever a trainer set."""
    codes = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(5))
    expected = policy.decode(codes)
    buffers = {name: value.clone() for name, value in policy.model.model.vqmodel.named_buffers()}
    policy.model.train()
    try:
        again, alone = policy.decode(codes), policy.decode(codes[:1])
        assert policy.model.model.vqmodel.training  # the mode it was given is restored
    finally:
        policy.model.eval()
    assert torch.equal(again, expected) and torch.equal(alone, expected[:1])
    assert all(torch.equal(value, buffers[name]) for name, value in policy.model.model.vqmodel.named_buffers())


def test_lora_on_the_vq_is_refused(tiny_emu3, tmp_path):
    from datasets import Dataset
    from trl import get_peft_config

    policy = load_policy(tiny_emu3, dtype="float32", family_config=TINY)
    lora = get_peft_config(ImageModelConfig(use_peft=True, lora_target_modules="all-linear", lora_r=4))
    args = grpo_args(
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=4,
        rewards=[{"name": "jpeg_compressibility"}],
    )
    with pytest.raises(ValueError, match="outside the text model"):
        ImageGRPOTrainer(policy, args, Dataset.from_dict({"prompt": ["a cat"] * 4}), peft_config=lora)


@pytest.mark.parametrize("recipe", [GRPO_RECIPE, DPO_RECIPE], ids=["grpo", "dpo"])
def test_recipes_target_every_text_model_linear_of_emu3_gen_and_nothing_else(recipe):
    """Built on the meta device with Emu3-Gen's shapes (32 layers, width 4096, GQA 8, the released VQ): the recipe's
    names match exactly the text model's linear layers (224), by peft's own matching rule; none of the VQ's."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from transformers import Emu3Config, Emu3ForConditionalGeneration

    with open(recipe) as f:
        targets = yaml.safe_load(f)["lora_target_modules"]
    config = Emu3Config(text_config={}, vq_config={}, vocabulary_map={"<|extra_200|>": 151846, "<image>": 151851})
    with torch.device("meta"):
        model = Emu3ForConditionalGeneration(config)
    lora = LoraConfig(target_modules=targets)
    targeted = {name for name, _ in model.named_modules() if check_target_module_exists(lora, name)}
    linears = {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith("model.text_model.")
    }
    assert targeted == linears and len(linears) == 32 * 7


@pytest.mark.slow  # two real commands on the stand-in: `dpo pairs`, then `dpo` (~10 s on 2 cores)
def test_the_dpo_recipes_header_commands_run_on_the_stand_in(tiny_emu3, tmp_path):
    """The header's two commands as written (pairs from the model's own samples ranked by a reward, then offline DPO
    on their codes), pointed at the stand-in, with a tiny CLIP reward for GenEval's detector and CPU sizes."""
    from tiny_models import tiny_clip_recipe_overrides

    from rlhf_img.upstream.dpo import main

    clip, _ = tiny_clip_recipe_overrides(str(tmp_path / "clip"))
    rewards, prompts = clip[clip.index("--rewards") + 1], clip[clip.index("--dataset") + 1]
    model = [
        "--model_name_or_path",
        tiny_emu3,
        "--family_config",
        json.dumps(TINY),
        "--dtype",
        "float32",
        "--bf16",
        "false",
        "--use_cpu",
        "true",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    ]
    pairs = tmp_path / "pairs"
    assert (
        main(
            [
                "pairs",
                DPO_RECIPE,
                *model,
                "--dataset",
                prompts,
                "--rewards",
                rewards,
                "--num_generations",
                "4",
                "--cfg_mode",
                "sample_only",
                "--cfg_scale",
                "3.0",
                "--top_k",
                "2048",
                "--output_dir",
                str(pairs),
                "--per_device_train_batch_size",
                "2",
            ]
        )
        == 0
    )
    with open(pairs / "pairs.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert rows and all(len(row["chosen_actions"]) == 16 for row in rows)
    out = tmp_path / "dpo"
    assert (
        main(
            [
                DPO_RECIPE,
                *model,
                "--dataset",
                str(pairs / "pairs.jsonl"),
                "--max_steps",
                "2",
                "--per_device_train_batch_size",
                "2",
                "--gradient_accumulation_steps",
                "1",
                "--save_strategy",
                "no",
                "--output_dir",
                str(out),
            ]
        )
        == 0
    )
    with open(out / "trainer_state.json") as f:
        history = json.load(f)["log_history"]
    assert [entry["step"] for entry in history if "rewards/margins" in entry] == [1, 2]
    assert detect_family(str(out)) == "emu3" and load_policy(str(out), dtype="float32").num_actions == 16
