"""Speaker-verification scoring in numpy: EER, minDCF, DET curve, cosine pair scores.

Conventions
-----------
* ``scores``: 1-D array of trial scores, higher = more likely the same speaker.
* ``labels``: 1-D array of the same length, 1 = target (same speaker), 0 = non-target.
* A trial is *accepted* at threshold ``t`` when ``score >= t``.
* Operating points are only taken between DISTINCT score values: all trials with a tied
  score are accepted or rejected together. The ROC/DET between two neighbouring operating
  points is the straight line obtained by randomised tie-breaking, and the EER is the exact
  crossing of FPR and FNR on that piecewise-linear curve (no nearest-point approximation).
* minDCF is normalised as in the VoxCeleb / Kaldi ``compute_min_dcf.py`` convention::

      C_det(t) = C_miss * P_miss(t) * P_target + C_fa * P_fa(t) * (1 - P_target)
      minDCF   = min_t C_det(t) / min(C_miss * P_target, C_fa * (1 - P_target))

  The minimum of a linear cost over the piecewise-linear curve is always at a vertex, so
  it is taken over the distinct-score operating points (including accept-all and
  reject-all).

Only numpy is imported (no TensorFlow / Keras: scoring tools and tests can use it alone;
scikit-learn is used in the tests as an independent reference only). The streaming Keras
metrics built on these functions are in `av_disentangle.metrics`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["compute_eer", "compute_min_dcf", "det_curve", "cosine_pair_scores"]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of (..., D) scaled to unit length (a zero row stays zero): the one numpy L2
    normalisation of the evaluation code (in graphs: `tf.math.l2_normalize`)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _validate(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[int]
              ) -> tuple[np.ndarray, np.ndarray]:
    """Checks and converts inputs to (float64 scores (n,), bool labels (n,))."""
    s = np.asarray(scores)
    y = np.asarray(labels)
    if s.ndim == 2 and 1 in s.shape:  # accept (n, 1) / (1, n) column/row vectors
        s = s.reshape(-1)
    if y.ndim == 2 and 1 in y.shape:
        y = y.reshape(-1)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(
            f"scores and labels must be 1-D, got shapes {np.shape(scores)} and {np.shape(labels)}")
    if s.shape[0] != y.shape[0]:
        raise ValueError(
            f"scores and labels differ in length: {s.shape[0]} scores vs {y.shape[0]} labels")
    if s.shape[0] == 0:
        raise ValueError("empty input: no trials to score")
    try:
        s = s.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"scores must be numeric: {err}") from err
    bad = ~np.isfinite(s)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{int(bad.sum())} score(s) are NaN or Inf (first at index {first}: {s[first]})")
    try:
        yf = y.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"labels must be 0/1: {err}") from err
    if not np.all((yf == 0) | (yf == 1)):
        odd = np.unique(yf[(yf != 0) & (yf != 1)])[:5]
        raise ValueError(f"labels must be 0 or 1, found values such as {odd.tolist()}")
    yb = yf == 1
    n_pos = int(yb.sum())
    if n_pos == 0 or n_pos == yb.shape[0]:
        only = "target (1)" if n_pos else "non-target (0)"
        raise ValueError(
            f"all {yb.shape[0]} labels are {only}: EER/minDCF need both target and "
            "non-target trials")
    return s, yb


def det_curve(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[int]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Operating points at every distinct score value.

    Args:
        scores: (n,) trial scores, higher = more likely target.
        labels: (n,) 1 for target trials, 0 for non-target trials.

    Returns:
        ``(fpr, fnr, thresholds)``, each of shape (k + 1,) for k distinct scores, ordered by
        DECREASING threshold (so fpr increases, fnr decreases). ``thresholds[0] = +inf``
        is the reject-all point (fpr 0, fnr 1); ``thresholds[-1] = min(scores)`` accepts
        everything (fpr 1, fnr 0). A trial is accepted when ``score >= threshold``.

    Raises:
        ValueError: empty input, length mismatch, NaN/Inf score, labels not 0/1 or all
            of one class.
    """
    s, y = _validate(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # Last index of each run of equal scores: thresholds only between distinct values.
    ends = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.shape[0] - 1]
    tps = np.cumsum(y_sorted, dtype=np.int64)[ends]
    fps = (ends + 1) - tps
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    fpr = np.r_[0.0, fps / n_neg]
    fnr = np.r_[1.0, 1.0 - tps / n_pos]
    thresholds = np.r_[np.inf, s_sorted[ends]]
    return fpr, fnr, thresholds


def compute_eer(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[int]
                ) -> tuple[float, float]:
    """Equal error rate (fraction, not percent) and the threshold where it is reached.

    The EER is where FPR == FNR on the piecewise-linear curve through the distinct-score
    operating points (see module docstring). The returned threshold is linearly
    interpolated between the two neighbouring distinct scores (the upper score when the
    crossing lies on the segment starting at the reject-all point).

    Args:
        scores: (n,) trial scores.
        labels: (n,) 0/1 labels.

    Returns:
        ``(eer, threshold)`` with eer in [0, 1].
    """
    fpr, fnr, thr = det_curve(scores, labels)
    diff = fnr - fpr  # starts at 1, ends at -1, non-increasing
    i = int(np.flatnonzero(diff <= 0)[0])  # first point at/after the crossing
    if diff[i] == 0:
        return float(fpr[i]), float(thr[i])
    j = i - 1  # diff[j] > 0 > diff[i]
    t = diff[j] / (diff[j] - diff[i])
    eer = fpr[j] + t * (fpr[i] - fpr[j])
    if np.isinf(thr[j]):
        threshold = thr[i]
    else:
        threshold = thr[j] + t * (thr[i] - thr[j])
    return float(eer), float(threshold)


def compute_min_dcf(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[int],
                    p_target: float, c_miss: float = 1.0, c_fa: float = 1.0
                    ) -> tuple[float, float]:
    """Normalised minimum detection cost (VoxCeleb / Kaldi convention).

    Args:
        scores: (n,) trial scores.
        labels: (n,) 0/1 labels.
        p_target: prior probability of a target trial, in (0, 1), e.g. 0.01 or 0.05.
        c_miss: cost of a miss.
        c_fa: cost of a false alarm.

    Returns:
        ``(min_dcf, threshold)``; threshold is the distinct score value reaching the
        minimum (``+inf`` if rejecting everything is optimal).
    """
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"c_miss and c_fa must be positive, got {c_miss}, {c_fa}")
    fpr, fnr, thr = det_curve(scores, labels)
    c_det = c_miss * fnr * p_target + c_fa * fpr * (1.0 - p_target)
    c_def = min(c_miss * p_target, c_fa * (1.0 - p_target))
    k = int(np.argmin(c_det))
    return float(c_det[k] / c_def), float(thr[k])


def cosine_pair_scores(emb1: np.ndarray, emb2: np.ndarray, idx1: np.ndarray | None = None,
                       idx2: np.ndarray | None = None) -> np.ndarray:
    """Mean cosine similarity over all crop pairs, vectorised in numpy.

    Args:
        emb1: (B, D) or (B, N, D) embeddings (N crops each); with ``idx1``, a table
            (F1, D) or (F1, N, D) of per-file embeddings.
        emb2: (B, D) or (B, M, D); with ``idx2``, a table (F2, D) or (F2, M, D).
        idx1, idx2: optional (P,) row indices: score pairs (emb1[idx1[p]], emb2[idx2[p]]).
            The tables are reduced BEFORE gathering, so scoring a trial list costs
            O(F*N*D + P*D) instead of O(P*N*D).

    Returns:
        (B,) or (P,) float32 scores. With crops, score = mean_{n,m} cos(a[n], b[m]),
        computed as the dot product of the crop-averaged unit vectors (bilinearity), which
        costs O(N+M) per pair instead of O(N*M).
    """
    def _unit_mean(e: np.ndarray) -> np.ndarray:
        e = l2_normalise(np.asarray(e, dtype=np.float32))
        return e.mean(axis=1) if e.ndim == 3 else e

    a, b = _unit_mean(emb1), _unit_mean(emb2)
    if (idx1 is None) != (idx2 is None):
        raise ValueError("give both idx1 and idx2, or neither")
    if idx1 is not None:
        a, b = a[np.asarray(idx1)], b[np.asarray(idx2)]
    if a.shape != b.shape:
        raise ValueError(f"embedding shapes differ: {a.shape} vs {b.shape}")
    return np.einsum("bd,bd->b", a, b)
