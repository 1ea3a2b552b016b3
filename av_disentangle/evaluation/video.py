"""Face clips for evaluation, read exactly as training data is prepared.

Every clip goes through `pipelines.prepare.process_clip`, the function `python -m
pipelines.prepare` runs per file: `pipelines.media.decode_clip` (25 fps by frame timestamps,
16 kHz mono audio aligned to the first frame, the same `max_side` and length reconciliation),
then either `pipelines.faces.crop_faces` (detected and TRACKED face boxes, `--detect_faces`, as
`prepare --source videos`) or `pipelines.faces.resize_frames` (clips that are face crops already,
as VoxCeleb2 and `prepare --no_detect`: a non-square frame is centre-cropped, never stretched).
So the model is evaluated on faces cut the way it was trained on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from av_disentangle import files
from av_disentangle.constants import SAMPLES_PER_FRAME, VIDEO_EXTENSIONS, VIDEO_FPS
from av_disentangle.evaluation import EvaluationError
from pipelines import prepare, sources

logger = logging.getLogger(__name__)


def list_videos(directory: str | os.PathLike) -> list[Path]:
    """All video files (recursively) under `directory`, sorted.

    Raises:
        EvaluationError: if there is none.
    """
    videos = files.list_files(directory, VIDEO_EXTENSIONS)
    if not videos:
        raise EvaluationError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {directory}")
    return videos


def load_face_clip(path: str | os.PathLike, face_size: int, detect_faces: bool,
                   max_seconds: float | None = None, av_offset_frames: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Decodes and crops one clip as `pipelines.prepare` does, keeping the first `max_seconds`.

    Args:
        path: video file with audio.
        face_size: S, side of the face crops (the model's face input size).
        detect_faces: detect, track and crop the face (`prepare --source videos`); False resizes
            whole frames, centre-cropped to a square (`prepare --no_detect`, VoxCeleb2).
        max_seconds: keep at most this much from the start (None: all). Cropping runs on the
            whole clip first, so the kept frames are exactly `prepare`'s.
        av_offset_frames: SyncNet offset to apply to the audio (VoxCeleb2 txt `Offset`,
            convention in `pipelines.media.shift_audio`).

    Returns:
        frames (T, S, S, 3) uint8 RGB at 25 fps and audio (T * 640,) float32 in [-1, 1)
        (the int16 samples / 32768, as `pipelines.records.decode_audio`).

    Raises:
        EvaluationError: naming the file and the reason (unreadable, no audio, no face, ...).
    """
    spec = sources.ClipSpec(path=str(path), track_id=Path(path).name, detect=detect_faces,
                            av_offset_frames=av_offset_frames)
    result = prepare.process_clip(spec, prepare.PrepareConfig(face_size=face_size, min_frames=1))
    if result.skip_reason is not None:
        raise EvaluationError(f"{path}: {result.skip_reason}"
                              + (f" ({result.skip_detail})" if result.skip_detail else ""))
    for warning in result.warnings:
        logger.debug("%s: %s", path, warning)
    frames, audio = result.frames, result.audio
    if max_seconds is not None:
        keep = max(1, int(np.ceil(max_seconds * VIDEO_FPS - 1e-6)))
        frames = frames[:keep]
        audio = audio[:keep * SAMPLES_PER_FRAME]
    return frames, audio.astype(np.float32) / 32768.0


def decoded_videos(videos: Sequence[Path], face_size: int, detect_faces: bool,
                   max_seconds: float | None, strict: bool, skipped: list[tuple[str, str]],
                   desc: str) -> Iterator[tuple[Path, np.ndarray, np.ndarray]]:
    """Yields `(video, frames (T, S, S, 3) uint8, audio (T * 640,) float32)` per readable video
    (`load_face_clip`). An unreadable one (undecodable, no audio, no face) is appended to
    `skipped` as (path, reason), or with `strict` raises EvaluationError naming it."""
    for video in tqdm(videos, desc=desc, unit="video"):
        try:
            frames, audio = load_face_clip(video, face_size, detect_faces, max_seconds)
        except EvaluationError as err:
            if strict:
                raise EvaluationError(f"{err} (--strict: stopped at the first unreadable "
                                      "video)") from err
            logger.debug("skipping %s: %s", video, err)
            skipped.append((str(video), str(err)))
            continue
        yield video, frames, audio


def skip_summary(skipped: Sequence[tuple[str, str]], total: int, root: str | os.PathLike
                 ) -> str:
    """Reports skipped videos (one warning: count and first five reasons, each naming its
    file); returns the suffix for the summary line ('' if none).

    Raises:
        EvaluationError: if every video was skipped.
    """
    if len(skipped) == total:
        raise EvaluationError(f"none of the {total} videos under {root} could be read, e.g. "
                              f"{skipped[0][1]}")
    if not skipped:
        return ""
    first = "; ".join(reason for _, reason in skipped[:5])
    more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    logger.warning("%d of %d videos could not be read and were skipped (--strict stops "
                   "instead): %s%s", len(skipped), total, first, more)
    return f"; {len(skipped)} of {total} videos skipped (unreadable)"
