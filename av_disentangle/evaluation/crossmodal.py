"""Cross-modal (face <-> voice) identity evaluation: trial construction and scoring.

Protocol (identity, not clip matching): the face of one clip is compared with the voice of
ANOTHER clip. A pair is a target when the two clips show the same identity and a non-target
when they show different identities; a face and a voice of the same clip are never paired,
because the face and voice of one recording share far more than identity (the same words at
the same time, the same channel), so such pairs would measure clip matching.

Two measures:
  * verification: every such (face segment, voice segment) pair is scored (cosine of the
    face identity embedding and the voice identity embedding); EER and minDCF as for speaker
    verification. With many segments each class is capped by a seeded random subset.
  * 1 face, 2 voices forced choice (Nagrani, Albanie, Zisserman, "Seeing Voices and Hearing
    Faces: Cross-modal biometric matching", CVPR 2018, the F-V "static" test): given a face,
    which of two voices is its identity's - one voice of another clip of the same identity,
    one of a different identity. Accuracy (chance 50%) with its binomial standard error.
    Unlike that paper's test, the pairs are not balanced for gender, age or nationality
    (no such labels here), so the task can be easier.

Identities (`identity_of`): from `--identities` (CSV `path,identity`, or a TSV manifest with a
`path` column and an `identity` or `speaker_label` column, paths relative to the manifest's
folder, such as data/samples/MANIFEST.tsv), else from the VoxCeleb folder layout
`<identity>/<video>/<clip>.mp4`.

The trial construction is pure numpy (model-free); `run_crossmodal` embeds the videos with an
exported model and scores the trials.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from av_disentangle.errors import UserError
from av_disentangle.verification_metrics import l2_normalise

logger = logging.getLogger(__name__)

IDENTITY_COLUMNS = ("identity", "speaker_label", "speaker", "label")
"""Column names read as the identity in a manifest with a header (first match)."""


# === Identities ===


def read_identities(path: str | os.PathLike) -> dict[str, str]:
    """Reads video -> identity labels.

    Two formats:
      * CSV ``path,identity`` per line (optional ``path,...`` header; ``#`` comments). Paths are
        matched relative to ``--videos``, or as written, or by file name / stem.
      * a TSV manifest (tab-separated, header row with ``path`` and one of
        ``IDENTITY_COLUMNS``), e.g. data/samples/MANIFEST.tsv; its paths are relative to the
        manifest's folder (each is also stored resolved, so it matches a video anywhere).

    Returns:
        {key: identity}; several keys may name one video.

    Raises:
        UserError: naming the file (and line) when it cannot be read or a row is malformed.
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read the --identities file ({err})") from err
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip() and not ln.startswith("#")), "")
    ids: dict[str, str] = {}
    if "\t" in first:  # a manifest with a header
        header = [h.strip().lower() for h in first.split("\t")]
        column = next((c for c in IDENTITY_COLUMNS if c in header), None)
        if "path" not in header or column is None:
            raise UserError(f"{path}:1: a tab-separated --identities manifest needs a header "
                            f"with 'path' and one of {', '.join(IDENTITY_COLUMNS)}; got "
                            f"{first[:200]!r}")
        i_path, i_id = header.index("path"), header.index(column)
        base = Path(path).resolve().parent
        rows = csv.reader(lines, delimiter="\t")
        for lineno, row in enumerate(rows, start=1):
            if lineno == 1 or not row or row[0].startswith("#"):
                continue
            if len(row) <= max(i_path, i_id):
                raise UserError(f"{path}:{lineno}: expected {len(header)} tab-separated "
                                f"columns, got {len(row)}")
            key, identity = row[i_path].strip(), row[i_id].strip()
            ids[key] = identity
            ids[os.path.normpath(base / key)] = identity
        return ids
    for lineno, row in enumerate(csv.reader(lines), start=1):
        if not row or not "".join(row).strip() or row[0].startswith("#"):
            continue
        if len(row) < 2:
            raise UserError(f"{path}:{lineno}: expected 'path,identity', got {','.join(row)!r}")
        if lineno == 1 and row[0].strip().lower() == "path":
            continue
        ids[row[0].strip()] = row[1].strip()
    if not ids:
        raise UserError(f"{path}: no 'path,identity' rows in the --identities file")
    return ids


def identity_of(video: Path, root: Path, ids: dict[str, str] | None) -> str:
    """The identity of ``video`` (a file under ``root``).

    With ``ids`` (from ``read_identities``): looked up by the path relative to ``root``, the
    path as given, the resolved path, the file name, then the stem. Without: the VoxCeleb
    layout ``<identity>/<video>/<clip>.<ext>`` (the folder two levels above the file).

    Raises:
        UserError: naming the video when no identity is known for it.
    """
    video, root = Path(video), Path(root)
    rel = video.relative_to(root)
    if ids is None:
        if len(rel.parts) < 3:
            raise UserError(
                f"{video}: no identity: the cross-modal protocol needs identities - give "
                "--identities (CSV 'path,identity', or a TSV manifest with path and "
                "speaker_label columns such as data/samples/MANIFEST.tsv) or use the VoxCeleb "
                "layout <identity>/<video>/<clip>.mp4 under --videos")
        return rel.parts[-3]
    keys = (rel.as_posix(), str(video), os.path.normpath(video.resolve()), video.name,
            video.stem)
    for key in keys:
        if key in ids:
            return ids[key]
    raise UserError(f"{video}: no identity in --identities (tried {rel.as_posix()!r}, "
                    f"{video.name!r}, {video.stem!r} and the resolved path)")


def segment_starts(n_frames: int, count: int, length: int) -> list[int]:
    """Start frames of ``count`` evenly spaced windows of ``length`` frames (distinct, sorted;
    ``[0]`` when the clip is not longer than one window)."""
    if n_frames <= length:
        return [0]
    return sorted(set(np.linspace(0, n_frames - length, count).astype(int).tolist()))


# === Trials (pure) ===


@dataclass(frozen=True)
class PairTrials:
    """Face/voice verification trials over segments.

    Attributes:
        face: (P,) int64 index of the segment whose face is used.
        voice: (P,) int64 index of the segment whose voice is used.
        labels: (P,) float32, 1 = same identity (different clips), 0 = different identities.
    """

    face: np.ndarray
    voice: np.ndarray
    labels: np.ndarray

    @property
    def num_targets(self) -> int:
        return int(np.sum(self.labels == 1))

    @property
    def num_nontargets(self) -> int:
        return int(np.sum(self.labels == 0))


def _codes(values: Sequence[str]) -> np.ndarray:
    """Strings -> (N,) int64 codes (equal strings, equal codes)."""
    _, inverse = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
    return inverse.astype(np.int64)


def _check_lengths(clips: Sequence[str], identities: Sequence[str]) -> None:
    if len(clips) != len(identities):
        raise ValueError(f"{len(clips)} clips but {len(identities)} identities")


def identity_pairs(clips: Sequence[str], identities: Sequence[str], *,
                   max_pairs_per_class: int | None = None, seed: int = 0) -> PairTrials:
    """All (face segment, voice segment) pairs of DIFFERENT clips, labelled by identity.

    Args:
        clips: (N,) clip of each segment (segments of one clip share it).
        identities: (N,) identity of each segment.
        max_pairs_per_class: cap on targets and on non-targets; a class with more pairs keeps
            a seeded random subset of exactly this many (face-major order kept). None: all.
        seed: seed of that subset.

    Returns:
        PairTrials in face-major order (face 0's pairs first).

    Raises:
        UserError: when there is no target (no identity with two clips) or no non-target.
    """
    _check_lengths(clips, identities)
    clip, ident = _codes(clips), _codes(identities)
    n = clip.shape[0]
    # one face row at a time: memory O(N), time O(N^2)
    valid_rows = [np.flatnonzero(clip != clip[a]) for a in range(n)]
    target_rows = [v[ident[v] == ident[a]] for a, v in enumerate(valid_rows)]
    nontarget_rows = [v[ident[v] != ident[a]] for a, v in enumerate(valid_rows)]
    n_target = sum(r.size for r in target_rows)
    n_nontarget = sum(r.size for r in nontarget_rows)
    if n_target == 0:
        raise UserError(f"no target trial: none of the {len(Counter(identities))} identities "
                        f"has two clips among the {len(Counter(clips))} clips (a target is the "
                        "face of one clip and the voice of another clip of the same identity)")
    if n_nontarget == 0:
        raise UserError(f"no non-target trial: all {len(Counter(clips))} clips are of one "
                        "identity")
    rng = np.random.default_rng(seed)

    def keep(rows: list[np.ndarray], total: int) -> list[np.ndarray]:
        if max_pairs_per_class is None or total <= max_pairs_per_class:
            return rows
        chosen = np.zeros(total, bool)
        chosen[rng.choice(total, size=max_pairs_per_class, replace=False)] = True
        out, pos = [], 0
        for r in rows:
            out.append(r[chosen[pos:pos + r.size]])
            pos += r.size
        return out

    target_rows = keep(target_rows, n_target)
    nontarget_rows = keep(nontarget_rows, n_nontarget)
    face, voice, labels = [], [], []
    for a in range(n):
        row = np.concatenate([target_rows[a], nontarget_rows[a]])
        order = np.argsort(row, kind="stable")
        face.append(np.full(row.size, a, np.int64))
        voice.append(row[order].astype(np.int64))
        labels.append(np.concatenate([np.ones(target_rows[a].size, np.float32),
                                      np.zeros(nontarget_rows[a].size, np.float32)])[order])
    return PairTrials(np.concatenate(face), np.concatenate(voice), np.concatenate(labels))


@dataclass(frozen=True)
class ForcedChoiceTrials:
    """1 face, 2 voices: for trial i, the face of segment ``face[i]``, the voice of
    ``positive[i]`` (same identity, another clip) and of ``negative[i]`` (another identity).
    All (M,) int64."""

    face: np.ndarray
    positive: np.ndarray
    negative: np.ndarray


def forced_choice_triplets(clips: Sequence[str], identities: Sequence[str], *,
                           per_face: int = 1, seed: int = 0) -> ForcedChoiceTrials:
    """Seeded "1 face, 2 voices" trials (Nagrani et al. CVPR 2018, F-V static test).

    For each face segment whose identity has another clip, ``per_face`` trials: the positive
    voice drawn uniformly from the segments of the other clips of its identity, the negative
    uniformly from the segments of the other identities (with replacement across trials).

    Raises:
        UserError: when no face has both a positive and a negative voice.
    """
    _check_lengths(clips, identities)
    if per_face < 1:
        raise ValueError(f"per_face must be >= 1, got {per_face}")
    clip, ident = _codes(clips), _codes(identities)
    rng = np.random.default_rng(seed)
    face, positive, negative = [], [], []
    for a in range(clip.shape[0]):
        pos = np.flatnonzero((ident == ident[a]) & (clip != clip[a]))
        neg = np.flatnonzero(ident != ident[a])
        if pos.size == 0 or neg.size == 0:
            continue
        face += [a] * per_face
        positive += rng.choice(pos, size=per_face).tolist()
        negative += rng.choice(neg, size=per_face).tolist()
    if not face:
        raise UserError("no forced-choice trial: no identity has two clips (the face of one "
                        "clip needs the voice of another clip of its identity) and another "
                        "identity")
    return ForcedChoiceTrials(*(np.asarray(x, np.int64) for x in (face, positive, negative)))


def forced_choice_accuracy(positive_scores: np.ndarray, negative_scores: np.ndarray
                           ) -> tuple[float, float]:
    """Accuracy of picking the higher-scoring voice, and its binomial standard error.

    Args:
        positive_scores, negative_scores: (M,) scores of the same-identity and the
            other-identity voice for each trial. A tie counts as half right (a coin flip).

    Returns:
        ``(accuracy, sqrt(accuracy * (1 - accuracy) / M))``.
    """
    pos = np.asarray(positive_scores, np.float64)
    neg = np.asarray(negative_scores, np.float64)
    if pos.shape != neg.shape or pos.size == 0:
        raise ValueError(f"need equal, non-empty score arrays, got {pos.shape} and {neg.shape}")
    acc = float(np.mean((pos > neg) + 0.5 * (pos == neg)))
    return acc, math.sqrt(acc * (1.0 - acc) / pos.size)


def describe_protocol(trials: PairTrials, clips: Sequence[str], identities: Sequence[str],
                      source: str) -> str:
    """One line naming the protocol and its trial counts."""
    return (f"cross-modal protocol: face of one clip vs voice of another clip; target = same "
            f"identity, non-target = different identity (identities from {source}); "
            f"{len(clips)} segments of {len(set(clips))} clips of {len(set(identities))} "
            f"identities; {trials.num_targets} target + {trials.num_nontargets} non-target "
            "trials (same-clip pairs excluded)")


# === The cross-modal task (evaluate.py --task crossmodal) ===


@dataclass(frozen=True)
class CrossmodalResult:
    """What `crossmodal_videos` measured.

    Attributes:
      logs: {"eer", "min_dcf_0.01", "min_dcf_0.05", "targets", "nontargets"} plus
        "forced_choice_accuracy", "forced_choice_stderr", "forced_choice_trials" when the
        forced choice ran.
      protocol: `describe_protocol`'s line; summary_line: the metrics' line (with the skipped
        videos named).
      scores: (P,) float32 pair scores; labels: (P,) float32, 1 = same identity.
      faces, voices: (N, D) float32 segment embeddings; owners, segments: (N,) identity and
        `clip@start` names of the segments.
      step: the model's training step.
    """

    logs: dict[str, float]
    protocol: str
    summary_line: str
    scores: np.ndarray
    labels: np.ndarray
    faces: np.ndarray
    voices: np.ndarray
    owners: list[str]
    segments: list[str]
    step: int


def crossmodal_videos(model: str | os.PathLike, videos: str | os.PathLike, *,
                      identities: str | os.PathLike | None = None, face_size: int = 112,
                      detect_faces: bool = False, max_seconds: float = 10.0,
                      strict: bool = False, segments_per_clip: int = 2,
                      segment_seconds: float = 2.0, forced_choice: int = 10,
                      max_pairs: int = 0, seed: int = 0,
                      score_batch_size: int = 4096) -> CrossmodalResult:
    """Face-to-voice identity verification (EER, minDCF) of the SavedModel `model` on the
    videos under `videos`, and the 1 face, 2 voices forced choice (`forced_choice` trials per
    face; 0: off).

    A video's identity comes from `identities` (CSV `path,identity` or a manifest TSV) or the
    folder layout `<identity>/<video>/<clip>`, resolved for every video before the model is
    loaded. Each clip gives `segments_per_clip` segments of `segment_seconds`; a face is paired
    with the voices of OTHER clips only, at most `max_pairs` pairs per class (0: all, seeded by
    `seed`). Faces are read as in `sync_videos`. Nothing is printed or written.

    Raises:
        EvaluationError: naming the folder, file or flag.
    """
    from av_disentangle.constants import SAMPLES_PER_FRAME, VIDEO_FPS
    from av_disentangle.evaluation import exported, scoring, video
    from av_disentangle.evaluation.sync import MIN_FACE_FRAMES

    root = Path(videos)
    ids = read_identities(identities) if identities else None
    source = str(identities) if identities else "the folder layout <identity>/<video>/<clip>"
    video_files = video.list_videos(root)
    owner_of = {v: identity_of(v, root, ids) for v in video_files}  # fails before decoding
    loaded = exported.ExportedModel(model)
    loaded.require("serving_default", "embed_face")
    size = loaded.face_size(face_size)
    seg_frames = max(MIN_FACE_FRAMES, int(round(segment_seconds * VIDEO_FPS)))
    faces, voices, clips, owners, segment = [], [], [], [], []
    skipped: list[tuple[str, str]] = []
    for path, frames, audio in video.decoded_videos(video_files, size[0], detect_faces,
                                                    max_seconds, strict, skipped,
                                                    "crossmodal"):
        if frames.shape[0] < seg_frames:  # pad short clips by repeating
            reps = int(np.ceil(seg_frames / frames.shape[0]))
            frames = np.concatenate([frames] * reps)[:seg_frames]
            audio = np.tile(audio, reps)[:seg_frames * SAMPLES_PER_FRAME]
        starts = segment_starts(frames.shape[0], segments_per_clip, seg_frames)
        faces.append(loaded.embed_faces(np.stack([frames[s:s + seg_frames] for s in starts])))
        voices.append(loaded.embed_waveforms(np.stack(
            [audio[s * SAMPLES_PER_FRAME:(s + seg_frames) * SAMPLES_PER_FRAME]
             for s in starts])))
        rel = Path(path).relative_to(root).as_posix()
        clips += [rel] * len(starts)
        owners += [owner_of[path]] * len(starts)
        segment += [f"{rel}@{s / VIDEO_FPS:.2f}s" for s in starts]
    suffix = video.skip_summary(skipped, len(video_files), videos)
    face_table, voice_table = np.concatenate(faces), np.concatenate(voices)
    trials = identity_pairs(clips, owners, max_pairs_per_class=max_pairs or None, seed=seed)
    protocol = describe_protocol(trials, clips, owners, source)
    scores, logs = scoring.score_pairs(face_table, voice_table, trials.face, trials.voice,
                                       trials.labels, score_batch_size)
    logs.update(targets=float(trials.num_targets), nontargets=float(trials.num_nontargets))
    line = scoring.format_summary(logs)
    if forced_choice > 0:
        fc = forced_choice_triplets(clips, owners, per_face=forced_choice, seed=seed)
        unit_faces = l2_normalise(face_table)  # cosine, as score_pairs
        unit_voices = l2_normalise(voice_table)
        acc, se = forced_choice_accuracy(
            np.sum(unit_faces[fc.face] * unit_voices[fc.positive], axis=-1),
            np.sum(unit_faces[fc.face] * unit_voices[fc.negative], axis=-1))
        logs.update(forced_choice_accuracy=acc, forced_choice_stderr=se,
                    forced_choice_trials=float(fc.face.size))
        line += (f"  1 face 2 voices: accuracy {100 * acc:.1f}% +- {100 * se:.1f}% "
                 f"({fc.face.size} trials, chance 50%)")
    return CrossmodalResult(logs, protocol, line + suffix, scores, trials.labels, face_table,
                            voice_table, owners, segment, exported.model_step(model))


def write_crossmodal_outputs(result: CrossmodalResult, *,
                             plot_out: str | os.PathLike | None = None,
                             logdir: str | os.PathLike | None = None,
                             projector_out: str | os.PathLike | None = None) -> None:
    """Writes what was asked, each file atomically: the DET curve (PNG), a TensorBoard run
    (metrics and the curve) and the embedding projector (faces and voices, by identity)."""
    from av_disentangle.evaluation import plots, reports, scoring

    if plot_out or logdir:
        png = plots.plot_det(plot_out, result.scores, result.labels,
                             title=f"Face-to-voice identity verification (other clips): "
                                   f"{scoring.format_summary(result.logs)}")
        if logdir:
            reports.write_tensorboard(logdir, "crossmodal", result.step, result.logs,
                                      {"det_curve": png})
    if projector_out:
        reports.write_projector(
            projector_out, l2_normalise(np.concatenate([result.faces, result.voices])),
            ("identity", "modality", "segment"),
            [(o, m, g) for m in ("face", "voice") for o, g in zip(result.owners, result.segments)],
            "face_and_voice_embeddings")
