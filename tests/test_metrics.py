"""Tests for av_disentangle.metrics against an independent scikit-learn/scipy reference."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

from av_disentangle.metrics import (
    EqualErrorRate,
    MinDCF,
    compute_eer,
    compute_min_dcf,
    cosine_pair_scores,
    det_curve,
    pair_scoring_model,
)


# === Independent reference (sklearn ROC + scipy root finding) ===


def _ref_curve(scores, labels):
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    return fpr, 1.0 - tpr, thr


def ref_eer(scores, labels) -> float:
    """EER as the root of fnr - fpr along the piecewise-linear ROC (arc parameter u)."""
    fpr, fnr, _ = _ref_curve(scores, labels)
    u = np.arange(len(fpr), dtype=np.float64)
    g = lambda x: np.interp(x, u, fnr) - np.interp(x, u, fpr)  # noqa: E731
    root = brentq(g, 0.0, u[-1], xtol=1e-14, rtol=1e-15)
    return float(np.interp(root, u, fpr))


def ref_min_dcf(scores, labels, p_target, c_miss=1.0, c_fa=1.0) -> float:
    fpr, fnr, _ = _ref_curve(scores, labels)
    c_det = c_miss * fnr * p_target + c_fa * fpr * (1 - p_target)
    return float(c_det.min() / min(c_miss * p_target, c_fa * (1 - p_target)))


def _random_trials(seed: int, n: int = 2000, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    scores = rng.normal(size=n) + 1.2 * labels
    if decimals is not None:
        scores = np.round(scores, decimals)
    return scores, labels


# === Numpy metrics ===


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_eer_and_min_dcf_match_sklearn_reference(seed, decimals):
    scores, labels = _random_trials(seed, decimals=decimals)
    eer, thr = compute_eer(scores, labels)
    assert eer == pytest.approx(ref_eer(scores, labels), abs=1e-6)
    assert 0.0 < eer < 0.5
    assert np.isfinite(thr)
    for p in (0.01, 0.05, 0.5):
        dcf, _ = compute_min_dcf(scores, labels, p)
        assert dcf == pytest.approx(ref_min_dcf(scores, labels, p), abs=1e-6)
    dcf, _ = compute_min_dcf(scores, labels, 0.05, c_miss=10, c_fa=1)
    assert dcf == pytest.approx(ref_min_dcf(scores, labels, 0.05, 10, 1), abs=1e-6)


def test_ties_are_not_split():
    # Every trial has score 0.5: the only operating points are reject-all and accept-all.
    labels = np.array([1, 0, 1, 0, 0, 1])
    scores = np.full(6, 0.5)
    fpr, fnr, thr = det_curve(scores, labels)
    np.testing.assert_array_equal(fpr, [0, 1])
    np.testing.assert_array_equal(fnr, [1, 0])
    assert thr[0] == np.inf and thr[1] == 0.5
    assert compute_eer(scores, labels)[0] == pytest.approx(0.5)
    # Reject-all costs P_target (normalised 1.0), accept-all costs 1 - P_target (99.0).
    assert compute_min_dcf(scores, labels, 0.01)[0] == pytest.approx(1.0)


def test_small_hand_example():
    scores = [0.9, 0.1, 0.4, 0.6]
    labels = [1, 0, 1, 0]
    eer, thr = compute_eer(scores, labels)
    assert eer == pytest.approx(0.5) and thr == pytest.approx(0.6)
    perfect = compute_eer([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0])
    assert perfect[0] == 0.0 and 0.2 < perfect[1] <= 0.8
    assert compute_min_dcf([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], 0.01)[0] == 0.0


def test_det_curve_is_monotone_and_accepts_column_vectors():
    scores, labels = _random_trials(3, n=300, decimals=1)
    fpr, fnr, thr = det_curve(scores[:, None], labels[:, None].astype(bool))
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(fnr) <= 0)
    assert np.all(np.diff(thr) < 0)
    assert len(thr) == len(np.unique(scores)) + 1


@pytest.mark.parametrize(
    "scores, labels, message",
    [
        ([], [], "empty"),
        ([0.1, 0.2], [1], "differ in length"),
        ([0.1, np.nan, 0.3], [1, 0, 1], "NaN or Inf"),
        ([0.1, np.inf, 0.3], [1, 0, 1], "NaN or Inf"),
        ([0.1, 0.2, 0.3], [1, 1, 1], "all 3 labels are target"),
        ([0.1, 0.2, 0.3], [0, 0, 0], "non-target"),
        ([0.1, 0.2, 0.3], [0, 2, 1], "0 or 1"),
    ],
)
def test_invalid_input_raises(scores, labels, message):
    for fn in (compute_eer, lambda s, y: compute_min_dcf(s, y, 0.01), det_curve):
        with pytest.raises(ValueError, match=message):
            fn(np.asarray(scores, dtype=float), np.asarray(labels))


def test_invalid_p_target():
    with pytest.raises(ValueError, match="p_target"):
        compute_min_dcf([0.1, 0.2], [0, 1], 1.5)


def test_cosine_pair_scores_equals_mean_over_crop_pairs():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 4, 16)).astype(np.float32)
    b = rng.normal(size=(7, 3, 16)).astype(np.float32)
    an = a / np.linalg.norm(a, axis=-1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=-1, keepdims=True)
    naive = np.einsum("bnd,bmd->bnm", an, bn).mean(axis=(1, 2))
    np.testing.assert_allclose(cosine_pair_scores(a, b), naive, atol=1e-6)
    np.testing.assert_allclose(cosine_pair_scores(a[:, 0], b[:, 0]), naive * 0 + np.einsum(
        "bd,bd->b", an[:, 0], bn[:, 0]), atol=1e-6)


def test_cosine_pair_scores_with_indices():
    rng = np.random.default_rng(1)
    table = rng.normal(size=(20, 5, 16)).astype(np.float32)
    i1, i2 = rng.integers(0, 20, 50), rng.integers(0, 20, 50)
    np.testing.assert_allclose(cosine_pair_scores(table, table, i1, i2),
                               cosine_pair_scores(table[i1], table[i2]), atol=1e-6)
    with pytest.raises(ValueError, match="both"):
        cosine_pair_scores(table, table, i1)


# === Streaming Keras metrics ===


def test_streaming_metrics_eager_graph_and_reset():
    scores, labels = _random_trials(4, n=500, decimals=2)
    scores = scores.astype(np.float32)
    eer_m, dcf_m = EqualErrorRate(), MinDCF(p_target=0.05)
    assert dcf_m.name == "min_dcf_0.05"
    assert np.isnan(float(eer_m.result()))  # nothing seen yet: undefined, not an error

    @tf.function
    def update(y, s):
        eer_m.update_state(y, s)
        dcf_m.update_state(y, s)
        return eer_m.result(), dcf_m.result()

    for i in range(0, 500, 128):
        update(tf.constant(labels[i:i + 128]), tf.constant(scores[i:i + 128]))
    assert float(eer_m.result()) == pytest.approx(compute_eer(scores, labels)[0], abs=1e-6)
    assert float(dcf_m.result()) == pytest.approx(
        compute_min_dcf(scores, labels, 0.05)[0], abs=1e-6)
    eer_m.reset_state()
    assert eer_m.scores_and_labels()[0].shape == (0,)
    eer_m.update_state(labels[:50], scores[:50])  # eager
    assert float(eer_m.result()) == pytest.approx(
        compute_eer(scores[:50], labels[:50])[0], abs=1e-6)


@pytest.mark.parametrize("num_crops", [None, 3])
def test_pair_scoring_model_evaluate_matches_numpy(num_crops):
    rng = np.random.default_rng(5)
    n, d = 700, 8
    shape = (n, d) if num_crops is None else (n, num_crops, d)
    labels = (rng.random(n) < 0.4).astype(np.float32)
    e1 = rng.normal(size=shape).astype(np.float32)
    e2 = rng.normal(size=shape).astype(np.float32)
    # Make targets more similar so the numbers are non-trivial.
    e2 += 0.8 * labels.reshape((n,) + (1,) * (len(shape) - 1)) * e1
    model = pair_scoring_model(embedding_dim=d, num_crops=num_crops)
    ds = tf.data.Dataset.from_tensor_slices(((e1, e2), labels)).batch(64)  # 11 batches
    logs = model.evaluate(ds, return_dict=True, verbose=0)
    assert set(logs) == {"eer", "min_dcf_0.01", "min_dcf_0.05"}

    predicted = model.predict(ds, verbose=0)
    np.testing.assert_allclose(predicted, cosine_pair_scores(e1, e2), atol=1e-5)
    assert logs["eer"] == pytest.approx(compute_eer(predicted, labels)[0], abs=1e-6)
    for p in (0.01, 0.05):
        assert logs[f"min_dcf_{p:g}"] == pytest.approx(
            compute_min_dcf(predicted, labels, p)[0], abs=1e-6)
    assert 0.0 < logs["eer"] < 0.3

    # evaluate() resets the metrics: a second, shorter run reports only its own trials.
    logs2 = model.evaluate(ds.take(2), return_dict=True, verbose=0)
    assert logs2["eer"] == pytest.approx(compute_eer(predicted[:128], labels[:128])[0],
                                         abs=1e-6)


def test_numpy_scoring_does_not_need_tensorflow():
    """EER / minDCF / DET scoring is numpy only: importing it starts neither TF nor Keras."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from av_disentangle.verification_metrics import compute_eer\n"
            "assert compute_eer([0.9, 0.1], [1, 0])[0] == 0.0\n"
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
