"""`rlhf-img eval`: the policy lands on the requested device and dtype, the family config reaches the loader,
and the sampling flags are the training config's."""

import pytest
import torch


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
    assert main(["eval", tiny_checkpoint, "--device", "meta", "--dtype", "bfloat16", "--family_config", "{grid: [2, 2]}",
                 "--cfg_mode", "guided", "--cfg_scale", "6", "--top_p", "0.9", "--seed", "7", "--images_per_prompt", "3",
                 "--prompts", "shapes-train", "--sampler", "static"]) == 0
    policy = seen["policy"]
    assert next(policy.model.parameters()).device.type == "meta"
    assert next(policy.model.parameters()).dtype == torch.bfloat16
    assert next(policy.visual_tokenizer.parameters()).device.type == "meta"
    assert policy.config.grid == (2, 2)
    assert (seen["sampling"].cfg_mode, seen["sampling"].cfg_scale, seen["sampling"].top_p) == ("guided", 6.0, 0.9)
    assert seen["sampling"].sampler == "static"
    assert (seen["seed"], seen["images_per_prompt"]) == (7, 3) and len(seen["rows"]) > 100


def test_eval_sampling_flags_are_the_training_config_fields(capsys):
    import dataclasses

    from rlhf_img.cli import eval_parser
    from rlhf_img.config import ImageGRPOConfig, SamplingOptions

    actions = {action.dest: action for action in eval_parser()._actions}
    training = {field.name: field for field in dataclasses.fields(ImageGRPOConfig)}
    for field in dataclasses.fields(SamplingOptions):
        assert actions[field.name].help == field.metadata["help"] == training[field.name].metadata["help"]
        assert actions[field.name].default == training[field.name].default


@pytest.mark.parametrize("argv, message", [
    (["--images_per_prompt", "1"], "give a checkpoint"),
    (["CKPT", "--images", "somewhere"], "not both"),
    (["CKPT", "--prompts", "missing.jsonl"], "GenEval metadata not found: missing.jsonl"),
    (["CKPT", "--family_config", "[1, 2]"], "--family_config must be a mapping"),
])
def test_eval_bad_input_exits_2_with_one_line(argv, message, tiny_checkpoint, capsys):
    from rlhf_img.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["eval", *[tiny_checkpoint if a == "CKPT" else a for a in argv]])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1
