"""Adaptive symmetric score normalisation (AS-norm) with a top-k cohort.

    python evaluate.py --model M --trials T --audio_root A --score_norm asnorm \\
        --cohort COHORT_DIR --top_k 300 [--cohort_cache FILE.npz]

As wenet-e2e/wespeaker's `wespeaker/bin/score_norm.py` (read, not copied): the cohort is one
vector per cohort speaker (the mean of its files' embeddings, wespeaker's `vector_mean.py`),
L2-normalised; for every trial file, its scores against all cohort vectors are sorted and the
`top_k` largest kept, their mean mu and (population) standard deviation sigma; a trial (e, t)
with raw score s becomes

    0.5 * ((s - mu_e) / sigma_e + (s - mu_t) / sigma_t).

Scores here use the trial scorer's own scale: a file's vector is the mean of its L2-normalised
crop embeddings, so its score against a cohort vector is the mean cosine over its crops, as a
trial score is the mean cosine over crop pairs (`scoring.score_pairs`). The cohort speakers
must be disjoint from the trial speakers (a training set, as VoxCeleb2 dev for VoxCeleb1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from av_disentangle import files
from av_disentangle.constants import AUDIO_EXTENSIONS
from av_disentangle.evaluation import EvaluationError
from av_disentangle.verification_metrics import l2_normalise

logger = logging.getLogger(__name__)

METHODS = ("none", "asnorm")


def file_vectors(embeddings: np.ndarray) -> np.ndarray:
    """(F, N, D) crop embeddings -> (F, D): the mean of each file's L2-normalised crops (not
    renormalised: its dot product with a unit vector is the mean cosine over the crops)."""
    return l2_normalise(np.asarray(embeddings, np.float64)).mean(axis=1)


def cohort_vectors(embeddings: np.ndarray, speakers: Sequence[str]) -> tuple[np.ndarray,
                                                                             list[str]]:
    """One unit vector per cohort speaker: the L2-normalised mean of its files' vectors.

    Args:
        embeddings: (F, N, D) crop embeddings of the cohort files; speakers: F labels.

    Returns:
        (C, D) float64 and the C speaker names (sorted).
    """
    vectors = file_vectors(embeddings)
    names = sorted(set(speakers))
    labels = np.asarray(speakers)
    return (l2_normalise(np.stack([vectors[labels == s].mean(axis=0) for s in names])),
            names)


def top_k_stats(vectors: np.ndarray, cohort: np.ndarray, top_k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(F,) mean and population std of each file's `top_k` highest cohort scores.

    Args:
        vectors: (F, D) file vectors (`file_vectors`); cohort: (C, D) unit vectors.
    """
    if top_k < 1:
        raise EvaluationError(f"--top_k must be at least 1, got {top_k}")
    k = min(top_k, cohort.shape[0])
    scores = vectors @ cohort.T                                   # (F, C)
    top = -np.sort(-scores, axis=1)[:, :k]
    return top.mean(axis=1), top.std(axis=1)


def as_norm(scores: np.ndarray, idx1: np.ndarray, idx2: np.ndarray, mean: np.ndarray,
            std: np.ndarray) -> np.ndarray:
    """AS-norm of raw trial scores (T,): files idx1 / idx2 index `mean` / `std` (F,)."""
    std = np.maximum(std, 1e-12)
    s = np.asarray(scores, np.float64)
    return (0.5 * ((s - mean[idx1]) / std[idx1] + (s - mean[idx2]) / std[idx2])
            ).astype(np.float32)


def cohort_files(root: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(paths relative to `root`, speaker of each): `root/<speaker>/.../<utt>.<audio ext>`.

    Raises:
        EvaluationError: if `root` is not a folder or holds no speaker folders with audio.
    """
    root = Path(root)
    if not root.is_dir():
        raise EvaluationError(f"{root}: --cohort folder not found")
    paths, speakers = [], []
    for speaker_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in files.list_files(speaker_dir, AUDIO_EXTENSIONS):
            paths.append(f.relative_to(root).as_posix())
            speakers.append(speaker_dir.name)
    if len(set(speakers)) < 2:
        raise EvaluationError(f"{root}: --cohort needs <speaker>/<utt>.<ext> audio of at least "
                              f"2 speakers, found {len(set(speakers))}")
    return paths, speakers


@dataclass(frozen=True)
class Cohort:
    """(C, D) unit cohort vectors, their speaker names and the fingerprint of what made them."""

    vectors: np.ndarray
    speakers: list[str]
    fingerprint: str


def fingerprint(what: dict) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def load_cached(path: str | os.PathLike, expected: str) -> Cohort | None:
    """The cohort cached at `path` if it was made the same way (same fingerprint), else None."""
    if not path or not os.path.isfile(path):
        return None
    try:
        with np.load(path) as data:
            if str(data["fingerprint"]) != expected:
                logger.info("%s: cohort cache made otherwise (model, files or crops); "
                            "recomputing", path)
                return None
            return Cohort(data["vectors"], [str(s) for s in data["speakers"]], expected)
    except (OSError, ValueError, KeyError) as err:
        logger.warning("%s: unreadable cohort cache (%s); recomputing", path, err)
        return None


def save_cache(path: str | os.PathLike, cohort: Cohort) -> None:
    """Writes the cohort to `path` (.npz) atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, vectors=cohort.vectors, speakers=np.array(cohort.speakers),
                     fingerprint=np.array(cohort.fingerprint))

    files.write_atomic_with(str(path), write)
    logger.info("cached %d cohort speakers to %s", len(cohort.speakers), path)
