"""How every `rlhf-img` command reports bad input: one line on stderr naming the key or file, exit code 2.

Its own module so that the commands living beside their stage (`upstream/encode.py`, `upstream/dpo.py`) report
the same way as `cli.py` without importing the command-line entry point back.

`RLHF_IMG_TRACEBACK=1` also prints, before that line, the traceback of the error being reported and of the errors
behind it (a loader's `ValueError` raised deep inside transformers reaches the user as one line, on purpose; a bug
report needs where it came from)."""

from __future__ import annotations

import os
import sys
import traceback
from typing import NoReturn

TRACEBACK_ENV = "RLHF_IMG_TRACEBACK"


def one_line(message: str) -> str:
    """`message` on one line whatever it quotes: line breaks and other control characters are escaped."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in str(message))


def print_error_chain(error: BaseException | None) -> None:
    """The tracebacks of `error` and of every error it was raised from or while handling, the first cause first,
    including a context a `raise ... from None` hid."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for link in reversed(chain):
        traceback.print_exception(type(link), link, link.__traceback__, chain=False, file=sys.stderr)


def fail(message: str) -> NoReturn:
    """Print `rlhf-img: error: <message>` on one line and exit 2 (with `RLHF_IMG_TRACEBACK=1`, after the
    tracebacks behind the error being handled, if any)."""
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        print_error_chain(sys.exc_info()[1])
    print(f"rlhf-img: error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(2)
