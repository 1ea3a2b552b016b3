"""One logging set-up for every entry point, and TensorFlow kept quiet unless asked.

Call `quiet_tensorflow(verbose)` before the first `import tensorflow` (TF's C++ start-up
messages - cuInit failures on machines without a GPU, remapper notices - are controlled by the
environment variable `TF_CPP_MIN_LOG_LEVEL`, read once when TF loads), then `setup_logging`.
TF-free.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Iterator

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"


def quiet_tensorflow(verbose: bool = False) -> None:
    """Hides TensorFlow's and absl's start-up noise unless `verbose`.

    Must run before TensorFlow is imported to silence its C++ logging; later it still quiets
    the Python-side loggers.
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    for name in ("tensorflow", "absl", "h5py", "matplotlib"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True) -> Iterator[None]:
    """Points file descriptor 2 at /dev/null inside the block (when `enabled`).

    For `import tensorflow` on a normal run: TF 2.21 writes "Could not find cuda drivers on your
    machine" through absl before any log level applies (TF_CPP_MIN_LOG_LEVEL=3 does not hide
    it, measured). Exceptions still propagate; only what native code and Python print to
    stderr inside the block is lost.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def setup_logging(verbose: bool = False, level: int | str | None = None) -> None:
    """Configures the root logger once, in the project's one format.

    Args:
      verbose: DEBUG level and TensorFlow's own messages.
      level: explicit level (e.g. "WARNING"); overrides `verbose`'s choice of INFO/DEBUG.
    """
    quiet_tensorflow(verbose)
    if level is None:
        level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt=DATE_FORMAT, force=True)
    if not verbose:
        for name in ("tensorflow", "absl", "h5py", "matplotlib"):
            logging.getLogger(name).setLevel(logging.ERROR)
