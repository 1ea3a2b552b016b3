"""The one user-facing error type.

Every error the user can fix (bad flags, unreadable or malformed input, a run directory that
does not match the flags) is a `UserError` or a subclass. Entry points (`train.py`,
`evaluate.py`, `python -m pipelines.*`) catch it with `run_cli`, print one line naming the file
and the problem, and exit with status 2 - no traceback (run with `--verbose` to get one).
TF-free.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
from typing import Callable, Sequence

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports Ctrl-C


class UserError(Exception):
    """Bad flags or input data: reported as one line, without a traceback; exit status 2."""


class DiskFullError(UserError):
    """A write found no space left on its device. Every state file is written to a temporary
    name and renamed (`files.py`), so the last good state is intact."""

    def __init__(self, path: str | None, detail: str = "") -> None:
        self.path = path
        where = f" writing {path}" if path else ""
        super().__init__(f"no space left on device{where}{detail}; free some space and rerun "
                         "the same command (the last good state is kept)")


_NO_SPACE = "No space left on device"
_FILENAME = re.compile(r"filename = '([^']+)'|(?:file|path)[ :]+'?(/[^\s',;]+)")


def is_disk_full(err: BaseException) -> bool:
    """An ENOSPC anywhere in `err`'s chain: OSError errno 28, or the message TensorFlow's
    ResourceExhaustedError and h5py's RuntimeError carry."""
    while err is not None:
        if isinstance(err, DiskFullError) or (isinstance(err, OSError)
                                              and err.errno == errno.ENOSPC):
            return True
        if _NO_SPACE in str(err) or "errno = 28" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def disk_full_error(err: BaseException) -> DiskFullError:
    """The DiskFullError for a disk-full `err`, naming the file it was writing when known."""
    chain = err
    while chain is not None:
        if isinstance(chain, DiskFullError):
            return chain
        if isinstance(chain, OSError) and chain.filename:
            return DiskFullError(str(chain.filename))
        match = _FILENAME.search(str(chain))
        if match:
            return DiskFullError(match.group(1) or match.group(2))
        chain = chain.__cause__ or chain.__context__
    return DiskFullError(None)


def run_cli(main: Callable[[Sequence[str] | None], int], prog: str,
            argv: Sequence[str] | None = None) -> int:
    """Runs an entry point's `main(argv)` and turns a `UserError` into one line on stderr.

    Returns:
      `main`'s exit status, or 2 (`USER_ERROR_EXIT`) after a `UserError`.
    """
    try:
        return main(argv)
    except KeyboardInterrupt:
        logging.getLogger(prog).debug("interrupted", exc_info=True)
        print(f"{prog}: interrupted{_interrupted_at()}", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception as err:  # noqa: BLE001 - a disk-full error of any library, else re-raised
        if not isinstance(err, UserError) and not is_disk_full(err):
            raise
        if is_disk_full(err):
            err = disk_full_error(err)
        logging.getLogger(prog).debug("user error", exc_info=True)
        print(f"{prog}: error: {err}", file=sys.stderr)
        if isinstance(err, DiskFullError):
            # h5py and TensorFlow can crash at interpreter exit after a failed write
            # (SIGSEGV seen); the state on disk is already safe: leave without teardown.
            sys.stdout.flush()
            sys.stderr.flush()
            logging.shutdown()
            os._exit(USER_ERROR_EXIT)
        return USER_ERROR_EXIT


INTERRUPTION_HINT: list[str] = []
"""Set by a long job to what a Ctrl-C should say after "interrupted" (e.g. train.py: " at step
N; rerun the same command to resume")."""


def _interrupted_at() -> str:
    return INTERRUPTION_HINT[-1] if INTERRUPTION_HINT else ""
