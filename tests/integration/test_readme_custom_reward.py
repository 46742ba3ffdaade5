"""README's "Writing a custom reward" example works verbatim: its files, written as shown, train."""

import os
import re

from conftest import REPO


def _block(readme: str, first_line: str, language: str) -> str:
    match = re.search(rf"```{language}\n({re.escape(first_line)}\n.*?)```", readme, re.S)
    assert match, f"README has no {language} block starting with {first_line!r}"
    return match.group(1)


def test_readme_custom_reward_example_trains_verbatim(tmp_path, monkeypatch):
    from rlhf_img.cli import main

    readme = open(os.path.join(REPO, "README.md")).read()
    section = readme[readme.index("### Writing a custom reward"):]
    (tmp_path / "my_rewards.py").write_text(_block(section, "# my_rewards.py", "python"))
    (tmp_path / "my-recipe.yaml").write_text(_block(section, "# my-recipe.yaml", "yaml"))
    assert _block(section, "rlhf-img train my-recipe.yaml", "bash").strip() == "rlhf-img train my-recipe.yaml"
    for shipped in ("checkpoints", "recipes"):  # the example runs from the repository root
        os.symlink(os.path.join(REPO, shipped), tmp_path / shipped)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "my-recipe.yaml", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"]) == 0
    assert os.path.isfile(tmp_path / "runs" / "my-first-reward" / "adapter_model.safetensors")
    import json

    history = json.load(open(tmp_path / "runs" / "my-first-reward" / "trainer_state.json"))["log_history"]
    logged = {key for entry in history for key in entry}
    assert {"rewards/my_rewards.py:redness/mean", "rewards/my_rewards.py:Contrast/mean"} <= logged
