"""The generated docs reference (`rlhf_img/reference_docs.py`, added to the site by `tools/docs_hooks.py`): every
field of every recipe dataclass is listed, a field without help text fails the rendering (and so the strict build),
and the command-line page has every command. mkdocs itself is not run here (`make docs` runs it)."""

import ast
import dataclasses
import os
from dataclasses import dataclass, field

import pytest
from conftest import REPO

from rlhf_img import reference_docs
from rlhf_img.reference_docs import (
    KeyGroup,
    MissingHelpError,
    field_docs,
    key_groups,
    render_key_group,
)


@pytest.fixture(scope="module")
def pages():
    return reference_docs.render_pages()


def _dataclasses_with_help() -> set[str]:
    """Names of the package's @dataclass classes that declare a field with `metadata={"help": ...}` (read with
    `ast`, so a new config class anywhere in rlhf_img/ is found without importing it)."""
    found = set()
    for root, _, files in os.walk(os.path.join(REPO, "rlhf_img")):
        for name in files:
            if not name.endswith(".py"):
                continue
            with open(os.path.join(root, name), encoding="utf-8") as file:
                tree = ast.parse(file.read())
            for node in ast.walk(tree):
                if not isinstance(node, ast.ClassDef):
                    continue
                decorators = [ast.unparse(d) for d in node.decorator_list]
                if not any(d.startswith(("dataclass", "dataclasses.dataclass")) for d in decorators):
                    continue
                if any(
                    isinstance(k, ast.Constant) and k.value == "help"
                    for call in ast.walk(node)
                    if isinstance(call, ast.Dict)
                    for k in call.keys
                ):
                    found.add(node.name)
    return found


def test_the_key_reference_lists_every_field_of_every_recipe_dataclass(pages):
    for group in key_groups():
        page = pages[f"reference/keys/{group.slug}.md"]
        for cls in group.dataclasses:
            keys = [f.name for f in dataclasses.fields(cls) if f.init]
            missing = [k for k in keys if f'<tr id="{group.slug}-{cls.__name__}-{k}"'.lower() not in page.lower()]
            assert not missing, f"{group.slug}: {cls.__name__} fields missing from the key reference: {missing}"
            assert page.count(f'<tr id="{group.slug}-{cls.__name__.lower()}-') == len(keys)


def test_every_config_dataclass_with_help_texts_is_in_the_key_reference():
    rendered = {klass.__name__ for group in key_groups() for cls in group.dataclasses for klass in cls.__mro__}
    found = _dataclasses_with_help()
    assert {"ImageGRPOConfig", "SamplingOptions", "EvalConfig", "EncodeConfig", "ImageDPOConfig"} <= found
    assert found - rendered == set(), "config dataclasses missing from reference_docs.key_groups()"


def test_a_field_without_help_text_fails_the_rendering_naming_it():
    @dataclass
    class HalfDocumented:
        documented: int = field(default=1, metadata={"help": "Says what it does."})
        undocumented: str = field(default="x")

    with pytest.raises(MissingHelpError, match=r"HalfDocumented\.undocumented .*has no help text"):
        field_docs(HalfDocumented)
    group = KeyGroup("train", "half", "Half", (HalfDocumented,), "A test group.")
    with pytest.raises(MissingHelpError, match="undocumented"):
        render_key_group(group)


def test_a_key_row_shows_type_default_help_and_where_it_is_declared():
    from rlhf_img.config import ImageGRPOConfig

    docs = {doc.name: doc for doc in field_docs(ImageGRPOConfig)}
    assert docs["cfg_mode"].default == "'none'" and "guided" in docs["cfg_mode"].choices
    assert docs["temperature"].declared_in == "rlhf_img.config.SamplingOptions"
    assert docs["temperature"].redefines == "trl.GRPOConfig"  # the image-token help replaces TRL's
    assert docs["num_generations"].declared_in == "trl.GRPOConfig"
    assert docs["learning_rate"].declared_in.startswith(("trl.", "transformers."))


def test_the_cli_reference_has_every_command_and_its_help(pages):
    from rlhf_img.cli import COMMANDS

    page = pages["reference/cli.md"]
    for name in COMMANDS:
        heading = f"## `rlhf-img {name}`"
        assert heading in page, f"command {name!r} is missing from the CLI reference"
        block = page.split(heading, 1)[1].split("\n## ", 1)[0]
        assert "```text\n" in block and len(block.split("```text\n", 1)[1]) > 20, f"{name}: no --help captured"
    assert "--cfg_mode" in page.split("## `rlhf-img train`", 1)[1]


def test_every_api_page_names_a_module_of_the_package(pages):
    for page, module in reference_docs.API_MODULES.items():
        path = os.path.join(REPO, *module.split("."))
        assert os.path.isfile(path + ".py") or os.path.isfile(os.path.join(path, "__init__.py")), module
        assert pages[f"reference/api/{page}.md"].strip().endswith(f"::: {module}")


def test_every_inherited_trl_key_of_a_training_recipe_says_whether_it_applies_to_images(pages):
    pytest.importorskip("rlhf_img.trl_keys")
    from rlhf_img.trl_keys import inherited_fields

    page = pages["reference/keys/train.md"]
    for group in key_groups():
        if group.slug != "train":
            continue
        for cls in group.dataclasses:
            for name in inherited_fields(cls):
                row = page.split(f'<tr id="train-{cls.__name__.lower()}-{name}">', 1)[1].split("</tr>", 1)[0]
                assert "<strong>applies</strong>" in row or "<strong>refused</strong>" in row, name
