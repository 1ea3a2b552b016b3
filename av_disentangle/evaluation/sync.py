"""Audio-visual sync measured as SyncNet does: AV offset, minimum distance and confidence.

Reference: joonson/syncnet_python SyncNetInstance.py (the script behind VoxCeleb2's `Offset`
and behind the LSE-D / LSE-C numbers reported for generated talking faces, Wav2Lip and
successors). Per video:

  * a (K, T) matrix of distances, K = 2 * vshift + 1 candidate lags: entry [j, i] is the
    distance between the face feature of time step i and the audio feature at time step
    i + (j - vshift) (SyncNetInstance.py lines 19-31, `calc_pdist`: feat2 padded by vshift,
    `feat2p[i:i+win_size]`, `pairwise_distance`);
  * ``mean_dists`` = mean over time steps -> (K,) (line 130, `torch.mean(torch.stack(dists,1),1)`);
  * ``min_dist`` = its minimum, at index ``minidx`` (line 132);
  * ``av_offset`` = vshift - minidx (line 134): the sound of video frame i is at audio frame
    i - av_offset, positive = the audio leads the video. The same sign as VoxCeleb2's
    `Offset` and `pipelines.media.shift_audio` (which puts a source with offset k in sync);
  * ``confidence`` = median(mean_dists) - min_dist (line 135).

Differences from the reference, by design: the features are THIS model's content streams
(`face_content` / `content` signatures), not SyncNet's weights, so the numbers are comparable
only between runs of the same model; the distance is the Euclidean distance between
L2-normalised content vectors (the model is trained on their cosine; d = sqrt(2 - 2 cos));
and instead of zero-padding the audio features at the ends (line 23), each candidate lag
embeds real audio only: the face frames are the central ones, with a margin of vshift (plus
any offset applied on purpose) frames at each end.

Offsets applied on purpose (``applied_offset`` s, in the same SyncNet sign): the clip is
evaluated as if its audio led the video by s frames (``media.shift_audio(audio, -s)``, taken
from real samples), so on an in-sync clip the measured offset should be s.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from av_disentangle.constants import SAMPLES_PER_FRAME
from av_disentangle.verification_metrics import l2_normalise

logger = logging.getLogger(__name__)

MIN_FACE_FRAMES = 9
"""Fewest central face frames an offset search uses (the content streams' receptive field)."""


class ContentModel(Protocol):
    """What the offset search needs from a model (evaluation's ExportedModel has both)."""

    def face_content(self, frames: np.ndarray) -> np.ndarray:
        """(B, T, H, W, 3) uint8 -> (B, T', D)."""

    def audio_content(self, waveforms: np.ndarray) -> np.ndarray:
        """(B, T * 640) float32 -> (B, T', D)."""


@dataclass(frozen=True)
class SyncMeasures:
    """SyncNet's per-video measures (SyncNetInstance.py lines 130-135).

    Attributes:
        av_offset: frames; sound of video frame i at audio frame i - av_offset.
        min_dist: the smallest time-averaged distance over the lags searched.
        confidence: median minus minimum of the time-averaged distances.
        mean_dists: (K,) time-averaged distance per lag index j (AV offset vshift - j).
    """

    av_offset: int
    min_dist: float
    confidence: float
    mean_dists: np.ndarray


def av_offsets(vshift: int) -> np.ndarray:
    """(2 * vshift + 1,) the AV offset of each lag index j: vshift - j (vshift .. -vshift)."""
    return vshift - np.arange(2 * vshift + 1)


def sync_measures(dists: np.ndarray) -> SyncMeasures:
    """SyncNet's offset, minimum distance and confidence from a (K, T) distance matrix.

    Args:
        dists: (K, T) distances, K = 2 * vshift + 1; row j pairs face step i with audio step
            i + j - vshift.
    """
    dists = np.asarray(dists, np.float64)
    if dists.ndim != 2 or dists.shape[0] % 2 != 1 or dists.shape[1] == 0:
        raise ValueError(f"need a (2 * vshift + 1, T) distance matrix, got {dists.shape}")
    vshift = (dists.shape[0] - 1) // 2
    mdist = dists.mean(axis=1)                        # line 130
    minidx = int(np.argmin(mdist))                    # line 132 (first minimum)
    minval = float(mdist[minidx])
    return SyncMeasures(av_offset=int(vshift - minidx),  # line 134
                        min_dist=minval,
                        confidence=float(np.median(mdist) - minval),  # line 135 (K odd)
                        mean_dists=mdist)


def syncnet_distances(face: np.ndarray, audio: np.ndarray, vshift: int, eps: float = 0.0
                      ) -> np.ndarray:
    """SyncNet's `calc_pdist` (SyncNetInstance.py lines 19-31) on given features.

    The audio features are zero-padded by vshift steps at both ends and face step i is
    compared with padded audio steps i .. i + 2 * vshift, i.e. audio step i + j - vshift.
    Euclidean distance of the raw features, as `pairwise_distance`; `eps` is added to the
    difference before the norm, as `pairwise_distance` does with its 1e-6 (`lse.py` passes it).

    Args:
        face: (T, D); audio: (T, D).

    Returns:
        (2 * vshift + 1, T) distances.
    """
    if face.shape != audio.shape:
        raise ValueError(f"face {face.shape} and audio {audio.shape} features differ")
    t = face.shape[0]
    padded = np.pad(audio, ((vshift, vshift), (0, 0)))
    windows = np.stack([padded[j:j + t] for j in range(2 * vshift + 1)])  # (K, T, D)
    return np.linalg.norm(face[None] - windows + eps, axis=-1)


def offset_distances(model: ContentModel, frames: np.ndarray, audio: np.ndarray,
                     vshift: int = 15, applied_offset: int = 0) -> np.ndarray:
    """The (K, T') distance matrix of one clip from the model's content streams.

    Face content of the central frames [margin, T - margin), margin = vshift +
    |applied_offset|; for lag index j the audio content of the samples of frames
    [margin + m + s, T - margin + m + s), m = j - vshift, s = applied_offset: face frame i
    against audio frame i + m of the clip with the audio advanced by s frames (AV offset s,
    see the module docstring). Distance = Euclidean distance of the L2-normalised vectors.

    Args:
        frames: (T, H, W, 3) uint8; audio: (T * 640,) float32, aligned with the frames.

    Returns:
        (2 * vshift + 1, T') distances (T' = the shorter of the two content lengths).

    Raises:
        ValueError: if the clip has fewer than 2 * margin + MIN_FACE_FRAMES frames.
    """
    n_frames = frames.shape[0]
    margin = vshift + abs(applied_offset)
    n_face = n_frames - 2 * margin
    if n_face < MIN_FACE_FRAMES:
        raise ValueError(f"clip of {n_frames} frames too short for offsets +-{vshift} "
                         f"(applied offset {applied_offset:+d}): needs at least "
                         f"{2 * margin + MIN_FACE_FRAMES}")
    face = np.asarray(model.face_content(frames[None, margin:margin + n_face]))[0]  # (T', D)
    seg = n_face * SAMPLES_PER_FRAME
    starts = [(margin + m + applied_offset) * SAMPLES_PER_FRAME
              for m in range(-vshift, vshift + 1)]
    voice = np.asarray(model.audio_content(np.stack([audio[s:s + seg] for s in starts])))
    steps = min(face.shape[0], voice.shape[1])
    if face.shape[0] != voice.shape[1]:
        logger.warning("face/audio content lengths differ (%d vs %d); using %d steps",
                       face.shape[0], voice.shape[1], steps)
    return np.linalg.norm(l2_normalise(face[None, :steps]) - l2_normalise(voice[:, :steps]),
                          axis=-1)


# === Per-video table and summary ===


@dataclass(frozen=True)
class SyncRow:
    """One clip evaluated at one applied offset (0 = the video as is)."""

    video: str
    applied_offset: int
    av_offset: int
    min_dist: float
    confidence: float
    mean_dists: np.ndarray  # (K,)

    @property
    def error(self) -> int:
        """Measured minus applied offset (the true offset if the source is in sync)."""
        return self.av_offset - self.applied_offset


CSV_COLUMNS = ("video", "applied_offset", "av_offset", "error", "min_dist", "confidence")


def summarise(rows: Sequence[SyncRow]) -> dict[str, float]:
    """Averages over the table.

    Returns:
        ``exact`` / ``within1``: fraction of rows (all applied offsets) whose measured offset
        equals the applied one / is within +-1 frame of it; ``min_dist``, ``confidence``,
        ``abs_offset``: means over the videos as they are (applied offset 0; all rows if no
        such row) - the LSE-D / LSE-C style numbers; ``n``: rows; ``videos``: distinct videos.
    """
    if not rows:
        raise ValueError("no rows")
    err = np.array([r.error for r in rows])
    as_is = [r for r in rows if r.applied_offset == 0] or list(rows)
    return {"exact": float(np.mean(err == 0)), "within1": float(np.mean(np.abs(err) <= 1)),
            "min_dist": float(np.mean([r.min_dist for r in as_is])),
            "confidence": float(np.mean([r.confidence for r in as_is])),
            "abs_offset": float(np.mean([abs(r.av_offset) for r in as_is])),
            "n": float(len(rows)), "videos": float(len({r.video for r in rows}))}


def csv_text(rows: Sequence[SyncRow]) -> str:
    """The per-video table as CSV (header + one line per clip and applied offset)."""
    lines = [",".join(CSV_COLUMNS)]
    for r in rows:
        video = f'"{r.video}"' if any(c in r.video for c in ',"\n') else r.video
        lines.append(f"{video},{r.applied_offset},{r.av_offset},{r.error},{r.min_dist:.6f},"
                     f"{r.confidence:.6f}")
    return "\n".join(lines) + "\n"


def write_sync_csv(path: str | os.PathLike, rows: Sequence[SyncRow]) -> None:
    """Writes ``csv_text(rows)`` atomically (temp name, then rename; `paths.write_file`).

    Raises:
        EvaluationError: naming ``path``, if it cannot be written.
    """
    from av_disentangle.evaluation import paths

    paths.write_file(path, csv_text(rows))
    logger.info("wrote the per-video sync table (%d rows) to %s", len(rows), path)


# === The sync task (evaluate.py --task sync) ===


def parse_offsets(text: str) -> list[int]:
    """``"0,5,-7"`` -> [0, 5, -7] (the ``--shifts`` flag).

    Raises:
        EvaluationError: naming the flag, if an item is not an integer.
    """
    from av_disentangle.evaluation import EvaluationError

    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise EvaluationError(f"--shifts: expected comma-separated integers (frames), got "
                              f"{text!r}") from err
    if not values:
        raise EvaluationError("--shifts: no offset given (use 0 for the videos as they are)")
    return sorted(set(values), key=values.index)


def measure_video(model: ContentModel, video: str, frames: np.ndarray, audio: np.ndarray, *,
                  vshift: int = 15, applied_offsets: Sequence[int] = (0,)) -> list[SyncRow]:
    """SyncNet's measures for one clip at each applied offset (see `offset_distances`).

    An applied offset the clip is too short for is skipped with a warning.

    Args:
        frames: (T, H, W, 3) uint8; audio: (T * 640,) float32.
    """
    rows = []
    for s in applied_offsets:
        try:
            dists = offset_distances(model, frames, audio, vshift, s)
        except ValueError as err:
            logger.warning("%s applied offset %+d skipped: %s", video, s, err)
            continue
        m = sync_measures(dists)
        rows.append(SyncRow(video, int(s), m.av_offset, m.min_dist, m.confidence,
                            m.mean_dists))
    return rows


def format_table(rows: Sequence[SyncRow], limit: int = 20) -> str:
    """The per-video table for the terminal (first ``limit`` rows)."""
    lines = [f"{'video':<40} {'applied':>7} {'offset':>6} {'error':>5} {'min dist':>8} "
             f"{'conf':>6}"]
    for r in rows[:limit]:
        name = r.video if len(r.video) <= 40 else "..." + r.video[-37:]
        lines.append(f"{name:<40} {r.applied_offset:>+7d} {r.av_offset:>+6d} {r.error:>+5d} "
                     f"{r.min_dist:>8.3f} {r.confidence:>6.3f}")
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more rows (all in --sync_csv)")
    return "\n".join(lines)


def format_summary(summary: dict[str, float], vshift: int) -> str:
    """The summary line: SyncNet's measures averaged over the videos as they are, and the
    offset accuracy over every clip and applied offset."""
    return (f"sync (SyncNet measures, this model's content streams): videos as they are: "
            f"|AV offset| {summary['abs_offset']:.2f} frames, min dist "
            f"{summary['min_dist']:.3f}, confidence {summary['confidence']:.3f}; "
            f"sync offset accuracy: exact {100 * summary['exact']:.1f}%  within+-1 "
            f"{100 * summary['within1']:.1f}%  ({int(summary['n'])} clip-offsets, "
            f"{int(summary['videos'])} videos, offsets +-{vshift})")


def plot_sync(path: str | os.PathLike | None, rows: Sequence[SyncRow], vshift: int,
              max_videos: int = 4) -> bytes:
    """Distance vs AV offset for the first ``max_videos`` videos (one panel each: a line per
    applied offset, dashed at the applied offset, a dot at the minimum) and a histogram of
    measured minus applied offsets over all rows. Returns PNG bytes (also written to ``path``
    atomically unless None)."""
    from av_disentangle.evaluation import plots

    plt = plots.pyplot()
    videos = list(dict.fromkeys(r.video for r in rows))[:max_videos]
    fig, axes = plt.subplots(1, len(videos) + 1, figsize=(4.2 * (len(videos) + 1), 4.2),
                             squeeze=False)
    x = av_offsets(vshift)
    for ax, video in zip(axes[0], videos):
        for r in (r for r in rows if r.video == video):
            (line,) = ax.plot(x, r.mean_dists, lw=1.8,
                              label=f"applied {r.applied_offset:+d}: found {r.av_offset:+d}, "
                                    f"conf {r.confidence:.2f}")
            ax.axvline(r.applied_offset, ls="--", c=line.get_color(), alpha=0.6)
            ax.plot([r.av_offset], [r.min_dist], "o", c=line.get_color())
        ax.set_title(os.path.basename(video)[:40], fontsize=9)
        ax.set_xlabel("AV offset (frames; + = audio leads)")
        ax.set_ylabel("mean distance")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    errors = np.array([r.error for r in rows])
    span = int(max(np.max(np.abs(errors)), 1))
    ax = axes[0][-1]
    ax.hist(errors, bins=np.arange(-span - 0.5, span + 1.5), color="tab:blue")
    ax.set_xlabel("found - applied offset (frames)")
    ax.set_ylabel("clip-offsets")
    ax.locator_params(axis="y", integer=True)
    ax.set_title(f"exact {100 * np.mean(errors == 0):.1f}%, within +-1 "
                 f"{100 * np.mean(np.abs(errors) <= 1):.1f}% ({errors.size})", fontsize=9)
    fig.suptitle("Sync: distance vs offset (this model's content streams, not SyncNet's)")
    return plots.save_figure(fig, path)


@dataclass(frozen=True)
class SyncResult:
    """What `sync_videos` measured: `rows` (one per clip and applied offset), `summary`
    (`summarise(rows)`), `vshift` (the +-frames searched), `skipped` (a suffix for the summary
    line naming the videos that could not be read, or "") and the model's training `step`."""

    rows: list[SyncRow]
    summary: dict[str, float]
    vshift: int
    skipped: str
    step: int

    @property
    def summary_line(self) -> str:
        return format_summary(self.summary, self.vshift) + self.skipped


def sync_videos(model: str | os.PathLike, videos: str | os.PathLike, *,
                shifts: Sequence[int] = (0, 5, -7), max_offset: int = 15, face_size: int = 112,
                detect_faces: bool = False, max_seconds: float = 10.0,
                strict: bool = False) -> SyncResult:
    """SyncNet's measures of the SavedModel `model`'s content streams on every video under
    `videos`, as it is and at each offset of `shifts` applied on purpose (frames, SyncNet's
    sign), searching +-`max_offset` frames. Faces are read as `pipelines.prepare` reads them
    (`detect_faces`: detected and tracked; else whole frames), at most `max_seconds` of each
    video, at `face_size` unless the model's face input is static; an unreadable video is
    skipped and reported (`strict`: raised). Nothing is printed or written.

    Raises:
        EvaluationError: naming the folder, file or flag.
    """
    from av_disentangle.evaluation import EvaluationError, exported, video

    video_files = video.list_videos(videos)
    loaded = exported.ExportedModel(model)
    loaded.require("content", "face_content")
    size = loaded.face_size(face_size)
    rows: list[SyncRow] = []
    skipped: list[tuple[str, str]] = []
    root = os.path.abspath(videos)
    for path, frames, audio in video.decoded_videos(video_files, size[0], detect_faces,
                                                    max_seconds, strict, skipped, "sync"):
        name = os.path.relpath(os.path.abspath(path), root)
        rows += measure_video(loaded, name, frames, audio, vshift=max_offset,
                              applied_offsets=shifts)
    suffix = video.skip_summary(skipped, len(video_files), videos)
    if not rows:
        raise EvaluationError(f"no video under {videos} was long enough for the offset "
                              f"search (needs 2 * (--max_offset + max |--shifts|) + "
                              f"{MIN_FACE_FRAMES} frames)")
    summary = summarise(rows)
    for s in shifts:
        err = np.array([r.error for r in rows if r.applied_offset == s])
        if err.size:
            logger.info("applied offset %+d: exact %.1f%%  within+-1 %.1f%%  (%d clips)", s,
                        100 * np.mean(err == 0), 100 * np.mean(np.abs(err) <= 1), err.size)
    return SyncResult(rows, summary, max_offset, suffix, exported.model_step(model))


def write_sync_outputs(result: SyncResult, *, sync_csv: str | os.PathLike | None = None,
                       plot_out: str | os.PathLike | None = None,
                       logdir: str | os.PathLike | None = None) -> None:
    """Writes what was asked, each file atomically: the per-video CSV, the offset curve (PNG)
    and a TensorBoard run (the summary scalars and the curve)."""
    from av_disentangle.evaluation import reports

    if sync_csv:
        write_sync_csv(sync_csv, result.rows)
    if plot_out or logdir:
        png = plot_sync(plot_out, result.rows, result.vshift)
        if logdir:
            scalars = {k: result.summary[k] for k in ("exact", "within1", "min_dist",
                                                      "confidence", "abs_offset")}
            reports.write_tensorboard(logdir, "sync", result.step, scalars,
                                      {"offset_curve": png})
