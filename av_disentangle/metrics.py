"""Streaming Keras metrics for speaker verification: EER and minDCF over an evaluation pass,
and a pair-scoring model (mean crop cosine) to run them with `model.evaluate`.

The scores are computed by the numpy functions of `av_disentangle.verification_metrics`
(conventions: scores, labels, ties, minDCF normalisation are documented there), re-exported
here so `from av_disentangle.metrics import compute_eer` keeps working. Needs TensorFlow /
Keras 3; import `av_disentangle.verification_metrics` where only numpy is wanted.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from av_disentangle.verification_metrics import (compute_eer, compute_min_dcf,
                                                 cosine_pair_scores, det_curve)

__all__ = [
    "compute_eer",
    "compute_min_dcf",
    "det_curve",
    "cosine_pair_scores",
    "EqualErrorRate",
    "MinDCF",
    "MeanCropCosine",
    "pair_scoring_model",
]


def _safe(fn, *args, **kwargs) -> np.float64:
    """Calls a numpy metric, returning NaN while it is undefined (e.g. one class so far)."""
    try:
        return np.float64(fn(*args, **kwargs)[0])
    except ValueError:
        return np.float64(np.nan)


class _ScoreBuffer(keras.metrics.Metric):
    """Base class: accumulates every (score, label) pair in growing variables.

    The raw scores are kept (not a histogram) so the streamed value equals the numpy
    function on the concatenated batches exactly. Memory is 8 bytes per trial.
    ``y_true`` is the 0/1 label, ``y_pred`` the score; any shape, flattened.
    Sample weights are not supported (a non-None sample_weight raises).

    While only one class has been seen, ``result()`` returns NaN. ``result()`` runs the
    numpy code through ``tf.py_function``: use ``jit_compile=False`` and a single replica
    (under a multi-replica tf.distribute strategy the per-replica buffers are not merged).
    """

    def __init__(self, name: str, dtype: str | None = "float32") -> None:
        super().__init__(name=name, dtype=dtype)
        # tf.Variable with an unknown length: keras.Variable needs a static shape.
        self._scores = tf.Variable(tf.zeros([0], tf.float32), shape=tf.TensorShape([None]),
                                   trainable=False, name=f"{name}_scores")
        self._labels = tf.Variable(tf.zeros([0], tf.float32), shape=tf.TensorShape([None]),
                                   trainable=False, name=f"{name}_labels")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        if sample_weight is not None:
            raise ValueError(f"{self.name} does not support sample_weight")
        y_true = tf.reshape(tf.cast(y_true, tf.float32), [-1])
        y_pred = tf.reshape(tf.cast(y_pred, tf.float32), [-1])
        self._scores.assign(tf.concat([self._scores, y_pred], axis=0))
        self._labels.assign(tf.concat([self._labels, y_true], axis=0))

    def reset_state(self) -> None:
        self._scores.assign(tf.zeros([0], tf.float32))
        self._labels.assign(tf.zeros([0], tf.float32))

    def scores_and_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns the accumulated ((n,) scores, (n,) labels) in update order (eager)."""
        return self._scores.numpy(), self._labels.numpy()

    def _value(self, scores: np.ndarray, labels: np.ndarray) -> np.float64:
        raise NotImplementedError

    def result(self):
        # py_function (not numpy_function): receives eager tensors, works inside the
        # tf.function of model.evaluate. Not XLA-compilable: compile with jit_compile=False.
        value = tf.py_function(
            lambda s, y: self._value(s.numpy(), y.numpy()),
            [self._scores.read_value(), self._labels.read_value()], tf.float64)
        return tf.reshape(value, [])


class EqualErrorRate(_ScoreBuffer):
    """Streaming EER (fraction in [0, 1]) over all batches seen since the last reset.

    Args:
        name: metric name (default ``"eer"``).

    Example:
        >>> m = EqualErrorRate()
        >>> m.update_state([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.6])
        >>> float(m.result())
        0.5
    """

    def __init__(self, name: str = "eer", dtype: str | None = "float32") -> None:
        super().__init__(name=name, dtype=dtype)

    def _value(self, scores: np.ndarray, labels: np.ndarray) -> np.float64:
        return _safe(compute_eer, scores, labels)

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype}


class MinDCF(_ScoreBuffer):
    """Streaming normalised minDCF over all batches seen since the last reset.

    Args:
        p_target: target prior (default 0.01).
        c_miss: miss cost.
        c_fa: false-alarm cost.
        name: metric name (default ``"min_dcf_<p_target>"``, e.g. ``min_dcf_0.01``).
    """

    def __init__(self, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0,
                 name: str | None = None, dtype: str | None = "float32") -> None:
        super().__init__(name=name or f"min_dcf_{p_target:g}", dtype=dtype)
        self.p_target = float(p_target)
        self.c_miss = float(c_miss)
        self.c_fa = float(c_fa)

    def _value(self, scores: np.ndarray, labels: np.ndarray) -> np.float64:
        return _safe(compute_min_dcf, scores, labels, self.p_target, self.c_miss, self.c_fa)

    def get_config(self) -> dict:
        return {"p_target": self.p_target, "c_miss": self.c_miss, "c_fa": self.c_fa,
                "name": self.name, "dtype": self.dtype}


# === Pair scoring model ===


class MeanCropCosine(keras.layers.Layer):
    """Mean cosine similarity over all crop pairs of two embeddings.

    Inputs ``[emb1, emb2]`` of shape (B, D) or (B, N, D); output (B,) scores. Each crop is
    L2-normalised, crops are averaged, and the two averages are dotted - identical to the
    mean of the N x N crop cosines, at O(N) instead of O(N^2) cost.
    """

    def call(self, inputs):
        emb1, emb2 = inputs

        def unit_mean(e):
            e = tf.math.l2_normalize(tf.cast(e, tf.float32), axis=-1, epsilon=1e-12)
            return tf.reduce_mean(e, axis=1) if e.shape.rank == 3 else e

        return tf.reduce_sum(unit_mean(emb1) * unit_mean(emb2), axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0],)


class _PairScoringModel(keras.Model):
    """Functional model whose test step only updates metrics (there is no loss)."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return tf.constant(0.0, tf.float32)

    @property
    def metrics(self):
        # Hide the (meaningless) loss tracker so evaluate() reports only the metrics.
        return [m for m in super().metrics if m.name != "loss"]


def pair_scoring_model(embedding_dim: int | None = None, num_crops: int | None = None,
                       p_targets: Sequence[float] = (0.01, 0.05)) -> keras.Model:
    """Builds and compiles a Keras model scoring embedding pairs with verification metrics.

    Args:
        embedding_dim: D, or None for any.
        num_crops: None for inputs (B, D); an int (or 0 meaning "any N") for (B, N, D).
        p_targets: one ``MinDCF`` metric per target prior.

    Returns:
        A compiled model with inputs ``[emb1, emb2]`` (named "emb1", "emb2") and output ``score`` (B,). Use
        ``model.evaluate(tf.data.Dataset of ((emb1, emb2), label), return_dict=True)`` to
        get ``eer`` and ``min_dcf_<p>`` (labels are y_true, scores y_pred). No loss is
        compiled (there is nothing to train).

    Example:
        >>> model = pair_scoring_model(num_crops=10)
        >>> logs = model.evaluate(ds, return_dict=True)   # {"eer": ..., "min_dcf_0.01": ...}
    """
    if num_crops is None:
        shape: tuple = (embedding_dim,)
    else:
        shape = (num_crops or None, embedding_dim)
    emb1 = keras.Input(shape=shape, name="emb1", dtype="float32")
    emb2 = keras.Input(shape=shape, name="emb2", dtype="float32")
    score = MeanCropCosine(name="score")([emb1, emb2])
    model = _PairScoringModel([emb1, emb2], score, name="pair_scoring")
    metrics: list[keras.metrics.Metric] = [EqualErrorRate()]
    metrics += [MinDCF(p_target=p) for p in p_targets]
    model.compile(metrics=metrics, jit_compile=False)
    return model
