"""The generated part of the documentation: every recipe key and every command's `--help`, rendered from the
config dataclasses and the real argparse parsers, so the docs cannot drift from the code.

The mkdocs build (`tools/docs_hooks.py`) calls `render_pages()` and adds the pages to the site; nothing rendered
here is committed. A field without help text raises `MissingHelpError`, which fails `mkdocs build --strict`; so does
an inherited TRL key that `rlhf_img/trl_keys.py` does not classify (`ReferenceDocsError`).

    pages = render_pages()          # {"reference/keys/train.md": "...", "reference/cli.md": "...", ...}
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import html
import inspect
import io
import os
import re
from dataclasses import dataclass
from typing import Any

# API reference pages (mkdocstrings renders each module's docstrings at build time): page name -> module
API_MODULES = {
    "rlhf_img": "rlhf_img",
    "trainer": "rlhf_img.trainer",
    "policy": "rlhf_img.policy",
    "config": "rlhf_img.config",
    "rewards": "rlhf_img.rewards",
    "eval": "rlhf_img.eval",
    "families": "rlhf_img.families",
    "families-registry": "rlhf_img.families.registry",
    "sampling": "rlhf_img.sampling",
    "sampling-engine": "rlhf_img.sampling.engine",
}

HELP_WIDTH = 100  # columns argparse wraps `--help` at, whatever the terminal that builds the docs


class ReferenceDocsError(ValueError):
    """The reference cannot be generated truthfully: one line saying what to fix (the docs build stops on it)."""


class MissingHelpError(ReferenceDocsError):
    """A config field has no `metadata={"help": ...}`: every recipe key must say what it does."""


@dataclass(frozen=True)
class KeyGroup:
    """The keys one command reads: the dataclasses its recipe parser is built from, in the parser's order."""

    command: str  # `rlhf-img <command>`
    slug: str  # the page, reference/keys/<slug>.md, and the prefix of its row anchors
    title: str
    dataclasses: tuple[type, ...]
    intro: str
    trl_verdicts: bool = False  # the command refuses inherited TRL keys that do not apply to images (trl_keys.py)


def key_groups() -> list[KeyGroup]:
    """Every command that parses a recipe (or an eval file), with the dataclasses its parser is built from."""
    from .config import EvalConfig, ImageModelConfig
    from .recipes import TRAIN_DATACLASSES
    from .upstream.dpo import DPO_DATACLASSES
    from .upstream.encode import EncodeConfig
    from .upstream.sft import ActionSFTConfig
    from .worlds.sft import WorldSFTConfig
    from .worlds.tokenizer_training import TokenizerTrainingConfig

    return [
        KeyGroup(
            "train",
            "train",
            "Training recipe keys (`rlhf-img train`)",
            TRAIN_DATACLASSES,
            "A GRPO recipe is one flat YAML mapping of these keys; each is also a `--key value` override. A key "
            "inherited from TRL either applies to images or is refused (set to anything but its default, it "
            "stops the run before anything is loaded), as the last column says.",
            trl_verdicts=True,
        ),
        KeyGroup(
            "eval",
            "eval",
            "Evaluation keys (`rlhf-img eval`)",
            (EvalConfig,),
            "Keys of an eval YAML file and flags of `rlhf-img eval`; the family and sampling keys are the "
            "training recipe's.",
        ),
        KeyGroup(
            "encode",
            "encode",
            "Encode keys (`rlhf-img encode`)",
            (EncodeConfig,),
            "Keys of an encode recipe: image/caption pairs -> the family's actions in Arrow shards.",
        ),
        KeyGroup(
            "sft",
            "sft",
            "SFT / pretraining keys (`rlhf-img sft`)",
            (ActionSFTConfig, ImageModelConfig),
            "Keys of a family SFT or pretraining recipe (on `rlhf-img encode` output).",
        ),
        KeyGroup(
            "sft",
            "sft-shapes-world",
            "Shapes-world SFT keys (`rlhf-img sft recipes/shapes-sft.yaml`)",
            (WorldSFTConfig,),
            "Keys of the shapes world's own SFT recipe: a recipe that names neither `model_name_or_path` nor "
            "`dataset` builds a causal LM from scratch on rendered images.",
        ),
        KeyGroup(
            "dpo", "dpo", "DPO keys (`rlhf-img dpo`)", DPO_DATACLASSES, "Keys of an offline or online DPO recipe."
        ),
        KeyGroup(
            "pretrain-tokenizer",
            "pretrain-tokenizer",
            "Tokenizer keys (`rlhf-img pretrain-tokenizer`)",
            (TokenizerTrainingConfig,),
            "Keys of a world's VQ tokenizer recipe (recipes/shapes-tokenizer.yaml).",
        ),
    ]


# ------------------------------------------------------------------------------------------------ one field


@dataclass(frozen=True)
class KeyDoc:
    name: str
    type: str
    default: str
    help: str
    choices: tuple[str, ...]
    declared_in: str  # "module.Class" of the most derived class that declares the field
    redefines: str | None  # "module.Class" of a base that declares it too (a changed default or help)


def _declaring_classes(cls: type, name: str) -> list[type]:
    """Classes of `cls.__mro__` whose own annotations declare `name`, most derived first."""
    return [klass for klass in cls.__mro__ if name in inspect.get_annotations(klass)]


def _public_name(klass: type) -> str:
    """`trl.GRPOConfig`, `transformers.TrainingArguments`, `rlhf_img.config.ImageGRPOConfig`."""
    module = klass.__module__
    top = module.split(".")[0]
    if top != "rlhf_img":
        package = __import__(top)
        if getattr(package, klass.__name__, None) is klass:
            return f"{top}.{klass.__name__}"
    return f"{module}.{klass.__name__}"


def _type_text(annotation: Any) -> str:
    if isinstance(annotation, str):
        text = annotation
    elif isinstance(annotation, type):
        text = annotation.__name__
    else:
        text = str(annotation)
    return re.sub(r"\b(typing|builtins)\.", "", text)


def _default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    if isinstance(value, enum.Enum):
        value = value.value
    return repr(value)


def field_docs(cls: type) -> list[KeyDoc]:
    """One `KeyDoc` per recipe key of `cls` (its `init` fields, the ones the parser reads), in declaration order;
    `MissingHelpError` names the first field without help text."""
    docs = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        help_text = (field.metadata or {}).get("help")
        if not isinstance(help_text, str) or not help_text.strip():
            raise MissingHelpError(
                f"config field {cls.__name__}.{field.name} (declared in "
                f"{_public_name(_declaring_classes(cls, field.name)[0])}) has no help text: give it "
                "metadata={'help': '...'} so `--help` and the key reference say what it does"
            )
        owners = _declaring_classes(cls, field.name)
        annotation = inspect.get_annotations(owners[0])[field.name]
        docs.append(
            KeyDoc(
                name=field.name,
                type=_type_text(annotation),
                default=_default_text(field),
                help=" ".join(help_text.split()),
                choices=tuple(str(choice) for choice in (field.metadata or {}).get("choices", ()) or ()),
                declared_in=_public_name(owners[0]),
                redefines=_public_name(owners[1]) if len(owners) > 1 else None,
            )
        )
    return docs


# ----------------------------------------------------------------------------------- TRL keys: apply / refused


def trl_verdicts(cls: type) -> dict[str, dict[str, Any]]:
    """For each key `cls` inherits from TRL / transformers: whether it applies to images or is refused, why, and
    what to use instead, read from the one table in `rlhf_img/trl_keys.py` (its `key_reference`); empty while that
    module does not exist. An inherited key the table does not classify raises `ReferenceDocsError`."""
    try:
        from .trl_keys import key_reference
    except ImportError:
        return {}
    try:
        rows = key_reference((cls,))
    except KeyError as error:
        raise ReferenceDocsError(str(error.args[0] if error.args else error)) from None
    return {row["key"]: row for row in rows}


def _verdict_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    text = f"<strong>{html.escape(row['verdict'], quote=False)}</strong>"
    if row.get("note"):
        text += ": " + _inline(row["note"])
    if row.get("instead"):
        text += "; instead: " + _inline(row["instead"])
    if row.get("tested"):
        text += (
            "<br><small>tested in "
            + ", ".join(f"<code>tests/{html.escape(t, quote=False)}</code>" for t in row["tested"])
            + "</small>"
        )
    return text


# --------------------------------------------------------------------------------------------- rendering


def _inline(text: str) -> str:
    """Help text as HTML: escaped, with `backticked` spans as code."""
    escaped = html.escape(text, quote=False)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def _origin(doc: KeyDoc) -> str:
    top = doc.declared_in.split(".")[0]
    return {"rlhf_img": "rlhf-img", "trl": "TRL", "transformers": "transformers"}.get(top, top)


def render_key_group(group: KeyGroup) -> str:
    """The markdown page of one command's keys: a table per dataclass, rlhf-img's own keys first, then TRL's,
    then transformers'; for `rlhf-img train`, whether each inherited TRL key applies to images."""
    source = (
        "Generated at build time from the config dataclasses (`rlhf_img/reference_docs.py`); the same text is "
        f"what `rlhf-img {group.command} --help` prints."
    )
    lines = [f"# {group.title}", "", group.intro, "", source, ""]
    for cls in group.dataclasses:
        docs = field_docs(cls)
        verdicts = trl_verdicts(cls) if group.trl_verdicts else {}
        lines += [f"## `{cls.__name__}`", "", f"`{_public_name(cls)}`: {len(docs)} keys.", ""]
        doc_text = inspect.getdoc(cls)
        if doc_text and not doc_text.startswith(f"{cls.__name__}("):  # not the dataclass-generated signature
            lines += [_inline(" ".join(doc_text.split())), ""]
        known = ["rlhf-img", "TRL", "transformers"]
        for origin in known + sorted({_origin(doc) for doc in docs} - set(known)):
            rows = [doc for doc in docs if _origin(doc) == origin]
            if not rows:
                continue
            with_status = any(doc.name in verdicts for doc in rows)
            lines += [
                f"### {origin} keys of `{cls.__name__}`",
                "",
                "<table>",
                "<thead><tr><th>key</th><th>type</th><th>default</th><th>what it does</th>"
                + ("<th>for images</th>" if with_status else "")
                + "</tr></thead>",
                "<tbody>",
            ]
            for doc in rows:
                notes = []
                if doc.choices:
                    choices = (f"<code>{html.escape(choice, quote=False)}</code>" for choice in doc.choices)
                    notes.append("choices: " + ", ".join(choices))
                if doc.redefines:
                    notes.append(f"overrides <code>{doc.redefines}</code>'s field of the same name")
                if origin != "rlhf-img" or doc.redefines:
                    notes.append(f"declared in <code>{doc.declared_in}</code>")
                help_cell = _inline(doc.help) + "".join(f"<br><small>{note}</small>" for note in notes)
                cells = [
                    f"<code>{doc.name}</code>",
                    f"<code>{html.escape(doc.type, quote=False)}</code>",
                    f"<code>{html.escape(doc.default, quote=False)}</code>",
                    help_cell,
                ]
                if with_status:
                    cells.append(_verdict_cell(verdicts.get(doc.name)))
                anchor = f"{group.slug}-{cls.__name__}-{doc.name}".lower()
                lines.append(f'<tr id="{anchor}">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
            lines += ["</tbody>", "</table>", ""]
    return "\n".join(lines)


def render_keys_index(groups: list[KeyGroup]) -> str:
    intro = (
        "Every key of every recipe, eval file and stage, generated at build time from the config dataclasses "
        '(`metadata={"help": ...}` on each field), so this reference, `--help` and the Python API cannot '
        "drift apart. A field without help text fails the docs build."
    )
    lines = ["# Recipe keys", "", intro, "", "| command | dataclasses | keys |", "|---|---|---|"]
    for group in groups:
        names = ", ".join(f"`{cls.__name__}`" for cls in group.dataclasses)
        count = sum(len(field_docs(cls)) for cls in group.dataclasses)
        lines.append(f"| [{group.title}]({group.slug}.md) | {names} | {count} |")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _columns(width: int):
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous


def command_help(command: str | None) -> str:
    """What `rlhf-img COMMAND --help` prints (`rlhf-img --help` for None): `cli.main` run with stdout captured. Every
    command answers `--help` before it loads or writes anything (argparse's own exits with SystemExit(0))."""
    from .cli import main

    argv = ["--help"] if command is None else [command, "--help"]
    out = io.StringIO()
    with _columns(HELP_WIDTH), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
    if code not in (0, None):
        raise RuntimeError(f"`rlhf-img {' '.join(argv)}` exited with {code}")
    return out.getvalue().rstrip() + "\n"


def _fence(text: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}{fence}"


def render_cli() -> str:
    from .cli import COMMANDS

    intro = (
        "What each command's `--help` prints, captured at build time by running `rlhf-img COMMAND --help` "
        "in-process (`rlhf_img.reference_docs.command_help`): nothing here is copied by hand. The recipe "
        "keys behind `train`, `eval`, `encode`, `sft`, `dpo` and `pretrain-tokenizer` are also laid out as "
        "tables in [Recipe keys](keys/index.md)."
    )
    lines = ["# Command line", "", intro, "", "## `rlhf-img`", "", _fence(command_help(None)), ""]
    for name, (_, summary) in COMMANDS.items():
        lines += [f"## `rlhf-img {name}`", "", _inline(summary), "", _fence(command_help(name)), ""]
    return "\n".join(lines)


def render_api_page(module: str) -> str:
    return f"# `{module}`\n\n::: {module}\n"


def render_pages() -> dict[str, str]:
    """Every generated page, by its path under docs/."""
    groups = key_groups()
    pages = {"reference/keys/index.md": render_keys_index(groups)}
    for group in groups:
        pages[f"reference/keys/{group.slug}.md"] = render_key_group(group)
    pages["reference/cli.md"] = render_cli()
    for page, module in API_MODULES.items():
        pages[f"reference/api/{page}.md"] = render_api_page(module)
    return pages
