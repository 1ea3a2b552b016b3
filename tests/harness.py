"""The test harness: a tiny model per mode, and `train.py` run in-process.

    from harness import run_train, tiny_model

`tiny_model(**loss)` is `DisentangleModel(ModelConfig.tiny(), LossConfig(**loss))`, the model
every model-level test builds. `run_train(argv, capsys)` runs `train.py`'s `main` in this
process exactly as the command does (`errors.run_cli`: a user error is one line on stderr and
exit status 2), without the seconds a fresh interpreter spends importing TensorFlow; tests whose
point is a kill, a real exit code or stderr free of TensorFlow's start-up lines keep
`conftest.run_script`.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import train  # noqa: E402  (train.py at the repo root)
from av_disentangle.config import LossConfig, ModelConfig  # noqa: E402
from av_disentangle.errors import run_cli  # noqa: E402
from av_disentangle.model import DisentangleModel  # noqa: E402


def tiny_model(**loss) -> DisentangleModel:
    """The tiny two-stream model (`ModelConfig.tiny()`) with `LossConfig(**loss)`."""
    return DisentangleModel(ModelConfig.tiny(), LossConfig(**loss))


def run_train(argv: Sequence[str], capsys) -> tuple[int, str, str]:
    """`python train.py ARGV` in-process: (exit status, stdout, stderr). An argparse error
    (`SystemExit`) gives its status, as the command would."""
    capsys.readouterr()
    try:
        code = run_cli(train.main, "train.py", list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
