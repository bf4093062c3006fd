"""What every entry point shares: bad input becomes one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

from cogvid.utils.errors import CogvidError

USER_ERROR_EXIT = 2


def fail(prog: str, message: str) -> NoReturn:
    first_line = " ".join(str(message).split())  # one line, whatever the message held
    print(f"{prog}: error: {first_line}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT)


def run_reporting_errors(prog: str, fn: Callable[[], object]) -> object:
    """Run fn; a CogvidError is reported as one line and exit 2."""
    try:
        return fn()
    except CogvidError as ex:
        fail(prog, str(ex))
