"""The tf.data training input: sharded TFRecords -> batches of synchronised face/audio windows.

Each element of the output is a batch of `batch_tracks` DISTINCT tracks:
  frames  (B, T, S, S, 3) uint8  window 1 face crops, T = window_frames, S = face_size
  audio   (B, T * 640) float32   window 1 audio, exactly synchronised with `frames`
  audio_2 (B, T * 640) float32   a different window of the same track (identity term)
The second window does not overlap the first when the track has >= 2T frames; otherwise it is
a different start. Windows are drawn with stateless RNG seeded by (seed, element index), so a
seeded pipeline is deterministic regardless of parallelism.
"""

from __future__ import annotations

import dataclasses
import logging

import tensorflow as tf

from pipelines import records

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """Settings of the training input.

    Attributes:
      file_pattern: glob (or comma-separated globs) of TFRecord shards.
      batch_tracks: B, tracks per (global) batch.
      window_frames: T, video frames per window (audio: T * 640 samples).
      face_size: S, output face crop size (frames are resized if stored at another size).
      shuffle_buffer: tracks held in the shuffle buffer.
      seed: makes shuffling and window choice deterministic; None for fresh randomness.
      repeat: repeat forever (training) or one pass (evaluation).
    """

    file_pattern: str
    batch_tracks: int = 8
    window_frames: int = 25
    face_size: int = 64
    shuffle_buffer: int = 2048
    seed: int | None = 0
    repeat: bool = True


def list_shards(file_pattern: str) -> list[str]:
    """Files matching the glob(s), sorted. Raises FileNotFoundError naming the pattern."""
    files: list[str] = []
    for pattern in file_pattern.split(","):
        files.extend(tf.io.gfile.glob(pattern.strip()))
    files = sorted(set(files))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {file_pattern!r}")
    empty = [f for f in files if tf.io.gfile.stat(f).length == 0]
    if len(empty) == len(files):
        raise ValueError(f"all {len(files)} files matching {file_pattern!r} are empty "
                         f"(e.g. {empty[0]})")
    return [f for f in files if f not in empty]


def _uniform_int(seed: tf.Tensor | None, maxval: tf.Tensor) -> tf.Tensor:
    """One int in [0, maxval) from a stateless seed (2,), or stateful if seed is None."""
    maxval = tf.cast(maxval, tf.int64)
    if seed is None:
        return tf.random.uniform([], 0, maxval, dtype=tf.int64)
    return tf.random.stateless_uniform([], seed, 0, maxval, dtype=tf.int64)


def window_starts(num_frames: tf.Tensor, window: int, seed_1, seed_2) -> tuple[tf.Tensor, tf.Tensor]:
    """Start frames of window 1 and window 2 in a track of `num_frames` >= `window` frames.

    Window 2 avoids overlapping window 1 when possible, else it just starts elsewhere
    (or at the same place for a track of exactly `window` frames).
    """
    num_frames = tf.cast(num_frames, tf.int64)
    num_starts = num_frames - window + 1  # >= 1
    start_1 = _uniform_int(seed_1, num_starts)
    left = tf.maximum(start_1 - window + 1, 0)  # starts in [0, start_1 - window]
    right = tf.maximum(num_starts - (start_1 + window), 0)  # starts in [start_1 + window, end]
    far = left + right

    def non_overlapping():
        r = _uniform_int(seed_2, far)
        return tf.where(r < left, r, start_1 + window + (r - left))

    def different():
        r = _uniform_int(seed_2, tf.maximum(num_starts - 1, 1))
        return tf.where(num_starts > 1, (start_1 + 1 + r) % num_starts, start_1)

    start_2 = tf.cond(far > 0, non_overlapping, different)
    return start_1, start_2


def _decode_window(jpegs: tf.Tensor, start: tf.Tensor, window: int, size: int) -> tf.Tensor:
    """Decodes only the window's JPEGs: (F,) string -> (window, size, size, 3) uint8."""
    frames = records.decode_frames(jpegs[start:start + window])
    if frames.shape[1] != size or frames.shape[2] != size:
        frames = tf.cast(tf.image.resize(frames, [size, size], method="area",
                                         antialias=True) + 0.5, tf.uint8)
    return tf.ensure_shape(frames, [window, size, size, 3])


def make_example_fn(config: InputConfig):
    """Returns fn(index, serialized) -> dict of one track's two windows (see module doc)."""
    window = config.window_frames
    samples = window * records.SAMPLES_PER_FRAME

    def fn(index, serialized):
        ex = records.parse_example(serialized)
        seed_1 = seed_2 = None
        if config.seed is not None:
            seed_1 = tf.stack([tf.constant(config.seed, tf.int64), 2 * index])
            seed_2 = tf.stack([tf.constant(config.seed, tf.int64), 2 * index + 1])
        start_1, start_2 = window_starts(ex["num_frames"], window, seed_1, seed_2)
        audio = records.decode_audio(ex["audio"])
        spf = records.SAMPLES_PER_FRAME
        audio_1 = tf.ensure_shape(audio[start_1 * spf:start_1 * spf + samples], [samples])
        audio_2 = tf.ensure_shape(audio[start_2 * spf:start_2 * spf + samples], [samples])
        return {"frames": _decode_window(ex["frames"], start_1, window, config.face_size),
                "audio": audio_1, "audio_2": audio_2}

    return fn


def _long_enough(window: int):
    def keep(serialized):
        num_frames = tf.io.parse_single_example(
            serialized, {"num_frames": records.FEATURE_SPEC["num_frames"]})["num_frames"]
        return num_frames >= window
    return keep


def make_dataset(config: InputConfig) -> tf.data.Dataset:
    """The training input: interleaved shards -> shuffle -> distinct-track batches of windows.

    Batching happens on the serialized records BEFORE repeat, so no batch holds a track
    twice; the records are then unbatched, windowed in parallel and re-batched in the same
    groups. Batches are `drop_remainder` so every replica gets a full slice.
    """
    files = list_shards(config.file_pattern)
    log.info("input: %d shard(s) from %s", len(files), config.file_pattern)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if config.repeat or config.seed is not None:
        ds = ds.shuffle(len(files), seed=config.seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 16),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.filter(_long_enough(config.window_frames))
    ds = ds.shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
    ds = ds.batch(config.batch_tracks, drop_remainder=True)
    if config.repeat:
        ds = ds.repeat()
    ds = ds.unbatch().enumerate()
    ds = ds.map(make_example_fn(config), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    ds = ds.batch(config.batch_tracks, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)
