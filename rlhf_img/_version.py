"""The package version, in one place: `rlhf_img.__version__`, the wheel's metadata (pyproject.toml reads it with
setuptools' `attr:`, statically) and the model cards all take it from here. Bump it here and in CHANGELOG.md."""

__version__ = "0.1.0"
