"""Free, label-free speaker-verification baselines: what any learned embedding must beat.

Each file is decoded whole (`verification.embed_files_baseline`) and summarised by statistics of our
front end's log-mel frames (`features.log_mel_spectrogram`, the `centered` front end WITHOUT
its per-utterance normalisation, which removes exactly the long-term spectrum these baselines
measure):

- `ltas`: the long-term average spectrum, the mean log-mel over time: (40,).
- `mfcc`: MFCCs 1-19 (orthonormal DCT-II of the 40 log-mel bands, c0 = loudness dropped),
  their mean and standard deviation over time: (38,).

Both are scored with the cosine, like a model's embeddings. `*_z` variants z-score every
dimension over the files of the trial set first (mean 0, variance 1 per dimension across the
F distinct files; label-free but it sees the evaluation set, as score normalisation does),
which keeps one loud dimension from dominating the cosine. Written here (not with librosa or
python_speech_features) so that the baselines share the model's exact filterbank and
decoding; the MFCCs are the textbook DCT of log-mel energies.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.fft

from av_disentangle.evaluation import BASELINES, EvaluationError
from av_disentangle.features import log_mel_spectrogram

NUM_MELS = 40
NUM_MFCC = 19  # MFCCs 1..19 (c0, the log energy, left out)
MIN_SAMPLES = 400  # one 25 ms analysis window: a shorter file has no frame to summarise


def log_mel_frames(wav: np.ndarray) -> np.ndarray:
    """(S,) float32 16 kHz waveform -> (S // 160, 40) float32 raw log-mel frames (the
    `centered` front end, not normalised)."""
    return log_mel_spectrogram(wav[None].astype(np.float32), NUM_MELS, normalize=False,
                               front_end="centered")[0].numpy()


def ltas(log_mel: np.ndarray) -> np.ndarray:
    """(N, 40) log-mel frames -> (40,) mean over time."""
    return log_mel.mean(axis=0)


def mfcc_stats(log_mel: np.ndarray) -> np.ndarray:
    """(N, 40) log-mel frames -> (38,): mean and std over time of MFCCs 1-19."""
    mfcc = scipy.fft.dct(log_mel, type=2, norm="ortho", axis=-1)[:, 1:NUM_MFCC + 1]
    return np.concatenate([mfcc.mean(axis=0), mfcc.std(axis=0)])


def zscore(table: np.ndarray) -> np.ndarray:
    """(F, D) -> (F, D): every dimension to mean 0 and variance 1 over the F rows (a
    constant dimension becomes 0)."""
    std = table.std(axis=0)
    return (table - table.mean(axis=0)) / np.where(std > 0, std, 1.0)


def check_kind(kind: str) -> None:
    """EvaluationError unless `kind` is one of `BASELINES`."""
    if kind not in BASELINES:
        raise EvaluationError(f"unknown baseline {kind!r}: one of {', '.join(BASELINES)}")


def baseline_table(kind: str, log_mels: Sequence[np.ndarray]) -> np.ndarray:
    """The (F, D) float32 baseline embeddings of F files' log-mel frames, `kind` in
    `BASELINES`."""
    check_kind(kind)
    summarise = mfcc_stats if kind.startswith("mfcc") else ltas
    table = np.stack([summarise(m) for m in log_mels]).astype(np.float64)
    return (zscore(table) if kind.endswith("_z") else table).astype(np.float32)
