"""The tf.data training input: sharded TFRecords -> batches of synchronised face/audio windows.

Each element of the output is a batch of `batch_tracks` DISTINCT tracks, no two of them from
the same video (every other track of the batch is a negative of the identity task, so it
should be another person; DESIGN.md "Negatives"):
  frames   (B, T, S, S, 3) uint8  window 1 face crops, T = window_frames, S = face_size
  audio    (B, T * 640) float32   window 1 audio, exactly synchronised with `frames`
  audio_2  (B, T * 640) float32   a different window of the same track (identity term)
  track_id (B,) string, video_id (B,) string   only with `include_ids` (measurement; the
           model ignores them)
The second window never overlaps the first when the track has F >= 2T frames (the voice for
the identity term comes from another time, DESIGN.md "Windows"); for T <= F < 2T it is a
different start. In a track joined from several recordings (`segment_frames`: a Speech Commands
speaker's clips) the two windows share no recording whenever the track allows
(`disjoint_recording_starts`). Both windows are spread evenly over the starts that allow this
(`window_starts`). Windows are drawn with stateless RNG seeded by (seed, element index), so
a seeded pipeline is deterministic regardless of parallelism.

A record is a whole track or, for data prepared with chunks (`pipelines.prepare
--chunk_seconds`, data format version 2), one chunk of a track: an example then reads only that
chunk and takes both windows from it, and the chunks of a track share its `track_id` and
`video_id`, so two chunks of one video are never in one batch. Shards prepared with another
data format version are refused, naming the file (`check_prepared_format`).

Input statistics (who is in a batch, against a uniformly random batch of the same dataset):
    python -m pipelines.input --stats "data/prepared/vox2/shard-*.tfrecord" --batch_tracks 30
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import struct
import sys
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf

from av_disentangle.constants import (AUDIO, AUDIO_2, FRAMES, SAMPLES_PER_FRAME, TRACK_ID,
                                      VIDEO_ID)
from av_disentangle.files import read_json
from pipelines import records
from pipelines.records import window_slices

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
      interleave_shards: shards read at once, round-robin (the interleave cycle length:
        min(number of shards, this)). Memory: about 3 records in flight per open shard
        (measured, TF 2.21: 256 shards of 1 MB records +0.8 GB resident, 16 shards +0.17 GB;
        a VoxCeleb2 track of ~8 s at 112x112 is roughly 1 MB of JPEG + 0.25 MB of audio),
        against ~2.5 GB for a full shuffle buffer of 2048 such tracks. With shards of
        randomly ordered tracks (`pipelines.prepare`) 16 would do; more protects datasets
        sharded by identity (benchmarks/negatives.py).
      distinct_videos: never two tracks of one `video_id` in a batch (see `record_batches`).
      video_group_batches: k, batches filled together from k * B shuffled records to keep
        their videos distinct (a video with more than k tracks in one group loses the extra
        ones for this pass).
      include_ids: add `track_id` and `video_id` (B,) string tensors to each batch.
        Off for training: string tensors need not go to an accelerator, and older TF
        versions failed to copy them to GPUs under MirroredStrategy (tensorflow#35356).
      all_chunks_per_pass: read every chunk of every track in each pass. Default (False): a
        chunk of a track of n chunks is kept in a pass with probability 1 / n, drawn afresh
        every pass, so each track gives one record per pass in expectation, whatever its
        length: the reference draws each track once per epoch (one random window;
        syncnet_trainer DatasetLoader.py), where keeping all chunks would draw a 20 s track
        5 times as often as a 4 s one (data prepared with `--chunk_seconds 4`).
      allow_upsampling: resize stored faces smaller than `face_size` up to it. Default: refused
        (`check_stored_face_size`, and in the graph): a model trained on upsampled faces sees
        half-resolution crops at 4x the cost of preparing at its size.
    """

    file_pattern: str
    batch_tracks: int = 8
    window_frames: int = 25
    face_size: int = 64
    shuffle_buffer: int = 2048
    seed: int | None = 0
    repeat: bool = True
    interleave_shards: int = 256
    distinct_videos: bool = True
    video_group_batches: int = 4
    include_ids: bool = False
    all_chunks_per_pass: bool = False
    allow_upsampling: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_tracks", "window_frames", "face_size", "shuffle_buffer",
                     "interleave_shards", "video_group_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"InputConfig.{name} must be >= 1, got {getattr(self, name)}")


# Metadata read without decoding a track (batch assembly and statistics).
META_SPEC = {k: records.FEATURE_SPEC[k] for k in ("num_frames", "track_id", "video_id",
                                                   "num_chunks", "height", "width")}
META_SPEC["identity"] = tf.io.FixedLenFeature([], tf.string, default_value="")


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
    files = [f for f in files if f not in empty]
    check_prepared_format(files)
    return files


def check_prepared_format(files: Sequence[str]) -> None:
    """Raises ValueError naming the first shard written by `pipelines.prepare` with another
    data format version (`pipelines.prepare.FORMAT_VERSION`).

    The version of a shard is the `format_version` of the `manifest.json` beside it when the
    manifest lists it (one read per folder), else of its sidecar `shard-....json`
    (version 1 when the sidecar has none: sidecars got the field in version 2). Shards with
    neither (synthetic worlds, hand-written records) are not prepared data and pass.
    """
    from pipelines.prepare import FORMAT_VERSION  # local: prepare imports OpenCV and PyAV

    by_dir = collections.defaultdict(list)
    for f in files:
        by_dir[os.path.dirname(f)].append(f)
    for folder, paths in sorted(by_dir.items()):
        manifest = read_json(os.path.join(folder, "manifest.json"),
                             missing_ok=True, unreadable_ok=True) or {}
        listed = set()
        if "format_version" in manifest:
            listed = {s if isinstance(s, str) else s["file"] for s in manifest.get("shards", [])}
        for path in paths:
            name = os.path.basename(path)
            if name in listed:
                version, source = manifest["format_version"], os.path.join(folder,
                                                                            "manifest.json")
            else:
                sidecar_path = (path[: -len(".tfrecord")] if path.endswith(".tfrecord")
                                else path) + ".json"
                sidecar = read_json(sidecar_path, missing_ok=True, unreadable_ok=True)
                if sidecar is None or "fingerprint" not in sidecar:
                    continue
                version, source = sidecar.get("format_version", 1), sidecar_path
            if version != FORMAT_VERSION:
                raise ValueError(
                    f"{path} was prepared with data format version {version} ({source}); this "
                    f"code reads version {FORMAT_VERSION}: prepare it again (python -m "
                    "pipelines.prepare ... --output DIR; a rerun into its folder rewrites it)")


def check_one_copy_of_each_track(files: Sequence[str]) -> None:
    """Raises ValueError when the shards `files` hold two shard sets of one folder (a
    re-preparation with another plan left beside the old one: `*-of-00005` and `*-of-00003`)
    or, by the manifests beside them, one track in two shards (e.g. a folder copied next to
    itself): training would see those tracks twice per pass, without a word."""
    from pipelines.shards import shard_sets

    by_dir = collections.defaultdict(list)
    for f in files:
        by_dir[os.path.dirname(f)].append(f)
    for folder, paths in sorted(by_dir.items()):
        sets = shard_sets(os.path.basename(p) for p in paths)
        if len(sets) > 1:
            described = "; ".join(f"{len(names)} of {total} ({sorted(names)[0]}, ...)"
                                  for total, names in sorted(sets.items()))
            raise ValueError(
                f"the training data matches {len(sets)} shard sets in {folder}: {described}. "
                "A preparation with another shard plan left its shards there: prepare the "
                "folder again (it removes the other set) or narrow the glob")
    seen: dict[str, str] = {}
    for folder, paths in sorted(by_dir.items()):
        manifest = read_json(os.path.join(folder, "manifest.json"),
                             missing_ok=True, unreadable_ok=True) or {}
        matched = {os.path.basename(p) for p in paths}
        for track in manifest.get("tracks", []):
            if not isinstance(track, dict) or track.get("shard") not in matched:
                continue
            where = os.path.join(folder, track["shard"])
            first = seen.setdefault(str(track.get("track_id")), where)
            if first != where:
                raise ValueError(
                    f"track {track.get('track_id')} is in two of the training shards: {first} "
                    f"and {where} (by their manifests); every copy would be trained on. "
                    "Remove the copy or narrow the glob")


def check_stored_face_size(files: Sequence[str], face_size: int) -> None:
    """Raises ValueError naming the first shard whose face crops are stored smaller than
    `face_size` (the input would upsample them; `InputConfig.allow_upsampling`). Reads the
    first record of the first shard of each folder (a prepared folder has one size)."""
    by_dir: dict[str, str] = {}
    for f in sorted(files):
        by_dir.setdefault(os.path.dirname(f), f)
    for path in by_dir.values():
        # Read with gfile and protobuf, not tf.data: this runs before the distribution
        # strategy is made, which must come before TensorFlow's runtime starts.
        with tf.io.gfile.GFile(path, "rb") as fh:
            header = fh.read(12)
            if len(header) < 12:
                continue  # empty or truncated: the shard check names it
            data = fh.read(struct.unpack("<Q", header[:8])[0])
        feature = tf.train.Example.FromString(data).features.feature
        if "height" not in feature or "width" not in feature:
            continue
        height = feature["height"].int64_list.value[0]
        width = feature["width"].int64_list.value[0]
        if min(height, width) < face_size:
            raise ValueError(
                f"{path} stores {height}x{width} face crops, smaller than the model's "
                f"face size {face_size}: the input would upsample them (half-resolution "
                "faces at the cost of full ones). Prepare the data at the model's size "
                f"(python -m pipelines.prepare ... --face_size {face_size}), pick a "
                "smaller --face_size, or pass --allow_upsampling")


def _uniform_int(seed: tf.Tensor | None, maxval: tf.Tensor) -> tf.Tensor:
    """One int in [0, maxval) from a stateless seed (2,), or stateful if seed is None."""
    maxval = tf.cast(maxval, tf.int64)
    if seed is None:
        return tf.random.uniform([], 0, maxval, dtype=tf.int64)
    return tf.random.stateless_uniform([], seed, 0, maxval, dtype=tf.int64)


def window_starts(num_frames: tf.Tensor, window: int, seed_1,
                  seed_2) -> tuple[tf.Tensor, tf.Tensor]:
    """Start frames of window 1 and window 2 in a track of F = `num_frames` >= T = `window`.

    The two starts are drawn jointly: s1 uniform over the usable starts, then
    s2 = the start `d` usable starts further on, cyclically, with d uniform over the shifts
    that cannot overlap. A cyclic shift is a bijection, so s2 is uniform over the usable
    starts too, and both windows cover the track evenly.
      F >= 3T - 1: every start is usable; d in [T, N - T] (N = F - T + 1 starts), so the
                   windows are >= T frames apart on either side of the wrap: never overlap.
      2T <= F < 3T - 1: only starts with room for a non-overlapping partner are usable
                   ([0, N-T-1] and [T, N-1], m = N - T each; the middle ones have none);
                   d = m pairs start i with start i + T: the windows touch, never overlap.
      T <= F < 2T: overlap is unavoidable; d in [1, N - 1] gives a different start
                   (the same start when F = T).
    Deterministic for given stateless seeds (2,) int64; None draws fresh randomness.

    Returns:
      (start_1, start_2), int64 scalars in [0, F - T].
    """
    num_frames = tf.cast(num_frames, tf.int64)
    num_starts = num_frames - window + 1  # N >= 1
    apart = num_starts >= window + 1  # F >= 2T: the windows can be disjoint
    room = num_starts - window  # m: usable starts on each side when N < 2T
    # usable starts, listed as indices 0..num_usable-1; index i >= m maps to start i + gap
    num_usable = tf.where(apart, tf.minimum(num_starts, 2 * room), num_starts)
    gap = tf.where(apart, tf.maximum(2 * window - num_starts, 0), 0)
    min_shift = tf.where(apart, tf.minimum(tf.constant(window, tf.int64), room), 1)
    max_shift = tf.where(apart, room, num_starts - 1)
    index_1 = _uniform_int(seed_1, num_usable)
    shift = min_shift + _uniform_int(seed_2, tf.maximum(max_shift - min_shift + 1, 1))
    index_2 = (index_1 + shift) % num_usable

    def start(index):
        return tf.where(apart & (index >= room), index + gap, index)

    return start(index_1), start(index_2)


def disjoint_recording_starts(segment_frames: tf.Tensor, num_frames: tf.Tensor, window: int,
                              seed, start_1: tf.Tensor,
                              start_2: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Window starts that share no recording, for a track joined from several (`segment_frames`
    (K,) int64, the frames of each, `records.Track.segment_frames`).

    Among all ordered pairs of window starts (s1, s2) whose windows cover disjoint sets of
    recordings, one is drawn uniformly (stateless `seed` (2,), or fresh randomness for None).
    Tracks of one recording (K <= 1), and joined tracks where no such pair exists (e.g. two
    recordings and windows longer than either: both must straddle the join), keep `(start_1,
    start_2)` (`window_starts`: non-overlapping where the length allows). O(N^2) in the
    N = F - T + 1 starts, computed only for joined tracks (76^2 pairs for 3 s at T = 25).

    Returns:
      (start_1, start_2), int64 scalars in [0, F - T].
    """
    segments = tf.cast(segment_frames, tf.int64)

    def pick():
        n = tf.cast(num_frames, tf.int64) - window + 1
        starts = tf.range(n, dtype=tf.int64)
        ends = tf.cumsum(segments)  # exclusive end frame of each recording
        first = tf.searchsorted(ends, starts, side="right", out_type=tf.int64)
        last = tf.searchsorted(ends, starts + window - 1, side="right", out_type=tf.int64)
        disjoint = (last[:, None] < first[None, :]) | (last[None, :] < first[:, None])
        flat = tf.cast(tf.reshape(disjoint, [-1]), tf.int64)
        count = tf.reduce_sum(flat)

        def choose():
            k = _uniform_int(seed, count)
            index = tf.argmax(tf.cast(tf.cumsum(flat) > k, tf.int64), output_type=tf.int64)
            return index // n, index % n

        return tf.cond(count > 0, choose, lambda: (start_1, start_2))

    return tf.cond(tf.size(segments) > 1, pick, lambda: (start_1, start_2))


def fixed_windows(frames: np.ndarray, audio: np.ndarray,
                  window: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The deterministic evaluation windows of one track: non-overlapping, from frame 0.

    Args:
      frames: (F, S, S, 3) uint8; audio: (F * 640,) of the same track.
    Yields:
      (start, frames (T, S, S, 3), audio (T * 640,)) for start = 0, T, 2T, ... <= F - T.
    """
    for start in range(0, frames.shape[0] - window + 1, window):
        frame_slice, audio_slice = window_slices(start, window)
        yield start, frames[frame_slice], audio[audio_slice]


def _decode_window(jpegs: tf.Tensor, start: tf.Tensor, window: int, size: int,
                   allow_upsampling: bool = False) -> tf.Tensor:
    """Decodes only the window's JPEGs: (F,) string -> (window, size, size, 3) uint8; stored
    crops smaller than `size` fail (InvalidArgumentError) unless `allow_upsampling`."""
    frames = records.decode_frames(jpegs[window_slices(start, window)[0]])
    if not allow_upsampling:
        stored = tf.shape(frames)[1:3]
        with tf.control_dependencies([tf.debugging.assert_greater_equal(
                tf.reduce_min(stored), size, message=(
                    f"stored face crops are smaller than face_size {size}: upsampling refused "
                    "(prepare the data at the model's face size, or allow_upsampling)"))]):
            frames = tf.identity(frames)
    if frames.shape[1] != size or frames.shape[2] != size:
        frames = tf.cast(tf.image.resize(frames, [size, size], method="area",
                                         antialias=True) + 0.5, tf.uint8)
    return tf.ensure_shape(frames, [window, size, size, 3])


def make_example_fn(config: InputConfig):
    """Returns fn(index, serialized) -> dict of one track's two windows (see module doc)."""
    window = config.window_frames
    samples = window * SAMPLES_PER_FRAME

    def fn(index, serialized):
        ex = records.parse_example(serialized)
        seed_1 = seed_2 = None
        if config.seed is not None:
            seed_1 = tf.stack([tf.constant(config.seed, tf.int64), 2 * index])
            seed_2 = tf.stack([tf.constant(config.seed, tf.int64), 2 * index + 1])
        start_1, start_2 = window_starts(ex["num_frames"], window, seed_1, seed_2)
        seed_3 = None if config.seed is None else tf.stack(
            [tf.constant(config.seed, tf.int64), -1 - index])  # seeds 1, 2 use >= 0
        start_1, start_2 = disjoint_recording_starts(ex["segment_frames"], ex["num_frames"],
                                                     window, seed_3, start_1, start_2)
        audio = records.decode_audio(ex["audio"])
        audio_1 = tf.ensure_shape(audio[window_slices(start_1, window)[1]], [samples])
        audio_2 = tf.ensure_shape(audio[window_slices(start_2, window)[1]], [samples])
        out = {FRAMES: _decode_window(ex["frames"], start_1, window, config.face_size,
                                      config.allow_upsampling),
               AUDIO: audio_1, AUDIO_2: audio_2}
        if config.include_ids:
            out[TRACK_ID] = ex["track_id"]
            out[VIDEO_ID] = ex["video_id"]
        return out

    return fn


def _with_video_key(window: int, all_chunks: bool = True):
    """(serialized, draw) -> (serialized, key, keep): key = int64 hash of the video id (the
    track id when the video id is empty), so equal videos have equal keys; keep = long enough
    for a window and, unless `all_chunks`, the chunk drawn for this pass: `draw` (an int64 from
    a random stream re-drawn every pass) below 1 / num_chunks."""
    def fn(serialized, draw):
        meta = tf.io.parse_single_example(serialized, META_SPEC)
        video = tf.where(meta["video_id"] != "", meta["video_id"], meta["track_id"])
        key = tf.strings.to_hash_bucket_fast(video, 2 ** 62)  # >= 0; -1 marks a free slot
        keep = meta["num_frames"] >= window
        if not all_chunks:
            uniform = tf.cast(draw % (2 ** 30), tf.float64) / 2 ** 30  # [0, 1)
            keep &= uniform * tf.cast(tf.maximum(meta["num_chunks"], 1), tf.float64) < 1.0
        return serialized, key, keep
    return fn


def deal_into_batches(items: tf.Tensor, keys: tf.Tensor, batch: int,
                      num_batches: int) -> tf.Tensor:
    """Deals items into `num_batches` batches so that no batch holds a key twice.

    Items whose key occurs more than once among `items` are placed first (most frequent key
    first, else in order), each into the first batch that has room and does not hold its key;
    then the items of unique keys fill the remaining places. So every batch is filled
    whenever no key occurs more than `num_batches` times. Only full batches are returned:
    an item that fits nowhere, and the items of a batch it leaves incomplete, are dropped.

    Args:
      items: (n,) any dtype, n <= batch * num_batches.
      keys: (n,) int64 >= 0.
    Returns:
      (num_full, batch) items.
    """
    n = tf.shape(items)[0]
    copies = tf.reduce_sum(tf.cast(tf.equal(keys[:, None], keys[None, :]), tf.int32), axis=1)
    order = tf.argsort(-copies, stable=True)
    counts = tf.zeros([num_batches], tf.int32)
    held = tf.fill([num_batches, batch], tf.constant(-1, tf.int64))
    slots = tf.zeros([num_batches, batch], tf.int32)

    def body(j, counts, held, slots):
        i = order[j]
        key = keys[i]
        fits = (counts < batch) & ~tf.reduce_any(tf.equal(held, key), axis=1)
        place = tf.reduce_any(fits)
        b = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
        where = tf.reshape(tf.stack([b, tf.minimum(counts[b], batch - 1)]), [1, 2])
        held = tf.where(place, tf.tensor_scatter_nd_update(held, where, [key]), held)
        slots = tf.where(place, tf.tensor_scatter_nd_update(slots, where, [i]), slots)
        counts += tf.where(place, tf.one_hot(b, num_batches, dtype=tf.int32), 0)
        return j + 1, counts, held, slots

    _, counts, _, slots = tf.while_loop(lambda j, *_: j < n, body, [0, counts, held, slots])
    return tf.gather(items, tf.boolean_mask(slots, counts == batch))


def record_batches(config: InputConfig) -> tf.data.Dataset:
    """One pass of batch assembly: elements are (B,) serialized records, B = batch_tracks.

    Shards (order shuffled each pass) are read round-robin, `interleave_shards` at a time;
    tracks shorter than the window are skipped, and so are the chunks not drawn for this pass
    (`InputConfig.all_chunks_per_pass`); records are shuffled in a
    `shuffle_buffer`; batches are made here, before any repeat, so no batch holds a track
    twice. With `distinct_videos`, each group of k * B shuffled records
    (k = video_group_batches) is dealt into k batches with no video twice in a batch
    (`deal_into_batches`). Dropped per pass: the last incomplete batch, as with
    drop_remainder, plus, in a group where one video has more than k tracks, its extra tracks
    and the batch they leave incomplete. On a well-mixed stream that does not happen
    (VoxCeleb2: ~7.5 tracks per video in 1.09 M, about 0.003 same-video pairs in a uniformly
    random batch of 30; benchmarks/negatives.py measures what a pass uses), and the shuffle
    differs every pass, so no track is left out for good. Deterministic for a given seed.
    """
    files = list_shards(config.file_pattern)
    cycle = min(len(files), config.interleave_shards)
    log.info("input: %d shard(s) from %s, %d read at a time", len(files), config.file_pattern,
             cycle)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if config.repeat or config.seed is not None:
        ds = ds.shuffle(len(files), seed=config.seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=cycle,
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # One draw per record, different in every pass (the chunk sampling of InputConfig).
    draws = tf.data.Dataset.random(seed=config.seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip(ds, draws)
    ds = ds.map(_with_video_key(config.window_frames, config.all_chunks_per_pass),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.filter(lambda serialized, key, keep: keep)
    ds = ds.map(lambda serialized, key, keep: (serialized, key))
    ds = ds.shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
    batch = config.batch_tracks
    if not config.distinct_videos:
        return ds.map(lambda serialized, key: serialized).batch(batch, drop_remainder=True)
    k = config.video_group_batches
    ds = ds.batch(k * batch)
    ds = ds.map(lambda serialized, key: deal_into_batches(serialized, key, batch, k))
    return ds.unbatch()  # (num_full, B) -> B-record batches


def make_dataset(config: InputConfig) -> tf.data.Dataset:
    """The training input: batches of distinct tracks of distinct videos -> windows.

    Batches of serialized records come from `record_batches` (one pass, repeated when
    `repeat`); the records are then unbatched, windowed in parallel and re-batched in the
    same groups. Every batch is full, so every replica gets a full slice. Sharded by data
    across workers (`shard_by_data`).
    """
    ds = record_batches(config)
    if config.repeat:
        ds = ds.repeat()
    ds = ds.unbatch().enumerate()
    ds = ds.map(make_example_fn(config), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    ds = ds.batch(config.batch_tracks, drop_remainder=True)
    return shard_by_data(ds.prefetch(tf.data.AUTOTUNE))


def shard_by_data(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Under MultiWorkerMirroredStrategy every worker builds the same seeded pipeline and keeps
    its 1/N of the batches (AutoShardPolicy.DATA; the default FILE policy would give workers
    disjoint shards and a different batch assembly). No effect on one machine: tf.distribute
    auto-shards across workers only."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


if __name__ == "__main__":
    # `python -m pipelines.input --stats GLOB`: the statistics command (this file runs as
    # `__main__` then, a module apart from `pipelines.input`, which input_stats imports).
    from pipelines.input_stats import main

    sys.exit(main())
