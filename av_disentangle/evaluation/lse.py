"""LSE-D / LSE-C: joonson/syncnet_python's `SyncNetInstance.evaluate` with the published
SyncNet weights, converted to a SavedModel (`python -m av_disentangle.convert syncnet_python`).

    python evaluate.py --task sync --syncnet DIR --videos FOLDER --sync_csv OUT.csv

Per video, as its code does (SyncNetInstance.py, `evaluate`):
  * frames as BGR (its `cv2.imread` of the extracted frames), audio as 16 kHz mono int16
    (its `ffmpeg ... -ac 1 -ar 16000 pcm_s16le`), MFCCs `python_speech_features.mfcc(audio,
    16000)` -> (13, M);
  * `min_length = min(frames, floor(samples / 640))`, windows i = 0 .. min_length - 6: lip
    frames [i, i + 5) and MFCC frames [4 i, 4 i + 20) -> one 1024-d feature each;
  * `calc_pdist`: the audio features zero-padded by vshift windows at both ends, face window i
    against padded audio i .. i + 2 vshift, `pairwise_distance` (Euclidean, with its 1e-6
    added to the difference) -> (2 vshift + 1, W) (`sync.syncnet_distances`);
  * mean over windows, AV offset = vshift - argmin, min dist (LSE-D) = the minimum,
    confidence (LSE-C) = median - min (`sync.sync_measures`);
  * per-window confidence: median(mean) - the distances at the best lag, median-filtered over
    9 windows (`scipy.signal.medfilt`), as its "Framewise conf" print.
The published numbers average min dist and confidence over a test set's videos; so do `means`.

Videos are read as they are when they are face crops already (syncnet_python's `pycrop/`
output, 224 x 224 at 25 fps; other sizes are centre-cropped and resized to 224); with
`detect_faces` the face is found by `pipelines.faces.track_face` (OpenCV's Haar cascade, where
its `run_pipeline.py` uses S3FD) and cut with its `crop_video` geometry
(`pipelines.faces.crop_syncnet`, crop_scale 0.4). Left out: its ffmpeg JPEG round trip of the
frames (`-f image2`), a lossy step whose quality is ffmpeg's default; we feed decoded pixels.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import signal
from tqdm import tqdm

from av_disentangle import files
from av_disentangle.constants import SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS
from av_disentangle.evaluation import EvaluationError
from av_disentangle.evaluation.sync import sync_measures, syncnet_distances
from av_disentangle.syncnet_v2 import LIP_FRAMES, LIP_SIZE, MFCC_FRAMES, SIGNATURES
from pipelines import faces, media

logger = logging.getLogger(__name__)

PAIRWISE_EPS = 1e-6
"""`torch.nn.functional.pairwise_distance`'s eps, added to the difference before the norm."""
MEDFILT_WINDOWS = 9
MFCC_PER_VIDEO_FRAME = 4
CSV_COLUMNS = ("video", "av_offset", "min_dist", "confidence", "windows")


def mfcc(audio: np.ndarray) -> np.ndarray:
    """(13, M) `python_speech_features.mfcc(audio, 16000)` transposed, as its `zip(*...)`.

    Args:
        audio: (N,) int16 samples at 16 kHz (its wav file's values, not scaled).
    """
    import python_speech_features  # pure Python; the published measurement's own front end

    return np.asarray(python_speech_features.mfcc(audio, SAMPLE_RATE), np.float64).T


class SyncNetExport:
    """A converted SyncNet SavedModel's two signatures as numpy functions."""

    def __init__(self, path: str | os.PathLike) -> None:
        import tensorflow as tf

        folder = Path(path)
        meta = files.read_json(folder / "syncnet.json", missing_ok=True, unreadable_ok=True)
        if not (folder / "saved_model.pb").is_file() or meta is None:
            raise EvaluationError(
                f"{path}: --syncnet is not a converted SyncNet SavedModel (needs saved_model.pb "
                "and syncnet.json; make one with: python -m av_disentangle.convert "
                "syncnet_python syncnet_v2.model --export_dir DIR)")
        self.path, self.meta = str(path), meta
        loaded = tf.saved_model.load(self.path)
        missing = [s for s in SIGNATURES if s not in loaded.signatures]
        if missing:
            raise EvaluationError(f"{path}: SavedModel lacks the signature(s) {missing}")
        self._loaded = loaded  # keeps the signatures' variables alive
        self._lip = loaded.signatures["lip_embedding"]
        self._audio = loaded.signatures["audio_embedding"]

    def lip(self, windows: np.ndarray) -> np.ndarray:
        """(B, 5, 224, 224, 3) BGR 0..255 -> (B, D) float32."""
        return self._lip(frames=np.asarray(windows, np.float32))["embedding"].numpy()

    def audio(self, windows: np.ndarray) -> np.ndarray:
        """(B, 13, 20) MFCCs -> (B, D) float32."""
        return self._audio(mfcc=np.asarray(windows, np.float32))["embedding"].numpy()


def window_features(model, frames: np.ndarray, audio: np.ndarray, batch_size: int = 20
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Its per-window lip and audio features of one clip.

    Args:
        model: has `lip` and `audio` (a `SyncNetExport`, or Keras models wrapped alike).
        frames: (T, 224, 224, 3) uint8 BGR; audio: (N,) int16 at 16 kHz.

    Returns:
        lip (W, D) and audio (W, D) features, W = min(T, N // 640) - 5.

    Raises:
        ValueError: if the clip has no window (fewer than 6 frames).
    """
    cc = mfcc(audio)
    min_length = min(frames.shape[0], audio.shape[0] // SAMPLES_PER_FRAME)
    last = min_length - LIP_FRAMES
    if last <= 0:
        raise ValueError(f"{frames.shape[0]} frames / {audio.shape[0]} samples: too short "
                         f"for one {LIP_FRAMES}-frame window")
    lip, aud = [], []
    for start in range(0, last, batch_size):
        idx = range(start, min(last, start + batch_size))
        lip.append(model.lip(np.stack([frames[i:i + LIP_FRAMES] for i in idx])))
        aud.append(model.audio(np.stack([
            cc[:, MFCC_PER_VIDEO_FRAME * i:MFCC_PER_VIDEO_FRAME * i + MFCC_FRAMES]
            for i in idx])))
    return np.concatenate(lip), np.concatenate(aud)


@dataclass(frozen=True)
class LseRow:
    """One video: AV offset (frames, + = audio leads), LSE-D (min dist), LSE-C (confidence),
    the number of windows, the (2 vshift + 1, W) distances and the per-window confidence."""

    video: str
    av_offset: int
    min_dist: float
    confidence: float
    windows: int
    dists: np.ndarray
    framewise_confidence: np.ndarray


def measure(name: str, lip: np.ndarray, aud: np.ndarray, vshift: int = 15) -> LseRow:
    """Its offset, min dist, confidence and framewise confidence from (W, D) features."""
    dists = syncnet_distances(lip.astype(np.float64), aud.astype(np.float64), vshift,
                              eps=PAIRWISE_EPS)  # (K, W)
    m = sync_measures(dists)
    minidx = vshift - m.av_offset
    fconf = np.median(m.mean_dists) - dists[minidx]
    framewise = signal.medfilt(fconf, kernel_size=MEDFILT_WINDOWS)
    return LseRow(name, m.av_offset, m.min_dist, m.confidence, int(lip.shape[0]), dists,
                  framewise)


def load_syncnet_clip(path: str | os.PathLike, *, detect_faces: bool = False,
                      crop_scale: float = 0.4, max_seconds: float | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(T, 224, 224, 3) uint8 BGR frames at 25 fps and (T * 640,) int16 audio of one video.

    Raises:
        EvaluationError: naming the file (unreadable, no audio, no face).
    """
    try:
        clip = media.decode_clip(path)
        frames = clip.frames
        if detect_faces:
            boxes = faces.track_face(frames)
            frames = faces.crop_syncnet(frames, boxes, crop_scale=crop_scale, size=LIP_SIZE)
        elif frames.shape[1:3] != (LIP_SIZE, LIP_SIZE):
            frames = faces.resize_frames(frames, LIP_SIZE)
    except (media.MediaError, faces.NoFaceError) as err:
        raise EvaluationError(f"{path}: {err}") from err
    audio = clip.audio
    if max_seconds is not None:
        keep = max(1, int(np.ceil(max_seconds * VIDEO_FPS - 1e-6)))
        frames, audio = frames[:keep], audio[:keep * SAMPLES_PER_FRAME]
    return np.ascontiguousarray(frames[..., ::-1]), audio  # RGB -> BGR (its cv2.imread)


@dataclass(frozen=True)
class LseResult:
    """Rows per video, `means` (min_dist = LSE-D, confidence = LSE-C, abs_offset, videos) and
    the names of the videos skipped (unreadable or too short) with the reason."""

    rows: list[LseRow]
    means: dict[str, float]
    skipped: list[tuple[str, str]]
    vshift: int

    @property
    def summary_line(self) -> str:
        m = self.means
        skipped = f"; {len(self.skipped)} videos skipped" if self.skipped else ""
        return (f"LSE (syncnet_python's SyncNet, vshift {self.vshift}): LSE-D (min dist) "
                f"{m['min_dist']:.3f}, LSE-C (confidence) {m['confidence']:.3f}, |AV offset| "
                f"{m['abs_offset']:.2f} frames over {int(m['videos'])} videos{skipped}")


def lse_videos(syncnet: str | os.PathLike, videos: str | os.PathLike, *, vshift: int = 15,
               batch_size: int = 20, detect_faces: bool = False, crop_scale: float = 0.4,
               max_seconds: float | None = None, strict: bool = False) -> LseResult:
    """LSE-D / LSE-C of every video under `videos` with the converted SyncNet `syncnet`.
    Nothing is printed or written; an unreadable or too short video is skipped and reported
    (`strict`: raised).

    Raises:
        EvaluationError: naming the folder, file or SavedModel.
    """
    from av_disentangle.evaluation import video

    model = SyncNetExport(syncnet)
    root = os.path.abspath(videos)
    paths = video.list_videos(videos)
    rows: list[LseRow] = []
    skipped: list[tuple[str, str]] = []
    for path in tqdm(paths, desc="lse", unit="video"):
        name = os.path.relpath(os.path.abspath(path), root)
        try:
            frames, audio = load_syncnet_clip(path, detect_faces=detect_faces,
                                              crop_scale=crop_scale, max_seconds=max_seconds)
            lip, aud = window_features(model, frames, audio, batch_size)
        except (EvaluationError, ValueError) as err:
            if strict:
                raise EvaluationError(f"{path}: {err} (--strict)") from err
            skipped.append((name, str(err)))
            logger.warning("skipping %s: %s", path, err)
            continue
        rows.append(measure(name, lip, aud, vshift))
    if not rows:
        raise EvaluationError(f"none of the {len(paths)} videos under {videos} could be "
                              f"measured, e.g. {skipped[0][1]}")
    means = {"min_dist": float(np.mean([r.min_dist for r in rows])),
             "confidence": float(np.mean([r.confidence for r in rows])),
             "abs_offset": float(np.mean([abs(r.av_offset) for r in rows])),
             "videos": float(len(rows))}
    return LseResult(rows, means, skipped, vshift)


def csv_text(result: LseResult) -> str:
    """One row per video, then a `mean` row (LSE-D and LSE-C averaged over the videos)."""
    lines = [",".join(CSV_COLUMNS)]
    for r in result.rows:
        video = f'"{r.video}"' if any(c in r.video for c in ',"\n') else r.video
        lines.append(f"{video},{r.av_offset},{r.min_dist:.6f},{r.confidence:.6f},{r.windows}")
    m = result.means
    lines.append(f"mean,{m['abs_offset']:.4f},{m['min_dist']:.6f},{m['confidence']:.6f},"
                 f"{sum(r.windows for r in result.rows)}")
    return "\n".join(lines) + "\n"


def format_table(result: LseResult, limit: int = 20) -> str:
    lines = [f"{'video':<40} {'offset':>6} {'LSE-D':>7} {'LSE-C':>7} {'windows':>7}"]
    for r in result.rows[:limit]:
        name = r.video if len(r.video) <= 40 else "..." + r.video[-37:]
        lines.append(f"{name:<40} {r.av_offset:>+6d} {r.min_dist:>7.3f} {r.confidence:>7.3f} "
                     f"{r.windows:>7d}")
    if len(result.rows) > limit:
        lines.append(f"... {len(result.rows) - limit} more rows (all in --sync_csv)")
    return "\n".join(lines)


def write_lse_outputs(result: LseResult, *, sync_csv: str | os.PathLike | None = None
                      ) -> None:
    """Writes the per-video CSV atomically (`paths.write_file`)."""
    from av_disentangle.evaluation import paths

    if sync_csv:
        paths.write_file(sync_csv, csv_text(result))
        logger.info("wrote the LSE table (%d videos) to %s", len(result.rows), sync_csv)

