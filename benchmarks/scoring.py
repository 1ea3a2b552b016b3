#!/usr/bin/env python
"""Times trial scoring on the full VoxCeleb1-O list with synthetic embeddings.

Usage:
    python benchmarks/scoring.py [--trials data/samples/voxceleb1_trials/veri_test.txt]
        [--dim 512] [--crops 10] [--repeats 3]

Measures, with random unit embeddings for every distinct utterance of the list:
  * vectorised numpy pair scoring (gather + einsum): 1 crop, and N crops both as the naive
    N x N crop-pair einsum (chunked) and as the equivalent dot of crop-averaged unit vectors;
  * EER + minDCF(0.01) + minDCF(0.05) from av_disentangle.metrics;
  * the Keras pair-scoring model through ``model.evaluate`` (what evaluate.py runs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from av_disentangle.metrics import compute_eer, compute_min_dcf, cosine_pair_scores  # noqa


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Best wall time (s) over ``repeats`` runs, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def naive_crop_pair_scores(emb: np.ndarray, i1: np.ndarray, i2: np.ndarray,
                           chunk: int = 2048) -> np.ndarray:
    """(F, N, D) unit embeddings -> (P,) mean of the N x N crop cosines, chunked."""
    out = np.empty(i1.shape[0], np.float32)
    for s in range(0, i1.shape[0], chunk):
        a, b = emb[i1[s:s + chunk]], emb[i2[s:s + chunk]]
        out[s:s + chunk] = np.einsum("pnd,pmd->pnm", a, b, optimize=True).mean(axis=(1, 2))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", default=str(REPO / "data/samples/voxceleb1_trials/veri_test.txt"))
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--crops", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip_keras", action="store_true")
    args = p.parse_args()

    t = time.perf_counter()
    rows = [ln.split() for ln in open(args.trials, encoding="utf-8") if ln.strip()]
    labels = np.array([int(r[0]) for r in rows])
    files = sorted({x for r in rows for x in r[1:]})
    index = {f: i for i, f in enumerate(files)}
    i1 = np.array([index[r[1]] for r in rows])
    i2 = np.array([index[r[2]] for r in rows])
    t_parse = time.perf_counter() - t
    print(f"{len(rows)} trials ({labels.sum()} target), {len(files)} utterances, "
          f"D={args.dim}; parse {1e3 * t_parse:.1f} ms")

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(files), args.crops, args.dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    emb1 = np.ascontiguousarray(emb[:, 0])

    r = args.repeats
    t1, s1 = best_of(lambda: np.einsum("pd,pd->p", emb1[i1], emb1[i2]), r)
    print(f"score 1 crop (gather + einsum):                    {1e3 * t1:8.1f} ms")
    tn, sn = best_of(lambda: cosine_pair_scores(emb, emb, i1, i2), r)
    print(f"score {args.crops} crops (crop-mean per file, gather, dot): {1e3 * tn:8.1f} ms")
    tnaive, snaive = best_of(lambda: naive_crop_pair_scores(emb, i1, i2), 1)
    print(f"score {args.crops} crops (naive NxN einsum, chunked):      {1e3 * tnaive:8.1f} ms"
          f"   (max |diff| vs crop-mean {np.abs(snaive - sn).max():.1e})")

    def metrics(scores: np.ndarray) -> tuple[float, float, float]:
        return (compute_eer(scores, labels)[0], compute_min_dcf(scores, labels, 0.01)[0],
                compute_min_dcf(scores, labels, 0.05)[0])

    tmet, vals = best_of(lambda: metrics(s1), r)
    print(f"EER + minDCF(0.01) + minDCF(0.05):                 {1e3 * tmet:8.1f} ms"
          f"   (random embeddings: EER {100 * vals[0]:.2f}%)")
    print(f"total 1-crop scoring + metrics:                    {1e3 * (t1 + tmet):8.1f} ms")

    if not args.skip_keras:
        import tensorflow as tf

        import evaluate

        for name, table in (("1 crop", emb1), (f"{args.crops} crops", emb)):
            t = time.perf_counter()
            scores, logs = evaluate.score_pairs(table, table, i1, i2,
                                                labels.astype(np.float32), 4096)
            dt = time.perf_counter() - t
            print(f"Keras model.evaluate, {name:9s} (incl. build/trace): {1e3 * dt:8.1f} ms"
                  f"   EER {100 * logs['eer']:.2f}%")
        del tf


if __name__ == "__main__":
    main()
