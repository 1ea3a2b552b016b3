#!/usr/bin/env python
"""Times trial scoring on the full VoxCeleb1-O list with synthetic embeddings, and embedding
extraction (utterances/s) of an exported model on the bundled LibriSpeech subset.

Usage:
    python benchmarks/scoring.py [--trials data/samples/voxceleb1_trials/veri_test.txt]
        [--dim 512] [--crops 10] [--repeats 3]
    python benchmarks/scoring.py --extract_model saved_models/av_disentangle/1 \
        [--baseline_evaluate /tmp/old_evaluate.py] [--extract_repeats 3] [--batch_size 64]
        [--baseline_batch_size 64]

Measures, with random unit embeddings for every distinct utterance of the list:
  * vectorised numpy pair scoring (gather + einsum): 1 crop, and N crops both as the naive
    N x N crop-pair einsum (chunked) and as the equivalent dot of crop-averaged unit vectors;
  * EER + minDCF(0.01) + minDCF(0.05) from av_disentangle.metrics;
  * the Keras pair-scoring model through ``model.evaluate`` (what evaluate.py runs).

With ``--extract_model``: ``verification.embed_files`` (decode, 10 crops x 2 s, embed) over the
50 LibriSpeech utterances, median and best of ``--extract_repeats`` after a warm-up; with
``--baseline_evaluate`` (an older evaluate.py, e.g. ``git show 778fdc0:evaluate.py``), its
``embed_files`` is timed in the same process, alternating with ours, and the embeddings are
compared.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from av_disentangle import files
from av_disentangle.constants import AUDIO_EXTENSIONS
from av_disentangle.evaluation.trials import read_trials
from av_disentangle.logs import quiet_tensorflow
from av_disentangle.verification_metrics import (compute_eer, compute_min_dcf, cosine_pair_scores,
                                                 l2_normalise)

REPO = Path(__file__).resolve().parents[1]
LIBRISPEECH = REPO / "data" / "samples" / "librispeech_subset"


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


def _load_module(path: str, name: str):
    """Imports a Python file as module `name` (an older evaluate.py kept outside the tree)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def extraction(model_path: str, baseline: str | None, repeats: int, batch_size: int,
               baseline_batch_size: int) -> None:
    """Utterances/s of embedding extraction (decode + crops + model) on LibriSpeech."""
    from av_disentangle.evaluation import exported, verification

    paths = [p.relative_to(LIBRISPEECH).as_posix()
             for p in files.list_files(LIBRISPEECH, AUDIO_EXTENSIONS)]
    runners = {"package": (verification.embed_files, exported.ExportedModel(model_path),
                           batch_size)}
    if baseline:
        old = _load_module(baseline, "baseline_evaluate")
        runners["baseline"] = (old.embed_files, old.ExportedModel(model_path),
                               baseline_batch_size)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    out = {}
    for name, (embed, model, batch) in runners.items():  # warm-up: every batch shape once
        embed(model, paths, LIBRISPEECH, 10, 2.0, batch)
    for _ in range(repeats):  # alternate, so both see the same machine load
        for name, (embed, model, batch) in runners.items():
            t = time.perf_counter()
            out[name], _ = embed(model, paths, LIBRISPEECH, 10, 2.0, batch)
            rates[name].append(len(paths) / (time.perf_counter() - t))
    for name, values in rates.items():
        print(f"embedding extraction, {name:8s}: {len(paths)} utterances (10 crops x 2 s, "
              f"--batch_size {runners[name][2]}): median {np.median(values):.1f} utt/s, best "
              f"{max(values):.1f} over {repeats} runs")
    if baseline:
        diff = np.abs(out["package"] - out["baseline"]).max()
        print(f"max |embedding difference| package vs baseline: {diff:.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", default=str(REPO / "data/samples/voxceleb1_trials/veri_test.txt"))
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--crops", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip_keras", action="store_true")
    p.add_argument("--extract_model", help="exported SavedModel: time embedding extraction "
                                           "instead of scoring")
    p.add_argument("--baseline_evaluate", help="an older evaluate.py to time beside it")
    p.add_argument("--extract_repeats", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=64, help="crops per model call")
    p.add_argument("--baseline_batch_size", type=int,
                   help="--batch_size of the baseline (default: the same)")
    args = p.parse_args()
    quiet_tensorflow()  # before TensorFlow loads (the Keras and extraction parts)
    if args.extract_model:
        extraction(args.extract_model, args.baseline_evaluate, args.extract_repeats,
                   args.batch_size, args.baseline_batch_size or args.batch_size)
        return

    t = time.perf_counter()
    trials = read_trials(args.trials)
    labels = np.array([t.label for t in trials])
    utterances = sorted({p for t in trials for p in (t.path1, t.path2)})
    index = {u: i for i, u in enumerate(utterances)}
    i1 = np.array([index[t.path1] for t in trials])
    i2 = np.array([index[t.path2] for t in trials])
    t_parse = time.perf_counter() - t
    print(f"{len(trials)} trials ({labels.sum()} target), {len(utterances)} utterances, "
          f"D={args.dim}; parse {1e3 * t_parse:.1f} ms")

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(utterances), args.crops, args.dim)).astype(np.float32)
    emb = l2_normalise(emb)
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
        from av_disentangle.evaluation.scoring import score_pairs

        for name, table in (("1 crop", emb1), (f"{args.crops} crops", emb)):
            t = time.perf_counter()
            scores, logs = score_pairs(table, table, i1, i2, labels.astype(np.float32), 4096)
            dt = time.perf_counter() - t
            print(f"Keras model.evaluate, {name:9s} (incl. build/trace): {1e3 * dt:8.1f} ms"
                  f"   EER {100 * logs['eer']:.2f}%")


if __name__ == "__main__":
    main()
