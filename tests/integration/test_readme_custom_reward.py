"""README's "Writing a custom reward" example works verbatim: its files, written as shown, train. The docs show the
same section (docs/rewards.md includes it from the README between its `custom-reward` markers)."""

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
    start, end = readme.index("--8<-- [start:custom-reward]"), readme.index("--8<-- [end:custom-reward]")
    section = readme[start:end]
    (tmp_path / "my_rewards.py").write_text(_block(section, "# my_rewards.py", "python"))
    (tmp_path / "my-recipe.yaml").write_text(_block(section, "# my-recipe.yaml", "yaml"))
    assert _block(section, "rlhf-img train my-recipe.yaml", "bash").strip() == "rlhf-img train my-recipe.yaml"
    for shipped in ("checkpoints", "recipes"):  # the example runs from the repository root
        os.symlink(os.path.join(REPO, shipped), tmp_path / shipped)
    monkeypatch.chdir(tmp_path)
    assert (
        main(["train", "my-recipe.yaml", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"]) == 0
    )
    assert os.path.isfile(tmp_path / "runs" / "my-first-reward" / "adapter_model.safetensors")
    import json

    history = json.load(open(tmp_path / "runs" / "my-first-reward" / "trainer_state.json"))["log_history"]
    logged = {key for entry in history for key in entry}
    assert {"rewards/my_rewards.py:redness/mean", "rewards/my_rewards.py:Contrast/mean"} <= logged


def test_the_docs_rewards_page_includes_the_readme_custom_reward_section():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as file:
        readme = file.read()
    with open(os.path.join(REPO, "docs", "rewards.md"), encoding="utf-8") as file:
        page = file.read()
    assert readme.count("--8<-- [start:custom-reward]") == 1 and readme.count("--8<-- [end:custom-reward]") == 1
    assert '--8<-- "README.md:custom-reward"' in page
