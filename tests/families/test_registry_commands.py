"""The commands list what the family registry holds, nothing hard-coded: a family or converter registered by a
package shows up in `rlhf-img families` and `rlhf-img convert --help`, and `rlhf-img convert` runs it."""

import pytest

from rlhf_img.cli import main
from rlhf_img.config import ImageModelConfig
from rlhf_img.families import CONVERTERS, FAMILIES, register_converter

from . import toy_family  # noqa: F401  (registers the `palette` family)


def test_families_command_lists_every_registered_family_with_what_it_adds(capsys):
    assert main(["families"]) == 0
    out = capsys.readouterr().out
    for name, family in FAMILIES.items():
        assert f"{name:12s} {family.help}" in out
    assert "palette " in out  # a family registered outside the package
    assert "rlhf-img convert llamagen" in out and "rlhf-img convert cosmos" in out


def test_model_family_help_names_the_registered_families():
    help_text = next(f for f in ImageModelConfig.__dataclass_fields__.values() if f.name == "model_family").metadata[
        "help"
    ]
    for name in ("causal_vq", "simplear", "infinity", "janus", "llamagen"):
        assert repr(name) in help_text


def test_a_registered_converter_is_listed_and_run_by_the_convert_command(tmp_path, capsys):
    calls = []

    @register_converter("palette-pack", family="palette", help="a test converter: writes one marker file")
    def convert(source, output_dir, options):
        calls.append((source, output_dir, options.family_config, options.dtype))
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "converted").write_text(source)
        return f"{output_dir}/converted"

    try:
        with pytest.raises(SystemExit):
            main(["convert", "--help"])
        assert "palette-pack (family palette): a test converter" in capsys.readouterr().out
        code = main(
            [
                "convert",
                "palette-pack",
                "src",
                str(tmp_path / "out"),
                "--family_config",
                "{grid: 3}",
                "--dtype",
                "float32",
            ]
        )
        assert code == 0 and calls == [("src", str(tmp_path / "out"), {"grid": 3}, "float32")]
        assert "rlhf-img: wrote" in capsys.readouterr().out
        with pytest.raises(ValueError, match="already registered"):
            register_converter("palette-pack", family="palette", help="again")(convert)
    finally:
        CONVERTERS.pop("palette-pack", None)


def test_an_unknown_converter_is_refused_with_the_registered_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "nope", "src", "out"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
