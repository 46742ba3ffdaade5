"""The README is the front door: short, its links lead to files that exist (the docs pages), and the recipe it
shows is the shipped one, word for word. (The docs site's own links are checked by `mkdocs build --strict`.)"""

import os
import re

from conftest import REPO

README = os.path.join(REPO, "README.md")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def test_readme_stays_a_front_door_of_at_most_200_lines():
    assert len(_read(README).splitlines()) <= 200


def test_every_relative_link_in_the_readme_points_at_a_file_that_exists():
    text = _read(README)
    targets = [t.split("#", 1)[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t]
    assert targets, "the README links into docs/"
    missing = [t for t in targets if t and not os.path.exists(os.path.join(REPO, t))]
    assert not missing, f"README links to missing files: {missing}"


def test_the_recipe_the_readme_shows_is_verbatim_from_recipes_shapes_grpo():
    text = _read(README)
    first_lines = r"model_family: causal_vq\nmodel_name_or_path: \.\./checkpoints"
    block = re.search(rf"```yaml\n({first_lines}.*?)```", text, re.DOTALL)
    assert block, "README shows recipes/shapes-grpo.yaml"
    assert block.group(1) in _read(os.path.join(REPO, "recipes", "shapes-grpo.yaml"))
