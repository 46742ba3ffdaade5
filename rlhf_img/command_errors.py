"""How every `rlhf-img` command reports bad input: one line on stderr naming the key or file, exit code 2.

Its own module so that the commands living beside their stage (`upstream/encode.py`, `upstream/dpo.py`) report
the same way as `cli.py` without importing the command-line entry point back."""

from __future__ import annotations

import sys
from typing import NoReturn


def one_line(message: str) -> str:
    """`message` on one line whatever it quotes: line breaks and other control characters are escaped."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in str(message))


def fail(message: str) -> NoReturn:
    """Print `rlhf-img: error: <message>` on one line and exit 2."""
    print(f"rlhf-img: error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(2)
