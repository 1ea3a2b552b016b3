"""The one user-facing error type.

Every error the user can fix (bad flags, unreadable or malformed input, a run directory that
does not match the flags) is a `UserError` or a subclass. Entry points (`train.py`,
`evaluate.py`, `python -m pipelines.*`) catch it with `run_cli`, print one line naming the file
and the problem, and exit with status 2 - no traceback (run with `--verbose` to get one).
TF-free.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, Sequence

USER_ERROR_EXIT = 2


class UserError(Exception):
    """Bad flags or input data: reported as one line, without a traceback; exit status 2."""


def run_cli(main: Callable[[Sequence[str] | None], int], prog: str,
            argv: Sequence[str] | None = None) -> int:
    """Runs an entry point's `main(argv)` and turns a `UserError` into one line on stderr.

    Returns:
      `main`'s exit status, or 2 (`USER_ERROR_EXIT`) after a `UserError`.
    """
    try:
        return main(argv)
    except UserError as err:
        logging.getLogger(prog).debug("user error", exc_info=True)
        print(f"{prog}: error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT
