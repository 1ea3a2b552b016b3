"""Supervised speaker training of the audio stream: a classifier head on the identity embedding.

The model (`SpeakerClassifier`) is the audio stream of `streams.build_audio_stream`, its
identity head's output time-averaged and L2-normalised (the exported `embed_audio`
embedding, `losses.time_pool`) and fed to a classification head (`heads.py`: AAM softmax or
plain softmax). It also carries a face stream, never trained, only so that the export has the
same five signatures as a self-supervised run (`export.export_saved_model`): with
`init_from` it is the pretrained run's face stream, otherwise random.

`init_from` (`load_pretrained_streams`) copies the streams of a self-supervised run: a run
directory (its latest `checkpoints/epoch-NNN.weights.h5`), one such weights file, or an
exported SavedModel directory. The run's model config must equal this run's (a mismatch is a
`UsageError` naming the differing fields).

`freeze_trunk` (`freeze_stream_parts`) makes the audio TRUNK non-trainable: every layer shared
by the content and identity outputs (log-mel, conv1-5, fc6 and their BatchNorms, which then
also keep their pretrained statistics). The identity head (fc7, BN, fc8) and the classifier
are trained. The audio CONTENT head is always frozen (no supervised loss reaches it; frozen,
its BatchNorm statistics stay those of the init run). The split is found from the stream's
graph (ancestors of each output), not from layer names.

Settings and their flags: `supervised_config.py` (no TensorFlow import). A supervised run's
config.json must hold its SupervisedConfig under the key `supervised` (and a self-supervised
run's must not): `init_from` refuses supervised run directories by that key.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from typing import Any

import keras
import tensorflow as tf

from av_disentangle import losses
from av_disentangle.config import LossConfig, ModelConfig, from_dict, to_dict
from av_disentangle.heads import make_head
from av_disentangle.model import TrackedModel
from av_disentangle.streams import CONTENT, IDENTITY, build_audio_stream, build_face_stream
from av_disentangle.supervised_config import SupervisedConfig  # noqa: F401 (re-exported)
from av_disentangle.training import UsageError

log = logging.getLogger(__name__)

# Keys of a labelled batch (pipelines/labelled.py).
AUDIO = "audio"  # (B, S) float32
LABEL = "label"  # (B,) int32

METRIC_NAMES = ("loss", "accuracy")


# === The model ===
class SpeakerClassifier(TrackedModel):
    """Audio stream + pooled identity embedding + classifier head, trained with cross-entropy.

    Input batches are dicts (pipelines/labelled.py): `audio` (B, S) float32 and `label` (B,)
    int32. `call(waveform)` returns the (B, D) L2-normalised embedding.

    Args:
      model_config: stream sizes.
      num_classes: K speakers.
      head: `aam` or `softmax`; aam_margin, aam_scale: see SupervisedConfig.
    """

    def __init__(self, model_config: ModelConfig, num_classes: int, head: str = "aam",
                 aam_margin: float = 0.2, aam_scale: float = 30.0, **kwargs):
        super().__init__(**kwargs)
        self.model_config = model_config
        self.num_classes = int(num_classes)
        self.face_stream = build_face_stream(model_config)  # for the export only
        self.face_stream.trainable = False
        self.audio_stream = build_audio_stream(model_config)
        self.classifier = make_head(head, num_classes, margin=aam_margin, scale=aam_scale)
        self._trackers = {name: keras.metrics.Mean(name=name) for name in METRIC_NAMES}
        self.build()

    def build(self, input_shape=None):
        if not self.classifier.built:
            self.classifier.build((None, self.model_config.embedding_dim))
        self.built = True

    def call(self, waveform, training=False):
        """(B, S) float32 -> (B, D) float32 embedding, as the export's `embed_audio`."""
        identity = self.audio_stream(waveform, training=training)[IDENTITY]
        return losses.time_pool(tf.cast(identity, tf.float32))

    def compute_losses(self, batch: dict[str, tf.Tensor], training: bool):
        """-> ({loss, accuracy}, loss). Accuracy is top-1 of the margin-free logits."""
        labels = tf.cast(batch[LABEL], tf.int32)
        embedding = self(batch[AUDIO], training=training)
        logits = self.classifier(embedding, labels)  # (B, K) float32, margin on the target
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        plain = self.classifier(embedding)
        predicted = tf.argmax(plain, axis=-1, output_type=tf.int32)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(predicted, labels), tf.float32))
        return {"loss": loss, "accuracy": accuracy}, loss

    def train_step(self, data):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        variables = self.trainable_variables
        data = keras.utils.unpack_x_y_sample_weight(data)[0]  # train_on_batch(x): (x,)
        with tf.GradientTape() as tape:
            values, loss = self.compute_losses(data, training=True)
            # Keras sums gradients across replicas; scale_loss: mixed_float16 loss scaling.
            scaled = self.optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, variables)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        self.optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])
        return self._update_trackers(values)

    def test_step(self, data):
        values, _ = self.compute_losses(keras.utils.unpack_x_y_sample_weight(data)[0],
                                        training=False)
        return self._update_trackers(values)  # TrackedModel's (multi-worker logs: compat)


# === Trunk / head split ===
def _ancestors(tensor) -> set:
    """Layers of a functional model that `tensor` depends on (including its own layer)."""
    seen: set = set()
    stack = [tensor._keras_history[0]._inbound_nodes[tensor._keras_history[1]]]
    while stack:
        node = stack.pop()
        if node.operation in seen:
            continue
        seen.add(node.operation)
        stack.extend(node.parent_nodes)
    return seen


def stream_parts(stream: keras.Model) -> dict[str, list[keras.layers.Layer]]:
    """Splits a stream into `trunk` (layers both outputs depend on), `content_head` and
    `identity_head` (layers only that output depends on), from the functional graph.
    Input layers are left out. Each list is in the stream's layer order."""
    content = _ancestors(stream.output[CONTENT])
    identity = _ancestors(stream.output[IDENTITY])
    order = [layer for layer in stream.layers if not isinstance(layer, keras.layers.InputLayer)]
    return {"trunk": [x for x in order if x in content and x in identity],
            "content_head": [x for x in order if x in content and x not in identity],
            "identity_head": [x for x in order if x in identity and x not in content]}


def freeze_stream_parts(stream: keras.Model, freeze_trunk: bool) -> list[str]:
    """Makes the content head (always) and the trunk (if `freeze_trunk`) non-trainable.
    Returns the names of the frozen layers that hold weights."""
    parts = stream_parts(stream)
    frozen = parts["content_head"] + (parts["trunk"] if freeze_trunk else [])
    for layer in frozen:
        layer.trainable = False
    return [layer.name for layer in frozen if layer.weights]


# === init_from ===
@dataclasses.dataclass(frozen=True)
class PretrainedSource:
    """Where pretrained streams come from.

    Attributes:
      kind: `weights` (a run's per-epoch .weights.h5) or `saved_model`.
      path: the weights file or SavedModel directory.
      model_config: the run's model config as written by it (a dict).
      loss_config: the run's loss config (dict; `weights` only, to rebuild its model).
      model_size: the run's --model_size flag, if recorded.
    """

    kind: str
    path: str
    model_config: dict[str, Any]
    loss_config: dict[str, Any] | None = None
    model_size: str | None = None


def _read_json(path: str) -> dict[str, Any]:
    try:
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError, tf.errors.OpError) as e:
        raise UsageError(f"--init_from: cannot read {path}: {e}") from e


def _epoch_number(path: str) -> int:
    """`.../epoch-012.weights.h5` -> 12 (numeric order also past epoch 999)."""
    digits = os.path.basename(path)[len("epoch-"):-len(".weights.h5")]
    return int(digits) if digits.isdigit() else -1


def resolve_init_from(init_from: str) -> PretrainedSource:
    """Finds the weights and the model config of `init_from`: a run directory (config.json +
    checkpoints/epoch-NNN.weights.h5, the latest is used), one of its weights files, or a
    SavedModel directory (saved_model.pb + model_config.json, as `export_saved_model` writes).

    Raises:
      UsageError: none of these, or files missing, naming what was expected.
    """
    path = init_from.rstrip("/")
    if tf.io.gfile.isdir(path) and tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        config_path = os.path.join(path, "model_config.json")
        if not tf.io.gfile.exists(config_path):
            raise UsageError(f"--init_from {init_from}: SavedModel without model_config.json "
                             "(not exported by this project's train.py)")
        return PretrainedSource("saved_model", path, _read_json(config_path))
    if path.endswith(".weights.h5") and tf.io.gfile.exists(path):
        weights, run_dir = path, os.path.dirname(os.path.dirname(os.path.abspath(path)))
    elif tf.io.gfile.isdir(path):
        run_dir = path
        found = sorted(glob.glob(os.path.join(path, "checkpoints", "epoch-*.weights.h5")),
                       key=_epoch_number)
        if not found:
            raise UsageError(
                f"--init_from {init_from}: no per-epoch weights "
                f"({os.path.join(path, 'checkpoints', 'epoch-NNN.weights.h5')}) and no "
                "saved_model.pb: give a self-supervised run directory that finished at least "
                "one epoch, one of its weights files, or an exported SavedModel directory")
        weights = found[-1]
    else:
        raise UsageError(f"--init_from {init_from} does not exist (give a run directory, a "
                         "checkpoints/epoch-NNN.weights.h5 file or a SavedModel directory)")
    config_path = os.path.join(run_dir, "config.json")
    if not tf.io.gfile.exists(config_path):
        raise UsageError(f"--init_from {init_from}: {config_path} is missing (the run's "
                         "resolved config, written by train.py)")
    run = _read_json(config_path)
    if "model" not in run:
        raise UsageError(f"--init_from {init_from}: {config_path} has no `model` config")
    if run.get("supervised"):
        raise UsageError(f"--init_from {init_from} is a supervised run; give a self-supervised "
                         "run, or the SavedModel a supervised run exported")
    return PretrainedSource("weights", weights, run["model"], run.get("loss") or {},
                            (run.get("flags") or {}).get("model_size"))


def check_model_config(source: PretrainedSource, model_config: ModelConfig) -> None:
    """UsageError naming every field where the pretrained run's sizes differ from this run's."""
    ours = to_dict(model_config)
    theirs = source.model_config
    diffs = [f"{k}: pretrained {theirs.get(k, '(absent)')} vs this run {ours.get(k, '(absent)')}"
             for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    if diffs:
        size = f" (its --model_size was {source.model_size})" if source.model_size else ""
        raise UsageError(
            f"--init_from {source.path}: the pretrained model has other sizes than this run"
            f"{size}: {'; '.join(diffs)}. Use the same --model_size / size flags as the "
            "pretrained run")


def _copy_weights(target: keras.Model, source: keras.Model) -> None:
    for t, s in zip(target.weights, source.weights, strict=True):
        t.assign(s)


def load_pretrained_streams(model: SpeakerClassifier, init_from: str) -> PretrainedSource:
    """Loads the face and audio streams of a self-supervised run into `model` (the audio
    stream is the one that matters; the face stream rides along for the export).

    Raises:
      UsageError: bad path, a run of other model sizes, or weights that do not fit this
        code's stream architecture.
    """
    source = resolve_init_from(init_from)
    check_model_config(source, model.model_config)
    if source.kind == "saved_model":
        _load_from_saved_model(model, source.path)
    else:
        from av_disentangle.model import DisentangleModel  # local: avoid a cycle at import

        try:
            pretrained = DisentangleModel(model.model_config,
                                          from_dict(LossConfig, source.loss_config or {}))
            pretrained.load_weights(source.path)
        except ValueError as e:
            raise UsageError(f"--init_from {source.path}: cannot load the weights into this "
                             f"code's model (was it trained with another version?): {e}") from e
        _copy_weights(model.audio_stream, pretrained.audio_stream)
        _copy_weights(model.face_stream, pretrained.face_stream)
    log.info("initialised the streams from %s", source.path)
    return source


def check_init_from(init_from: str, model_config: ModelConfig) -> PretrainedSource:
    """Resolves `init_from` and checks its model sizes against `model_config`, without
    loading anything: call it before the run writes any state. Raises UsageError."""
    source = resolve_init_from(init_from)
    check_model_config(source, model_config)
    return source


def _load_from_saved_model(model: SpeakerClassifier, path: str) -> None:
    """Copies variables by name (`audio_conv1/kernel`, ...) from an exported SavedModel."""
    loaded = tf.saved_model.load(path)
    by_name: dict[str, tf.Variable] = {}
    for v in loaded.variables:
        by_name.setdefault(v.name.split(":")[0], v)
    for stream in (model.audio_stream, model.face_stream):
        for target in stream.weights:
            v = by_name.get(target.path)
            if v is None or tuple(v.shape) != tuple(target.shape):
                found = "missing" if v is None else f"shape {tuple(v.shape)}"
                raise UsageError(
                    f"--init_from {path}: variable {target.path} {tuple(target.shape)} is "
                    f"{found} in the SavedModel (exported by another version of the model?)")
            target.assign(v)


def build_supervised_model(model_config: ModelConfig, config: SupervisedConfig,
                           num_classes: int) -> SpeakerClassifier:
    """The supervised model, initialised from `config.init_from` if set, with the content head
    (and with `freeze_trunk` the trunk) frozen. Build it inside the strategy scope, before
    `compile` (the optimizer must see the final trainable variables)."""
    model = SpeakerClassifier(model_config, num_classes, config.head, config.aam_margin,
                              config.aam_scale)
    if config.init_from:
        load_pretrained_streams(model, config.init_from)
    frozen = freeze_stream_parts(model.audio_stream, config.freeze_trunk)
    log.info("frozen audio layers: %s; trainable variables: %d", ", ".join(frozen),
             len(model.trainable_variables))
    return model
