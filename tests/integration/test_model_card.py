"""Every output folder gets a Hugging Face model card (rlhf_img/model_card.py): valid metadata, a body naming the
base model, family, rewards, steps and hardware, the in-loop eval table and the last sample grid; `push_to_hub`
uploads that card, never transformers' or TRL's text-model card. The hub is never reached: its two calls are
replaced by recorders."""

import os
from unittest import mock

import pytest
from conftest import write_recipe
from huggingface_hub import HfApi, ModelCard

from rlhf_img.cli import main
from rlhf_img.model_card import eval_table, is_hub_id, redact, redact_overrides


def _recipe(tmp_path, checkpoint, **keys) -> str:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"prompt {i}" for i in range(8)) + "\n")
    return write_recipe(
        tmp_path / "recipe.yaml",
        model_name_or_path=checkpoint,
        model_family="causal_vq",
        use_peft=True,
        lora_target_modules=["all-linear"],
        dataset=str(prompts),
        rewards=[{"name": "jpeg_compressibility", "weight": 0.5}],
        num_generations=4,
        per_device_train_batch_size=8,
        max_steps=2,
        learning_rate=1e-3,
        use_cpu=True,
        seed=0,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        output_dir=str(tmp_path / "out"),
        **keys,
    )


@pytest.mark.timeout(180)
def test_a_train_run_writes_a_model_card_with_metadata_rewards_steps_eval_and_samples(tmp_path, tiny_checkpoint):
    recipe = _recipe(
        tmp_path,
        tiny_checkpoint,
        eval_every=1,
        eval_prompts="shapes-held-out",
        eval_max_prompts=2,
        eval_images_per_prompt=2,
    )
    assert main(["train", recipe, "--hub_token", "hf_secret", "--logging_steps", "1"]) == 0
    out = tmp_path / "out"
    card = ModelCard.load(out / "README.md")  # parses the YAML metadata as the Hub does
    assert card.data.pipeline_tag == "text-to-image" and card.data.library_name == "rlhf-img"
    assert {"rlhf-img", "text-to-image", "grpo", "causal_vq", "lora"} <= set(card.data.tags)
    assert card.data.license == "unknown" and card.data.base_model is None  # a local base: no hub id to name
    assert f"`{tiny_checkpoint}`" in card.text and "`causal_vq`" in card.text
    assert "| `jpeg_compressibility` | 0.5 | no |" in card.text
    assert "| steps | 2 of max_steps 2 |" in card.text and "1 process on cpu, fp32" in card.text
    assert "## Held-out evaluation" in card.text and "| step | reward | jpeg_compressibility |" in card.text
    assert "geneval/overall" in card.text
    assert "![sample](eval/step_000002.png)" in card.text and (out / "eval" / "step_000002.png").is_file()
    assert f"rlhf-img train {recipe} --hub_token <redacted> --logging_steps 1" in card.text
    assert "hf_secret" not in card.text


@pytest.mark.timeout(180)
def test_push_to_hub_uploads_the_folder_with_rlhf_imgs_card_and_the_trainer_state(tmp_path, tiny_checkpoint):
    uploads = []

    def create_repo(self, repo_id, **kwargs):
        return mock.Mock(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, **kwargs):
        files = sorted(os.listdir(folder_path))
        uploads.append((repo_id, files, open(os.path.join(folder_path, "README.md")).read()))

    recipe = _recipe(tmp_path, tiny_checkpoint, push_to_hub=True, hub_model_id="someone/tiny-grpo")
    with mock.patch.object(HfApi, "create_repo", create_repo), mock.patch.object(HfApi, "upload_folder", upload_folder):
        assert main(["train", recipe]) == 0
    assert len(uploads) == 1
    repo_id, files, readme = uploads[0]
    assert repo_id == "someone/tiny-grpo"
    assert {"README.md", "adapter_model.safetensors", "causal_vq.json", "trainer_state.json"} <= set(files)
    card = ModelCard(readme)
    assert {"rlhf-img", "grpo", "trl"} <= set(card.data.tags) and card.data.model_name == "tiny-grpo"
    assert "| `jpeg_compressibility` | 0.5 | no |" in card.text
    assert readme == (tmp_path / "out" / "README.md").read_text()  # the card on disk is the one uploaded


def test_secret_looking_keys_are_redacted_in_the_recipe_and_the_overrides():
    assert redact({"hub_token": "x", "rewards": [{"kwargs": {"api_key": "y", "url": "u"}}]}) == {
        "hub_token": "<redacted>",
        "rewards": [{"kwargs": {"api_key": "<redacted>", "url": "u"}}],
    }
    assert redact_overrides(["--hub_token", "x", "--max_steps", "2", "--judge_api_key=y"]) == (
        "--hub_token",
        "<redacted>",
        "--max_steps",
        "2",
        "--judge_api_key=<redacted>",
    )


def test_only_hub_ids_reach_the_metadata(tmp_path):
    assert is_hub_id("Alpha-VLLM/Lumina-mGPT") and is_hub_id("gpt2")
    assert not is_hub_id(str(tmp_path)) and not is_hub_id("./ckpt") and not is_hub_id("prompts/simple-objects.txt")


def test_the_eval_table_keeps_the_first_and_last_of_many_evals():
    history = [{"step": step, "eval_reward": step / 100, "eval_rewards/a/mean": 0.5} for step in range(0, 100, 5)]
    lines = eval_table(history)
    assert lines[0] == "| step | reward | a |" and len(lines) == 2 + 12
    assert lines[2].startswith("| 0 |") and lines[-1].startswith("| 95 |")
    assert eval_table([{"step": 1, "loss": 0.3}]) == []
