"""Evaluation outputs besides the summary line: per-trial score files, TensorBoard scalars and
images, and the files of TensorBoard's embedding projector (all written atomically)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf

from av_disentangle.evaluation.paths import write_file
from av_disentangle.evaluation.trials import Trial

logger = logging.getLogger(__name__)


def write_scores(path: str | os.PathLike, scores: np.ndarray,
                 trials: Sequence[Trial]) -> None:
    """One `score label path1 path2` line per trial."""
    write_file(path, "".join(f"{s:.6f} {t.label} {t.path1} {t.path2}\n"
                             for s, t in zip(scores, trials)))
    logger.info("wrote %d scores to %s", len(trials), path)


def write_tensorboard(logdir: str | os.PathLike, task: str, step: int,
                      scalars: dict[str, float], images: dict[str, bytes]) -> str:
    """Writes `<task>/<name>` scalars and PNG images to the run `<logdir>/evaluate`.

    Returns the run folder. Give the training run's `<model_dir>/logs` to see the evaluation
    beside the training curves.
    """
    run = os.path.join(logdir, "evaluate")
    writer = tf.summary.create_file_writer(run)
    with writer.as_default(step=step):
        for name, value in scalars.items():
            tf.summary.scalar(f"{task}/{name}", float(value))
        for name, png in images.items():
            tf.summary.image(f"{task}/{name}", tf.image.decode_png(png, channels=3)[None])
    writer.close()
    logger.info("wrote TensorBoard %s summaries (%s) to %s at step %d", task,
                ", ".join([*scalars, *images]), run, step)
    return run


def _tsv_field(text: str) -> str:
    return " ".join(str(text).split())  # no tabs or newlines inside a field


def write_projector(out_dir: str | os.PathLike, embeddings: np.ndarray, columns: Sequence[str],
                    rows: Sequence[Sequence[str]], name: str) -> None:
    """Files for TensorBoard's embedding projector (`tensorboard --logdir out_dir`).

    Args:
        embeddings: (N, D) float32, one row per point.
        columns: metadata column names (>= 2, so the metadata file has a header row, as the
            projector expects for several columns).
        rows: N tuples of metadata values.

    Writes `tensors.tsv` (N lines of D tab-separated values), `metadata.tsv` (header + N
    lines) and last `projector_config.pbtxt` naming them (paths relative to `out_dir`).
    """
    if len(columns) < 2 or len(rows) != embeddings.shape[0]:
        raise ValueError("need >= 2 metadata columns and one metadata row per embedding")
    out = Path(out_dir)
    write_file(out / "tensors.tsv", "".join(
        "\t".join(f"{v:.6g}" for v in row) + "\n" for row in embeddings))
    write_file(out / "metadata.tsv", "\t".join(columns) + "\n" + "".join(
        "\t".join(_tsv_field(v) for v in row) + "\n" for row in rows))
    write_file(out / "projector_config.pbtxt",
               f'embeddings {{\n  tensor_name: "{name}"\n  tensor_path: "tensors.tsv"\n'
               '  metadata_path: "metadata.tsv"\n}\n')
    logger.info("wrote %d embeddings for the TensorBoard projector to %s (tensorboard "
                "--logdir %s)", embeddings.shape[0], out, out)
