"""A synthetic "talking heads" world with ground truth for identity and content.

Every identity has its own face (head shape, skin, hair style and colour, eyes, brows, beard,
glasses, moles) and its own voice (fundamental pitch, formant scaling, spectral tilt, a
speaker-specific resonance, breathiness, speaking rate). A track is a random sequence of
syllable-like units (`UNIT_NAMES`: silence plus 8 vowels, each with its own formant triple and
mouth shape) spoken by that identity. The audio of a unit is a harmonic source at the speaker's
pitch, filtered by the unit's formants (scaled by the speaker's formant shift), under a syllabic
amplitude envelope. The mouth in the video follows the same envelope and unit at 25 fps, frame
by frame, so lips and sound are synchronised exactly as the alignment contract of
`pipelines.records` says (audio sample `i * 640` starts video frame `i`, offset 0).

Per track (not per identity) nuisances vary like different videos of one person would: background
and clothing colour, lighting gain and side light, head position/scale/roll and its per-frame
jitter, blinks, pitch level (+-3%), loudness, channel colouring and noise. Nothing about the
content depends on the identity except timing (speaking rate) and the acoustic realisation -
unless `content_identity_correlation` > 0: then each identity speaks mostly its own subset of
units (`identity_units`), a training world for "novel combinations" tests.

Everything is reproducible from `SyntheticConfig.seed`: identity parameters come from
`(seed, identity_index)` only and track contents from `(seed, identity_index, track_index)`, so
identities written in separate runs (`--first_identity`, `--split`) are the same people.

Output is the ordinary TFRecord format of `pipelines.records` plus a `manifest.json` holding the
ground truth (identity parameters and per-frame unit labels of every track).

Example:
    python -m pipelines.synthetic --output /tmp/syn --identities 40 --tracks_per_identity 8 \
        --frames 75 --face_size 64 --seed 0 --split train:30,test:10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Any

import cv2
import numpy as np
import tqdm
from scipy import ndimage, signal

from av_disentangle import files
from av_disentangle.constants import SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS
from av_disentangle.errors import UserError, run_cli
from av_disentangle.logs import setup_logging
from pipelines import records, shards, voices
from pipelines.drawn_faces import (GENERATOR_VERSION, IdentityParams, RenderConfig,
                                   as_identity_index, identity_name, identity_params,
                                   render_video)

log = logging.getLogger(__name__)

# === Content units ===

SILENCE = 0
UNIT_NAMES = ("sil", "a", "i", "u", "e", "o", "ae", "er", "ih")
NUM_UNITS = len(UNIT_NAMES)
# F1, F2, F3 (Hz, reference adult voice), mouth opening (0 closed .. 1 wide open),
# mouth width (0 rounded .. 1 spread). Row 0 is silence (mouth at rest).
UNIT_TABLE = np.array([
    [0.0, 0.0, 0.0, 0.00, 0.50],        # sil
    [750.0, 1200.0, 2600.0, 1.00, 0.65],  # a  (father)
    [280.0, 2250.0, 3000.0, 0.15, 1.00],  # i  (fleece)
    [310.0, 850.0, 2250.0, 0.25, 0.05],   # u  (goose)
    [480.0, 2000.0, 2700.0, 0.50, 0.85],  # e  (face)
    [520.0, 900.0, 2500.0, 0.65, 0.25],   # o  (thought)
    [680.0, 1750.0, 2600.0, 0.85, 0.95],  # ae (trap)
    [480.0, 1350.0, 1700.0, 0.40, 0.50],  # er (nurse)
    [400.0, 1900.0, 2550.0, 0.30, 0.75],  # ih (kit)
])
_FORMANT_BANDWIDTHS = np.array([90.0, 110.0, 170.0])


# === Config ===

@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """What to generate.

    Args:
      num_identities: number of identities, indices `first_identity ...`.
      tracks_per_identity: tracks (videos) per identity.
      num_frames: frames per track at 25 fps (audio is `num_frames * 640` samples).
      face_size: output frame height and width in pixels.
      seed: master seed; identity i is the same person for every config with this seed.
      first_identity: index of the first identity (`syn_{index:04d}`).
      audio_snr_db: speech-to-white-noise ratio of the audio (active speech RMS).
      pixel_noise: std of additive Gaussian pixel noise (0..255 scale).
      head_jitter: maximal per-frame head translation as a fraction of the face size
        (smoothed random walk); 0 keeps the head still within a track.
      silence_prob: probability that a unit is silence (never two silences in a row).
      track_variation: scale (0..1) of the per-track nuisances (lighting, pose, pitch level,
        channel colouring, background); 0 makes all tracks of an identity look and sound alike
        apart from content.
      background_per_identity: if True the background colour belongs to the identity (an easy
        identity cue); by default it is drawn per track like a different video.
      jpeg_quality: JPEG quality of the stored frames.
      content_identity_correlation: probability (0..1) that a spoken unit is drawn from the
        identity's own subset of units (`identity_units`) instead of all vowels: content
        correlated with identity ("novel combinations" training world); 0 (default) is the
        uncorrelated world, bit-identical to a config without this option.
    """

    num_identities: int = 40
    tracks_per_identity: int = 8
    num_frames: int = 75
    face_size: int = 64
    seed: int = 0
    first_identity: int = 0
    audio_snr_db: float = 20.0
    pixel_noise: float = 3.0
    head_jitter: float = 0.02
    silence_prob: float = 0.15
    track_variation: float = 1.0
    background_per_identity: bool = False
    jpeg_quality: int = 90
    content_identity_correlation: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.content_identity_correlation <= 1.0:
            raise ValueError("content_identity_correlation must be in [0, 1], got "
                             f"{self.content_identity_correlation}")
        if self.num_identities < 1 or self.tracks_per_identity < 1:
            raise ValueError("num_identities and tracks_per_identity must be >= 1")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.seed < 0 or self.first_identity < 0:
            raise ValueError("seed and first_identity must be non-negative")
        if not 0.0 <= self.silence_prob < 1.0:
            raise ValueError(f"silence_prob must be in [0, 1), got {self.silence_prob}")
        self.render_config  # the renderer's own checks (face size, noise, jitter)

    @property
    def render_config(self) -> RenderConfig:
        """The face renderer's settings of this world."""
        return RenderConfig(face_size=self.face_size, pixel_noise=self.pixel_noise,
                            head_jitter=self.head_jitter, track_variation=self.track_variation,
                            background_per_identity=self.background_per_identity)

    @property
    def identity_indices(self) -> list[int]:
        return list(range(self.first_identity, self.first_identity + self.num_identities))


# === Content ===

OWN_UNITS_PER_IDENTITY = 3
"""Size of an identity's own subset of vowel units (`identity_units`)."""


def identity_units(identity_index: int, seed: int = 0) -> tuple[int, ...]:
    """The identity's own `OWN_UNITS_PER_IDENTITY` vowel units (sorted), from which it speaks
    with probability `SyntheticConfig.content_identity_correlation` (depends on the seed only)."""
    rng = np.random.default_rng([int(seed), 3, int(identity_index)])
    units = rng.choice(np.arange(1, NUM_UNITS), size=OWN_UNITS_PER_IDENTITY, replace=False)
    return tuple(sorted(int(u) for u in units))


def _unit_sequence(rng: np.random.Generator, num_frames: int, frames_per_unit: float,
                   silence_prob: float, own_units: tuple[int, ...] = (),
                   correlation: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Random units and their durations in frames; total >= num_frames (+ margin). With
    `correlation` > 0 a vowel comes from `own_units` with that probability (one extra draw
    per vowel; none at 0, so the uncorrelated world is unchanged)."""
    units, lengths = [], []
    total, prev = 0, -1
    while total < num_frames + 2:
        if prev != SILENCE and rng.uniform() < silence_prob:
            u = SILENCE
            n = int(rng.integers(1, 5))
        else:
            choices = [v for v in range(1, NUM_UNITS) if v != prev]
            if correlation > 0 and rng.uniform() < correlation:
                choices = [v for v in own_units if v != prev] or choices
            u = int(choices[rng.integers(len(choices))])
            n = int(np.clip(round(rng.gamma(6.0, frames_per_unit / 6.0)), 1,
                            round(3 * frames_per_unit)))
        units.append(u)
        lengths.append(n)
        total += n
        prev = u
    return np.asarray(units, np.int64), np.asarray(lengths, np.int64)


# === Audio ===

def _resonator(freq: float, bandwidth: float) -> np.ndarray:
    r = math.exp(-math.pi * bandwidth / SAMPLE_RATE)
    return np.array([1.0, -2.0 * r * math.cos(2 * math.pi * freq / SAMPLE_RATE), r * r])


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)) + 1e-12))


def _synthesize_audio(ident: IdentityParams, units: np.ndarray, lengths: np.ndarray,
                      num_frames: int, cfg: SyntheticConfig,
                      rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Source-filter synthesis of a unit sequence. Returns audio and frame-level drivers."""
    variation = cfg.track_variation
    total_frames = int(lengths.sum())
    n = total_frames * SAMPLES_PER_FRAME
    seg_samples = lengths * SAMPLES_PER_FRAME
    seg_start = np.concatenate([[0], np.cumsum(seg_samples)[:-1]])
    seg_idx = np.repeat(np.arange(len(units)), seg_samples)
    unit_s = units[seg_idx]

    # Syllabic envelope: fast attack, slower decay, per-unit loudness, zero in silence.
    pos = np.arange(n) - seg_start[seg_idx]
    seg_len = seg_samples[seg_idx].astype(np.float64)
    attack = np.minimum(0.03 * SAMPLE_RATE, seg_len / 3)
    decay = np.minimum(0.07 * SAMPLE_RATE, seg_len / 2)
    env = np.clip(np.minimum(np.minimum(pos / attack, (seg_len - pos) / decay), 1.0), 0.0, 1.0)
    loud = rng.uniform(0.6, 1.0, size=len(units))
    loud[units == SILENCE] = 0.0
    env = ndimage.uniform_filter1d(env * loud[seg_idx], size=160, mode="nearest")

    # Harmonic source from a per-speaker wavetable, pitch contour at frame rate.
    f0_track = ident.f0_hz * 2.0 ** (rng.uniform(-0.04, 0.04) * variation)
    ctrl = ndimage.uniform_filter1d(rng.standard_normal(total_frames + 2), size=7, mode="nearest")
    ctrl = ctrl / (np.std(ctrl) + 1e-9)
    f0_frames = f0_track * 2.0 ** (ident.pitch_range_octaves * np.clip(ctrl, -2.5, 2.5))
    frame_centres = (np.arange(total_frames + 2) - 0.5) * SAMPLES_PER_FRAME
    f0_s = np.interp(np.arange(n), frame_centres, f0_frames)
    phase = (rng.uniform() + np.cumsum(f0_s / SAMPLE_RATE)) % 1.0
    n_harm = int(max(1, min(len(ident.harmonic_phases), 7200.0 // f0_s.max())))
    k = np.arange(1, n_harm + 1)
    amps = 10.0 ** (ident.tilt_db_per_octave * np.log2(k) / 20.0)
    table_len = 4096
    grid = np.arange(table_len) / table_len
    table = (amps[:, None] * np.sin(2 * np.pi * k[:, None] * grid[None, :]
                                    + np.asarray(ident.harmonic_phases[:n_harm])[:, None])).sum(0)
    idx = phase * table_len
    i0 = idx.astype(np.int64) % table_len
    frac = idx - np.floor(idx)
    src = table[i0] * (1 - frac) + table[(i0 + 1) % table_len] * frac
    src = src / _rms(src) + ident.breathiness * rng.standard_normal(n)

    # Formant filters, one per unit present; outputs mixed by smoothed unit weights
    # (coarticulation), so every unit is a stationary filter run in C.
    present = [u for u in range(1, NUM_UNITS) if np.any(units == u)]
    voiced = np.zeros(n)
    weights = np.zeros((n, NUM_UNITS))
    if present:
        onehot = np.zeros((n, len(present)))
        for j, u in enumerate(present):
            onehot[:, j] = unit_s == u
        w = ndimage.uniform_filter1d(onehot, size=320, axis=0, mode="nearest")
        w = ndimage.uniform_filter1d(w, size=320, axis=0, mode="nearest")
        w = w / np.maximum(w.sum(1, keepdims=True), 1e-6)
        for j, u in enumerate(present):
            a = np.array([1.0])
            for f, bw in zip(UNIT_TABLE[u, :3] * ident.formant_shift, _FORMANT_BANDWIDTHS):
                a = np.convolve(a, _resonator(f, bw * ident.formant_shift))
            y = signal.lfilter([1.0], a, src)
            voiced += w[:, j] * (y / _rms(y))
            weights[:, u] = w[:, j]
    # Speaker resonance (timbre), lip radiation, per-track channel colouring.
    res = signal.lfilter([1.0], _resonator(ident.timbre_hz, 350.0), voiced)
    voiced = voiced + ident.timbre_gain * res * (_rms(voiced) / _rms(res))
    voiced = signal.lfilter([1.0, -0.9], [1.0], voiced)
    c = rng.uniform(0.0, 0.5) * variation
    voiced = signal.lfilter([1.0 - c], [1.0, -c], voiced)

    speech = env * voiced
    active = env > 0.1
    speech_rms = _rms(speech[active]) if np.any(active) else _rms(speech)
    gain = 0.08 * 2.0 ** (rng.uniform(-1.0, 0.5) * variation) / speech_rms
    speech = speech * gain
    noise_rms = gain * speech_rms * 10.0 ** (-cfg.audio_snr_db / 20.0)  # active speech RMS / SNR
    noise = rng.standard_normal(n) * noise_rms
    audio = speech + noise

    m = num_frames * SAMPLES_PER_FRAME
    audio = audio[:m]
    audio_i16 = np.round(np.clip(audio, -1.0, 32767 / 32768) * 32767).astype(np.int16)
    env_f = env[:m].reshape(num_frames, SAMPLES_PER_FRAME).mean(1)
    w_f = weights[:m].reshape(num_frames, SAMPLES_PER_FRAME, NUM_UNITS).mean(1)
    f0_f = f0_s[:m].reshape(num_frames, SAMPLES_PER_FRAME).mean(1)
    return {"audio": audio_i16, "env": env_f, "weights": w_f, "f0": f0_f}


# === Tracks ===

def track_id(identity_index: int, track_index: int) -> str:
    return f"{identity_name(identity_index)}/t{track_index:02d}"


def generate_track_ground_truth(config: SyntheticConfig, identity: int | str,
                                track_index: int) -> tuple[records.Track, dict[str, np.ndarray]]:
    """Generates one track and its per-frame ground truth.

    Returns:
      (track, truth) where truth has (F,) arrays `units` (int64, index into UNIT_NAMES),
      `mouth_open` and `mouth_width` (what was drawn, 0..1), `envelope` (mean audio amplitude
      envelope of the frame, 0..1) and `f0_hz` (mean pitch of the frame's source).
    """
    index = as_identity_index(identity)
    ident = identity_params(index, config.seed)
    rng = np.random.default_rng([int(config.seed), 2, index, int(track_index)])
    units, lengths = _unit_sequence(rng, config.num_frames, ident.frames_per_unit,
                                    config.silence_prob, identity_units(index, config.seed),
                                    config.content_identity_correlation)
    drivers = _synthesize_audio(ident, units, lengths, config.num_frames, config, rng)
    units_f = np.repeat(units, lengths)[:config.num_frames]
    w = drivers["weights"]
    wsum = w.sum(1)
    shape_open = np.where(wsum > 1e-6, w @ UNIT_TABLE[:, 3] / np.maximum(wsum, 1e-6), 0.0)
    shape_width = np.where(wsum > 1e-6, w @ UNIT_TABLE[:, 4] / np.maximum(wsum, 1e-6), 0.5)
    env = drivers["env"]
    mouth_open = np.clip(shape_open * env, 0.0, 1.0)
    mouth_width = 0.5 + (shape_width - 0.5) * np.clip(env / 0.6, 0.0, 1.0)
    frames = render_video(ident, mouth_open, mouth_width, config.render_config, rng)
    tid = track_id(index, track_index)
    track = records.Track(frames=frames, audio=drivers["audio"], track_id=tid, video_id=tid,
                          identity=ident.name, source_path=f"synthetic:seed={config.seed}",
                          av_offset_frames=0)
    truth = {"units": units_f.astype(np.int64), "mouth_open": mouth_open,
             "mouth_width": mouth_width, "envelope": env, "f0_hz": drivers["f0"]}
    return track, truth


def generate_track_with_labels(config: SyntheticConfig, identity: int | str,
                               track_index: int) -> tuple[records.Track, np.ndarray]:
    """One track and its per-frame content labels, (F,) int64 indices into UNIT_NAMES."""
    track, truth = generate_track_ground_truth(config, identity, track_index)
    return track, truth["units"]


def generate_track(config: SyntheticConfig, identity: int | str, track_index: int) -> records.Track:
    """One track of identity (index or `syn_0007`), track id `syn_0007/t03`."""
    return generate_track_ground_truth(config, identity, track_index)[0]


# === Writing ===

SHARD_SEED_SALT = 7
"""Second word of the shard order's seed `[config.seed, 7]` (the order differs from the
generator's own draws from `config.seed`)."""


def _default_num_shards(num_tracks: int) -> int:
    return int(max(1, min(16, num_tracks // 32)))


def _all_tracks(config: SyntheticConfig) -> list[tuple[int, int]]:
    """(identity index, track index) of every track, identity-major."""
    return [(i, t) for i in config.identity_indices for t in range(config.tracks_per_identity)]


def shard_order(config: SyntheticConfig) -> list[tuple[int, int]]:
    """(identity index, track index) of every track, in the seeded random order in which
    `write_dataset` deals them round-robin into shards."""
    return shards.shuffle(_all_tracks(config), [int(config.seed), SHARD_SEED_SALT])


def write_dataset(config: SyntheticConfig, output_dir: str, num_shards: int | None = None,
                  verbose: bool = False) -> list[str]:
    """Writes every track of `config` as `shard-XXXXX-of-YYYYY.tfrecord` plus `manifest.json`.

    Tracks are dealt round-robin over shards in a random order seeded by `config.seed`
    (`shard_order`, `pipelines.shards.plan_shards`), so every shard is a random sample of all
    identities, in random order (DESIGN.md "Negatives"). The manifest holds the config, the
    unit table, every identity's parameters and, per track in identity-major order, its shard
    and per-frame unit labels. Every file is written under a hidden temp name and all are
    renamed once complete (shards first, the manifest last: `files.write_all_atomic`), so an
    interrupted run leaves the previous dataset and no partial file. `verbose` shows a
    progress bar. Returns the shard paths.
    """
    import tensorflow as tf

    os.makedirs(output_dir, exist_ok=True)
    tracks = _all_tracks(config)
    plan = shards.plan_shards(tracks, [int(config.seed), SHARD_SEED_SALT],
                              num_shards=num_shards or _default_num_shards(len(tracks)))
    names = [shards.shard_name(s, len(plan)) for s in range(len(plan))]
    paths = [os.path.join(output_dir, n) for n in names]
    manifest_path = os.path.join(output_dir, "manifest.json")

    def write(temps: list[str]) -> None:
        manifest_tracks = {}
        with tqdm.tqdm(total=len(tracks), unit="track", desc=f"synthetic {output_dir}",
                       disable=not verbose) as bar:
            for name, tmp, shard_tracks in zip(names, temps, plan):
                with tf.io.TFRecordWriter(tmp) as writer:
                    for ident, t in shard_tracks:
                        track, truth = generate_track_ground_truth(config, ident, t)
                        writer.write(records.encode_track(track,
                                                          jpeg_quality=config.jpeg_quality))
                        manifest_tracks[ident, t] = {
                            "track_id": track.track_id, "identity": track.identity,
                            "identity_index": ident, "track_index": t, "shard": name,
                            "num_frames": config.num_frames, "units": truth["units"].tolist(),
                            "f0_hz": round(float(np.median(truth["f0_hz"])), 2),
                        }
                        bar.update(1)
        with open(temps[-1], "w", encoding="utf-8") as fh:
            json.dump(_manifest(config, names, manifest_tracks), fh, indent=1)

    files.write_all_atomic([*paths, manifest_path], write)
    log.info("wrote %d tracks in %d shards to %s", len(tracks), len(paths), output_dir)
    return paths


def _manifest(config: SyntheticConfig, names: list[str], manifest_tracks: dict) -> dict:
    return {
        "format": "av-disentangle synthetic v1",
        "config": dataclasses.asdict(config),
        "generator_version": GENERATOR_VERSION,
        "sample_rate": SAMPLE_RATE, "fps": VIDEO_FPS, "samples_per_frame": SAMPLES_PER_FRAME,
        "units": [{"index": u, "name": UNIT_NAMES[u],
                   "formants_hz": UNIT_TABLE[u, :3].tolist(),
                   "mouth_open": float(UNIT_TABLE[u, 3]), "mouth_width": float(UNIT_TABLE[u, 4])}
                  for u in range(NUM_UNITS)],
        "identities": [identity_params(i, config.seed).to_json() for i in config.identity_indices],
        "shards": names,
        "shard_seed": config.seed,
        "tracks": [manifest_tracks[key] for key in sorted(manifest_tracks)],
    }


def load_manifest(output_dir: str) -> dict[str, Any]:
    return files.read_json(os.path.join(output_dir, "manifest.json"))


def contact_sheet(config: SyntheticConfig, identities: list[int], frame_indices: list[int],
                  track_index: int = 0, upscale: int = 2) -> np.ndarray:
    """RGB image: one row per identity, one column per frame (for eyeballing)."""
    rows = []
    for ident in identities:
        track = generate_track(config, ident, track_index)
        row = np.concatenate([track.frames[i] for i in frame_indices], axis=1)
        rows.append(row)
    sheet = np.concatenate(rows, axis=0)
    return cv2.resize(sheet, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_NEAREST)


# === CLI ===

def _parse_split(text: str) -> list[tuple[str, int]]:
    out = []
    for part in text.split(","):
        name, _, count = part.partition(":")
        if not name or not count.isdigit() or int(count) < 1:
            raise UserError(f"bad --split entry {part!r}; expected name:count, e.g. train:30")
        out.append((name, int(count)))
    return out


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.synthetic",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--identities", type=int, default=None,
                        help="number of identities (default 40, or the sum of --split)")
    parser.add_argument("--tracks_per_identity", type=int, default=8)
    parser.add_argument("--frames", type=int, default=75)
    parser.add_argument("--face_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first_identity", type=int, default=0)
    parser.add_argument("--split", default="",
                        help="e.g. train:30,test:10 - consecutive identity ranges written to "
                             "OUTPUT/train and OUTPUT/test")
    parser.add_argument("--num_shards", type=int, default=0, help="0: automatic")
    parser.add_argument("--audio_snr_db", type=float, default=SyntheticConfig.audio_snr_db)
    parser.add_argument("--pixel_noise", type=float, default=SyntheticConfig.pixel_noise)
    parser.add_argument("--head_jitter", type=float, default=SyntheticConfig.head_jitter)
    parser.add_argument("--track_variation", type=float, default=SyntheticConfig.track_variation)
    parser.add_argument("--content_identity_correlation", type=float, default=0.0,
                        help="probability that a unit comes from the identity's own subset "
                             "(0: uncorrelated content)")
    parser.add_argument("--jpeg_quality", type=int, default=SyntheticConfig.jpeg_quality,
                        help="JPEG quality of the stored frames, 1-100 (as pipelines.prepare "
                             "--jpeg_quality; default: %(default)d)")
    parser.add_argument("--sheet", default="", help="also write a PNG contact sheet here")
    voices.add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()
    if args.voices:
        return voices.run_from_args(args)

    if args.split:
        parts = _parse_split(args.split)
        total = sum(c for _, c in parts)
        if args.identities is not None and args.identities != total:
            parser.error(f"--identities {args.identities} != sum of --split ({total})")
    else:
        parts = [("", args.identities if args.identities is not None else 40)]
    first = args.first_identity
    start = time.time()
    for name, count in parts:
        try:
            cfg = SyntheticConfig(
                num_identities=count, tracks_per_identity=args.tracks_per_identity,
                num_frames=args.frames, face_size=args.face_size, seed=args.seed,
                first_identity=first, audio_snr_db=args.audio_snr_db,
                pixel_noise=args.pixel_noise, head_jitter=args.head_jitter,
                track_variation=args.track_variation,
                content_identity_correlation=args.content_identity_correlation,
                jpeg_quality=args.jpeg_quality)
        except ValueError as err:
            raise UserError(str(err)) from err
        out_dir = os.path.join(args.output, name) if name else args.output
        t0 = time.time()
        paths = write_dataset(cfg, out_dir, num_shards=args.num_shards or None, verbose=True)
        log.info("%s: identities %d..%d, %d tracks in %d shards -> %s (%.1f s)", name or "all",
                 first, first + count - 1, count * args.tracks_per_identity, len(paths), out_dir,
                 time.time() - t0)
        first += count
    if args.sheet:
        cfg = SyntheticConfig(num_frames=args.frames, face_size=args.face_size, seed=args.seed,
                              first_identity=args.first_identity)
        ids = list(range(args.first_identity, args.first_identity + 4))
        cols = list(range(0, min(args.frames, 24), 3))
        sheet = contact_sheet(cfg, ids, cols)
        cv2.imwrite(args.sheet, sheet[:, :, ::-1])
    print(f"wrote {args.output} in {time.time() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; a `UserError` becomes one line on stderr and exit status 2."""
    return run_cli(_main, "pipelines.synthetic", argv)


if __name__ == "__main__":
    sys.exit(main())
