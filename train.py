"""Train the two-stream disentangling model and export a SavedModel.

    python train.py --model_dir runs/sample --epochs 1 --steps_per_epoch 5

With no `--train_data`, the bundled sample videos (data/samples) are prepared into TFRecords
on first use (data/prepared/) and used. Rerunning the same command after an interruption
resumes from the last checkpoint in `--model_dir`. Flags override values from `--config`
(a JSON file with flag names as keys). Paths may be remote (`gs://...`). `--verbose` (alone)
also shows TensorFlow's own messages and tracebacks.

The flags are generated from the config dataclasses (`av_disentangle.flags`); the run is
`av_disentangle.run.train`.
"""

from __future__ import annotations

import sys
from typing import Sequence

from av_disentangle.errors import UserError, run_cli
from av_disentangle.flags import debug_requested, parse_flags, resolve_settings
from av_disentangle.logs import native_stderr_silenced, setup_logging

NON_FINITE_EXIT = 3


def main(argv: Sequence[str] | None = None) -> int:
    debug = debug_requested(argv)
    setup_logging(verbose=debug)  # quiets TensorFlow's logging: before anything loads it
    args = parse_flags(argv)  # bad flags or --config values: exit 2, before TensorFlow loads
    with native_stderr_silenced(not debug):  # TF's start-up lines that no log level hides
        import tensorflow  # noqa: F401
    try:
        settings = resolve_settings(args)
    except ValueError as e:
        raise UserError(str(e)) from e
    from av_disentangle import run
    from av_disentangle.training import NonFiniteLoss

    try:
        export_dir, exported = run.train(settings)
    except NonFiniteLoss as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return NON_FINITE_EXIT
    if export_dir:
        print(f"{'exported SavedModel' if exported else 'SavedModel (already exported)'}: "
              f"{export_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "train.py"))
