"""Labelled audio for supervised speaker training: listing, the label budget, decoding, tf.data.

Two sources:
- a folder `ROOT/<speaker>/.../<utt>.wav` (or any ending of `constants.AUDIO_EXTENSIONS`;
  speaker = first folder level, any depth below it; e.g. VoxCeleb1 dev `wav/<speaker>/<video>/<utt>.wav`, LibriSpeech
  `<speaker>/<chapter>/<utt>.flac`); files directly in ROOT have no speaker and are ignored
  with a warning;
- prepared TFRecords (`pipelines/records.py`): each track is an utterance, its `identity`
  field the speaker, its `track_id` the utterance id.

The label budget (`draw_label_budget`) keeps `num_speakers` speakers (0: all) and
`labels_per_speaker` utterances of each (0: all), drawn with a seed from the SORTED listing:
speakers by one seeded permutation, each speaker's utterances by a permutation seeded by
(seed, the speaker's name) only. So a speaker's draw does not depend on the other speakers,
and budgets are nested: the first utterance drawn with N = 1 is among those drawn with N = 2,
and so on (same for speakers). The drawn list (`LabelledSelection.to_dict`) is what a run
writes to its config.

Audio is decoded once, up front, to 16 kHz mono int16 in memory (115 MB per hour of audio):
fine for label budgets and the bundled data; for a full large corpus use prepared TFRecords
and a budget. Every chosen file is decoded before anything is returned, and an unreadable
one is an ERROR naming every unreadable file (not a silent skip, which would change the
label budget behind the user's back): fix or remove those files, or draw another budget.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zlib
from typing import Any, Iterator

import numpy as np
import tensorflow as tf

from av_disentangle import files
from av_disentangle.constants import (AUDIO, AUDIO_EXTENSIONS, LABEL, SAMPLE_RATE,
                                      SAMPLES_PER_FRAME)
from av_disentangle.errors import UserError
from pipelines import records
from pipelines.media import MediaError, decode_audio_file

log = logging.getLogger(__name__)

_MAX_NAMED = 10  # files / speakers named in one error message


class LabelledDataError(UserError):
    """The labelled input cannot be used; the message names the folder, file or speaker."""


@dataclasses.dataclass(frozen=True)
class LabelledSelection:
    """The drawn label budget.

    Attributes:
      source: the folder or TFRecord glob it was drawn from.
      speakers: the chosen speakers, sorted; class index k is `speakers[k]`.
      utterances: (speaker, utterance) pairs, grouped by speaker in `speakers` order; an
        utterance is a path relative to `source` (folder) or a `track_id` (TFRecords).
      labels_per_speaker, num_speakers, seed: the budget as asked (0 = all).
    """

    source: str
    speakers: tuple[str, ...]
    utterances: tuple[tuple[str, str], ...]
    labels_per_speaker: int
    num_speakers: int
    seed: int

    @property
    def labels(self) -> np.ndarray:
        """(N,) int32 class index of each utterance."""
        index = {s: k for k, s in enumerate(self.speakers)}
        return np.array([index[s] for s, _ in self.utterances], np.int32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly record of the draw, for the run's config."""
        return {"source": self.source, "labels_per_speaker": self.labels_per_speaker,
                "num_speakers": self.num_speakers, "seed": self.seed,
                "speakers": list(self.speakers),
                "utterances": [[s, u] for s, u in self.utterances]}


@dataclasses.dataclass(frozen=True)
class LabelledAudio:
    """A selection with its decoded audio.

    Attributes:
      selection: what was drawn.
      waveforms: one (S_i,) int16 16 kHz array per utterance, in `selection.utterances` order.
    """

    selection: LabelledSelection
    waveforms: tuple[np.ndarray, ...]

    @property
    def num_classes(self) -> int:
        return len(self.selection.speakers)

    @property
    def labels(self) -> np.ndarray:
        return self.selection.labels


# === Listing ===
def is_folder_source(source: str) -> bool:
    """True for a local directory of audio files; False for a TFRecord glob (comma-separated,
    local or any file system TensorFlow reads)."""
    return os.path.isdir(source)


def list_labelled_folder(root: str) -> dict[str, list[str]]:
    """`root/<speaker>/.../<utt>.wav` (`AUDIO_EXTENSIONS`) -> {speaker: sorted relative paths}.

    Raises:
      LabelledDataError: `root` is not a folder or holds no audio file under a speaker folder.
    """
    if not os.path.isdir(root):
        raise LabelledDataError(f"labelled audio folder {root} does not exist")
    listing: dict[str, list[str]] = {}
    loose = 0
    for path in files.list_files(root, AUDIO_EXTENSIONS):
        rel = os.path.relpath(path, root)
        if os.sep not in rel:
            loose += 1
            continue
        listing.setdefault(rel.split(os.sep)[0], []).append(rel)
    if loose:
        log.warning("%s: %d audio file(s) directly in the folder have no speaker folder and "
                    "are ignored (expected <speaker>/.../<utt>.wav)", root, loose)
    if not listing:
        raise LabelledDataError(
            f"labelled audio folder {root} has no {'/'.join(AUDIO_EXTENSIONS)} files in "
            "speaker folders (expected <speaker>/.../<utt>.wav)")
    return {s: sorted(paths) for s, paths in sorted(listing.items())}


_RECORD_LABEL_SPEC = {k: records.FEATURE_SPEC[k] for k in ("identity", "track_id")}
_RECORD_AUDIO_SPEC = {k: records.FEATURE_SPEC[k] for k in ("identity", "track_id", "audio",
                                                            "chunk_index")}


def _record_files(pattern: str) -> list[str]:
    from pipelines.input import list_shards

    try:
        return list_shards(pattern)
    except (FileNotFoundError, ValueError) as e:
        raise LabelledDataError(f"labelled audio {pattern!r} is neither a folder nor TFRecords: "
                                f"{e}") from e


def _iter_records(pattern: str, spec: dict) -> Iterator[dict[str, Any]]:
    for path in _record_files(pattern):
        try:
            for raw in tf.data.TFRecordDataset(path):
                yield tf.io.parse_single_example(raw, spec)
        except tf.errors.OpError as e:
            raise LabelledDataError(f"cannot read TFRecord file {path}: "
                                    f"{e.message.splitlines()[0]}") from e


def list_labelled_records(pattern: str) -> dict[str, list[str]]:
    """Prepared TFRecords -> {identity: sorted track ids}.

    Raises:
      LabelledDataError: unreadable files, or tracks without an `identity` label.
    """
    listing: dict[str, list[str]] = {}
    unlabelled = total = 0
    for example in _iter_records(pattern, _RECORD_LABEL_SPEC):
        total += 1
        identity = example["identity"].numpy().decode()
        if not identity:
            unlabelled += 1
            continue
        listing.setdefault(identity, []).append(example["track_id"].numpy().decode())
    if unlabelled:
        raise LabelledDataError(
            f"{unlabelled} of {total} tracks in {pattern} have an empty `identity` field, so "
            "they cannot be used as labelled audio; prepare them with speaker labels")
    if not listing:
        raise LabelledDataError(f"no tracks in {pattern}")
    # a track stored as chunks (pipelines.prepare --chunk_seconds) is one utterance
    return {s: sorted(set(ids)) for s, ids in sorted(listing.items())}


def list_labelled(source: str) -> dict[str, list[str]]:
    """Listing of a folder or a TFRecord glob (see the module docstring)."""
    if not source:
        raise LabelledDataError("no labelled audio given (--labelled_audio DIR or TFRecord glob)")
    if is_folder_source(source):
        return list_labelled_folder(source)
    return list_labelled_records(source)


# === The label budget ===
def _speaker_seed(seed: int, speaker: str) -> list[int]:
    return [int(seed), zlib.crc32(speaker.encode("utf-8"))]


def draw_label_budget(listing: dict[str, list[str]], labels_per_speaker: int,
                      num_speakers: int, seed: int, source: str = "") -> LabelledSelection:
    """Draws `num_speakers` speakers (0: all) and `labels_per_speaker` utterances (0: all) of
    each, deterministically from `seed` (see the module docstring).

    Raises:
      LabelledDataError: fewer than 2 speakers (listed or asked for), more speakers asked for
        than listed, or speakers with fewer than `labels_per_speaker` utterances (each named
        with its count).
    """
    if labels_per_speaker < 0 or num_speakers < 0:
        raise LabelledDataError("labels_per_speaker and num_speakers must be >= 0 (0: all), got "
                                f"{labels_per_speaker} and {num_speakers}")
    where = f"labelled audio {source}" if source else "labelled audio"
    speakers = sorted(listing)
    if len(speakers) < 2:
        raise LabelledDataError(
            f"{where} has {len(speakers)} speaker ({', '.join(speakers) or 'none'}); a speaker "
            "classifier needs at least 2 (one folder per speaker: <speaker>/.../<utt>.wav)")
    if num_speakers == 1:
        raise LabelledDataError("--num_speakers 1: a speaker classifier needs at least 2")
    if num_speakers > len(speakers):
        raise LabelledDataError(f"--num_speakers {num_speakers}, but {where} has only "
                                f"{len(speakers)} speakers")
    if labels_per_speaker:
        short = [(s, len(listing[s])) for s in speakers if len(listing[s]) < labels_per_speaker]
        if short:
            named = ", ".join(f"{s} ({n})" for s, n in short[:_MAX_NAMED])
            more = f" and {len(short) - _MAX_NAMED} more" if len(short) > _MAX_NAMED else ""
            raise LabelledDataError(
                f"--labels_per_speaker {labels_per_speaker}: {len(short)} speaker(s) of {where} "
                f"have fewer utterances (count in brackets): {named}{more}; lower "
                "--labels_per_speaker or remove those speakers")
    if num_speakers:
        order = np.random.default_rng([int(seed), 0]).permutation(len(speakers))
        speakers = sorted(speakers[i] for i in order[:num_speakers])
    utterances = []
    for s in speakers:
        paths = listing[s]
        order = np.random.default_rng(_speaker_seed(seed, s)).permutation(len(paths))
        keep = order[:labels_per_speaker] if labels_per_speaker else order
        utterances.extend((s, paths[i]) for i in sorted(keep))
    return LabelledSelection(source=source, speakers=tuple(speakers),
                             utterances=tuple(utterances),
                             labels_per_speaker=int(labels_per_speaker),
                             num_speakers=int(num_speakers), seed=int(seed))


def _load_folder_audio(selection: LabelledSelection) -> list[np.ndarray]:
    waveforms, bad = [], []
    for _, rel in selection.utterances:
        path = os.path.join(selection.source, rel)
        try:
            waveforms.append(decode_audio_file(path))
        except MediaError as e:
            bad.append(str(e))
    if bad:
        named = "; ".join(bad[:_MAX_NAMED])
        more = f"; and {len(bad) - _MAX_NAMED} more" if len(bad) > _MAX_NAMED else ""
        raise LabelledDataError(
            f"{len(bad)} of {len(selection.utterances)} chosen labelled audio files cannot be "
            f"decoded: {named}{more}. Fix or remove them (or draw another budget with "
            "--label_seed)")
    return waveforms


def _load_record_audio(selection: LabelledSelection) -> list[np.ndarray]:
    wanted = {u: i for i, (_, u) in enumerate(selection.utterances)}
    chunks: list[dict[int, np.ndarray]] = [{} for _ in wanted]  # chunk_index -> audio
    for example in _iter_records(selection.source, _RECORD_AUDIO_SPEC):
        i = wanted.get(example["track_id"].numpy().decode())
        if i is not None:
            chunks[i].setdefault(int(example["chunk_index"]),
                                 np.frombuffer(example["audio"].numpy(), "<i2").astype(np.int16))
    waveforms: list[np.ndarray | None] = [  # a chunked track's audio, joined in order
        np.concatenate([c[k] for k in sorted(c)]) if c else None for c in chunks]
    empty = [selection.utterances[i][1] for i, w in enumerate(waveforms)
             if w is None or w.shape[0] == 0]
    if empty:
        raise LabelledDataError(f"{len(empty)} chosen tracks of {selection.source} have no "
                                f"audio: {', '.join(empty[:_MAX_NAMED])}")
    return waveforms  # type: ignore[return-value]


def load_labelled_audio(source: str, *, labels_per_speaker: int = 0, num_speakers: int = 0,
                        seed: int = 0) -> LabelledAudio:
    """Lists `source`, draws the label budget and decodes the chosen utterances.

    Nothing is written. Call it before the run writes any state, so that bad input stops
    the run with a `LabelledDataError` (a `UserError`: one line, exit 2) and no files.

    Args:
      source: a folder `<speaker>/.../<utt>.wav` (or .flac, .m4a, ...) or a TFRecord glob.
      labels_per_speaker, num_speakers: the budget (0: all).
      seed: the draw's seed.
    """
    listing = list_labelled(source)
    selection = draw_label_budget(listing, labels_per_speaker, num_speakers, seed, source)
    load = _load_folder_audio if is_folder_source(source) else _load_record_audio
    waveforms = load(selection)
    seconds = sum(w.shape[0] for w in waveforms) / SAMPLE_RATE
    log.info("labelled audio %s: %d speakers, %d utterances (%.1f min)", source,
             len(selection.speakers), len(waveforms), seconds / 60)
    return LabelledAudio(selection, tuple(waveforms))


# === tf.data ===
def crop_samples(crop_seconds: float) -> int:
    """Samples of a crop, rounded down to whole video frames (640 samples): 2.0 s -> 32000."""
    frames = int(round(crop_seconds * SAMPLE_RATE)) // SAMPLES_PER_FRAME
    if frames < 13:  # the exported model needs >= 0.5 s (export.MIN_SAMPLES)
        raise ValueError(f"crop_seconds must be >= 0.52, got {crop_seconds}")
    return frames * SAMPLES_PER_FRAME


def _crops(waveforms: tuple[np.ndarray, ...], labels: np.ndarray, length: int,
           seed: int) -> Iterator[tuple[np.ndarray, np.int32]]:
    """Endless (crop (length,) float32, label) examples: every utterance once per epoch in a
    seeded random order, each time a crop at a seeded random position. An utterance shorter
    than the crop is repeated to fill it (as evaluate.py's `crop_waveform`)."""
    rng = np.random.default_rng([int(seed), 1])
    while True:
        for i in rng.permutation(len(waveforms)):
            wav = waveforms[i]
            if wav.shape[0] < length:
                wav = np.resize(wav, length)  # repeats the utterance
            start = int(rng.integers(0, wav.shape[0] - length + 1))
            crop = wav[start:start + length].astype(np.float32) / 32768.0  # records.decode_audio
            yield crop, labels[i]


def make_labelled_dataset(data: LabelledAudio, *, batch_size: int, crop_seconds: float = 2.0,
                          seed: int = 0) -> tf.data.Dataset:
    """Endless batches of random crops with their speaker labels.

    Each element is a dict: `audio` (B, S) float32 16 kHz in [-1, 1), S = `crop_samples(
    crop_seconds)` (32000 for 2 s), and `label` (B,) int32 class indices
    (`data.selection.speakers[label]`). Deterministic for a given `seed`: the order of
    utterances and every crop position come from it (pass seed + completed epochs on resume
    for fresh crops).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    length = crop_samples(crop_seconds)
    labels = data.labels
    ds = tf.data.Dataset.from_generator(
        lambda: _crops(data.waveforms, labels, length, seed),
        output_signature=(tf.TensorSpec([length], tf.float32), tf.TensorSpec([], tf.int32)))
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda audio, label: {AUDIO: audio, LABEL: label})
    return ds.prefetch(tf.data.AUTOTUNE)
