"""A "real voices, drawn faces" world: real speech, a drawn face per speaker (issue 14).

Every speaker of a LibriSpeech-layout folder gets a face of its own from the synthetic world's
face generator (`pipelines.synthetic.identity_params`, identity index = a stable hash of the
speaker id, so a speaker is the same face in every run and every split). Its utterances are cut
into consecutive tracks of `track_seconds`; the audio of a track is the real recording,
unchanged. The mouth of video frame `i` is driven by the audio samples `[640 i, 640 (i + 1))`
of that track only (the alignment contract of `pipelines.records`, offset 0):

- opening from the frame's RMS level in dB relative to the utterance's loud frames
  (`LEVEL_RANGE_DB` below the 95th percentile is closed, the percentile fully open), weighted by
  voicing (the share of the frame's power below 1 kHz, so a loud /s/ opens the mouth less than a
  vowel of the same energy);
- shape (0 rounded .. 1 spread) from the spectral centroid of the 700-3000 Hz band, the
  second-formant region (front vowels with a high F2 spread the lips, back rounded vowels
  with a low F2 round them), faded to the neutral 0.5 as the mouth closes, as the synthetic
  world does.

Per track nuisances (background, clothes, pose and its jitter, blinks, lighting, pixel noise)
are drawn as in the synthetic world from `(seed, speaker, utterance, track)`. The face is not
coupled to the voice (the synthetic world couples pitch and face shape through one latent; a
real voice is not drawn from that latent), so any identity a model learns here comes from
associating each training speaker's voice with its face.

Speakers: the folder holds `<spk>-<chap>-<utt>.<ext>` files anywhere below it (LibriSpeech's
own `<spk>/<chap>/<spk>-<chap>-<utt>.flac`, a flat folder, or `<spk>/<spk>-<chap>-<utt>.flac`),
or `<spk>/<chap>/<utt>.<ext>`. `holdout_speakers` speakers, drawn from the speaker list with the
seed, are written to `OUTPUT/holdout` and never appear in `OUTPUT/train` (`num_speakers` of the
rest, or all of them); without held-out speakers everything goes to `OUTPUT`.

Output: the ordinary TFRecord shards of `pipelines.records` (track identity = speaker id) and a
`manifest.json` with the split, each speaker's face parameters and, per track, its speaker,
utterance, source file and first frame in the utterance (speaker labels are for evaluation
only; training reads the shards).

Example:
    python -m pipelines.synthetic --voices ../shared/data/librispeech_train_clean_100_sel \
        --output /tmp/voices --track_seconds 3 --holdout_speakers 51 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import re
import time
from typing import Any

import numpy as np
import tqdm

from av_disentangle import files
from av_disentangle.constants import AUDIO_EXTENSIONS, SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS
from av_disentangle.errors import UserError
from pipelines import media, records, shards, synthetic

log = logging.getLogger(__name__)

FORMAT = "av-disentangle voices v1"
LEVEL_RANGE_DB = 30.0
"""Frames this far below the utterance's 95th-percentile frame level draw a closed mouth."""
VOICING_SPLIT_HZ = 1000.0
"""Voicing = share of the frame's power between 80 Hz and this frequency."""
CENTROID_BAND_HZ = (700.0, 3000.0)
CENTROID_ROUNDED_HZ = 1000.0
"""Spectral centroid (of CENTROID_BAND_HZ) drawn as fully rounded lips (shape 0) ..."""
CENTROID_SPREAD_HZ = 2300.0
"""... and as fully spread lips (shape 1)."""
SPLIT_SEED_SALT = 11
"""Second word of the speaker split's seed `[seed, 11]`."""
SHARD_SEED_SALT = 7
"""As `pipelines.synthetic.SHARD_SEED_SALT`: the shard order's seed is `[seed, 7]`."""

_FLAT_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)$")


# === Config ===

@dataclasses.dataclass(frozen=True)
class VoicesConfig:
    """What to build from a folder of speech.

    Args:
      track_seconds: length of a track; an utterance gives floor(length / track) tracks plus
        its remainder if that is at least `min_track_seconds`.
      min_track_seconds: shortest track kept (an utterance shorter than this gives none).
      num_speakers: training speakers (0: every speaker not held out).
      holdout_speakers: speakers drawn with the seed and written to `holdout/` only.
      face_size, seed, pixel_noise, head_jitter, track_variation, jpeg_quality: as in
        `pipelines.synthetic.SyntheticConfig` (the face renderer's settings).
    """

    track_seconds: float = 3.0
    min_track_seconds: float = 1.0
    num_speakers: int = 0
    holdout_speakers: int = 0
    face_size: int = 64
    seed: int = 0
    pixel_noise: float = synthetic.SyntheticConfig.pixel_noise
    head_jitter: float = synthetic.SyntheticConfig.head_jitter
    track_variation: float = synthetic.SyntheticConfig.track_variation
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.track_frames < 1:
            raise ValueError(f"track_seconds must be at least one frame (0.04 s), got "
                             f"{self.track_seconds}")
        if not 0 < self.min_track_seconds <= self.track_seconds:
            raise ValueError(f"min_track_seconds must be in (0, track_seconds], got "
                             f"{self.min_track_seconds}")
        if self.num_speakers < 0 or self.holdout_speakers < 0:
            raise ValueError("speakers and holdout_speakers must be >= 0")
        # The renderer's own checks (face size, noise, jitter).
        self.render_config()

    @property
    def track_frames(self) -> int:
        return int(round(self.track_seconds * VIDEO_FPS))

    @property
    def min_track_frames(self) -> int:
        return max(1, int(round(self.min_track_seconds * VIDEO_FPS)))

    def render_config(self) -> synthetic.SyntheticConfig:
        """The synthetic world's config that the face renderer reads."""
        return synthetic.SyntheticConfig(
            num_identities=1, tracks_per_identity=1, num_frames=self.track_frames,
            face_size=self.face_size, seed=self.seed, pixel_noise=self.pixel_noise,
            head_jitter=self.head_jitter, track_variation=self.track_variation,
            jpeg_quality=self.jpeg_quality)


# === Listing and split ===

@dataclasses.dataclass(frozen=True)
class Utterance:
    speaker: str
    utterance_id: str  # `<spk>-<chap>-<utt>`
    path: str


def _parse_name(path: pathlib.Path) -> tuple[str, str] | None:
    """(speaker, utterance id) from `<spk>-<chap>-<utt>.ext` or `<spk>/<chap>/<utt>.ext`."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    m = _FLAT_NAME.match(stem)
    if m:
        return m.group(1), stem
    parts = path.parts
    if len(parts) >= 3 and parts[-3].isdigit() and parts[-2].isdigit() and stem.isdigit():
        return parts[-3], f"{parts[-3]}-{parts[-2]}-{stem}"
    return None


def list_utterances(voices_dir: str) -> dict[str, list[Utterance]]:
    """Speaker id -> its utterances (sorted by id), from a LibriSpeech-layout folder.

    Raises:
      UserError: missing folder, no audio, a file whose name is not LibriSpeech's, or a
        single speaker (one line naming the folder or file).
    """
    if not os.path.isdir(voices_dir):
        raise UserError(f"{voices_dir}: --voices folder does not exist")
    found = files.list_files(voices_dir, AUDIO_EXTENSIONS)
    if not found:
        raise UserError(f"{voices_dir}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in the "
                        f"--voices folder")
    by_speaker: dict[str, list[Utterance]] = {}
    seen: dict[str, str] = {}
    for path in found:
        parsed = _parse_name(path)
        if parsed is None:
            raise UserError(f"{path}: not a LibriSpeech name (expected <speaker>-<chapter>-"
                            f"<utterance>{path.suffix} or <speaker>/<chapter>/<utterance>"
                            f"{path.suffix})")
        speaker, utt = parsed
        if utt in seen:
            raise UserError(f"{path}: utterance {utt} is also {seen[utt]}")
        seen[utt] = str(path)
        by_speaker.setdefault(speaker, []).append(Utterance(speaker, utt, str(path)))
    if len(by_speaker) < 2:
        raise UserError(f"{voices_dir}: {len(by_speaker)} speaker ({next(iter(by_speaker))}) in "
                        f"the --voices folder; at least 2 are needed")
    return {s: sorted(u, key=lambda x: x.utterance_id) for s, u in sorted(by_speaker.items())}


def _speaker_key(speaker: str) -> tuple[int, str]:
    return (int(speaker), speaker) if speaker.isdigit() else (1 << 62, speaker)


def split_speakers(speakers: list[str], config: VoicesConfig) -> dict[str, list[str]]:
    """{"train": [...], "holdout": [...]} (each sorted): the held-out speakers are the first
    `holdout_speakers` of a random order seeded by `[seed, SPLIT_SEED_SALT]` of the sorted
    speaker list, the training speakers the next `num_speakers` (0: all the rest)."""
    ordered = sorted(set(speakers), key=_speaker_key)
    wanted = config.holdout_speakers + (config.num_speakers or 1)
    if wanted > len(ordered):
        raise UserError(f"--speakers {config.num_speakers} + --holdout_speakers "
                        f"{config.holdout_speakers} asks for {wanted} speakers; the folder has "
                        f"{len(ordered)}")
    order = shards.shuffle(ordered, [int(config.seed), SPLIT_SEED_SALT])
    holdout = order[:config.holdout_speakers]
    rest = order[config.holdout_speakers:]
    train = rest[:config.num_speakers] if config.num_speakers else rest
    return {"train": sorted(train, key=_speaker_key), "holdout": sorted(holdout, key=_speaker_key)}


# === Faces ===

def _stable_int(*parts: str) -> int:
    """A 32-bit integer from strings, the same on every machine and run (not Python's hash)."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def speaker_identity_index(speaker: str) -> int:
    """The face generator's identity index of a speaker (stable hash of the speaker id)."""
    return _stable_int("librispeech-speaker", speaker)


def speaker_face(speaker: str, seed: int = 0) -> synthetic.IdentityParams:
    """The drawn face (and unused synthetic voice) of a speaker."""
    return synthetic.identity_params(speaker_identity_index(speaker), seed)


# === Mouth from audio ===

def mouth_from_audio(audio: np.ndarray, reference_db: float | None = None) -> dict[str, np.ndarray]:
    """Per-frame mouth drivers from the frame's own audio samples only.

    Args:
      audio: (F * 640,) int16 (or float in [-1, 1]) at 16 kHz; frame i is samples
        [640 i, 640 (i + 1)).
      reference_db: the level drawn fully open (default: the 95th percentile of the frame
        levels of `audio`; pass the utterance's to cut tracks from one utterance alike).
    Returns:
      (F,) float64 arrays: `level_db` (frame RMS, dBFS), `level` (0..1), `voicing` (0..1),
      `centroid_hz`, `mouth_open` (0..1) and `mouth_width` (0 rounded .. 1 spread).
    """
    x = np.asarray(audio)
    x = x.astype(np.float64) / 32768.0 if x.dtype == np.int16 else x.astype(np.float64)
    num_frames = x.shape[0] // SAMPLES_PER_FRAME
    frames = x[:num_frames * SAMPLES_PER_FRAME].reshape(num_frames, SAMPLES_PER_FRAME)
    frames = frames - frames.mean(axis=1, keepdims=True)
    rms = np.sqrt(np.mean(frames ** 2, axis=1))
    level_db = 20.0 * np.log10(rms + 1e-5)
    if reference_db is None:
        reference_db = float(np.percentile(level_db, 95)) if num_frames else 0.0
    level = np.clip((level_db - (reference_db - LEVEL_RANGE_DB)) / LEVEL_RANGE_DB, 0.0, 1.0)
    power = np.abs(np.fft.rfft(frames * np.hanning(SAMPLES_PER_FRAME), axis=1)) ** 2
    freqs = np.fft.rfftfreq(SAMPLES_PER_FRAME, 1.0 / SAMPLE_RATE)
    total = power[:, freqs >= 80.0].sum(axis=1) + 1e-12
    voicing = power[:, (freqs >= 80.0) & (freqs < VOICING_SPLIT_HZ)].sum(axis=1) / total
    band = (freqs >= CENTROID_BAND_HZ[0]) & (freqs < CENTROID_BAND_HZ[1])
    centroid = (power[:, band] @ freqs[band]) / (power[:, band].sum(axis=1) + 1e-12)
    shape = np.clip((centroid - CENTROID_ROUNDED_HZ) / (CENTROID_SPREAD_HZ - CENTROID_ROUNDED_HZ),
                    0.0, 1.0)
    mouth_open = np.clip(level * (0.4 + 0.6 * voicing), 0.0, 1.0)
    mouth_width = 0.5 + (shape - 0.5) * np.clip(level / 0.6, 0.0, 1.0)
    return {"level_db": level_db, "level": level, "voicing": voicing, "centroid_hz": centroid,
            "mouth_open": mouth_open, "mouth_width": mouth_width}


# === Tracks ===

@dataclasses.dataclass(frozen=True)
class TrackPlan:
    """One track to write: `num_frames` frames of `utterance` from frame `start_frame`."""

    utterance: Utterance
    index: int
    start_frame: int
    num_frames: int

    @property
    def track_id(self) -> str:
        return f"{self.utterance.utterance_id}/t{self.index:02d}"


@functools.lru_cache(maxsize=16)
def _decode(path: str) -> np.ndarray:
    """(S,) int16 at 16 kHz (cached: the shard order revisits an utterance once per track)."""
    return media.decode_audio_file(path)


def plan_tracks(utterances: list[Utterance], config: VoicesConfig) -> list[TrackPlan]:
    """Cuts each utterance into consecutive tracks (decodes every file once)."""
    plans = []
    for utt in utterances:
        frames = _decode(utt.path).shape[0] // SAMPLES_PER_FRAME
        start, k = 0, 0
        while frames - start >= config.min_track_frames:
            n = min(config.track_frames, frames - start)
            plans.append(TrackPlan(utt, k, start, n))
            start, k = start + n, k + 1
    return plans


def generate_track(config: VoicesConfig, plan: TrackPlan) -> tuple[records.Track, dict]:
    """The track of `plan` and its per-frame mouth drivers (`mouth_from_audio`)."""
    audio = _decode(plan.utterance.path)
    usable = audio[:(audio.shape[0] // SAMPLES_PER_FRAME) * SAMPLES_PER_FRAME]
    reference_db = float(np.percentile(mouth_from_audio(usable)["level_db"], 95))
    s0 = plan.start_frame * SAMPLES_PER_FRAME
    track_audio = np.ascontiguousarray(usable[s0:s0 + plan.num_frames * SAMPLES_PER_FRAME])
    drivers = mouth_from_audio(track_audio, reference_db)
    speaker = plan.utterance.speaker
    ident = speaker_face(speaker, config.seed)
    rng = np.random.default_rng([int(config.seed), 3, speaker_identity_index(speaker),
                                 _stable_int(plan.utterance.utterance_id), plan.index])
    frames = synthetic._render_video(ident, drivers["mouth_open"], drivers["mouth_width"],
                                     config.render_config(), rng)
    track = records.Track(frames=frames, audio=track_audio.astype(np.int16),
                          track_id=plan.track_id, video_id=plan.utterance.utterance_id,
                          identity=speaker, source_path=plan.utterance.path,
                          av_offset_frames=0)
    return track, drivers


# === Writing ===

def write_part(config: VoicesConfig, utterances: list[Utterance], output_dir: str, *,
               part: str, split: dict[str, list[str]], voices_dir: str,
               num_shards: int | None = None, verbose: bool = False) -> list[str]:
    """Writes the tracks of `utterances` as shards + `manifest.json` (all renamed together
    once complete, `files.write_all_atomic`), in a random order seeded by `[seed, 7]`.
    Returns the shard paths."""
    import tensorflow as tf

    plans = plan_tracks(utterances, config)
    if not plans:
        raise UserError(f"{voices_dir}: no utterance of the {part} speakers is at least "
                        f"--min_track_seconds {config.min_track_seconds} long")
    os.makedirs(output_dir, exist_ok=True)
    count = num_shards or max(1, min(16, len(plans) // 32))
    plan = shards.plan_shards(list(range(len(plans))), [int(config.seed), SHARD_SEED_SALT],
                              num_shards=count)
    names = [shards.shard_name(s, len(plan)) for s in range(len(plan))]
    paths = [os.path.join(output_dir, n) for n in names]

    def write(temps: list[str]) -> None:
        rows: dict[int, dict[str, Any]] = {}
        with tqdm.tqdm(total=len(plans), unit="track", desc=f"voices {output_dir}",
                       disable=not verbose) as bar:
            for name, tmp, items in zip(names, temps, plan):
                with tf.io.TFRecordWriter(tmp) as writer:
                    for i in items:
                        p = plans[i]
                        track, drivers = generate_track(config, p)
                        writer.write(records.encode_track(track, jpeg_quality=config.jpeg_quality))
                        rows[i] = {"track_id": p.track_id, "speaker": p.utterance.speaker,
                                   "utterance": p.utterance.utterance_id,
                                   "source": os.path.relpath(p.utterance.path, voices_dir),
                                   "start_frame": p.start_frame, "num_frames": p.num_frames,
                                   "shard": name,
                                   "mean_mouth_open": round(float(drivers["mouth_open"].mean()),
                                                            4)}
                        bar.update(1)
        speakers = sorted({p.utterance.speaker for p in plans}, key=_speaker_key)
        manifest = {
            "format": FORMAT, "part": part, "voices_dir": os.path.abspath(voices_dir),
            "config": dataclasses.asdict(config),
            "generator_version": synthetic.GENERATOR_VERSION,
            "sample_rate": SAMPLE_RATE, "fps": VIDEO_FPS, "samples_per_frame": SAMPLES_PER_FRAME,
            "split": split,
            "speakers": {s: {"identity_index": speaker_identity_index(s),
                             "face": speaker_face(s, config.seed).to_json()} for s in speakers},
            "shards": names, "shard_seed": config.seed,
            "tracks": [rows[i] for i in range(len(plans))],
        }
        with open(temps[-1], "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=1)

    files.write_all_atomic([*paths, os.path.join(output_dir, "manifest.json")], write)
    log.info("%s: %d speakers, %d tracks in %d shards -> %s", part,
             len({p.utterance.speaker for p in plans}), len(plans), len(paths), output_dir)
    return paths


def write_world(config: VoicesConfig, voices_dir: str, output_dir: str,
                num_shards: int | None = None, verbose: bool = False) -> dict[str, str]:
    """Lists `voices_dir`, splits its speakers and writes each part. Returns {part: folder}:
    `{"train": OUTPUT/train, "holdout": OUTPUT/holdout}` with held-out speakers, else
    `{"train": OUTPUT}`."""
    by_speaker = list_utterances(voices_dir)
    split = split_speakers(list(by_speaker), config)
    parts = {"train": os.path.join(output_dir, "train"),
             "holdout": os.path.join(output_dir, "holdout")} if split["holdout"] else \
        {"train": output_dir}
    for part, folder in parts.items():
        utts = [u for s in split[part] for u in by_speaker[s]]
        write_part(config, utts, folder, part=part, split=split, voices_dir=voices_dir,
                   num_shards=num_shards, verbose=verbose)
    return parts


# === CLI (through `python -m pipelines.synthetic --voices DIR`) ===

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The real-voice options of `python -m pipelines.synthetic`."""
    group = parser.add_argument_group("real voices (--voices)")
    group.add_argument("--voices", default="",
                       help="a LibriSpeech-layout folder: build the real-voice world from it "
                            "(--identities, --tracks_per_identity, --frames, --split are unused)")
    group.add_argument("--track_seconds", type=float, default=VoicesConfig.track_seconds)
    group.add_argument("--min_track_seconds", type=float, default=VoicesConfig.min_track_seconds)
    group.add_argument("--speakers", type=int, default=0,
                       help="training speakers (0: all not held out)")
    group.add_argument("--holdout_speakers", type=int, default=0,
                       help="speakers written to OUTPUT/holdout only (then OUTPUT/train)")


def run_from_args(args: argparse.Namespace) -> int:
    """`python -m pipelines.synthetic --voices DIR --output OUT ...`."""
    try:
        config = VoicesConfig(
            track_seconds=args.track_seconds, min_track_seconds=args.min_track_seconds,
            num_speakers=args.speakers, holdout_speakers=args.holdout_speakers,
            face_size=args.face_size, seed=args.seed, pixel_noise=args.pixel_noise,
            head_jitter=args.head_jitter, track_variation=args.track_variation)
    except ValueError as err:
        raise UserError(str(err)) from err
    start = time.time()
    parts = write_world(config, args.voices, args.output, num_shards=args.num_shards or None,
                        verbose=True)
    print(f"wrote {', '.join(f'{k} -> {v}' for k, v in parts.items())} in "
          f"{time.time() - start:.1f} s")
    return 0


def load_manifest(output_dir: str) -> dict[str, Any]:
    with open(os.path.join(output_dir, "manifest.json"), encoding="utf-8") as fh:
        return json.load(fh)
