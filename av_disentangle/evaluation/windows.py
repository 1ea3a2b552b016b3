"""Evaluation of a model in memory on the tracks of a split: the benchmarks' (and any
training-time validation's) way to the embeddings, crops, pooling and scoring `evaluate.py`
gives a user of the exported SavedModel.

- `Windows`, `track_windows`: every track cut into non-overlapping windows from frame 0
  (`pipelines.input.fixed_windows`), for the per-step (sync, content) measures.
- `WindowEmbedder`: the streams as the export serves them (inference mode, float32:
  `export.float32_streams`, so a bf16-trained model is scored as it is served): `embed`, the
  four (N, T', D) sequences of every window; `crop_tables`, per track `num_crops` evenly spaced
  crops (`verification.crop_waveform`, evaluate.py's crops) embedded with the export's pooling
  (`losses.time_pool`).
- `track_trials`, `verify_tables`: pairs of tracks as trials, scored by `scoring.score_pairs`
  (evaluate.py's Keras pair-scoring model: mean cosine over crop pairs, EER, minDCF).
- `baseline_track_tables`: the free baselines of `evaluate.py --baseline` per track.
- `sync_scores`: within-window step matching and the diagonal offset search.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf

from av_disentangle import losses
from av_disentangle.evaluation import BASELINES, baselines
from av_disentangle.evaluation.scoring import check_both_classes, score_pairs
from av_disentangle.evaluation.verification import crop_starts, crop_waveform
from av_disentangle.export import float32_streams
from av_disentangle.streams import CONTENT, IDENTITY
from pipelines.input import fixed_windows

SEQUENCES = ("face_content", "face_identity", "audio_content", "audio_identity")
CROP_TABLES = ("face_identity", "audio_identity", "audio_content")


@dataclasses.dataclass
class Windows:
    """Deterministic evaluation windows of a set of tracks, in memory (N windows)."""

    frames: np.ndarray  # (N, T, S, S, 3) uint8
    audio: np.ndarray  # (N, T * 640) float32
    track: np.ndarray  # (N,) int, index into track_ids
    identity: np.ndarray  # (N,) int, index into identities
    track_index: np.ndarray  # (N,) int, the track's index within its identity (0 if unknown)
    start: np.ndarray  # (N,) int, start frame
    units: np.ndarray  # (N, T) int, per-frame content unit (-1 if unknown)
    track_ids: list
    identities: list

    def track_arrays(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Track `t`'s windows joined in order: (F, S, S, 3) frames, (F * 640,) audio (the
        frames after its last whole window are not held)."""
        rows = np.flatnonzero(self.track == t)
        return (self.frames[rows].reshape(-1, *self.frames.shape[2:]),
                self.audio[rows].reshape(-1))

    def track_identity(self) -> np.ndarray:
        """(num_tracks,) int: the identity index of each track."""
        ident = np.zeros(len(self.track_ids), np.int64)
        ident[self.track] = self.identity
        return ident

    def subset(self, keep: Iterable[str]) -> "Windows":
        """The windows of the identities named in `keep`, track / identity indices
        renumbered."""
        identities = sorted(set(keep) & set(self.identities))
        names = np.asarray(self.identities)[self.identity]
        mask = np.isin(names, identities)
        tracks = sorted(set(self.track[mask].tolist()))
        track_map = {t: i for i, t in enumerate(tracks)}
        return Windows(
            frames=self.frames[mask], audio=self.audio[mask],
            track=np.array([track_map[t] for t in self.track[mask]], np.int64),
            identity=np.array([identities.index(n) for n in names[mask]], np.int64),
            track_index=self.track_index[mask], start=self.start[mask],
            units=self.units[mask], track_ids=[self.track_ids[t] for t in tracks],
            identities=identities)


def track_windows(tracks: Sequence[dict], window: int, track_ids: Sequence[str],
                  identities: Sequence[str], *, track_index: Sequence[int] | None = None,
                  units: Sequence[np.ndarray] | None = None) -> Windows:
    """Cuts every track into non-overlapping windows of `window` frames from frame 0.

    Args:
      tracks: T decoded tracks (`pipelines.records.read_tracks`: "frames" (F, S, S, 3) uint8,
        "audio" (F * 640,) float32), in the order wanted.
      track_ids: T names; identities: T identity names (one per track).
      track_index: T indices of each track within its identity (default 0).
      units: T per-frame content-unit arrays (F,) (default -1: unknown).
    """
    names = sorted(set(identities))
    cols: dict[str, list] = {k: [] for k in ("frames", "audio", "track", "identity",
                                             "track_index", "start", "units")}
    for i, t in enumerate(tracks):
        for start, frames, audio in fixed_windows(t["frames"], t["audio"], window):
            cols["frames"].append(frames)
            cols["audio"].append(audio)
            cols["track"].append(i)
            cols["identity"].append(names.index(identities[i]))
            cols["track_index"].append(0 if track_index is None else track_index[i])
            cols["start"].append(start)
            cols["units"].append(np.full(window, -1, np.int64) if units is None
                                 else np.asarray(units[i], np.int64)[start:start + window])
    if not cols["frames"]:
        raise ValueError(f"no track is at least {window} frames long")
    arrays = {k: np.stack(v) if k in ("frames", "audio", "units") else np.asarray(v, np.int64)
              for k, v in cols.items()}
    return Windows(track_ids=list(track_ids), identities=names, **arrays)


class WindowEmbedder:
    """A model's two streams as the export serves them (float32, training=False), traced once.

    `embed` first copies the model's current weights (BatchNorm statistics included) into the
    float32 streams, so one embedder follows a model through training and re-estimation.
    """

    def __init__(self, model) -> None:
        """`model`: anything with `face_stream`, `audio_stream` and `model_config`
        (`DisentangleModel`, `SpeakerClassifier`)."""
        self.model = model
        self.face, self.audio = float32_streams(model.face_stream, model.audio_stream,
                                                model.model_config)
        self._face_fn = tf.function(lambda x: self.face(x, training=False),
                                    reduce_retracing=True)
        self._audio_fn = tf.function(lambda x: self.audio(x, training=False),
                                     reduce_retracing=True)

    def _copy_weights(self) -> None:
        if self.face is not self.model.face_stream:
            self.face.set_weights(self.model.face_stream.get_weights())
            self.audio.set_weights(self.model.audio_stream.get_weights())

    def embed(self, win: Windows, batch: int = 32) -> dict[str, np.ndarray]:
        """{"face_content", "face_identity", "audio_content", "audio_identity"}: (N, T', D)
        float32 sequences of every window."""
        self._copy_weights()
        out: dict[str, list] = {k: [] for k in SEQUENCES}
        for s in range(0, len(win.frames), batch):
            f = self._face_fn(tf.constant(win.frames[s:s + batch]))
            a = self._audio_fn(tf.constant(win.audio[s:s + batch]))
            out["face_content"].append(f[CONTENT].numpy())
            out["face_identity"].append(f[IDENTITY].numpy())
            out["audio_content"].append(a[CONTENT].numpy())
            out["audio_identity"].append(a[IDENTITY].numpy())
        return {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}

    def crop_tables(self, win: Windows, num_crops: int = 10, crop_frames: int | None = None,
                    faces: bool = True) -> dict[str, np.ndarray]:
        """Per track, `num_crops` evenly spaced crops of `crop_frames` frames (default: the
        window) of its audio (`verification.crop_waveform`, as evaluate.py crops a file) and,
        with `faces`, of its frames (the same spacing), embedded and time-pooled as the export
        does: {"audio_identity", "audio_content"[, "face_identity"]}: (num_tracks, num_crops,
        D) float32 (the audio content pooled like an identity: how much identity it carries).
        Without `faces` the face stream, the costlier one, does not run."""
        self._copy_weights()
        crop = crop_frames or win.frames.shape[1]
        out: dict[str, list] = {k: [] for k in CROP_TABLES if faces or k != "face_identity"}
        for t in range(len(win.track_ids)):
            frames, audio = win.track_arrays(t)
            if faces:
                starts = crop_starts(frames.shape[0], num_crops, crop)
                f = self._face_fn(tf.constant(np.stack([frames[s:s + crop] for s in starts])))
                out["face_identity"].append(losses.time_pool(f[IDENTITY]).numpy())
            a = self._audio_fn(tf.constant(crop_waveform(audio, num_crops, crop * 640)))
            out["audio_identity"].append(losses.time_pool(a[IDENTITY]).numpy())
            out["audio_content"].append(losses.time_pool(a[CONTENT]).numpy())
        return {k: np.stack(v).astype(np.float32) for k, v in out.items()}


def pooled(sequences: np.ndarray) -> np.ndarray:
    """(N, T', D) -> (N, D): `losses.time_pool`, the pooling of the export's embeddings."""
    return losses.time_pool(tf.constant(sequences, tf.float32)).numpy()


def track_trials(identity: np.ndarray, *, ordered: bool = False,
                 exclude_same: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trials among n tracks: `(idx1, idx2, labels)`, all pairs i < j (`ordered`: all i != j,
    for two different tables); target = same identity. `exclude_same` (n,): pairs whose tracks
    share this value (e.g. the utterance) are left out."""
    n = len(identity)
    if ordered:
        i, j = np.nonzero(~np.eye(n, dtype=bool))
    else:
        i, j = np.triu_indices(n, k=1)
    if exclude_same is not None:
        group = np.asarray(exclude_same)
        keep = group[i] != group[j]
        i, j = i[keep], j[keep]
    return i, j, (identity[i] == identity[j]).astype(np.int64)


def verify_tables(table1: np.ndarray, table2: np.ndarray,
                  trials: tuple[np.ndarray, np.ndarray, np.ndarray], what: str = "trials"
                  ) -> dict[str, float]:
    """Scores `trials` (`track_trials`) of (n, D) or (n, N, D) tables (`crop_tables`) with
    `scoring.score_pairs` (cosine; mean cosine over crop pairs):
    {"eer", "min_dcf_0.01", "min_dcf_0.05", "trials", "targets"} (rates as fractions)."""
    i, j, labels = trials
    check_both_classes(labels, what)
    _, logs = score_pairs(table1, table2, i, j, labels)
    return {**logs, "trials": int(len(labels)), "targets": int(labels.sum())}


def baseline_track_tables(win: Windows) -> dict[str, np.ndarray]:
    """The free baselines of `evaluate.py --baseline` (`evaluation.baselines`, MFCC mean+std
    and the long-term average log-mel, raw and z-scored over the tracks) of each track's audio
    (`Windows.track_arrays`), whole as evaluate.py takes a file: {kind: (num_tracks, D)
    float32}."""
    log_mels = [baselines.log_mel_frames(win.track_arrays(t)[1])
                for t in range(len(win.track_ids))]
    return {kind: baselines.baseline_table(kind, log_mels) for kind in BASELINES}


def sync_scores(emb: dict[str, np.ndarray], max_shift: int) -> dict[str, float]:
    """Audio-visual sync of every window, from its content sequences (N, T', D):
    `sync_top1`: top-1 step matching (face step t picks audio step t among the window's T'),
    `sync_offset_acc`: the mean cosine along each diagonal (face t vs audio t + d, |d| <=
    `max_shift`) peaks at d = 0; `num_steps`: T'."""
    cosine = lambda a, b: tf.linalg.matmul(a, b, transpose_b=True)  # noqa: E731
    logits = losses.content_logits(tf.constant(emb["face_content"]),
                                   tf.constant(emb["audio_content"]), cosine)
    top1 = float(losses.matching_accuracy(logits))
    sim = logits.numpy()  # (N, T', T')
    shifts = np.arange(-max_shift, max_shift + 1)
    diag = np.stack([np.mean(np.diagonal(sim, offset=int(d), axis1=1, axis2=2), axis=-1)
                     for d in shifts], axis=1)
    offset_acc = float(np.mean(shifts[np.argmax(diag, axis=1)] == 0))
    return {"sync_top1": top1, "sync_offset_acc": offset_acc, "num_steps": sim.shape[1]}
