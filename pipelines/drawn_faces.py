"""Drawn people: the face (and synthetic voice parameters) of an identity, and the renderer.

`identity_params(index, seed)` draws one person: face geometry and colours, and the voice
parameters that the synthetic world's formant synthesiser reads (`pipelines.synthetic`), coupled
through one latent as in real people. `render_video` paints that face frame by frame with the
mouth opening and width it is given, under per-track nuisances (pose and its jitter, background,
clothes, lighting, blinks, sensor noise) drawn from the caller's generator. Both worlds use it:
`pipelines.synthetic` (drawn voices) and `pipelines.voices` (real voices, one drawn face per
speaker). OpenCV draws; nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

GENERATOR_VERSION = 2
"""Bump when the drawn people, the renderer or the synthetic world's synthesiser change what a
(config, seed) produces, so caches are rebuilt (both worlds' manifests record it)."""

_SUPERSAMPLING = 2  # supersampling factor of the drawing canvas


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """How a face is rendered.

    Args:
      face_size: output frame height and width in pixels.
      pixel_noise: std of additive Gaussian pixel noise (0..255 scale).
      head_jitter: maximal per-frame head translation as a fraction of the face size
        (smoothed random walk); 0 keeps the head still within a track.
      track_variation: scale (0..1) of the per-track nuisances (lighting, pose, background).
      background_per_identity: if True the background colour belongs to the identity (an easy
        identity cue); by default it is drawn per track like a different video.
    """

    face_size: int = 64
    pixel_noise: float = 3.0
    head_jitter: float = 0.02
    track_variation: float = 1.0
    background_per_identity: bool = False

    def __post_init__(self) -> None:
        if self.face_size < 16:
            raise ValueError(f"face_size must be >= 16, got {self.face_size}")
        if self.head_jitter < 0 or self.pixel_noise < 0 or self.track_variation < 0:
            raise ValueError("head_jitter, pixel_noise and track_variation must be >= 0")


# === Identities ===

def identity_name(identity_index: int) -> str:
    return f"syn_{identity_index:04d}"


def as_identity_index(identity: int | str) -> int:
    """The index of an identity given as an index or a name like `syn_0007`."""
    if isinstance(identity, (int, np.integer)):
        return int(identity)
    if isinstance(identity, str) and identity.startswith("syn_") and identity[4:].isdigit():
        return int(identity[4:])
    raise ValueError(f"identity must be an index or a name like 'syn_0007', got {identity!r}")


@dataclasses.dataclass(frozen=True)
class IdentityParams:
    """The person behind an identity: voice and face parameters (geometry in face units).

    Face geometry is relative to the canvas (0..1); colours are RGB 0..255.
    """

    index: int
    name: str
    # voice
    f0_hz: float
    formant_shift: float
    tilt_db_per_octave: float
    breathiness: float
    timbre_hz: float
    timbre_gain: float
    pitch_range_octaves: float
    frames_per_unit: float
    harmonic_phases: tuple[float, ...]
    # face
    skin_rgb: tuple[float, float, float]
    hair_rgb: tuple[float, float, float]
    iris_rgb: tuple[float, float, float]
    lip_rgb: tuple[float, float, float]
    background_rgb: tuple[float, float, float]
    face_half_width: float
    face_aspect: float
    hair_style: int  # 0 short crop, 1 long, 2 bald, 3 tall
    hair_height: float
    eye_y: float
    eye_dx: float
    eye_size: float
    brow_thickness: float
    brow_tilt: float
    nose_length: float
    mouth_y: float
    mouth_scale: float
    has_beard: bool
    has_glasses: bool
    moles: tuple[tuple[float, float, float], ...]  # (x, y, radius) in face units

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists); omits the harmonic phases."""
        out = dataclasses.asdict(self)
        out.pop("harmonic_phases")
        return json.loads(json.dumps(out))


def _rgb(values: np.ndarray) -> tuple[float, float, float]:
    v = np.clip(np.asarray(values, dtype=np.float64), 0, 255)
    return (float(v[0]), float(v[1]), float(v[2]))


def _spread(u: float, jitter: float) -> float:
    """Position in [0, 1]: fractional part of u, plus jitter reflected at the ends."""
    x = (u % 1.0) + jitter
    if x > 1.0:
        x = 2.0 - x
    return float(abs(x))


def identity_params(identity_index: int, seed: int = 0) -> IdentityParams:
    """Draws the voice and face of identity `identity_index` (depends on the seed only).

    Face and voice are coupled through one latent, as in real people (body size / sex / age):
    `physique` = 1 - pitch position drives lower pitch and formants together with a wider,
    less elongated face, thicker brows and a chance of a beard. Without such coupling a
    face-to-voice matcher could not generalise to unseen identities at all.
    """
    rng = np.random.default_rng([int(seed), 1, int(identity_index)])
    # Pitch and skin tone are spread with additive-recurrence (golden ratio) sequences from a
    # seed-dependent start, jittered, so that even a handful of consecutive identities cover
    # the ranges instead of clustering by chance.
    u_pitch, u_skin = np.random.default_rng([int(seed), 0]).uniform(size=2)
    pitch_pos = _spread(u_pitch + identity_index * 0.6180339887, rng.uniform(-0.06, 0.06))
    skin_pos = _spread(u_skin + identity_index * 0.4142135624, rng.uniform(-0.06, 0.06))
    # Voice: pitch log-uniform over adult range; formants loosely follow pitch (larger
    # speakers: lower pitch and lower formants) with an independent part.
    physique = 1.0 - pitch_pos  # shared face/voice latent, see the docstring
    log_f0 = math.log(85.0) + pitch_pos * (math.log(255.0) - math.log(85.0))
    formant_shift = float(np.clip(0.88 + 0.2 * pitch_pos + rng.normal(0, 0.05), 0.8, 1.25))
    # Face colours: skin tone along a light-dark axis with some hue variation.
    t = skin_pos
    skin = (1 - t) * np.array([238, 204, 176]) + t * np.array([96, 62, 42])
    skin = skin * rng.uniform(0.93, 1.07, size=3)
    hair_palette = np.array([[25, 20, 18], [70, 45, 25], [120, 75, 35], [200, 160, 90],
                             [150, 60, 25], [165, 165, 165], [60, 60, 70]], dtype=np.float64)
    hair = hair_palette[rng.integers(len(hair_palette))] * rng.uniform(0.85, 1.15, size=3)
    iris_palette = np.array([[70, 45, 25], [60, 100, 160], [70, 120, 70], [40, 30, 25]], np.float64)
    iris = iris_palette[rng.integers(len(iris_palette))]
    lip = skin * np.array([0.85, 0.55, 0.55]) + np.array([25, 0, 5])
    background = rng.uniform(40, 220, size=3)
    n_moles = int(rng.integers(0, 4))
    moles = tuple((float(rng.uniform(-0.6, 0.6)), float(rng.uniform(-0.3, 0.6)),
                   float(rng.uniform(0.025, 0.05))) for _ in range(n_moles))
    return IdentityParams(
        index=int(identity_index),
        name=identity_name(identity_index),
        f0_hz=float(math.exp(log_f0)),
        formant_shift=formant_shift,
        tilt_db_per_octave=float(rng.uniform(-14.0, -6.0)),
        breathiness=float(rng.uniform(0.02, 0.25)),
        timbre_hz=float(rng.uniform(2400.0, 4500.0)),
        timbre_gain=float(rng.uniform(0.2, 1.2)),
        pitch_range_octaves=float(rng.uniform(0.03, 0.08)),
        frames_per_unit=float(rng.uniform(2.5, 5.0)),
        harmonic_phases=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, size=128)),
        skin_rgb=_rgb(skin),
        hair_rgb=_rgb(hair),
        iris_rgb=_rgb(iris),
        lip_rgb=_rgb(lip),
        background_rgb=_rgb(background),
        face_half_width=float(np.clip(0.25 + 0.06 * physique + rng.normal(0, 0.01), 0.24, 0.32)),
        face_aspect=float(np.clip(0.74 + 0.16 * physique + rng.normal(0, 0.03), 0.70, 0.94)),
        hair_style=int(rng.integers(0, 4)),
        hair_height=float(rng.uniform(0.08, 0.2)),
        eye_y=float(rng.uniform(-0.28, -0.1)),
        eye_dx=float(rng.uniform(0.34, 0.48)),
        eye_size=float(rng.uniform(0.75, 1.25)),
        brow_thickness=float(np.clip(0.5 + 1.1 * physique + rng.normal(0, 0.15), 0.4, 1.7)),
        brow_tilt=float(rng.uniform(-0.06, 0.06)),
        nose_length=float(rng.uniform(0.12, 0.25)),
        mouth_y=float(rng.uniform(0.48, 0.6)),
        mouth_scale=float(rng.uniform(0.85, 1.15)),
        has_beard=bool(rng.uniform() < 0.6 * max(0.0, physique - 0.4) / 0.6),
        has_glasses=bool(rng.uniform() < 0.25),
        moles=moles,
    )




# === Rendering ===

class _Painter:
    """Draws in canvas coordinates (0..1) with a similarity transform (pose) on a canvas."""

    def __init__(self, canvas: np.ndarray, cx: float, cy: float, scale: float, angle_deg: float):
        self.img = canvas
        self.size = canvas.shape[0]
        self.cx, self.cy, self.scale = cx, cy, scale
        self.angle = angle_deg
        a = math.radians(angle_deg)
        self.cos, self.sin = math.cos(a), math.sin(a)

    def pt(self, x: float, y: float) -> tuple[int, int]:
        """Face-relative (x, y) -> fixed-point pixel coordinates (shift=4)."""
        xr = (x * self.cos - y * self.sin) * self.scale + self.cx
        yr = (x * self.sin + y * self.cos) * self.scale + self.cy
        return (int(round(xr * self.size * 16)), int(round(yr * self.size * 16)))

    def _len(self, v: float) -> int:
        return max(1, int(round(v * self.scale * self.size * 16)))

    def ellipse(self, x, y, ax, ay, color, start=0, end=360, thickness=-1, angle=0.0):
        cv2.ellipse(self.img, self.pt(x, y), (self._len(ax), self._len(ay)), self.angle + angle,
                    start, end, color, thickness if thickness < 0 else self._thick(thickness),
                    cv2.LINE_AA, 4)

    def line(self, x0, y0, x1, y1, color, thickness):
        cv2.line(self.img, self.pt(x0, y0), self.pt(x1, y1), color, self._thick(thickness),
                 cv2.LINE_AA, 4)

    def _thick(self, t: float) -> int:
        return max(1, int(round(t * self.scale * self.size)))


def _draw_face(p: _Painter, ident: IdentityParams, clothes, mouth_open: float,
               mouth_width: float, blink: bool) -> None:
    ax = ident.face_half_width
    ay = ax / ident.face_aspect
    skin = ident.skin_rgb
    hair = ident.hair_rgb
    shade = tuple(0.8 * c for c in skin)
    # Shoulders and neck.
    p.ellipse(0.0, ay + 0.32, ax * 2.2, 0.3, clothes)
    p.ellipse(0.0, ay * 0.8, ax * 0.45, ay * 0.5, shade)
    # Hair behind the head.
    if ident.hair_style == 1:  # long
        p.ellipse(0.0, -ay * 0.05, ax * 1.2, ay * 1.12, hair)
    elif ident.hair_style in (0, 3):
        top = ident.hair_height * (2.0 if ident.hair_style == 3 else 1.0)
        p.ellipse(0.0, -ay * 0.2 - top * 0.5, ax * 1.06, ay * 0.85 + top * 0.5, hair)
    # Ears.
    for s in (-1, 1):
        p.ellipse(s * ax * 0.98, -ay * 0.02, ax * 0.14, ay * 0.2, shade)
    # Face.
    p.ellipse(0.0, 0.0, ax, ay, skin)
    if ident.hair_style != 2:  # fringe
        p.ellipse(0.0, -ay * 0.78, ax * 0.92, ay * 0.3, hair, start=180, end=360)
    if ident.has_beard:
        p.ellipse(0.0, ay * 0.12, ax * 0.97, ay * 0.86, hair, start=0, end=180)
    for mx, my, mr in ident.moles:
        p.ellipse(mx * ax, my * ay, mr * ax, mr * ax, tuple(0.55 * c for c in skin))
    # Eyes and brows.
    ey = ident.eye_y * ay
    ew, eh = 0.075 * ident.eye_size, 0.042 * ident.eye_size
    for s in (-1, 1):
        ex = s * ident.eye_dx * ax
        if blink:
            p.line(ex - ew, ey, ex + ew, ey, tuple(0.5 * c for c in skin), 0.012)
        else:
            p.ellipse(ex, ey, ew, eh, (245, 245, 240))
            p.ellipse(ex, ey, eh * 0.85, eh * 0.85, ident.iris_rgb)
            p.ellipse(ex, ey, eh * 0.38, eh * 0.38, (10, 10, 10))
        by = ey - eh - 0.035
        p.line(ex - ew * 1.1, by + s * ident.brow_tilt * 0.3, ex + ew * 1.1,
               by - s * ident.brow_tilt * 0.3, tuple(0.7 * c for c in hair),
               0.012 * ident.brow_thickness)
        if ident.has_glasses:
            p.ellipse(ex, ey, ew * 1.45, ew * 1.25, (30, 30, 35), thickness=0.01)
    if ident.has_glasses:
        p.line(-ident.eye_dx * ax + ew * 1.45, ey, ident.eye_dx * ax - ew * 1.45, ey,
               (30, 30, 35), 0.01)
    # Nose.
    p.line(0.0, ey + 0.03, 0.015, ey + 0.03 + ident.nose_length * ay, tuple(0.7 * c for c in skin),
           0.014)
    p.ellipse(0.0, ey + 0.03 + ident.nose_length * ay, 0.035, 0.015, tuple(0.72 * c for c in skin))
    # Mouth: width from the unit shape, height from opening.
    my = ident.mouth_y * ay
    ms = ident.mouth_scale
    half_w = ax * ms * (0.22 + 0.2 * mouth_width) * (1.0 - 0.15 * mouth_open)
    inner_h = ay * ms * 0.22 * mouth_open
    lip = ident.lip_rgb
    p.ellipse(0.0, my, half_w, 0.018 * ms + inner_h * 1.15, lip)
    if inner_h * p.scale * p.size > 0.35:
        p.ellipse(0.0, my, half_w * 0.82, inner_h, (45, 8, 18))
        if mouth_open > 0.3:
            p.ellipse(0.0, my - inner_h * 0.65, half_w * 0.55, inner_h * 0.3, (235, 230, 220))
    else:
        p.line(-half_w * 0.9, my, half_w * 0.9, my, tuple(0.6 * c for c in lip), 0.008)


def render_video(ident: IdentityParams, mouth_open: np.ndarray, mouth_width: np.ndarray,
                 cfg: RenderConfig, rng: np.random.Generator) -> np.ndarray:
    """(F, S, S, 3) uint8 frames of `ident`'s face, S = `cfg.face_size`.

    Frame i has the mouth opening `mouth_open[i]` and width `mouth_width[i]` (both (F,), 0..1);
    the per-track pose, background, clothes, lighting, jitter, blinks and noise are drawn from
    `rng` in a fixed order, so a seeded generator gives the same frames.
    """
    f = len(mouth_open)
    variation = cfg.track_variation
    size = cfg.face_size
    canvas_size = size * _SUPERSAMPLING
    # Per-track pose, background, clothes, lighting.
    base_x = 0.5 + rng.uniform(-0.03, 0.03) * variation
    base_y = 0.47 + rng.uniform(-0.03, 0.03) * variation
    scale = 2.0 ** (rng.uniform(-0.08, 0.06) * variation)
    base_roll = rng.uniform(-6.0, 6.0) * variation
    if cfg.background_per_identity:
        bg = np.asarray(ident.background_rgb)
    else:
        bg = rng.uniform(40, 220, size=3)
    clothes = tuple(float(c) for c in rng.uniform(20, 230, size=3))
    yy = np.linspace(-0.5, 0.5, canvas_size)[:, None, None]
    background = np.clip(bg[None, None, :] * (1.0 + 0.25 * yy), 0, 255)
    background = np.broadcast_to(background, (canvas_size, canvas_size, 3)).astype(np.uint8)

    def walk(scale_: float) -> np.ndarray:
        steps = rng.standard_normal(f + 8)
        w = ndimage.uniform_filter1d(np.cumsum(steps), size=5, mode="nearest")[4:4 + f]
        w = w - w.mean()
        return scale_ * w / max(1.0, float(np.abs(w).max()))

    jx, jy = walk(cfg.head_jitter), walk(cfg.head_jitter)
    roll = base_roll + walk(60.0 * cfg.head_jitter)
    blink = np.zeros(f, bool)
    for start in np.flatnonzero(rng.uniform(size=f) < 0.025):
        blink[start:start + 2] = True

    frames = np.empty((f, size, size, 3), np.uint8)
    canvas = np.empty((canvas_size, canvas_size, 3), np.uint8)
    for i in range(f):
        canvas[...] = background
        painter = _Painter(canvas, base_x + jx[i], base_y + jy[i], scale, float(roll[i]))
        _draw_face(painter, ident, clothes, float(mouth_open[i]), float(mouth_width[i]),
                   bool(blink[i]))
        frames[i] = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)

    # Lighting (gain and side light) and sensor noise, vectorised over frames.
    gain = 2.0 ** (rng.uniform(-0.2, 0.2) * variation)
    side = rng.uniform(-0.15, 0.15) * variation
    light = gain * (1.0 + side * np.linspace(-1.0, 1.0, size))[None, None, :, None]
    out = frames.astype(np.float32) * light.astype(np.float32)
    if cfg.pixel_noise > 0:
        out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(cfg.pixel_noise)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


