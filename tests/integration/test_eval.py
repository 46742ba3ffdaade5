"""`rlhf-img eval`: the policy lands on the requested device and dtype, the family config reaches the loader,
the options are `EvalConfig`'s (an eval file or flags, one parser), and the family and sampling options are the
training recipe's own fields."""

import dataclasses
import re

import pytest
import torch
import trl
import yaml


def test_load_for_eval_puts_model_and_visual_tokenizer_on_the_device_in_the_dtype(tiny_checkpoint):
    from rlhf_img.eval import load_for_eval

    policy = load_for_eval(tiny_checkpoint, device="meta", dtype="bfloat16", family_config={"grid": [2, 2]})
    parameters = list(policy.model.parameters())
    assert {p.device.type for p in parameters} == {"meta"} and {p.dtype for p in parameters} == {torch.bfloat16}
    assert {p.device.type for p in policy.visual_tokenizer.parameters()} == {"meta"}
    assert policy.config.grid == (2, 2) and not policy.model.training


def test_eval_command_passes_device_dtype_family_config_and_sampling(tiny_checkpoint, tmp_path, monkeypatch):
    import rlhf_img.eval.run as run
    from rlhf_img.cli import main

    seen = {}

    def capture(policy, rows, scorer, images_per_prompt, sampling, seed, **kwargs):
        seen.update(policy=policy, rows=rows, sampling=sampling, seed=seed, images_per_prompt=images_per_prompt)
        return {"overall": 0.0}, [], None

    monkeypatch.setattr(run, "evaluate_policy", capture)
    assert (
        main(
            [
                "eval",
                tiny_checkpoint,
                "--device",
                "meta",
                "--dtype",
                "bfloat16",
                "--family_config",
                "{grid: [2, 2]}",
                "--cfg_mode",
                "guided",
                "--cfg_scale",
                "6",
                "--top_p",
                "0.9",
                "--seed",
                "7",
                "--images_per_prompt",
                "3",
                "--prompts",
                "shapes-train",
                "--sampler",
                "static",
            ]
        )
        == 0
    )
    policy = seen["policy"]
    assert next(policy.model.parameters()).device.type == "meta"
    assert next(policy.model.parameters()).dtype == torch.bfloat16
    assert next(policy.visual_tokenizer.parameters()).device.type == "meta"
    assert policy.config.grid == (2, 2)
    assert (seen["sampling"].cfg_mode, seen["sampling"].cfg_scale, seen["sampling"].top_p) == ("guided", 6.0, 0.9)
    assert seen["sampling"].sampler == "static"
    assert (seen["seed"], seen["images_per_prompt"]) == (7, 3) and len(seen["rows"]) > 100


def test_eval_sampling_and_family_flags_are_the_training_recipe_keys():
    """The flags `rlhf-img eval` and `rlhf-img train` build from SamplingOptions / FamilyOptions are one and the same
    (names, help, defaults, choices, types), and the training config still declares them through those classes."""
    from rlhf_img.cli import eval_parser
    from rlhf_img.config import (
        FamilyOptions,
        ImageGRPOConfig,
        ImageModelConfig,
        SamplingOptions,
    )
    from rlhf_img.recipes import recipe_parser

    evaluation = {action.dest: action for action in eval_parser()._actions}
    training = {action.dest: action for action in recipe_parser()._actions}
    assert issubclass(ImageGRPOConfig, SamplingOptions) and issubclass(ImageModelConfig, FamilyOptions)
    shared = [field.name for cls in (SamplingOptions, FamilyOptions) for field in dataclasses.fields(cls)]
    for name in shared:
        ours, theirs = evaluation[name], training[name]
        assert (ours.option_strings, ours.help, ours.default, ours.choices, ours.type) == (
            theirs.option_strings,
            theirs.help,
            theirs.default,
            theirs.choices,
            theirs.type,
        ), name


def test_eval_help_lists_every_family_and_sampling_field_with_its_help(capsys, monkeypatch):
    """A field added to ImageModelConfig (beyond TRL's ModelConfig) or to SamplingOptions shows up in
    `rlhf-img eval --help`, or this fails: eval cannot fall behind the recipe keys."""
    from rlhf_img.cli import main
    from rlhf_img.config import EvalConfig, ImageModelConfig, SamplingOptions

    monkeypatch.setenv("COLUMNS", "100000")  # one line per option: the help text is not wrapped
    assert main(["eval", "--help"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    trl_fields = {field.name for field in dataclasses.fields(trl.ModelConfig)}
    ours = [field for field in dataclasses.fields(ImageModelConfig) if field.name not in trl_fields]
    assert {field.name for field in ours} >= {"model_family", "visual_tokenizer", "family_config"}
    for field in [*ours, *dataclasses.fields(SamplingOptions), *dataclasses.fields(EvalConfig)]:
        assert re.search(rf"--{field.name}\b", printed), field.name  # `--images` is not `--images_per_prompt`
        assert " ".join(field.metadata["help"].split()) in printed, field.name


def test_an_eval_file_and_the_same_flags_give_the_same_config(tmp_path, tiny_checkpoint):
    from rlhf_img.cli import parse_eval_config

    keys = {
        "checkpoint": tiny_checkpoint,
        "prompts": "shapes-train",
        "family_config": {"grid": [2, 2]},
        "cfg_mode": "guided",
        "cfg_scale": 6,
        "top_k": 5,
        "top_p": 0.9,
        "sampler": "static",
        "dtype": "bfloat16",
        "device": "cpu",
        "images_per_prompt": 3,
        "seed": 7,
        "batch_prompts": 2,
        "detector": "mask2former",
        "clip_model": "ViT-B-32",
        "batch_size": 4,
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(keys))
    flags = [token for key, value in keys.items() if key != "family_config" for token in (f"--{key}", str(value))]
    flags += ["--family_config", '{"grid": [2, 2]}']
    from_file = parse_eval_config([str(path)])
    assert from_file == parse_eval_config(flags)
    assert from_file.family_config == {"grid": [2, 2]} and from_file.cfg_scale == 6.0 and from_file.top_k == 5
    # the positional checkpoint, after the file or alone, is the same key; a flag overrides the file
    path.write_text(yaml.safe_dump({key: value for key, value in keys.items() if key != "checkpoint"}))
    assert parse_eval_config([str(path), tiny_checkpoint]) == from_file
    assert parse_eval_config([tiny_checkpoint, *flags[2:]]) == from_file
    assert parse_eval_config([str(path), tiny_checkpoint, "--seed", "8"]) == dataclasses.replace(from_file, seed=8)


def test_an_eval_file_names_its_inputs_relative_to_itself(tmp_path, monkeypatch):
    from rlhf_img.cli import parse_eval_config

    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "metadata.jsonl").write_text("")
    (tmp_path / "files" / "eval.yaml").write_text("images: generated\nprompts: metadata.jsonl\noutput_dir: out\n")
    (tmp_path / "files" / "generated").mkdir()
    monkeypatch.chdir(tmp_path)
    config = parse_eval_config(["files/eval.yaml"])
    assert config.prompts == str(tmp_path / "files" / "metadata.jsonl")
    assert config.images == str(tmp_path / "files" / "generated") and config.output_dir == "out"  # outputs stay here


def test_the_geneval_alias_applies_geneval_defaults_and_flags_override_them():
    from rlhf_img.cli import parse_eval_config
    from rlhf_img.config import GENEVAL_DEFAULTS, EvalConfig

    config = parse_eval_config(["geneval", "--checkpoint", "c", "--metadata", "m.jsonl"])
    assert (config.detector, config.images_per_prompt, config.cfg_mode, config.prompts) == (
        "mask2former",
        4,
        "guided",
        "m.jsonl",
    )
    assert parse_eval_config(["geneval", "c", "--cfg_mode", "none"]).cfg_mode == "none"
    assert parse_eval_config(["geneval", "c"]).prompts is None  # GenEval needs its metadata file: an error says so
    assert parse_eval_config(["c"]) == EvalConfig(checkpoint="c")
    assert all(getattr(EvalConfig(), key) != value for key, value in GENEVAL_DEFAULTS.items())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--images_per_prompt", "1"], "give a checkpoint"),
        (["CKPT", "--images", "somewhere"], "not both"),
        (["CKPT", "--prompts", "missing.jsonl"], "GenEval metadata not found: missing.jsonl"),
        (["CKPT", "--family_config", "[1, 2]"], "family_config must be a mapping"),
        (["CKPT", "--images_per_prompt", "0"], "images_per_prompt must be >= 1, got 0"),
        (["CKPT", "--detector", "yolo"], "--detector: invalid choice: 'yolo'"),
        (["CKPT", "--checkpoint", "elsewhere"], "checkpoint given twice"),
        (["CKPT", "--no_such_flag", "1"], "unknown option(s) ['--no_such_flag', '1']"),
        (["FILE:{prompts: shapes-train, colour: red}"], "unknown recipe key 'colour'"),
        (["FILE:{images_per_prompt: many}"], "recipe key 'images_per_prompt'"),
        (["FILE:{cfg_mode: loud}"], "recipe key 'cfg_mode'"),
        (["FILE:[1, 2]"], "must be a YAML mapping"),
        (["missing.yaml"], "not found: missing.yaml"),
    ],
)
def test_eval_bad_input_exits_2_with_one_line(argv, message, tiny_checkpoint, tmp_path, capsys):
    from rlhf_img.cli import main

    def argument(token: str) -> str:  # CKPT: the tiny checkpoint; FILE:<yaml>: an eval file holding <yaml>
        if token.startswith("FILE:"):
            (tmp_path / "eval.yaml").write_text(token[5:])
            return str(tmp_path / "eval.yaml")
        return tiny_checkpoint if token == "CKPT" else token

    with pytest.raises(SystemExit) as exit_info:
        main(["eval", *map(argument, argv)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1
