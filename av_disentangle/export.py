"""SavedModel export of the serving functions only (no training graph, no Python state).

Signatures (all TF ops, so `tensorflow_model_server` and `saved_model_cli run` can use them):
- `serving_default` / `embed_audio`: waveform (B, S) float32 16 kHz mono, sample_rate () int32
   -> embedding (B, D) float32, L2-normalised speaker embedding (time-mean of the audio
   identity head's steps, `losses.time_pool`; of its raw steps for a model converted from the
   reference, as its evaluation). S >= MIN_SAMPLES; sample_rate must be 16000.
- `embed_face`: frames (B, T, H, W, 3) uint8, T >= 5 -> embedding (B, D) face identity.
- `content`: waveform, sample_rate -> content (B, T', D) audio content sequence.
- `face_content`: frames -> content (B, T', D) face content sequence; a clip of T frames and
   T * 640 samples gives the same T' in both. Content sequences are L2-normalised per step.
Every signature checks its input in the graph (also behind TF Serving, which does not check
shapes) and fails with InvalidArgumentError and a message naming the problem: wrong rank
(expected (batch, samples) / (batch, time, H, W, 3)), sample_rate != 16000, too short, or NaN/Inf
samples in the waveform (with the offending batch rows). Frames are uint8, always finite.
Layout: `<export_root>/<name>/<version>/` with an integer version, as TF Serving expects.
The export computes in float32 whatever precision the model was trained in (a bf16-trained
model is served from float32 copies of its float32 weights), so it runs on any CPU or GPU
TF Serving runs on; `compute_dtype=None` keeps the streams' own mixed policy (benchmarks).
"""

from __future__ import annotations

import json
import logging
import os

import keras
import tensorflow as tf

from av_disentangle import losses
from av_disentangle.config import ModelConfig, to_dict
from av_disentangle.constants import SAMPLE_RATE
from av_disentangle.errors import DiskFullError, is_disk_full
from av_disentangle.streams import CONTENT, IDENTITY, build_audio_stream, build_face_stream

log = logging.getLogger(__name__)

MIN_SAMPLES = 8000  # 0.5 s: at least 12 video frames -> 4 time steps
MIN_FRAMES = 5
SIGNATURES = ("serving_default", "embed_audio", "embed_face", "content", "face_content")


def _runtime_shape(x: tf.Tensor, rank: int) -> tf.Tensor:
    """The shape of `x` padded with rank + 1 entries of -1, read so that grappler cannot fold
    it from the signature's declared shape (see `_checked_rank`): a check on a declared size
    (e.g. the face size of `embed_face`) must see the size actually fed."""
    return tf.concat([tf.shape(x), tf.fill([rank + 1], -1)], axis=0)


def _checked_rank(x: tf.Tensor, rank: int, message: str) -> tuple[tf.Operation, tf.Tensor]:
    """The rank check, and `x` after it (later checks must read the returned tensor, so that
    they run only once the rank is known to be right).

    TF Serving's C++ Session::Run does not check a fed tensor against the signature's declared
    shape, so a 1-D waveform reached `tf.shape(waveform)[1]` and failed as "slice index 1 of
    dimension 0 out of bounds". A check on `tf.rank(x)` cannot catch it: the declared rank makes
    it a constant, folded to "true" by grappler (even behind PlaceholderWithDefault, inside a
    function). So the check reads values: the shape padded with rank + 1 entries of -1 (so
    that index `rank` exists for any input rank), whose entry `rank - 1` is a size (>= 0) and
    entry `rank` is -1 exactly when the true rank is `rank`.
    """
    padded = _runtime_shape(x, rank)
    rank_is_right = tf.logical_and(padded[rank - 1] >= 0, tf.equal(padded[rank], -1))
    rank_ok = tf.debugging.Assert(rank_is_right, [message, "got shape", tf.shape(x)])
    with tf.control_dependencies([rank_ok]):
        return rank_ok, tf.identity(x)


def _check_waveform(waveform: tf.Tensor, sample_rate: tf.Tensor) -> list:
    """In-graph checks with messages a client can act on.

    Args:
      waveform: (B, S) float32; sample_rate: () int32.

    Returns:
      Ops to run before the model. The rank check runs first (the others index dimension 1).
      The finiteness check is one elementwise pass over the input (see BENCHMARKS.md).
    """
    rank_ok, waveform = _checked_rank(
        waveform, 2, "waveform must be float32 (batch, samples): 16 kHz mono, one row per clip "
                     "(a single clip is shape (1, samples))")
    finite_rows = tf.reduce_all(tf.math.is_finite(waveform), axis=1)  # (B,)
    with tf.control_dependencies([rank_ok]):
        batch = _runtime_shape(waveform, 2)[0]
    return [
        rank_ok,
        tf.debugging.Assert(batch > 0, ["empty batch: send at least one waveform row"]),
        tf.debugging.assert_equal(
            sample_rate, SAMPLE_RATE,
            message=f"sample_rate must be {SAMPLE_RATE} Hz: resample the audio to 16 kHz mono "
                    "before calling this model"),
        tf.debugging.assert_greater_equal(
            tf.shape(waveform)[1], MIN_SAMPLES,
            message=f"waveform is too short: at least {MIN_SAMPLES} samples "
                    f"({MIN_SAMPLES / SAMPLE_RATE:.1f} s at 16 kHz) are needed"),
        tf.debugging.Assert(
            tf.reduce_all(finite_rows),
            ["waveform has NaN or Inf samples (the model would return a meaningless "
             "embedding); check the decoder or resampler. Batch rows with NaN/Inf:",
             tf.reshape(tf.where(tf.logical_not(finite_rows)), [-1])]),
    ]


def _check_frames(frames: tf.Tensor, size: int) -> list:
    """Frames are uint8, so always finite: the rank, a non-empty batch, the face size the
    model was built for (other sizes crashed the server: 32 px with SIGFPE, 40-48 px with a
    oneDNN AbortedError; 112 px and up gave embeddings of the wrong scale) and the length are
    checked."""
    rank_ok, frames = _checked_rank(frames, 5, "frames must be uint8 (batch, time, height, "
                                               "width, 3) RGB face crops at 25 fps (a single "
                                               "clip is shape (1, time, height, width, 3))")
    with tf.control_dependencies([rank_ok]):
        shape = _runtime_shape(frames, 5)
    return [
        rank_ok,
        tf.debugging.Assert(shape[0] > 0, ["empty batch: send at least one clip"]),
        tf.debugging.Assert(
            tf.logical_and(tf.equal(shape[2], size), tf.equal(shape[3], size)),
            [f"frames must be {size}x{size} face crops (this model's face size; resize the "
             "crops, or export a model of that size): got height x width", shape[2],
             shape[3]]),
        tf.debugging.Assert(
            shape[1] >= MIN_FRAMES,
            [f"too few frames: at least {MIN_FRAMES} face frames (25 fps) are needed, got",
             shape[1]])]


def build_export_archive(face_stream: keras.Model, audio_stream: keras.Model,
                         config: ModelConfig) -> keras.export.ExportArchive:
    """ExportArchive with the signatures of the module docstring."""
    archive = keras.export.ExportArchive()
    archive.track(face_stream)
    archive.track(audio_stream)
    size = config.face_size
    wave_spec = [tf.TensorSpec([None, None], tf.float32, name="waveform"),
                 tf.TensorSpec([], tf.int32, name="sample_rate")]
    frames_spec = [tf.TensorSpec([None, None, size, size, 3], tf.uint8, name="frames")]

    def unit_steps(sequence):  # the contract: content sequences are L2-normalised per step
        if config.normalize_steps:
            return sequence
        return tf.math.l2_normalize(sequence, axis=-1, epsilon=1e-12)

    def embed_audio(waveform, sample_rate):
        with tf.control_dependencies(_check_waveform(waveform, sample_rate)):
            identity = audio_stream(tf.identity(waveform), training=False)[IDENTITY]
        return {"embedding": losses.time_pool(identity)}

    def audio_content(waveform, sample_rate):
        with tf.control_dependencies(_check_waveform(waveform, sample_rate)):
            content = audio_stream(tf.identity(waveform), training=False)[CONTENT]
        return {"content": unit_steps(content)}

    def embed_face(frames):
        with tf.control_dependencies(_check_frames(frames, size)):
            identity = face_stream(tf.identity(frames), training=False)[IDENTITY]
        return {"embedding": losses.time_pool(identity)}

    def face_content(frames):
        with tf.control_dependencies(_check_frames(frames, size)):
            content = face_stream(tf.identity(frames), training=False)[CONTENT]
        return {"content": unit_steps(content)}

    archive.add_endpoint("serving_default", embed_audio, input_signature=wave_spec)
    archive.add_endpoint("embed_audio", embed_audio, input_signature=wave_spec)
    archive.add_endpoint("embed_face", embed_face, input_signature=frames_spec)
    archive.add_endpoint("content", audio_content, input_signature=wave_spec)
    archive.add_endpoint("face_content", face_content, input_signature=frames_spec)
    return archive


def next_version_dir(export_root: str) -> str:
    """`export_root/<max existing integer version + 1>` (TF Serving's layout); local or remote."""
    names = tf.io.gfile.listdir(export_root) if tf.io.gfile.isdir(export_root) else []
    versions = [int(d.rstrip("/")) for d in names if d.rstrip("/").isdigit()]
    return os.path.join(export_root, str(max(versions, default=0) + 1))


def move_folder(tmp_dir: str, export_dir: str) -> None:
    """Moves the finished export in `tmp_dir` to `export_dir`.

    One `tf.io.gfile.rename` of the folder where the file system moves a folder with its files
    (local disks, HDFS; TF's GCS file system renames each object under it). TF's in-memory
    `ram://` file system (tests) renames only the folder's own entry and leaves its files under
    the old name (TF 2.21, measured), so there the files are copied one by one, saved_model.pb
    last (a folder without it is not a SavedModel), and the temp folder removed.
    """
    if not export_dir.startswith("ram://"):
        tf.io.gfile.rename(tmp_dir, export_dir)
        return
    copies = []
    for folder, _, names in tf.io.gfile.walk(tmp_dir):
        target = export_dir + folder[len(tmp_dir):]
        tf.io.gfile.makedirs(target)
        copies += [(os.path.join(folder, n), os.path.join(target, n)) for n in names]
    for source, target in sorted(copies, key=lambda c: c[0].endswith("/saved_model.pb")):
        tf.io.gfile.copy(source, target)
    tf.io.gfile.rmtree(tmp_dir)


def computes_in_float32(stream: keras.Model) -> bool:
    """Whether every layer of `stream` computes in float32 (no mixed-precision policy)."""
    return all(layer.compute_dtype == "float32" for layer in stream._flatten_layers())


def float32_streams(face_stream: keras.Model, audio_stream: keras.Model,
                    config: ModelConfig) -> tuple[keras.Model, keras.Model]:
    """The two streams rebuilt under the float32 policy with the same (float32) weights;
    streams that already compute in float32 are returned as they are."""
    if computes_in_float32(face_stream) and computes_in_float32(audio_stream):
        return face_stream, audio_stream
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        face, audio = build_face_stream(config), build_audio_stream(config)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    face.set_weights(face_stream.get_weights())
    audio.set_weights(audio_stream.get_weights())
    return face, audio


def export_saved_model(face_stream: keras.Model, audio_stream: keras.Model,
                       config: ModelConfig, export_dir: str,
                       extra_json: dict[str, dict] | None = None,
                       compute_dtype: str | None = "float32") -> str:
    """Writes the SavedModel to `export_dir` (a versioned dir, local or remote) plus
    `model_config.json` and any `extra_json` files (name -> JSON object), all inside the
    folder before it gets its final name. `compute_dtype` "float32": served in float32
    (`float32_streams`); None: as the streams compute (their mixed policy)."""
    if compute_dtype not in ("float32", None):
        raise ValueError(f"compute_dtype must be 'float32' or None, got {compute_dtype!r}")
    if compute_dtype == "float32":
        face_stream, audio_stream = float32_streams(face_stream, audio_stream, config)
    if tf.io.gfile.exists(export_dir):
        raise FileExistsError(f"export directory {export_dir} already exists; TF Serving "
                              "versions are immutable, pick a new version")
    tmp_dir = export_dir.rstrip("/") + ".tmp"
    if tf.io.gfile.exists(tmp_dir):
        tf.io.gfile.rmtree(tmp_dir)
    try:
        build_export_archive(face_stream, audio_stream, config).write_out(tmp_dir,
                                                                          verbose=False)
        with tf.io.gfile.GFile(os.path.join(tmp_dir, "model_config.json"), "w") as f:
            json.dump(to_dict(config), f, indent=2)
        for name, value in (extra_json or {}).items():
            with tf.io.gfile.GFile(os.path.join(tmp_dir, name), "w") as f:
                json.dump(value, f, indent=2)
    except Exception as err:
        if not is_disk_full(err):
            raise
        if tf.io.gfile.exists(tmp_dir):  # the half-written export would only take space
            tf.io.gfile.rmtree(tmp_dir)
        raise DiskFullError(export_dir) from err
    move_folder(tmp_dir, export_dir)  # a half-written export never looks complete
    log.info("exported SavedModel to %s (signatures: %s)", export_dir, ", ".join(SIGNATURES))
    return export_dir
