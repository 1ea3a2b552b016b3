"""A "real voices, drawn faces" world: real speech, a drawn face per speaker (issue 14).

Every speaker of a LibriSpeech-layout folder gets a face of its own from the drawn-faces
generator (`pipelines.drawn_faces.identity_params`, identity index = a stable hash of the
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
or `<spk>/<chap>/<utt>.<ext>`, or Speech Commands clips `<spk>/<word>_<spk>_nohash_<n>.<ext>`
(`av_disentangle.corpora`); `--voices A,B` lists several folders as one. `holdout_speakers`
speakers, drawn from the speaker list with the seed, are written to `OUTPUT/holdout` and never
appear in `OUTPUT/train` (`num_speakers` of the rest, or all of them); without held-out speakers
everything goes to `OUTPUT`.

Tracks: a LibriSpeech utterance is cut into consecutive tracks. Speech Commands clips are one
second long, so a speaker's clips are joined, whole, in an order seeded by `(seed, speaker)`,
into tracks of at most `track_seconds` (one track holds several words of one person; a clip is
never split across tracks). Each clip's mouth is driven by its own audio relative to its own
loud frames, as an utterance's is. The record keeps each clip's frame count
(`records.Track.segment_frames`), so the input pipeline takes the identity term's two windows
from different clips where the track allows. All tracks of a Speech Commands speaker share
the video id `<spk>` (so two of them are never negatives of each other in one batch, as the
tracks of one LibriSpeech utterance are not).

Output: the ordinary TFRecord shards of `pipelines.records` (track identity = speaker id) and a
`manifest.json` with the split, each speaker's face parameters and, per track, its speaker,
utterance, source file and first frame in the utterance, and for a track of joined clips its
`segments` (clip, source, frames) and `words` (speaker labels are for evaluation and the
supervised rows; self-supervised training reads only the shards' audio and frames).

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
import time
from typing import Any

import numpy as np
import tqdm

from av_disentangle import corpora, files
from av_disentangle.constants import AUDIO_EXTENSIONS, SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS
from av_disentangle.errors import UserError
from pipelines import drawn_faces, media, records, shards

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
CLIP_ORDER_SALT = 13
"""Second word of the seed `[seed, 13, speaker hash]` of a Speech Commands speaker's clip order."""


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
      face_size, pixel_noise, head_jitter, track_variation: the face renderer's settings
        (`pipelines.drawn_faces.RenderConfig`); seed, jpeg_quality: as in
        `pipelines.synthetic.SyntheticConfig`.
    """

    track_seconds: float = 3.0
    min_track_seconds: float = 1.0
    num_speakers: int = 0
    holdout_speakers: int = 0
    face_size: int = 64
    seed: int = 0
    pixel_noise: float = drawn_faces.RenderConfig.pixel_noise
    head_jitter: float = drawn_faces.RenderConfig.head_jitter
    track_variation: float = drawn_faces.RenderConfig.track_variation
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
        self.render_config  # the renderer's own checks (face size, noise, jitter)

    @property
    def track_frames(self) -> int:
        return int(round(self.track_seconds * VIDEO_FPS))

    @property
    def min_track_frames(self) -> int:
        return max(1, int(round(self.min_track_seconds * VIDEO_FPS)))

    @property
    def render_config(self) -> drawn_faces.RenderConfig:
        """The face renderer's settings of this world."""
        return drawn_faces.RenderConfig(face_size=self.face_size, pixel_noise=self.pixel_noise,
                                        head_jitter=self.head_jitter,
                                        track_variation=self.track_variation)


# === Listing and split ===

@dataclasses.dataclass(frozen=True)
class Utterance:
    """One recording: `utterance_id` is `<spk>-<chap>-<utt>` (LibriSpeech) or
    `<word>_<spk>_nohash_<n>` (Speech Commands, `word` its word); `voices_dir` is the --voices
    folder it was listed from (the manifest's `source` paths are relative to it)."""

    speaker: str
    utterance_id: str
    path: str
    corpus: str = corpora.LIBRISPEECH
    word: str = ""
    voices_dir: str = ""


def list_utterances(voices_dir: str) -> dict[str, list[Utterance]]:
    """Speaker id -> its utterances (sorted by id), from a LibriSpeech- or Speech Commands-layout
    folder, or several joined by commas (`A,B`: listed as one).

    Raises:
      UserError: missing folder, no audio, a file whose name is neither corpus's, an utterance
        id found twice, or a single speaker (one line naming the folder or file).
    """
    folders = [d for d in voices_dir.split(",") if d]
    if not folders:
        raise UserError(f"{voices_dir!r}: --voices names no folder")
    by_speaker: dict[str, list[Utterance]] = {}
    seen: dict[str, str] = {}
    for folder in folders:
        if not os.path.isdir(folder):
            raise UserError(f"{folder}: --voices folder does not exist")
        found = files.list_files(folder, AUDIO_EXTENSIONS)
        if not found:
            raise UserError(f"{folder}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in the "
                            f"--voices folder")
        for path in found:
            name = corpora.parse_clip_name(path)
            if name is None:
                raise UserError(f"{path}: not a LibriSpeech name (expected "
                                f"{corpora.EXPECTED_NAMES.format(ext=path.suffix)})")
            if name.utterance_id in seen:
                raise UserError(f"{path}: utterance {name.utterance_id} is also "
                                f"{seen[name.utterance_id]}")
            seen[name.utterance_id] = str(path)
            by_speaker.setdefault(name.speaker, []).append(
                Utterance(name.speaker, name.utterance_id, str(path), name.corpus, name.word,
                          folder))
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


def speaker_face(speaker: str, seed: int = 0) -> drawn_faces.IdentityParams:
    """The drawn face (and unused synthetic voice) of a speaker."""
    return drawn_faces.identity_params(speaker_identity_index(speaker), seed)


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
class Segment:
    """`num_frames` frames of `utterance` from its frame `start_frame`."""

    utterance: Utterance
    start_frame: int
    num_frames: int


@dataclasses.dataclass(frozen=True)
class TrackPlan:
    """One track to write: its segments, back to back. A LibriSpeech track is one segment of one
    utterance (`index` = its place in the utterance); a Speech Commands track is whole clips of
    one speaker (`index` = its place among the speaker's tracks)."""

    segments: tuple[Segment, ...]
    index: int

    @property
    def utterance(self) -> Utterance:
        """The first segment's utterance."""
        return self.segments[0].utterance

    @property
    def speaker(self) -> str:
        return self.utterance.speaker

    @property
    def start_frame(self) -> int:
        """The first segment's first frame in its utterance."""
        return self.segments[0].start_frame

    @property
    def num_frames(self) -> int:
        return sum(s.num_frames for s in self.segments)

    @property
    def joined(self) -> bool:
        """A track of joined Speech Commands clips."""
        return self.utterance.corpus == corpora.SPEECH_COMMANDS

    @property
    def track_id(self) -> str:
        if self.joined:
            return f"{self.speaker}/c{self.index:02d}"
        return f"{self.utterance.utterance_id}/t{self.index:02d}"

    @property
    def video_id(self) -> str:
        """The batch sampler's video: the utterance, or the speaker for joined clips."""
        return self.speaker if self.joined else self.utterance.utterance_id


@functools.lru_cache(maxsize=16)
def _decode(path: str) -> np.ndarray:
    """(S,) int16 at 16 kHz (cached: the shard order revisits an utterance once per track)."""
    return media.decode_audio_file(path)


def _frames(utt: Utterance) -> int:
    return _decode(utt.path).shape[0] // SAMPLES_PER_FRAME


def _join_clips(clips: list[Utterance], config: VoicesConfig) -> list[TrackPlan]:
    """One speaker's Speech Commands clips, whole, in the order seeded by (seed, speaker),
    packed greedily into tracks of at most `track_frames` (a clip longer than that is cut as an
    utterance is); tracks shorter than `min_track_frames` are dropped."""
    order = shards.shuffle(sorted(clips, key=lambda u: u.utterance_id),
                           [int(config.seed), CLIP_ORDER_SALT, _stable_int(clips[0].speaker)])
    pieces: list[Segment] = []
    for utt in order:
        frames, start = _frames(utt), 0
        while start < frames:
            n = min(config.track_frames, frames - start)
            pieces.append(Segment(utt, start, n))
            start += n
    plans: list[TrackPlan] = []
    current: list[Segment] = []

    def close() -> None:
        if current and sum(s.num_frames for s in current) >= config.min_track_frames:
            plans.append(TrackPlan(tuple(current), len(plans)))

    for piece in pieces:
        if sum(s.num_frames for s in current) + piece.num_frames > config.track_frames:
            close()
            current = []
        current.append(piece)
    close()
    return plans


def plan_tracks(utterances: list[Utterance], config: VoicesConfig) -> list[TrackPlan]:
    """Cuts each LibriSpeech utterance into consecutive tracks and joins each speaker's Speech
    Commands clips into tracks (`_join_clips`; after the utterances, speakers in order of first
    appearance). Decodes every file once."""
    plans = []
    clips: dict[str, list[Utterance]] = {}
    for utt in utterances:
        if utt.corpus == corpora.SPEECH_COMMANDS:
            clips.setdefault(utt.speaker, []).append(utt)
            continue
        frames = _frames(utt)
        start, k = 0, 0
        while frames - start >= config.min_track_frames:
            n = min(config.track_frames, frames - start)
            plans.append(TrackPlan((Segment(utt, start, n),), k))
            start, k = start + n, k + 1
    for speaker_clips in clips.values():
        plans += _join_clips(speaker_clips, config)
    return plans


def _segment_audio(segment: Segment) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The segment's samples and its mouth drivers, relative to its utterance's loud frames."""
    audio = _decode(segment.utterance.path)
    usable = audio[:(audio.shape[0] // SAMPLES_PER_FRAME) * SAMPLES_PER_FRAME]
    reference_db = float(np.percentile(mouth_from_audio(usable)["level_db"], 95))
    s0 = segment.start_frame * SAMPLES_PER_FRAME
    samples = np.ascontiguousarray(usable[s0:s0 + segment.num_frames * SAMPLES_PER_FRAME])
    return samples, mouth_from_audio(samples, reference_db)


def generate_track(config: VoicesConfig, plan: TrackPlan) -> tuple[records.Track, dict]:
    """The track of `plan` and its per-frame mouth drivers (`mouth_from_audio`, of each
    segment's own audio, concatenated)."""
    parts = [_segment_audio(s) for s in plan.segments]
    track_audio = np.concatenate([a for a, _ in parts])
    drivers = {k: np.concatenate([d[k] for _, d in parts]) for k in parts[0][1]}
    speaker = plan.speaker
    ident = speaker_face(speaker, config.seed)
    key = plan.track_id if plan.joined else plan.utterance.utterance_id
    rng = np.random.default_rng([int(config.seed), 3, speaker_identity_index(speaker),
                                 _stable_int(key), plan.index])
    frames = drawn_faces.render_video(ident, drivers["mouth_open"], drivers["mouth_width"],
                                      config.render_config, rng)
    track = records.Track(frames=frames, audio=track_audio.astype(np.int16),
                          track_id=plan.track_id, video_id=plan.video_id,
                          identity=speaker, source_path=plan.utterance.path,
                          av_offset_frames=0,
                          segment_frames=tuple(s.num_frames for s in plan.segments)
                          if len(plan.segments) > 1 else ())
    return track, drivers


# === Writing ===

def _source(utt: Utterance) -> str:
    return os.path.relpath(utt.path, utt.voices_dir or os.path.dirname(utt.path))


def _manifest_row(plan: TrackPlan, shard: str, drivers: dict[str, np.ndarray]) -> dict[str, Any]:
    """The manifest's entry of a written track."""
    row = {"track_id": plan.track_id, "speaker": plan.speaker,
           "utterance": "+".join(s.utterance.utterance_id for s in plan.segments),
           "source": _source(plan.utterance), "start_frame": plan.start_frame,
           "num_frames": plan.num_frames, "shard": shard,
           "mean_mouth_open": round(float(drivers["mouth_open"].mean()), 4)}
    if plan.joined:
        row["words"] = [s.utterance.word for s in plan.segments]
        row["segments"] = [{"utterance": s.utterance.utterance_id, "source": _source(s.utterance),
                            "start_frame": s.start_frame, "num_frames": s.num_frames}
                           for s in plan.segments]
    return row


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
                        rows[i] = _manifest_row(p, name, drivers)
                        bar.update(1)
        speakers = sorted({p.speaker for p in plans}, key=_speaker_key)
        manifest = {
            "format": FORMAT, "part": part,
            "voices_dir": ",".join(os.path.abspath(d) for d in voices_dir.split(",") if d),
            "config": dataclasses.asdict(config),
            "generator_version": drawn_faces.GENERATOR_VERSION,
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
                       help="a LibriSpeech- or Speech Commands-layout folder, or several "
                            "joined by commas (A,B): build the real-voice world from them "
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
    return files.read_json(os.path.join(output_dir, "manifest.json"))
