"""The TFRecord schema shared by every producer (`prepare`, `synthetic`, `voices`) and consumer
(`input`, `labelled`, `shard_check`, evaluation).

One `tf.train.Example` per face track (or per chunk of one, see "Chunks" below):

| key                | type            | meaning                                                        |
|--------------------|-----------------|----------------------------------------------------------------|
| `frames`           | bytes list      | one JPEG per video frame, RGB, all `height` x `width`          |
| `audio`            | bytes           | int16 little-endian PCM, mono, `sample_rate` Hz                |
| `num_frames`       | int64           | number of video frames F                                       |
| `num_samples`      | int64           | number of audio samples, always F * SAMPLES_PER_FRAME          |
| `fps`              | float           | always 25.0 (prepare resamples by timestamp)                   |
| `sample_rate`      | int64           | always 16000                                                   |
| `height`, `width`  | int64           | face crop size                                                 |
| `av_offset_frames` | int64           | audio-video offset that was APPLIED during preparation         |
| `track_id`         | bytes           | unique track id, e.g. `id00017/01dfn2spqyE/00001`              |
| `video_id`         | bytes           | the video the track came from                                  |
| `identity`         | bytes           | identity label if known (unused by self-supervised training; read by supervised training and evaluation) |
| `source_path`      | bytes           | the file it was decoded from                                   |
| `chunk_index`      | int64, optional | which chunk of its track this record is (0 when absent)        |
| `num_chunks`       | int64, optional | chunks of its track (1 when absent: the record is whole)       |
| `chunk_start_frame`| int64, optional | the chunk's first frame in its track (0 when absent)           |
| `segment_frames`   | int64 list, optional | frames of each recording joined in the track (absent: one) |

Chunks (`pipelines.prepare --chunk_seconds`, data format version 2): a long track is stored as
`num_chunks` records of consecutive frames, each carrying its own frames and the audio of
exactly those frames (so the alignment contract below holds per chunk), all with the track's
`track_id`, `video_id`, `identity` and `source_path`. A training example reads one record, so
it reads one chunk, not the whole track (`split_track`). The chunk fields are written only when
a track has more than one chunk, so whole-track records are byte-identical to version 1.
`read_tracks` joins the chunks of a track back into the whole track (evaluation).

Alignment contract: audio is stored already synchronised with the frames. Audio sample
`i * SAMPLES_PER_FRAME` is the start of video frame `i` (640 samples = 40 ms = one frame at
25 fps = 4 log-mel frames at a 10 ms hop), with frame `i` taken at its presentation time.

Offset convention (SyncNet's, which produced VoxCeleb2's txt `Offset`): an offset of `k`
frames means the sound of video frame `i` is at audio frame `i - k` of the source file
(joonson/syncnet_python SyncNetInstance.py: `calc_pdist` pairs video feature i with audio
feature i + j - vshift, and `offset = opt.vshift - minidx`, so the best audio is i - offset).
Positive `k` = the audio leads the video. Preparation delays the audio by `k` frames
(`pipelines.media.shift_audio`) so the contract above holds, and records `k` here.

The reference trainer's extra frame, and why we do not copy it: joonson/syncnet_trainer
DatasetLoader.py reads video from `startidx + offset - 1` for audio from `startidx`, i.e. the
same sign with the video window starting one frame earlier. That frame is not a property of the data. By
receptive-field arithmetic, the reference model's audio step j is centred j + 2.25 video
frames after its audio window start (torchaudio's centred STFT frames with the first frame dropped,
models/SyncNetModelFBank.py `x[:,:,1:-1]`) and its face step j on frame j + 2 of the video
window, so with its `- 1` the audio step it pairs with a face step is centred 1.25 frames
after that face's sound, against 0.25 frames without it; and its frames are read by OpenCV frame seeking (dataLoader.py `cap.set(1, start_frame)`), whose
landing frame has differed between OpenCV/FFmpeg versions. We therefore store the audio
physically aligned (the SyncNet sign, no extra frame) and build streams whose audio and face
step j are centred on the same instant (`av_disentangle/streams.py`). A constant one-frame
lag would be absorbed by the content task (it learns any fixed lag within its 5-frame
receptive field), but it would bias every sync offset reported by evaluation by one frame.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from av_disentangle.constants import SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS


@dataclasses.dataclass(frozen=True)
class Track:
    """One face track in memory, the unit written as one Example.

    Attributes:
      frames: (F, H, W, 3) uint8 RGB face crops at 25 fps.
      audio: (F * 640,) int16 mono PCM at 16 kHz, synchronised with `frames`.
      track_id, video_id, identity, source_path: metadata strings.
      av_offset_frames: the offset that was applied to `audio`.
      chunk_index, num_chunks, chunk_start_frame: this is chunk `chunk_index` of
        `num_chunks` of its track, starting at the track's frame `chunk_start_frame`
        (0, 1, 0: a whole track).
      segment_frames: for a track joined from several recordings (a Speech Commands
        speaker's clips, `pipelines.voices`), the frame count of each, in order (summing to
        F); () for one recording. The input pipeline then takes the identity term's two
        windows from different recordings where the track allows.
    """

    frames: np.ndarray
    audio: np.ndarray
    track_id: str
    video_id: str = ""
    identity: str = ""
    source_path: str = ""
    av_offset_frames: int = 0
    chunk_index: int = 0
    num_chunks: int = 1
    chunk_start_frame: int = 0
    segment_frames: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(f"track {self.track_id}: frames must be (F, H, W, 3) uint8, got "
                             f"{self.frames.shape} {self.frames.dtype}")
        if self.audio.dtype != np.int16 or self.audio.ndim != 1:
            raise ValueError(f"track {self.track_id}: audio must be (S,) int16, got "
                             f"{self.audio.shape} {self.audio.dtype}")
        if self.audio.shape[0] != self.frames.shape[0] * SAMPLES_PER_FRAME:
            raise ValueError(f"track {self.track_id}: audio has {self.audio.shape[0]} samples, "
                             f"expected {self.frames.shape[0]} frames x {SAMPLES_PER_FRAME}")
        if self.segment_frames and (sum(self.segment_frames) != self.frames.shape[0]
                                    or min(self.segment_frames) < 1):
            raise ValueError(f"track {self.track_id}: segment_frames {self.segment_frames} must "
                             f"be positive and sum to its {self.frames.shape[0]} frames")
        if self.segment_frames and self.num_chunks > 1:
            raise ValueError(f"track {self.track_id}: a chunk cannot carry segment_frames")


def _bytes(values: list[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def encode_track(track: Track, jpeg_quality: int = 90) -> bytes:
    """Serialises a Track to a `tf.train.Example` string (JPEG via OpenCV)."""
    import cv2  # local: only producers need OpenCV

    jpegs = []
    for frame in track.frames:
        ok, buf = cv2.imencode(".jpg", frame[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise ValueError(f"track {track.track_id}: JPEG encoding failed")
        jpegs.append(buf.tobytes())
    num_frames, height, width, _ = track.frames.shape
    feature = {
        "frames": _bytes(jpegs),
        "audio": _bytes([track.audio.astype("<i2").tobytes()]),
        "num_frames": _int(num_frames),
        "num_samples": _int(track.audio.shape[0]),
        "fps": tf.train.Feature(float_list=tf.train.FloatList(value=[VIDEO_FPS])),
        "sample_rate": _int(SAMPLE_RATE),
        "height": _int(height),
        "width": _int(width),
        "av_offset_frames": _int(track.av_offset_frames),
        "track_id": _bytes([track.track_id.encode()]),
        "video_id": _bytes([track.video_id.encode()]),
        "identity": _bytes([track.identity.encode()]),
        "source_path": _bytes([track.source_path.encode()]),
    }
    if track.num_chunks > 1:  # whole tracks stay byte-identical to format version 1
        feature["chunk_index"] = _int(track.chunk_index)
        feature["num_chunks"] = _int(track.num_chunks)
        feature["chunk_start_frame"] = _int(track.chunk_start_frame)
    if len(track.segment_frames) > 1:  # tracks of one recording stay byte-identical
        feature["segment_frames"] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=[int(n) for n in track.segment_frames]))
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)  # byte-reproducible shards


FEATURE_SPEC = {
    "frames": tf.io.VarLenFeature(tf.string),
    "audio": tf.io.FixedLenFeature([], tf.string),
    "num_frames": tf.io.FixedLenFeature([], tf.int64),
    "num_samples": tf.io.FixedLenFeature([], tf.int64),
    "fps": tf.io.FixedLenFeature([], tf.float32),
    "sample_rate": tf.io.FixedLenFeature([], tf.int64),
    "height": tf.io.FixedLenFeature([], tf.int64),
    "width": tf.io.FixedLenFeature([], tf.int64),
    "av_offset_frames": tf.io.FixedLenFeature([], tf.int64),
    "track_id": tf.io.FixedLenFeature([], tf.string),
    "video_id": tf.io.FixedLenFeature([], tf.string),
    "identity": tf.io.FixedLenFeature([], tf.string),
    "source_path": tf.io.FixedLenFeature([], tf.string),
    "chunk_index": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "num_chunks": tf.io.FixedLenFeature([], tf.int64, default_value=1),
    "chunk_start_frame": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "segment_frames": tf.io.VarLenFeature(tf.int64),
}


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialized Example. Frames stay JPEG-encoded: `frames` is (F,) tf.string."""
    parsed = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    parsed["frames"] = tf.sparse.to_dense(parsed["frames"], default_value=b"")
    parsed["segment_frames"] = tf.sparse.to_dense(parsed["segment_frames"])  # (K,), K may be 0
    return parsed


def decode_audio(audio_bytes: tf.Tensor) -> tf.Tensor:
    """int16 PCM bytes -> (S,) float32 in [-1, 1)."""
    return tf.cast(tf.io.decode_raw(audio_bytes, tf.int16, little_endian=True), tf.float32) / 32768.0


def decode_frames(jpegs: tf.Tensor) -> tf.Tensor:
    """(F,) JPEG strings -> (F, H, W, 3) uint8."""
    return tf.map_fn(lambda j: tf.io.decode_jpeg(j, channels=3), jpegs,
                     fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def window_slices(start, window: int) -> tuple[slice, slice]:
    """(frame slice, audio-sample slice) of the `window` video frames from frame `start`:
    frames [start, start + T) and audio samples [start * 640, (start + T) * 640), the same
    40 ms per frame (the alignment contract above). `start` may be an int or a
    scalar tensor; the slices index numpy arrays and tensors alike."""
    return (slice(start, start + window),
            slice(start * SAMPLES_PER_FRAME, (start + window) * SAMPLES_PER_FRAME))


def chunk_bounds(num_frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    """Frame ranges [start, stop) of the chunks a track of `num_frames` frames is stored as.

    n = num_frames // chunk_frames chunks of (nearly) equal length, so every chunk has at
    least `chunk_frames` frames and fewer than 2 * chunk_frames (the short tail is spread over
    the chunks instead of being a short last chunk). A track shorter than 2 * chunk_frames,
    or `chunk_frames` <= 0, is one chunk: the whole track.
    """
    if chunk_frames <= 0 or num_frames < 2 * chunk_frames:
        return [(0, num_frames)]
    n = num_frames // chunk_frames
    return [(i * num_frames // n, (i + 1) * num_frames // n) for i in range(n)]


def split_track(track: Track, chunk_frames: int) -> list[Track]:
    """The chunks of `track` (`chunk_bounds`): each with its frames and exactly their audio
    (frame i's audio is samples [i * 640, (i + 1) * 640)), and the track's metadata."""
    bounds = chunk_bounds(track.frames.shape[0], chunk_frames)
    if len(bounds) == 1:
        return [track]
    chunks = []
    for i, (start, stop) in enumerate(bounds):
        frame_slice, audio_slice = window_slices(start, stop - start)
        chunks.append(dataclasses.replace(
            track, frames=track.frames[frame_slice], audio=track.audio[audio_slice],
            chunk_index=i, num_chunks=len(bounds), chunk_start_frame=start, segment_frames=()))
    return chunks


def join_chunks(items: list[dict[str, np.ndarray]],
                path: str = "") -> list[dict[str, np.ndarray]]:
    """Joins decoded chunk records (`read_tracks(..., join=False)`) into whole tracks.

    Records of one `track_id` are ordered by `chunk_index` and must be all `num_chunks` of
    them, each starting where the previous ended; ValueError naming `path` and the track
    otherwise. Whole-track records pass through. Tracks keep the order of their first record.
    """
    groups: dict[bytes, list[dict[str, np.ndarray]]] = {}
    for item in items:
        groups.setdefault(bytes(item["track_id"]), []).append(item)
    out = []
    for track_id, chunks in groups.items():
        chunks = sorted(chunks, key=lambda c: int(c["chunk_index"]))
        expected = int(chunks[0]["num_chunks"])
        starts = [int(c["chunk_start_frame"]) for c in chunks]
        ends = list(np.cumsum([int(c["num_frames"]) for c in chunks]))
        if ([int(c["chunk_index"]) for c in chunks] != list(range(expected))
                or starts != [0] + ends[:-1]):
            raise ValueError(f"{path}: track {track_id.decode()} has chunks "
                             f"{[int(c['chunk_index']) for c in chunks]} starting at frames "
                             f"{starts}, expected {expected} consecutive chunks")
        if expected == 1:
            out.append(chunks[0])
            continue
        whole = dict(chunks[0])
        whole["frames"] = np.concatenate([c["frames"] for c in chunks])
        whole["audio"] = np.concatenate([c["audio"] for c in chunks])
        whole["num_frames"] = np.int64(whole["frames"].shape[0])
        whole["num_samples"] = np.int64(whole["audio"].shape[0])
        whole["chunk_index"], whole["num_chunks"], whole["chunk_start_frame"] = (
            np.int64(0), np.int64(1), np.int64(0))
        out.append(whole)
    return out


def read_tracks(path: str, join: bool = True) -> list[dict[str, np.ndarray]]:
    """Reads every Example of one TFRecord file eagerly into numpy (tests and tools).

    Returns dicts with `frames` (F, H, W, 3) uint8, `audio` (S,) float32 and the metadata.
    With `join` (the default) the chunks of a track are joined into the whole track
    (`join_chunks`; `pipelines.prepare` writes all chunks of a track into one shard), so
    evaluation sees whole tracks; `join=False` returns the records as stored.
    """
    out = []
    for raw in tf.data.TFRecordDataset(path):
        ex = parse_example(raw)
        item = {k: v.numpy() for k, v in ex.items() if k not in ("frames", "audio")}
        item["frames"] = decode_frames(ex["frames"]).numpy()
        item["audio"] = decode_audio(ex["audio"]).numpy()
        out.append(item)
    return join_chunks(out, path) if join else out
