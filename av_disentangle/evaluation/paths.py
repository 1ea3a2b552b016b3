"""Evaluation paths: every input checked and every output probed before any work; files written
atomically (`av_disentangle.files`), a failure named as one `EvaluationError` line."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from av_disentangle import files
from av_disentangle.evaluation import EvaluationError


def write_file(path: str | os.PathLike, data: bytes | str) -> None:
    """Writes `data` (bytes, or text as UTF-8) to a temporary name beside `path` and renames it
    (a reader never sees a half-written file).

    Raises:
        EvaluationError: naming `path`, if it cannot be written.
    """
    try:
        if isinstance(data, str):
            files.write_text_atomic(path, data)
        else:
            files.write_atomic(path, data)
    except OSError as err:
        raise EvaluationError(f"{path}: cannot write ({err.strerror or err})") from err


def _probe_writable(folder: Path, what: str) -> None:
    """Creates and removes a file in `folder` (the only reliable test, also for root and for
    read-only mounts)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".evaluate-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise EvaluationError(f"{what}: cannot write in folder {folder} "
                              f"({err.strerror or err})") from err


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """Raises EvaluationError unless `path` can be written (its folder exists and is writable,
    and it is not a folder)."""
    p = Path(path)
    if p.is_dir():
        raise EvaluationError(f"{path}: {flag} is a folder; give a file name")
    if not p.parent.is_dir():
        raise EvaluationError(f"{path}: {flag} cannot be written: folder {p.parent} does not "
                              "exist")
    _probe_writable(p.parent, f"{path}: {flag}")


def check_output_dir(path: str | os.PathLike, flag: str) -> None:
    """Creates `path` if needed; raises EvaluationError unless files can be written in it."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise EvaluationError(f"{path}: {flag} folder cannot be created "
                              f"({err.strerror or err})") from err
    _probe_writable(Path(path), f"{path}: {flag}")


def check_paths(*, task: str = "verification", trials: str | None = None,
                identities: str | None = None, audio_root: str | None = None,
                videos: str | None = None, scores_out: str | None = None,
                plot_out: str | None = None, sync_csv: str | None = None,
                logdir: str | None = None, projector_out: str | None = None) -> None:
    """Every input path exists and every output can be written, before any decoding or model
    loading, so that a long run never ends in a path error and the metrics are never lost.

    Inputs: `trials`, `identities` (files), `audio_root`, `videos` (folders); outputs:
    `scores_out`, `plot_out`, `sync_csv` (files), `logdir`, `projector_out` (folders), named by
    their `evaluate.py` flags in the errors; None/empty = unused.

    Raises:
        EvaluationError: naming the path and the flag.
    """
    inputs = [(trials, "--trials", "file"), (identities, "--identities", "file"),
              (audio_root, "--audio_root", "folder"), (videos, "--videos", "folder")]
    for path, flag, kind in inputs:
        if path and not (os.path.isfile(path) if kind == "file" else os.path.isdir(path)):
            raise EvaluationError(f"{path}: {flag} {kind} not found")
    for path, flag in ((scores_out, "--scores_out"), (plot_out, "--plot_out"),
                       (sync_csv, "--sync_csv")):
        if path:
            check_output_file(path, flag)
    if projector_out and task == "sync":
        raise EvaluationError("--projector_out shows embeddings: use it with --task "
                              "verification or crossmodal")
    for path, flag in ((logdir, "--logdir"), (projector_out, "--projector_out")):
        if path:
            check_output_dir(path, flag)
