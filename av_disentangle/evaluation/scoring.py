"""Pair scoring: cosine of (crop-averaged) embeddings through the Keras pair-scoring model,
whose streaming metrics give EER and minDCF (`av_disentangle.metrics`)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from av_disentangle.evaluation import EvaluationError
from av_disentangle.metrics import EqualErrorRate, pair_scoring_model

P_TARGETS = (0.01, 0.05)
"""Target priors of the minDCF values reported (C_miss = C_fa = 1)."""


def check_both_classes(labels: np.ndarray, what: str) -> None:
    """Raises EvaluationError unless (P,) 0/1 `labels` hold both targets and non-targets."""
    n_pos = int(np.sum(labels == 1))
    if n_pos == 0 or n_pos == labels.shape[0]:
        raise EvaluationError(
            f"{what}: all {labels.shape[0]} pairs are {'target' if n_pos else 'non-target'}; "
            "EER/minDCF need both")


def _score_buffer_metric(model) -> EqualErrorRate:
    stack = list(model.metrics)
    while stack:
        m = stack.pop(0)
        if isinstance(m, EqualErrorRate):
            return m
        stack.extend(getattr(m, "metrics", []))
    raise RuntimeError("pair-scoring model has no EqualErrorRate metric")


def score_pairs(table1: np.ndarray, table2: np.ndarray, idx1: np.ndarray, idx2: np.ndarray,
                labels: np.ndarray, batch_size: int = 1024
                ) -> tuple[np.ndarray, dict[str, float]]:
    """Scores pairs with the compiled Keras pair-scoring model via `model.evaluate`.

    Args:
        table1: (F1, D) or (F1, N, D) embeddings; table2: (F2, D) or (F2, M, D).
        idx1, idx2: (P,) row indices into table1 / table2.
        labels: (P,) 0/1 labels.

    Returns:
        `(scores (P,), logs)` with logs `{"eer", "min_dcf_0.01", "min_dcf_0.05"}`. The
        per-trial scores are read back from the EER metric's buffer (same order as the
        pairs), so the pairs are scored only once.
    """
    t1 = tf.constant(table1, tf.float32)
    t2 = tf.constant(table2, tf.float32)
    ds = tf.data.Dataset.from_tensor_slices(
        ((idx1.astype(np.int32), idx2.astype(np.int32)), labels.astype(np.float32)))
    ds = ds.batch(batch_size).map(
        lambda idx, y: ((tf.gather(t1, idx[0]), tf.gather(t2, idx[1])), y))
    model = pair_scoring_model(
        embedding_dim=table1.shape[-1], num_crops=0 if table1.ndim == 3 else None,
        p_targets=P_TARGETS)
    logs = model.evaluate(ds, return_dict=True, verbose=0)
    scores, buffered_labels = _score_buffer_metric(model).scores_and_labels()
    if scores.shape[0] != labels.shape[0] or not np.array_equal(buffered_labels, labels):
        raise RuntimeError("score buffer out of order with the trial list")
    return scores, {k: float(v) for k, v in logs.items()}


def format_summary(logs: dict[str, float]) -> str:
    """`EER x.xx%  minDCF(0.01) y.yyy  minDCF(0.05) z.zzz`, and with AS-norm (`raw_*` logs)
    `(AS-norm, top k of C cohort speakers; raw: EER ...)`."""
    line = (f"EER {100 * logs['eer']:.2f}%  minDCF(0.01) {logs['min_dcf_0.01']:.3f}  "
            f"minDCF(0.05) {logs['min_dcf_0.05']:.3f}")
    if "raw_eer" in logs:
        line += (f"  (AS-norm, top {int(logs['top_k'])} of {int(logs['cohort_speakers'])} "
                 f"cohort speakers; raw: EER {100 * logs['raw_eer']:.2f}%  minDCF(0.01) "
                 f"{logs['raw_min_dcf_0.01']:.3f}  minDCF(0.05) {logs['raw_min_dcf_0.05']:.3f})")
    return line
