"""Data preparation (video -> sharded TFRecords) and tf.data input pipelines.

Run as a command (`python -m pipelines.prepare`, `.input`, `.synthetic`, `.data_service`),
TensorFlow's C++ start-up lines (oneDNN notices, "failed call to cuInit" on machines without a
GPU), which no log level hides, are kept off stderr unless `--verbose` or `--log_level DEBUG`
is given, as `train.py` and `evaluate.py` do: these modules import TensorFlow at the top, so it
is done here, before them. Imported as a library, nothing changes.
"""

import os as _os
import sys as _sys


def _started_as_a_pipelines_command() -> bool:
    """`python -m pipelines.<x>` (while the package loads, sys.argv[0] is only "-m"; the
    command line is in sys.orig_argv) or `python pipelines/<x>.py`."""
    argv = list(getattr(_sys, "orig_argv", ()))
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1].startswith("pipelines."):
        return True
    main = _os.path.abspath(_sys.argv[0]) if _sys.argv and _sys.argv[0] else ""
    return _os.path.dirname(main) == _os.path.dirname(_os.path.abspath(__file__))


if ("tensorflow" not in _sys.modules and _started_as_a_pipelines_command()
        and not any(a in ("-v", "--verbose", "DEBUG") for a in _sys.argv[1:])):
    from av_disentangle.logs import native_stderr_silenced, quiet_tensorflow

    quiet_tensorflow()
    with native_stderr_silenced():
        import tensorflow  # noqa: F401
