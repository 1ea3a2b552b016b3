"""Figures as PNG bytes: the DET curve with score histograms, and the shared figure writer
(the sync plot is in `sync.py`).

matplotlib runs headless (Agg); a figure is returned as PNG bytes (for TensorBoard) and, when a
path is given, also written to it atomically.
"""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import tensorflow as tf

from av_disentangle.evaluation.paths import write_file
from av_disentangle.verification_metrics import compute_eer, compute_min_dcf, det_curve

logger = logging.getLogger(__name__)


def _probit(p: np.ndarray) -> np.ndarray:
    return tf.math.ndtri(tf.constant(p, tf.float64)).numpy()


def pyplot():
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike | None) -> bytes:
    """Lays out `fig`, renders it to PNG bytes (closing it) and, if `path` is given, writes them
    there atomically."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    pyplot().close(fig)
    png = buf.getvalue()
    if path is not None:
        write_file(path, png)
        logger.info("wrote plot to %s", path)
    return png


def plot_det(path: str | os.PathLike | None, scores: np.ndarray, labels: np.ndarray,
             title: str = "") -> bytes:
    """A DET curve (normal-deviate axes, EER marked) and score histograms as PNG.

    Returns the PNG bytes; also writes them (atomically) to ``path`` unless it is None.
    """
    plt = pyplot()

    labels = np.asarray(labels).astype(bool)
    fpr, fnr, _ = det_curve(scores, labels)
    eer, eer_thr = compute_eer(scores, labels)
    dcf1, thr1 = compute_min_dcf(scores, labels, 0.01)
    eps = 0.5 / max(len(scores), 1)
    lo, hi = max(eps, 1e-4), 1 - max(eps, 1e-4)

    fig, (ax_det, ax_hist) = plt.subplots(1, 2, figsize=(12, 5.2))
    ax_det.plot(_probit(np.clip(fpr, lo, hi)), _probit(np.clip(fnr, lo, hi)), lw=2,
                label="DET")
    e = _probit(np.clip(np.array([eer]), lo, hi))[0]
    ax_det.plot([_probit(np.array([lo]))[0], _probit(np.array([hi]))[0]],
                [_probit(np.array([lo]))[0], _probit(np.array([hi]))[0]],
                ls=":", c="grey", lw=1, label="FPR = FNR")
    ax_det.plot([e], [e], "o", c="red", ms=8, label=f"EER {100 * eer:.2f}%")
    ticks = np.array([0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9,
                      0.95])
    ticks = ticks[(ticks >= lo) & (ticks <= hi)]
    tick_pos = _probit(ticks)
    tick_lab = [f"{100 * t:g}" for t in ticks]
    lim = (_probit(np.array([lo]))[0],
           _probit(np.array([min(hi, 0.6 if eer < 0.2 else 0.95)]))[0])
    for set_ticks, set_labels, set_lim in ((ax_det.set_xticks, ax_det.set_xticklabels,
                                            ax_det.set_xlim),
                                           (ax_det.set_yticks, ax_det.set_yticklabels,
                                            ax_det.set_ylim)):
        set_ticks(tick_pos)
        set_labels(tick_lab)
        set_lim(*lim)
    ax_det.set_xlabel("False acceptance rate (%)")
    ax_det.set_ylabel("False rejection rate (%)")
    ax_det.set_title("DET curve (normal-deviate scale)")
    ax_det.grid(True, alpha=0.3)
    ax_det.legend(loc="lower left")

    tgt, non = scores[labels], scores[~labels]
    bins = np.linspace(float(np.min(scores)), float(np.max(scores)) + 1e-9, 60)
    ax_hist.hist(non, bins=bins, alpha=0.6, density=True, color="tab:orange",
                 label=f"non-target ({non.size})")
    ax_hist.hist(tgt, bins=bins, alpha=0.6, density=True, color="tab:blue",
                 label=f"target ({tgt.size})")
    ax_hist.axvline(eer_thr, c="red", ls="--", label=f"EER threshold {eer_thr:.3f}")
    if np.isfinite(thr1):
        ax_hist.axvline(thr1, c="black", ls=":", label=f"minDCF(0.01) threshold {thr1:.3f}")
    ax_hist.set_xlabel("score (mean cosine similarity)")
    ax_hist.set_ylabel("density")
    ax_hist.set_title("Score distributions")
    ax_hist.legend(loc="upper left", fontsize=8)
    fig.suptitle(title or f"Verification: EER {100 * eer:.2f}%, minDCF(0.01) {dcf1:.3f}")
    return save_figure(fig, path)
