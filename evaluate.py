#!/usr/bin/env python
"""Evaluate an exported av-disentangle SavedModel.

Needs only the SavedModel, numpy, TensorFlow, PyAV (``av``) and matplotlib (plus
``av_disentangle.metrics``); none of the training code.

SavedModel contract (``tf.saved_model.load(path).signatures[...]``):
  * ``serving_default``: ``waveform`` float32 (B, S) 16 kHz mono -> ``embedding`` (B, D)
    (an extra scalar int32 ``sample_rate`` input, if the signature has one, is fed 16000)
  * ``embed_face``: ``frames`` uint8 (B, T, H, W, 3) RGB 25 fps -> ``embedding`` (B, D)
  * ``content``: ``waveform`` (B, S) -> ``content`` (B, T', D)
  * ``face_content``: ``frames`` (B, T, H, W, 3) -> ``content`` (B, T', D); T frames and
    T*640 samples give the same T'.

Tasks:
  * ``verification`` (default): VoxCeleb trial list ``label path1 path2``; every distinct file
    is embedded once as ``--num_crops`` evenly spaced ``--crop_seconds`` crops; a trial's score
    is the mean cosine over all crop pairs. Prints
    ``EER x.xx%  minDCF(0.01) y.yyy  minDCF(0.05) z.zzz``.
  * ``sync``: audio-visual offset search over +-``--max_offset`` video frames with the content
    streams, on each video as is and with the audio shifted on purpose by ``--shifts``.
  * ``crossmodal``: face-to-voice verification (embed_face vs serving_default).
  * ``--make_trials ROOT --trials_out FILE``: all same/different pairs of
    ``ROOT/<speaker>/<utt>.<ext>``.

Outputs: ``--scores_out`` / ``--plot_out`` files, ``--logdir`` (TensorBoard run
``<logdir>/evaluate``: the DET curve or sync offset curve as an image and the metrics as
scalars, at step = the model's version folder), ``--projector_out`` (TensorBoard embedding
projector: ``tensors.tsv``, ``metadata.tsv``, ``projector_config.pbtxt``; view it with
``tensorboard --logdir <projector_out>``). Every path is checked before any work; every file is
written to a temporary name and renamed, after the summary line is printed.

Faults: a user error is one line naming the file and the problem, exit 2. An audio file that
cannot be decoded or decodes to NaN/Inf stops verification (``--skip_missing`` drops its trials
with a report); an unreadable video is skipped by sync/crossmodal with a report (count and first
names, also in the summary line), ``--strict`` stops at it instead.

Examples:
  python evaluate.py --make_trials data/samples/librispeech_subset --trials_out /tmp/ls.txt
  python evaluate.py --model saved_models/av/1 --trials /tmp/ls.txt \\
      --audio_root data/samples/librispeech_subset --plot_out /tmp/det.png
  python evaluate.py --task sync --model saved_models/av/1 --videos data/samples/pcavs_vox2
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import logging
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from av_disentangle.metrics import (  # noqa: E402
    EqualErrorRate,
    compute_eer,
    compute_min_dcf,
    det_curve,
    pair_scoring_model,
)

try:  # progress bars are optional
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    def tqdm(iterable=None, **_kwargs):  # type: ignore[no-redef]
        return iterable

logger = logging.getLogger("evaluate")

SAMPLE_RATE = 16000
VIDEO_FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // VIDEO_FPS  # 640
MIN_FACE_FRAMES = 9
AUDIO_EXTENSIONS = (".wav", ".flac", ".m4a", ".mp3", ".ogg", ".opus", ".aac")
VIDEO_EXTENSIONS = (".mp4", ".mpg", ".mpeg", ".avi", ".mov", ".mkv", ".webm")
P_TARGETS = (0.01, 0.05)


class EvaluationError(RuntimeError):
    """A user-facing error (bad input file, missing data); printed without a traceback."""


# === Paths: checked before any work, written atomically ===


def _write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to a temporary name beside ``path`` and renames it (a reader never sees
    a half-written file).

    Raises:
        EvaluationError: naming ``path``, if it cannot be written.
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise EvaluationError(f"{path}: cannot write ({err.strerror or err})") from err


def _write_text_atomic(path: str | os.PathLike, text: str) -> None:
    _write_atomic(path, text.encode("utf-8"))


def _probe_writable(folder: Path, what: str) -> None:
    """Creates and removes a file in ``folder`` (the only reliable test, also for root and for
    read-only mounts)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".evaluate-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise EvaluationError(f"{what}: cannot write in folder {folder} "
                              f"({err.strerror or err})") from err


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """Raises EvaluationError unless ``path`` can be written (its folder exists and is
    writable, and it is not a folder)."""
    p = Path(path)
    if p.is_dir():
        raise EvaluationError(f"{path}: {flag} is a folder; give a file name")
    if not p.parent.is_dir():
        raise EvaluationError(f"{path}: {flag} cannot be written: folder {p.parent} does not "
                              "exist")
    _probe_writable(p.parent, f"{path}: {flag}")


def check_output_dir(path: str | os.PathLike, flag: str) -> None:
    """Creates ``path`` if needed; raises EvaluationError unless files can be written in it."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise EvaluationError(f"{path}: {flag} folder cannot be created "
                              f"({err.strerror or err})") from err
    _probe_writable(Path(path), f"{path}: {flag}")


def check_paths(args: argparse.Namespace) -> None:
    """Every input path exists and every output can be written, before any decoding or model
    loading, so that a long run never ends in a path error and the metrics are never lost."""
    inputs = [(args.trials, "--trials", "file"), (args.identities, "--identities", "file"),
              (args.audio_root, "--audio_root", "folder"), (args.videos, "--videos", "folder")]
    for path, flag, kind in inputs:
        if path and not (os.path.isfile(path) if kind == "file" else os.path.isdir(path)):
            raise EvaluationError(f"{path}: {flag} {kind} not found")
    for flag in ("--scores_out", "--plot_out"):
        path = getattr(args, flag[2:])
        if path:
            check_output_file(path, flag)
    if args.projector_out and args.task == "sync":
        raise EvaluationError("--projector_out shows embeddings: use it with --task "
                              "verification or crossmodal")
    for flag in ("--logdir", "--projector_out"):
        path = getattr(args, flag[2:])
        if path:
            check_output_dir(path, flag)


# === Trials ===


@dataclass(frozen=True)
class Trial:
    """One verification trial: ``label`` 1 = same speaker, 0 = different."""

    label: int
    path1: str
    path2: str


def read_trials(path: str | os.PathLike) -> list[Trial]:
    """Reads a VoxCeleb-format trial list (``label path1 path2`` per line).

    Blank lines and lines starting with ``#`` are ignored.

    Raises:
        EvaluationError: naming the file and 1-based line number of a malformed line.
    """
    trials: list[Trial] = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError as err:
        raise EvaluationError(f"{path}: --trials file not found") from err
    except (OSError, UnicodeDecodeError) as err:
        raise EvaluationError(f"{path}: cannot read the trial list ({err})") from err
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise EvaluationError(
                f"{path}:{lineno}: expected 'label path1 path2' with label 0 or 1, "
                f"got {text[:200]!r}")
        trials.append(Trial(int(parts[0]), parts[1], parts[2]))
    if not trials:
        raise EvaluationError(f"{path}: no trials found")
    return trials


def make_trials(root: str | os.PathLike, out_path: str | os.PathLike,
                extensions: Sequence[str] = AUDIO_EXTENSIONS) -> int:
    """Writes all same/different-speaker pairs of ``root/<speaker>/<utt>.<ext>``.

    Paths in the list are relative to ``root`` (use it as ``--audio_root``). Files are
    found recursively below each speaker folder. Returns the number of trials written.
    """
    root = Path(root)
    files: list[tuple[str, str]] = []  # (speaker, relative path)
    for speaker_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(speaker_dir.rglob("*")):
            if f.is_file() and f.suffix.lower() in extensions:
                files.append((speaker_dir.name, f.relative_to(root).as_posix()))
    speakers = {s for s, _ in files}
    if len(files) < 2 or len(speakers) < 2:
        raise EvaluationError(
            f"{root}: need audio files of at least 2 speakers in <root>/<speaker>/, found "
            f"{len(files)} file(s) of {len(speakers)} speaker(s)")
    lines = [f"{int(s1 == s2)} {p1} {p2}\n"
             for (s1, p1), (s2, p2) in itertools.combinations(files, 2)]
    _write_text_atomic(out_path, "".join(lines))
    n = len(lines)
    n_target = sum(c * (c - 1) // 2 for c in Counter(s for s, _ in files).values())
    logger.info("wrote %d trials (%d target, %d non-target) over %d files of %d speakers "
                "to %s", n, n_target, n - n_target, len(files), len(speakers), out_path)
    return n


# === Decoding (PyAV) ===


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decodes any FFmpeg-readable audio (or video's audio) to mono float32 at ``sample_rate``.

    Returns:
        (samples,) float32 waveform in [-1, 1].

    Raises:
        EvaluationError: naming the file, if it has no audio stream or cannot be decoded.
    """
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise EvaluationError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            chunks: list[np.ndarray] = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except EvaluationError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise EvaluationError(f"cannot decode audio file {path}: {err}") from err
    if not chunks or sum(c.size for c in chunks) == 0:
        raise EvaluationError(f"cannot decode audio file {path}: no audio samples")
    wav = np.concatenate(chunks).astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(wav))
    if bad.size:  # a float file or a broken decoder; the model would embed garbage
        raise EvaluationError(
            f"{path}: audio decodes to {bad.size} non-finite sample{'s' * (bad.size > 1)} "
            f"(NaN or Inf) of {wav.size}, first at {bad[0] / sample_rate:.2f} s")
    return np.clip(wav, -1.0, 1.0)


def load_video(path: str | os.PathLike, size: tuple[int, int] | None, fps: int = VIDEO_FPS,
               max_seconds: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decodes a video into 25 fps RGB frames and the matching 16 kHz mono audio.

    Frame timing comes from each frame's timestamp (not the header's average rate, which
    can be wrong): output frame k is the decoded frame nearest to ``t0 + k / fps``. Audio is
    aligned to the first video frame using the streams' start times and padded/trimmed to
    exactly ``T * 640`` samples.

    Args:
        path: video file.
        size: (height, width) to resize frames to, or None for the native size.
        fps: output frame rate.
        max_seconds: keep at most this much from the start (None: all).

    Returns:
        ``frames`` uint8 (T, H, W, 3) and ``audio`` float32 (T * 640,).
    """
    import av

    height, width = size if size is not None else (None, None)
    times: list[float] = []
    images: list[np.ndarray] = []
    audio_start = 0.0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise EvaluationError(f"{path}: no video stream")
            vstream = container.streams.video[0]
            for i, frame in enumerate(container.decode(vstream)):
                t = frame.time if frame.time is not None else i / fps
                if max_seconds is not None and times and t - times[0] >= max_seconds:
                    break
                times.append(float(t))
                if size is None:
                    images.append(frame.to_ndarray(format="rgb24"))
                else:
                    images.append(frame.to_ndarray(format="rgb24", width=width, height=height))
            if container.streams.audio:
                astream = container.streams.audio[0]
                if astream.start_time is not None and astream.time_base is not None:
                    audio_start = float(astream.start_time * astream.time_base)
    except EvaluationError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise EvaluationError(f"cannot decode video file {path}: {err}") from err
    if not images:
        raise EvaluationError(f"cannot decode video file {path}: no frames")
    ts = np.asarray(times)
    t0 = ts[0]
    n_frames = int(np.floor((ts[-1] - t0) * fps + 0.5)) + 1
    targets = t0 + np.arange(n_frames) / fps
    order = np.argsort(ts, kind="stable")
    ts_sorted = ts[order]
    pos = np.clip(np.searchsorted(ts_sorted, targets), 1, len(ts_sorted) - 1) \
        if len(ts_sorted) > 1 else np.zeros(n_frames, dtype=int)
    if len(ts_sorted) > 1:
        left_closer = (targets - ts_sorted[pos - 1]) <= (ts_sorted[pos] - targets)
        pos = np.where(left_closer, pos - 1, pos)
    frames = np.stack([images[order[p]] for p in pos])

    audio = load_audio(path)
    shift = int(round((audio_start - t0) * SAMPLE_RATE))
    if shift > 0:
        audio = np.concatenate([np.zeros(shift, np.float32), audio])
    elif shift < 0:
        audio = audio[-shift:]
    need = n_frames * SAMPLES_PER_FRAME
    if audio.shape[0] < need:
        logger.debug("%s: audio %.2fs shorter than video %.2fs, zero-padding", path,
                     audio.shape[0] / SAMPLE_RATE, need / SAMPLE_RATE)
        audio = np.pad(audio, (0, need - audio.shape[0]))
    return frames, audio[:need]


def detect_face_box(frames: np.ndarray, every: int = 5, scale: float = 1.6
                    ) -> tuple[int, int, int]:
    """One square face box for a (mostly static) talking-face clip, by OpenCV Haar cascade.

    The largest frontal face is detected on every ``every``-th frame; the median centre and
    size over the clip are taken, enlarged by ``scale``. Needs ``opencv-python`` (optional
    dependency, only for ``--detect_faces``).

    Args:
        frames: (T, H, W, 3) uint8 RGB at native resolution.

    Returns:
        (centre_x, centre_y, side) in pixels.

    Raises:
        EvaluationError: if OpenCV is missing or no face is found.
    """
    try:
        import cv2
    except ImportError as err:
        raise EvaluationError("--detect_faces needs OpenCV (pip install "
                              "opencv-python-headless)") from err
    cascade = cv2.CascadeClassifier(
        os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
    boxes = []
    for frame in frames[::every]:
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                         minSize=(24, 24))
        if len(found):
            x, y, w, h = max(found, key=lambda b: b[2] * b[3])
            boxes.append((x + w / 2, y + h / 2, max(w, h)))
    if not boxes:
        raise EvaluationError("no face found by the Haar cascade")
    cx, cy, side = np.median(np.asarray(boxes, dtype=np.float64), axis=0)
    return int(round(cx)), int(round(cy)), int(round(side * scale))


def crop_faces(frames: np.ndarray, box: tuple[int, int, int], size: tuple[int, int]
               ) -> np.ndarray:
    """Crops the square ``box`` (cx, cy, side) from every frame (edge-padded) and resizes.

    Args:
        frames: (T, H, W, 3) uint8.

    Returns:
        (T, size[0], size[1], 3) uint8.
    """
    cx, cy, side = box
    half = side // 2
    pad = ((0, 0), (half, half), (half, half), (0, 0))
    padded = np.pad(frames, pad, mode="edge")
    crop = padded[:, cy:cy + 2 * half, cx:cx + 2 * half]  # centre shifted by the padding
    resized = tf.image.resize(crop, size, method="area", antialias=True)
    return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


def load_face_video(path: str | os.PathLike, size: tuple[int, int], detect_faces: bool,
                    max_seconds: float | None) -> tuple[np.ndarray, np.ndarray]:
    """``load_video`` for face models: whole frames resized, or a detected face crop.

    Returns:
        frames (T, H, W, 3) uint8 and audio (T * 640,) float32.
    """
    if not detect_faces:
        return load_video(path, size, max_seconds=max_seconds)
    frames, audio = load_video(path, None, max_seconds=max_seconds)
    try:
        box = detect_face_box(frames)
    except EvaluationError as err:
        raise EvaluationError(f"{path}: {err}") from err
    logger.debug("%s: face box centre (%d, %d) side %d", path, *box)
    return crop_faces(frames, box, size), audio


def list_videos(directory: str | os.PathLike) -> list[Path]:
    """All video files (recursively) under ``directory``, sorted."""
    vids = sorted(p for p in Path(directory).rglob("*")
                  if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not vids:
        raise EvaluationError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {directory}")
    return vids


# === Model ===


def _version_hint(folder: Path) -> str:
    """What to pass instead of a model's base folder (TF Serving layout ``<name>/<version>``)."""
    versions = sorted((d.name for d in folder.iterdir()
                       if d.is_dir() and d.name.isdigit() and (d / "saved_model.pb").is_file()),
                      key=int)
    if versions:
        return (f"it holds version folders {', '.join(versions)}: pass one of them, e.g. "
                f"--model {folder / versions[-1]}")
    entries = sorted(d.name for d in folder.iterdir())
    return ("and it has no version folders (<name>/<integer>/saved_model.pb)"
            + (f"; it holds {', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}"
               if entries else "; it is empty"))


class ExportedModel:
    """Thin wrapper over the four serving signatures of an exported SavedModel."""

    def __init__(self, path: str | os.PathLike) -> None:
        folder = Path(path)
        if not folder.is_dir():
            raise EvaluationError(f"{path}: --model SavedModel folder not found")
        if not any((folder / f).is_file() for f in ("saved_model.pb", "saved_model.pbtxt")):
            raise EvaluationError(f"{path}: --model is not a SavedModel (no saved_model.pb); "
                                  + _version_hint(folder))
        self.path = str(path)
        try:
            self._loaded = tf.saved_model.load(self.path)
        except (OSError, ValueError, tf.errors.OpError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise EvaluationError(f"{path}: cannot load the SavedModel: {first[:300]}") from err
        self.signatures = self._loaded.signatures

    def require(self, *names: str) -> None:
        """Raises EvaluationError now, before any decoding, if a signature is missing."""
        for name in names:
            self._signature(name)

    def _signature(self, name: str):
        if name not in self.signatures:
            raise EvaluationError(
                f"{self.path}: SavedModel has no '{name}' signature "
                f"(has: {sorted(self.signatures.keys())})")
        return self.signatures[name]

    def _audio_call(self, name: str, waveforms: np.ndarray) -> dict:
        """Calls an audio signature, adding ``sample_rate`` (int32 16000) if it takes one."""
        fn = self._signature(name)
        kwargs = {"waveform": tf.constant(waveforms, tf.float32)}
        if "sample_rate" in fn.structured_input_signature[1]:
            kwargs["sample_rate"] = tf.constant(SAMPLE_RATE, tf.int32)
        return fn(**kwargs)

    def face_size(self, default: int) -> tuple[int, int]:
        """(H, W) from the static ``face_content`` input shape, else (default, default)."""
        try:
            spec = self._signature("face_content").structured_input_signature[1]["frames"]
            h, w = spec.shape[2], spec.shape[3]
        except (EvaluationError, KeyError, IndexError, TypeError):
            h = w = None
        if h is None or w is None:
            return default, default
        return int(h), int(w)

    def embed_waveforms(self, waveforms: np.ndarray) -> np.ndarray:
        """(B, S) float32 -> (B, D) speaker embeddings."""
        return self._audio_call("serving_default", waveforms)["embedding"].numpy()

    def embed_faces(self, frames: np.ndarray) -> np.ndarray:
        """(B, T, H, W, 3) uint8 -> (B, D) face identity embeddings."""
        out = self._signature("embed_face")(frames=tf.constant(frames, tf.uint8))
        return out["embedding"].numpy()

    def audio_content(self, waveforms: np.ndarray) -> np.ndarray:
        """(B, S) float32 -> (B, T', D) audio content sequences."""
        return self._audio_call("content", waveforms)["content"].numpy()

    def face_content(self, frames: np.ndarray) -> np.ndarray:
        """(B, T, H, W, 3) uint8 -> (B, T', D) face content sequences."""
        out = self._signature("face_content")(frames=tf.constant(frames, tf.uint8))
        return out["content"].numpy()


# === Verification ===


def crop_waveform(wav: np.ndarray, num_crops: int, crop_samples: int) -> np.ndarray:
    """Evenly spaced crops of a waveform.

    Args:
        wav: (S,) waveform.
        num_crops: N.
        crop_samples: L; shorter waveforms are first padded by repeating themselves.

    Returns:
        (N, L) float32 crops (first crop at the start, last one ending at the end).
    """
    if wav.shape[0] == 0:
        raise ValueError("empty waveform")
    if wav.shape[0] < crop_samples:
        wav = np.tile(wav, int(np.ceil(crop_samples / wav.shape[0])))[:crop_samples]
    starts = np.linspace(0, wav.shape[0] - crop_samples, num_crops).astype(np.int64)
    return np.stack([wav[s:s + crop_samples] for s in starts]).astype(np.float32)


def embed_files(model: ExportedModel, paths: Sequence[str], audio_root: str | os.PathLike,
                num_crops: int = 10, crop_seconds: float = 2.0, batch_size: int = 64,
                skip_bad: bool = False) -> tuple[np.ndarray, dict[str, str]]:
    """Embeds each file once as ``num_crops`` crops.

    Args:
        paths: F distinct paths relative to ``audio_root`` (or absolute).
        batch_size: crops per model call (rounded to whole files, at least one file).
        skip_bad: leave out a file that cannot be decoded or decodes to NaN/Inf (instead of
            raising EvaluationError naming it).

    Returns:
        ``(embeddings, bad)``: (F', N, D) float32 crop embeddings of the F' usable files in
        the order of ``paths``, and {path: reason} for the files left out.
    """
    crop_samples = int(round(crop_seconds * SAMPLE_RATE))
    if crop_samples < SAMPLE_RATE:
        raise EvaluationError("--crop_seconds must be at least 1.0 (model needs >= 16000 "
                              "samples)")
    files_per_call = max(1, batch_size // num_crops)
    out: list[np.ndarray] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        crops = np.concatenate(pending)
        emb = model.embed_waveforms(crops)
        out.append(emb.reshape(len(pending), num_crops, -1))
        pending.clear()

    bad: dict[str, str] = {}
    for p in tqdm(paths, desc="embedding", unit="file", mininterval=1.0):
        try:
            wav = load_audio(os.path.join(audio_root, p))
        except EvaluationError as err:
            if not skip_bad:
                raise EvaluationError(f"{err} (--skip_missing drops the trials of files that "
                                      "cannot be used)") from err
            bad[p] = str(err)
            continue
        pending.append(crop_waveform(wav, num_crops, crop_samples))
        if len(pending) >= files_per_call:
            flush()
    if pending:
        flush()
    if not out:
        raise EvaluationError(f"none of the {len(paths)} audio files could be used, e.g. "
                              f"{next(iter(bad.values()), '')}")
    return np.concatenate(out).astype(np.float32), bad


def _score_buffer_metric(model) -> EqualErrorRate:
    stack = list(model.metrics)
    while stack:
        m = stack.pop(0)
        if isinstance(m, EqualErrorRate):
            return m
        stack.extend(getattr(m, "metrics", []))
    raise RuntimeError("pair-scoring model has no EqualErrorRate metric")


def score_pairs(table1: np.ndarray, table2: np.ndarray, idx1: np.ndarray, idx2: np.ndarray,
                labels: np.ndarray, batch_size: int = 1024
                ) -> tuple[np.ndarray, dict[str, float]]:
    """Scores pairs with the compiled Keras pair-scoring model via ``model.evaluate``.

    Args:
        table1: (F1, D) or (F1, N, D) embeddings; table2: (F2, D) or (F2, M, D).
        idx1, idx2: (P,) row indices into table1 / table2.
        labels: (P,) 0/1 labels.

    Returns:
        ``(scores (P,), logs)`` with logs ``{"eer", "min_dcf_0.01", "min_dcf_0.05"}``. The
        per-trial scores are read back from the EER metric's buffer (same order as the
        pairs), so the pairs are scored only once.
    """
    t1 = tf.constant(table1, tf.float32)
    t2 = tf.constant(table2, tf.float32)
    ds = tf.data.Dataset.from_tensor_slices(
        ((idx1.astype(np.int32), idx2.astype(np.int32)), labels.astype(np.float32)))
    ds = ds.batch(batch_size).map(
        lambda idx, y: ((tf.gather(t1, idx[0]), tf.gather(t2, idx[1])), y))
    model = pair_scoring_model(
        embedding_dim=table1.shape[-1], num_crops=0 if table1.ndim == 3 else None,
        p_targets=P_TARGETS)
    logs = model.evaluate(ds, return_dict=True, verbose=0)
    scores, buffered_labels = _score_buffer_metric(model).scores_and_labels()
    if scores.shape[0] != labels.shape[0] or not np.array_equal(buffered_labels, labels):
        raise RuntimeError("score buffer out of order with the trial list")
    return scores, {k: float(v) for k, v in logs.items()}


def format_summary(logs: dict[str, float]) -> str:
    """``EER x.xx%  minDCF(0.01) y.yyy  minDCF(0.05) z.zzz``."""
    return (f"EER {100 * logs['eer']:.2f}%  minDCF(0.01) {logs['min_dcf_0.01']:.3f}  "
            f"minDCF(0.05) {logs['min_dcf_0.05']:.3f}")


def write_scores(path: str | os.PathLike, scores: np.ndarray,
                 trials: Sequence[Trial]) -> None:
    """One ``score label path1 path2`` line per trial (written atomically)."""
    _write_text_atomic(path, "".join(f"{s:.6f} {t.label} {t.path1} {t.path2}\n"
                                     for s, t in zip(scores, trials)))
    logger.info("wrote %d scores to %s", len(trials), path)


def _probit(p: np.ndarray) -> np.ndarray:
    return tf.math.ndtri(tf.constant(p, tf.float64)).numpy()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure_png(fig) -> bytes:
    """PNG bytes of a matplotlib figure (closed afterwards)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _pyplot().close(fig)
    return buf.getvalue()


def plot_det(path: str | os.PathLike | None, scores: np.ndarray, labels: np.ndarray,
             title: str = "") -> bytes:
    """A DET curve (normal-deviate axes, EER marked) and score histograms as PNG.

    Returns the PNG bytes; also writes them (atomically) to ``path`` unless it is None.
    """
    plt = _pyplot()

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
    return _save_figure(fig, path)


def _save_figure(fig, path: str | os.PathLike | None) -> bytes:
    """Lays out `fig`, renders it to PNG bytes and, if `path` is given, writes them there
    atomically."""
    fig.tight_layout()
    png = _figure_png(fig)
    if path is not None:
        _write_atomic(path, png)
        logger.info("wrote plot to %s", path)
    return png


def plot_sync(path: str | os.PathLike | None, curves: dict[int, list[np.ndarray]],
              offsets: np.ndarray, errors: np.ndarray) -> bytes:
    """The offset search as PNG: mean score per candidate offset for each applied shift (the
    true offset dashed) and a histogram of the prediction errors.

    Args:
        curves: {shift: [(K,) scores per clip]}; offsets: (K,) candidate offsets (frames).
        errors: (C,) predicted minus true offset over all clip-shifts.
    """
    plt = _pyplot()
    fig, (ax_curve, ax_err) = plt.subplots(1, 2, figsize=(12, 4.6))
    for shift, clip_curves in sorted(curves.items()):
        mean = np.mean(np.stack(clip_curves), axis=0)
        (line,) = ax_curve.plot(offsets, mean, lw=2,
                                label=f"audio delayed {shift:+d} frames ({len(clip_curves)} "
                                      "clips)")
        ax_curve.axvline(shift, ls="--", c=line.get_color(), alpha=0.7)
    ax_curve.set_xlabel("candidate offset (video frames)")
    ax_curve.set_ylabel("mean face/audio content cosine")
    ax_curve.set_title("Offset search (dashed: true offset)")
    ax_curve.grid(True, alpha=0.3)
    ax_curve.legend(loc="lower left", fontsize=8)
    span = int(max(np.max(np.abs(errors)), 1))
    ax_err.hist(errors, bins=np.arange(-span - 0.5, span + 1.5), color="tab:blue")
    ax_err.set_xlabel("predicted - true offset (frames)")
    ax_err.set_ylabel("clip-shifts")
    ax_err.locator_params(axis="y", integer=True)
    ax_err.set_title(f"Exact {100 * np.mean(errors == 0):.1f}%, within +-1 "
                     f"{100 * np.mean(np.abs(errors) <= 1):.1f}% ({errors.size} clip-shifts)")
    return _save_figure(fig, path)


# === TensorBoard ===


def model_step(model_path: str | os.PathLike) -> int:
    """The model's version folder (``saved_models/<name>/<version>``) as the TensorBoard step,
    so evaluations of successive exports line up; 0 when it is not an integer."""
    name = Path(model_path).name
    return int(name) if name.isdigit() else 0


def write_tensorboard(logdir: str | os.PathLike, task: str, step: int,
                      scalars: dict[str, float], images: dict[str, bytes]) -> str:
    """Writes ``<task>/<name>`` scalars and PNG images to the run ``<logdir>/evaluate``.

    Returns the run folder. Give the training run's ``<model_dir>/logs`` to see the evaluation
    beside the training curves.
    """
    run = os.path.join(logdir, "evaluate")
    writer = tf.summary.create_file_writer(run)
    with writer.as_default(step=step):
        for name, value in scalars.items():
            tf.summary.scalar(f"{task}/{name}", float(value))
        for name, png in images.items():
            tf.summary.image(f"{task}/{name}", tf.image.decode_png(png, channels=3)[None])
    writer.close()
    logger.info("wrote TensorBoard %s summaries (%s) to %s at step %d", task,
                ", ".join([*scalars, *images]), run, step)
    return run


def _tsv_field(text: str) -> str:
    return " ".join(str(text).split())  # no tabs or newlines inside a field


def write_projector(out_dir: str | os.PathLike, embeddings: np.ndarray, columns: Sequence[str],
                    rows: Sequence[Sequence[str]], name: str) -> None:
    """Files for TensorBoard's embedding projector (``tensorboard --logdir out_dir``).

    Args:
        embeddings: (N, D) float32, one row per point.
        columns: metadata column names (>= 2, so the metadata file has a header row, as the
            projector expects for several columns).
        rows: N tuples of metadata values.

    Writes ``tensors.tsv`` (N lines of D tab-separated values), ``metadata.tsv`` (header + N
    lines) and last ``projector_config.pbtxt`` naming them (paths relative to ``out_dir``).
    """
    if len(columns) < 2 or len(rows) != embeddings.shape[0]:
        raise ValueError("need >= 2 metadata columns and one metadata row per embedding")
    out = Path(out_dir)
    _write_text_atomic(out / "tensors.tsv", "".join(
        "\t".join(f"{v:.6g}" for v in row) + "\n" for row in embeddings))
    _write_text_atomic(out / "metadata.tsv", "\t".join(columns) + "\n" + "".join(
        "\t".join(_tsv_field(v) for v in row) + "\n" for row in rows))
    _write_text_atomic(out / "projector_config.pbtxt",
                       f'embeddings {{\n  tensor_name: "{name}"\n  tensor_path: "tensors.tsv"\n'
                       '  metadata_path: "metadata.tsv"\n}\n')
    logger.info("wrote %d embeddings for the TensorBoard projector to %s (tensorboard "
                "--logdir %s)", embeddings.shape[0], out, out)


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _report_skipped(skipped: Sequence[tuple[str, str]], total: int) -> None:
    """One warning with the count and the first few reasons (each names its file)."""
    first = "; ".join(reason for _, reason in skipped[:5])
    more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    logger.warning("%d of %d videos could not be read and were skipped (--strict stops "
                   "instead): %s%s", len(skipped), total, first, more)


def run_verification(args: argparse.Namespace) -> dict[str, float]:
    """Verification task; returns the metric logs and prints the summary line.

    Order: all paths checked, trials read, model loaded, files embedded, pairs scored, the
    summary printed, and only then the outputs written (each atomically).
    """
    if not args.trials or not args.audio_root:
        raise EvaluationError("--task verification needs --trials and --audio_root")
    check_paths(args)
    trials = read_trials(args.trials)
    distinct = sorted({p for t in trials for p in (t.path1, t.path2)})
    missing = [p for p in distinct if not os.path.isfile(os.path.join(args.audio_root, p))]
    if missing:
        if not args.skip_missing:
            raise EvaluationError(
                f"{len(missing)} of {len(distinct)} audio files are missing under "
                f"{args.audio_root}, e.g. {', '.join(missing[:5])} "
                "(use --skip_missing to drop their trials)")
        gone = set(missing)
        before = len(trials)
        trials = [t for t in trials if t.path1 not in gone and t.path2 not in gone]
        logger.warning("--skip_missing: %d missing files, dropped %d of %d trials",
                       len(missing), before - len(trials), before)
        if not trials:
            raise EvaluationError("no trials left after dropping missing files")
        distinct = sorted({p for t in trials for p in (t.path1, t.path2)})
    logger.info("%d trials over %d distinct files", len(trials), len(distinct))

    model = ExportedModel(args.model)
    model.require("serving_default")
    emb, bad = embed_files(model, distinct, args.audio_root, args.num_crops, args.crop_seconds,
                           args.batch_size, skip_bad=args.skip_missing)
    if bad:
        before = len(trials)
        trials = [t for t in trials if t.path1 not in bad and t.path2 not in bad]
        logger.warning("--skip_missing: %d of %d audio files could not be used, dropped %d of "
                       "%d trials: %s%s", len(bad), len(distinct), before - len(trials), before,
                       "; ".join(list(bad.values())[:5]),
                       f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        if not trials:
            raise EvaluationError("no trials left after dropping the files that cannot be used")
        distinct = [p for p in distinct if p not in bad]
    index = {p: i for i, p in enumerate(distinct)}
    idx1 = np.array([index[t.path1] for t in trials])
    idx2 = np.array([index[t.path2] for t in trials])
    labels = np.array([t.label for t in trials], dtype=np.float32)
    _check_both_classes(labels, "trial list")
    scores, logs = score_pairs(emb, emb, idx1, idx2, labels, args.score_batch_size)
    print(format_summary(logs), flush=True)  # before any output file: never lost

    if args.scores_out:
        write_scores(args.scores_out, scores, trials)
    if args.plot_out or args.logdir:
        png = plot_det(args.plot_out, scores, labels,
                       title=f"Speaker verification ({Path(args.trials).name}, "
                             f"{len(trials)} trials): {format_summary(logs)}")
        if args.logdir:
            write_tensorboard(args.logdir, "verification", model_step(args.model), logs,
                              {"det_curve": png})
    if args.projector_out:
        write_projector(args.projector_out, _l2_normalise(emb.mean(axis=1)),
                        ("speaker", "file"), [(Path(p).parts[0], p) for p in distinct],
                        "speaker_embeddings")
    return logs


def _check_both_classes(labels: np.ndarray, what: str) -> None:
    n_pos = int(np.sum(labels == 1))
    if n_pos == 0 or n_pos == labels.shape[0]:
        raise EvaluationError(
            f"{what}: all {labels.shape[0]} pairs are {'target' if n_pos else 'non-target'}; "
            "EER/minDCF need both")


# === Audio-visual sync ===


def sync_offset_scores(model: ExportedModel, frames: np.ndarray, audio: np.ndarray,
                       max_offset: int = 15, true_shift: int = 0) -> np.ndarray:
    """Mean content cosine for every candidate audio offset.

    The audio is first delayed on purpose by ``true_shift`` frames
    (``audio'[n] = audio[n - true_shift * 640]``); then for each k in [-max_offset,
    max_offset] the face content of the central frames is compared with the content of the
    audio advanced by k frames. Only real samples are used (margins, no padding), so the
    correct answer for an in-sync video is ``k = true_shift``.

    Args:
        frames: (T, H, W, 3) uint8; audio: (T * 640,) float32.

    Returns:
        (2 * max_offset + 1,) scores for k = -max_offset .. max_offset.
    """
    n_frames = frames.shape[0]
    margin = max_offset + abs(true_shift)
    n_face = n_frames - 2 * margin
    if n_face < MIN_FACE_FRAMES:
        raise ValueError(f"clip of {n_frames} frames too short for offsets +-{margin}")
    fc = model.face_content(frames[None, margin:margin + n_face])[0]  # (T', D)
    seg = n_face * SAMPLES_PER_FRAME
    starts = [(margin + k - true_shift) * SAMPLES_PER_FRAME
              for k in range(-max_offset, max_offset + 1)]
    batch = np.stack([audio[s:s + seg] for s in starts])
    ac = model.audio_content(batch)  # (K, T', D)
    steps = min(fc.shape[0], ac.shape[1])
    if fc.shape[0] != ac.shape[1]:
        logger.warning("face/audio content lengths differ (%d vs %d); using %d steps",
                       fc.shape[0], ac.shape[1], steps)
    fc = fc[:steps] / np.maximum(np.linalg.norm(fc[:steps], axis=-1, keepdims=True), 1e-12)
    ac = ac[:, :steps]
    ac = ac / np.maximum(np.linalg.norm(ac, axis=-1, keepdims=True), 1e-12)
    return np.einsum("td,ktd->k", fc, ac) / steps


def _decoded_videos(videos: Sequence[Path], size: tuple[int, int], args: argparse.Namespace,
                    skipped: list[tuple[str, str]], desc: str):
    """Yields ``(video, frames (T, H, W, 3) uint8, audio (T * 640,) float32)`` per readable
    video. An unreadable one (undecodable, no audio, NaN/Inf audio, no face) is appended to
    ``skipped`` as (path, reason), or with ``--strict`` raises EvaluationError naming it."""
    for video in tqdm(videos, desc=desc, unit="video"):
        try:
            frames, audio = load_face_video(video, size, args.detect_faces, args.max_seconds)
        except EvaluationError as err:
            if args.strict:
                raise EvaluationError(f"{err} (--strict: stopped at the first unreadable "
                                      "video)") from err
            logger.debug("skipping %s: %s", video, err)
            skipped.append((str(video), str(err)))
            continue
        yield video, frames, audio


def _skip_summary(skipped: Sequence[tuple[str, str]], total: int, root: str) -> str:
    """Reports skipped videos; returns the suffix for the summary line ('' if none)."""
    if len(skipped) == total:
        raise EvaluationError(f"none of the {total} videos under {root} could be read, e.g. "
                              f"{skipped[0][1]}")
    if not skipped:
        return ""
    _report_skipped(skipped, total)
    return f"; {len(skipped)} of {total} videos skipped (unreadable)"


def run_sync(args: argparse.Namespace) -> dict[str, float]:
    """Sync task: predicted offset accuracy over videos x shifts (exact and +-1 frame)."""
    if not args.videos:
        raise EvaluationError("--task sync needs --videos")
    check_paths(args)
    shifts = [int(s) for s in args.shifts.split(",") if s.strip()]
    videos = list_videos(args.videos)
    model = ExportedModel(args.model)
    model.require("content", "face_content")
    size = model.face_size(args.face_size)
    offsets = np.arange(-args.max_offset, args.max_offset + 1)
    results: list[tuple[str, int, int]] = []  # (video, shift, predicted)
    curves: dict[int, list[np.ndarray]] = {}  # shift -> (K,) scores per clip
    skipped: list[tuple[str, str]] = []
    for video, frames, audio in _decoded_videos(videos, size, args, skipped, "sync"):
        for s in shifts:
            try:
                scores = sync_offset_scores(model, frames, audio, args.max_offset, s)
            except ValueError as err:
                logger.warning("%s shift %+d skipped: %s", video, s, err)
                continue
            pred = int(offsets[int(np.argmax(scores))])
            results.append((str(video), s, pred))
            curves.setdefault(s, []).append(scores)
            logger.info("%s: shift %+d -> predicted %+d (best %.3f, median %.3f)", video.name,
                        s, pred, float(scores.max()), float(np.median(scores)))
    suffix = _skip_summary(skipped, len(videos), args.videos)
    if not results:
        raise EvaluationError("no video was long enough for the offset search")
    err = np.array([p - s for _, s, p in results])
    exact = float(np.mean(err == 0))
    within1 = float(np.mean(np.abs(err) <= 1))
    for s in shifts:
        e = np.array([p - s2 for _, s2, p in results if s2 == s])
        if e.size:
            logger.info("shift %+d: exact %.1f%%  within+-1 %.1f%%  (%d clips)", s,
                        100 * np.mean(e == 0), 100 * np.mean(np.abs(e) <= 1), e.size)
    print(f"sync offset accuracy: exact {100 * exact:.1f}%  within+-1 {100 * within1:.1f}%  "
          f"({len(results)} clip-shifts, {len({v for v, _, _ in results})} videos, "
          f"offsets +-{args.max_offset}){suffix}", flush=True)
    logs = {"exact": exact, "within1": within1, "n": float(len(results))}
    if args.plot_out or args.logdir:
        png = plot_sync(args.plot_out, curves, offsets, err)
        if args.logdir:
            write_tensorboard(args.logdir, "sync", model_step(args.model),
                              {"exact": exact, "within1": within1}, {"offset_curve": png})
    return logs


# === Cross-modal verification ===


def read_identities(path: str | os.PathLike) -> dict[str, str]:
    """CSV ``path,identity`` (optional header) -> {path: identity}."""
    ids: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise EvaluationError(f"{path}:{lineno}: expected 'path,identity'")
            if lineno == 1 and row[0].strip().lower() == "path":
                continue
            ids[row[0].strip()] = row[1].strip()
    return ids


def _identity_of(video: Path, root: Path, ids: dict[str, str] | None) -> str:
    rel = video.relative_to(root).as_posix()
    if ids is None:
        return rel
    for key in (rel, str(video), video.name, video.stem):
        if key in ids:
            return ids[key]
    raise EvaluationError(f"{video}: no identity in --identities (tried {rel!r}, "
                          f"{video.name!r}, {video.stem!r})")


def _segments(n_frames: int, count: int, length: int) -> list[int]:
    """Start frames of ``count`` evenly spaced windows of ``length`` frames."""
    if n_frames <= length:
        return [0]
    return sorted(set(np.linspace(0, n_frames - length, count).astype(int).tolist()))


def run_crossmodal(args: argparse.Namespace) -> dict[str, float]:
    """Face-to-voice verification over all face/voice segment pairs."""
    if not args.videos:
        raise EvaluationError("--task crossmodal needs --videos")
    check_paths(args)
    root = Path(args.videos)
    ids = read_identities(args.identities) if args.identities else None
    videos = list_videos(root)
    model = ExportedModel(args.model)
    model.require("serving_default", "embed_face")
    size = model.face_size(args.face_size)
    seg_frames = max(MIN_FACE_FRAMES, int(round(args.segment_seconds * VIDEO_FPS)))
    faces, voices, owner, segment = [], [], [], []
    skipped: list[tuple[str, str]] = []
    for video, frames, audio in _decoded_videos(videos, size, args, skipped, "crossmodal"):
        if frames.shape[0] < seg_frames:  # pad short clips by repeating
            reps = int(np.ceil(seg_frames / frames.shape[0]))
            frames = np.concatenate([frames] * reps)[:seg_frames]
            audio = np.tile(audio, reps)[:seg_frames * SAMPLES_PER_FRAME]
        starts = _segments(frames.shape[0], args.segments_per_clip, seg_frames)
        f_batch = np.stack([frames[s:s + seg_frames] for s in starts])
        a_batch = np.stack([audio[s * SAMPLES_PER_FRAME:(s + seg_frames) * SAMPLES_PER_FRAME]
                            for s in starts])
        faces.append(model.embed_faces(f_batch))
        voices.append(model.embed_waveforms(a_batch))
        owner += [_identity_of(video, root, ids)] * len(starts)
        rel = video.relative_to(root).as_posix()
        segment += [f"{rel}@{s / VIDEO_FPS:.2f}s" for s in starts]
    suffix = _skip_summary(skipped, len(videos), args.videos)
    face_table = np.concatenate(faces)
    voice_table = np.concatenate(voices)
    owners = np.array(owner)
    n = len(owners)
    idx1, idx2 = (a.reshape(-1) for a in np.meshgrid(np.arange(n), np.arange(n),
                                                     indexing="ij"))
    labels = (owners[idx1] == owners[idx2]).astype(np.float32)
    _check_both_classes(labels, "face/voice pairs")
    logger.info("%d face/voice pairs from %d segments of %d %s", len(labels), n,
                len(set(owner)), "identities" if ids else "clips")
    scores, logs = score_pairs(face_table, voice_table, idx1, idx2, labels,
                               args.score_batch_size)
    print(format_summary(logs) + suffix, flush=True)
    if args.plot_out or args.logdir:
        png = plot_det(args.plot_out, scores, labels,
                       title=f"Face-to-voice verification: {format_summary(logs)}")
        if args.logdir:
            write_tensorboard(args.logdir, "crossmodal", model_step(args.model), logs,
                              {"det_curve": png})
    if args.projector_out:
        write_projector(args.projector_out,
                        _l2_normalise(np.concatenate([face_table, voice_table])),
                        ("identity", "modality", "segment"),
                        [(o, m, g) for m in ("face", "voice") for o, g in zip(owner, segment)],
                        "face_and_voice_embeddings")
    return logs


# === CLI ===


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", choices=("verification", "sync", "crossmodal"),
                   default="verification")
    p.add_argument("--model", help="SavedModel directory (saved_models/<name>/<version>)")
    g = p.add_argument_group("verification")
    g.add_argument("--trials", help="trial list: 'label path1 path2' per line")
    g.add_argument("--audio_root", help="directory the trial paths are relative to")
    g.add_argument("--num_crops", type=int, default=10)
    g.add_argument("--crop_seconds", type=float, default=2.0)
    g.add_argument("--batch_size", type=int, default=64, help="crops per model call")
    g.add_argument("--score_batch_size", type=int, default=4096, help="pairs per scoring step")
    g.add_argument("--skip_missing", action="store_true",
                   help="drop the trials of audio files that are missing, cannot be decoded "
                        "or decode to NaN/Inf samples (reported by name) instead of failing")
    g.add_argument("--scores_out", help="write 'score label path1 path2' per trial")
    g.add_argument("--plot_out", help="PNG: DET curve and score histograms (verification, "
                                      "crossmodal) or the offset curve (sync)")
    g = p.add_argument_group("sync / crossmodal")
    g.add_argument("--videos", help="directory of videos (mp4/mpg, searched recursively)")
    g.add_argument("--face_size", type=int, default=112,
                   help="frame size if the SavedModel's face input shape is not static")
    g.add_argument("--detect_faces", action="store_true",
                   help="crop one Haar-cascade face box per clip (non-crop videos such as "
                        "GRID; needs OpenCV; no tracking of moving faces)")
    g.add_argument("--max_offset", type=int, default=15, help="offset search range in frames")
    g.add_argument("--shifts", default="0,5,-7",
                   help="audio delays (frames) applied on purpose to each video")
    g.add_argument("--max_seconds", type=float, default=10.0,
                   help="use at most this much of each video")
    g.add_argument("--identities", help="crossmodal: CSV 'path,identity' (default: clip)")
    g.add_argument("--segments_per_clip", type=int, default=2)
    g.add_argument("--segment_seconds", type=float, default=2.0)
    g.add_argument("--strict", action="store_true",
                   help="stop at the first video that cannot be read (default: skip it and "
                        "report the count and names)")
    g = p.add_argument_group("TensorBoard")
    g.add_argument("--logdir", help="write the DET / offset curve image and the metrics to "
                                    "the TensorBoard run <logdir>/evaluate (e.g. the training "
                                    "run's <model_dir>/logs)")
    g.add_argument("--projector_out", help="folder for TensorBoard's embedding projector: "
                                           "speaker (or face and voice) embeddings with their "
                                           "labels; view with tensorboard --logdir FOLDER")
    g = p.add_argument_group("trial list builder")
    g.add_argument("--make_trials", metavar="ROOT",
                   help="write all pairs of ROOT/<speaker>/<utt>.<ext> to --trials_out")
    g.add_argument("--trials_out")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.make_trials:
            if not args.trials_out:
                raise EvaluationError("--make_trials needs --trials_out")
            if not os.path.isdir(args.make_trials):
                raise EvaluationError(f"{args.make_trials}: --make_trials folder not found")
            check_output_file(args.trials_out, "--trials_out")
            make_trials(args.make_trials, args.trials_out)
            return 0
        if not args.model:
            raise EvaluationError("--model is required")
        {"verification": run_verification, "sync": run_sync,
         "crossmodal": run_crossmodal}[args.task](args)
    except EvaluationError as err:
        logger.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
