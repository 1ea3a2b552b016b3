"""Face detection, tracking and cropping for generic talking-face videos (OpenCV Haar cascade).

One track per clip: the dominant face (largest at the start, then the detection nearest to
the running track). Detection runs every `detect_every` frames on a downscaled grey image;
the box (centre x, centre y, side) is cleaned of single-frame outliers with a median filter,
interpolated to every frame, smoothed with a moving average, enlarged by `margin` and cut as
a square crop (zero padding outside the image) resized to `face_size`.

TensorFlow-free: runs in the preparation worker processes.
"""

from __future__ import annotations

import dataclasses
import functools

import cv2
import numpy as np

from av_disentangle.errors import UserError


class NoFaceError(UserError):
    """Not enough frames with a detected face; `detail` says how many. `prepare` records it
    as the clip's skip reason; where it reaches a command (evaluation of an uncropped video)
    it is the user's input that has no usable face: one line, exit 2."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


@dataclasses.dataclass(frozen=True)
class FaceConfig:
    """Face tracking settings.

    Attributes:
      face_size: output crop side in pixels.
      detect_every: run the detector on every N-th frame.
      detect_max_side: downscale frames so the longer side is at most this for detection.
      min_face_fraction: smallest face side, as a fraction of the frame's shorter side.
      min_detected_fraction: a clip whose detector hit rate (over the frames it ran on) is
        below this is rejected.
      margin: the crop side is the detected side times (1 + 2 * margin).
      median_window: outlier-rejection median filter length, in detections (odd).
      smooth_window: moving-average length in frames (odd).
      scale_factor, min_neighbors: `CascadeClassifier.detectMultiScale` arguments.
    """

    face_size: int = 112
    detect_every: int = 5
    detect_max_side: int = 360
    min_face_fraction: float = 0.1
    min_detected_fraction: float = 0.5
    margin: float = 0.3
    median_window: int = 5
    smooth_window: int = 9
    scale_factor: float = 1.1
    min_neighbors: int = 5


@functools.lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"cannot load OpenCV cascade {path}")
    return cascade


def detect_faces(frame: np.ndarray, config: FaceConfig = FaceConfig()) -> np.ndarray:
    """Runs the Haar cascade on one frame.

    Args:
      frame: (H, W, 3) uint8 RGB.
    Returns:
      (N, 4) float32 boxes (x, y, w, h) in the frame's pixel coordinates.
    """
    height, width = frame.shape[:2]
    scale = min(1.0, config.detect_max_side / max(height, width))
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        grey = cv2.resize(grey, (int(round(width * scale)), int(round(height * scale))),
                          interpolation=cv2.INTER_AREA)
    grey = cv2.equalizeHist(grey)
    min_side = max(12, int(config.min_face_fraction * min(grey.shape)))
    boxes = _cascade().detectMultiScale(grey, scaleFactor=config.scale_factor,
                                        minNeighbors=config.min_neighbors,
                                        minSize=(min_side, min_side))
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32)
    return np.asarray(boxes, np.float32) / scale


def _median_filter(x: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or x.shape[0] < 3:
        return x
    half = window // 2
    padded = np.pad(x, ((half, half), (0, 0)), mode="edge")
    return np.stack([np.median(padded[i:i + window], axis=0) for i in range(x.shape[0])])


def _moving_average(x: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or x.shape[0] < 2:
        return x
    half = window // 2
    padded = np.pad(x, ((half, half), (0, 0)), mode="edge")
    kernel = np.ones(window) / window
    return np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(x.shape[1])],
                    axis=1)


def track_face(frames: np.ndarray, config: FaceConfig = FaceConfig()) -> np.ndarray:
    """Detects and tracks the dominant face.

    Args:
      frames: (F, H, W, 3) uint8 RGB.
    Returns:
      (F, 3) float32 smoothed boxes (centre x, centre y, side) of the detected face, in pixels.
    Raises:
      NoFaceError: the face was found in fewer than `min_detected_fraction` of the frames
        the detector ran on.
    """
    num_frames = frames.shape[0]
    sampled = list(range(0, num_frames, max(1, config.detect_every)))
    if sampled[-1] != num_frames - 1:
        sampled.append(num_frames - 1)
    found_idx, found_box = [], []
    previous = None
    for i in sampled:
        boxes = detect_faces(frames[i], config)
        if boxes.shape[0] == 0:
            continue
        centres = np.stack([boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2,
                            np.sqrt(boxes[:, 2] * boxes[:, 3])], axis=1)
        if previous is None:
            best = int(np.argmax(centres[:, 2]))
        else:
            dist = np.hypot(centres[:, 0] - previous[0], centres[:, 1] - previous[1])
            best = int(np.argmin(dist / previous[2] - 0.1 * centres[:, 2] / previous[2]))
        previous = centres[best]
        found_idx.append(i)
        found_box.append(centres[best])
    hit_rate = len(found_idx) / len(sampled)
    if not found_idx or hit_rate < config.min_detected_fraction:
        raise NoFaceError(f"face found in {len(found_idx)} of {len(sampled)} detection frames "
                          f"(need {config.min_detected_fraction:.0%})")
    boxes = _median_filter(np.asarray(found_box, np.float64), config.median_window)
    idx = np.asarray(found_idx)
    every = np.arange(num_frames)
    per_frame = np.stack([np.interp(every, idx, boxes[:, c]) for c in range(3)], axis=1)
    return _moving_average(per_frame, config.smooth_window).astype(np.float32)


def crop_square(frame: np.ndarray, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """Cuts a square of `side` pixels centred at (cx, cy), zero-padded outside the frame.

    Args:
      frame: (H, W, 3) uint8.
    Returns:
      (size, size, 3) uint8.
    """
    height, width = frame.shape[:2]
    side_i = max(2, int(round(side)))
    x0 = int(round(cx - side_i / 2))
    y0 = int(round(cy - side_i / 2))
    x1, y1 = x0 + side_i, y0 + side_i
    crop = frame[max(0, y0):min(height, y1), max(0, x0):min(width, x1)]
    if crop.shape[0] != side_i or crop.shape[1] != side_i:
        crop = cv2.copyMakeBorder(crop, max(0, -y0), max(0, y1 - height), max(0, -x0),
                                  max(0, x1 - width), cv2.BORDER_CONSTANT, value=(0, 0, 0))
    interp = cv2.INTER_AREA if side_i > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def crop_faces(frames: np.ndarray, config: FaceConfig = FaceConfig()) -> np.ndarray:
    """Detects, tracks and crops the dominant face of every frame.

    Args:
      frames: (F, H, W, 3) uint8 RGB.
    Returns:
      (F, face_size, face_size, 3) uint8 RGB crops.
    Raises:
      NoFaceError: see `track_face`.
    """
    boxes = track_face(frames, config)
    scale = 1.0 + 2.0 * config.margin
    return np.stack([crop_square(f, b[0], b[1], b[2] * scale, config.face_size)
                     for f, b in zip(frames, boxes)])


def crop_syncnet(frames: np.ndarray, boxes: np.ndarray, crop_scale: float = 0.4,
                 size: int = 224) -> np.ndarray:
    """Face crops with joonson/syncnet_python's `run_pipeline.py` `crop_video` geometry.

    Its box half-size bs and centre (x, y); the frame padded by int(bs * (1 + 2 cs)) pixels of
    value 110; rows [y - bs, y + bs (1 + 2 cs)), columns [x - bs (1 + cs), x + bs (1 + cs)):
    a square of side 2 bs (1 + cs) reaching further below the centre (mouth and chin), resized
    with `cv2.resize` (bilinear) to `size`. Its detector is S3FD and it median-filters the
    boxes over 13 frames; here the boxes come from `track_face` (Haar, smoothed).

    Args:
      frames: (F, H, W, 3) uint8; boxes: (F, 3) centre x, centre y, side (`track_face`).
    Returns:
      (F, size, size, 3) uint8.
    """
    crops = []
    for frame, (cx, cy, side) in zip(frames, boxes):
        bs = side / 2.0
        bsi = int(bs * (1 + 2 * crop_scale))
        padded = np.pad(frame, ((bsi, bsi), (bsi, bsi), (0, 0)), "constant",
                        constant_values=110)
        my, mx = cy + bsi, cx + bsi
        face = padded[int(my - bs):int(my + bs * (1 + 2 * crop_scale)),
                      int(mx - bs * (1 + crop_scale)):int(mx + bs * (1 + crop_scale))]
        crops.append(cv2.resize(face, (size, size)))
    return np.stack(crops)


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """Resizes already-cropped face frames (centre square crop first if not square).

    Args:
      frames: (F, H, W, 3) uint8.
    Returns:
      (F, size, size, 3) uint8.
    """
    height, width = frames.shape[1:3]
    side = min(height, width)
    y0, x0 = (height - side) // 2, (width - side) // 2
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f[y0:y0 + side, x0:x0 + side], (size, size),
                                interpolation=interp) for f in frames])
