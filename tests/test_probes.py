"""Linear and MLP probes (`av_disentangle.evaluation.probes`)."""

from __future__ import annotations

import numpy as np

from av_disentangle.evaluation.probes import (fit_linear_probe, linear_probe_accuracy,
                                              mlp_probe_accuracy)


def test_mlp_probe_reads_what_a_linear_probe_cannot():
    """XOR of two features: a linear probe is at chance on held-out points, the one-hidden-
    layer MLP probe is not (it measures non-linear information)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 4))
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.int64)
    linear = linear_probe_accuracy(x[:800], y[:800], x[800:], y[800:], 2)
    mlp = mlp_probe_accuracy(x[:800], y[:800], x[800:], y[800:], 2)
    assert linear < 0.65, linear
    assert mlp > 0.9, mlp


def test_linear_probe_reads_a_linear_label_and_not_noise():
    """Three classes along one direction (scaled by 100, which the standardisation undoes):
    near perfect on held-out points; random labels stay near chance 1/3."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 900)
    x = rng.normal(size=(900, 5))
    x[:, 2] = 100.0 * (3.0 * y + rng.normal(scale=0.3, size=900))
    assert linear_probe_accuracy(x[:600], y[:600], x[600:], y[600:], 3) > 0.97
    noise = rng.integers(0, 3, 900)
    assert linear_probe_accuracy(x[:600], noise[:600], x[600:], noise[600:], 3) < 0.45
    logits = fit_linear_probe(x[:600], y[:600], 3)(x[600:])
    assert logits.shape == (300, 3)
