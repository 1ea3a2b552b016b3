"""Supervised speaker training of the audio stream: a classifier head on the identity embedding.

The model (`SpeakerClassifier`) is the audio stream of `streams.build_audio_stream`, its
identity head's output time-averaged and L2-normalised (the exported `embed_audio`
embedding, `losses.time_pool`) and fed to a classification head (`heads.py`: AAM softmax or
plain softmax). It also carries a face stream, never trained, only so that the export has the
same five signatures as a self-supervised run (`export.export_saved_model`): with
`init_from` it is the pretrained run's face stream, otherwise random.

`init_from` (`pretrained.py`) copies the streams of a self-supervised run: a run directory (its
latest `checkpoints/epoch-NNN.weights.h5`), one such weights file, an exported SavedModel
directory, or a joonson/syncnet_trainer checkpoint (`convert.py`). The source's model config
must equal this run's (a mismatch is a `UserError` naming the differing fields).

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

import logging

import keras
import tensorflow as tf

from av_disentangle import losses
from av_disentangle.config import ModelConfig
from av_disentangle.constants import AUDIO, LABEL
from av_disentangle.heads import make_head
from av_disentangle.model import TrackedModel
from av_disentangle.pretrained import PretrainedSource, check_init_from, load_streams
from av_disentangle.streams import CONTENT, IDENTITY, build_audio_stream, build_face_stream
from av_disentangle.supervised_config import SupervisedConfig

log = logging.getLogger(__name__)

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


def build_supervised_model(model_config: ModelConfig, config: SupervisedConfig,
                           num_classes: int,
                           source: PretrainedSource | None = None) -> SpeakerClassifier:
    """The supervised model, initialised from `config.init_from` if set (`source`: that
    already checked with `check_init_from`, not read again), with the content head (and with
    `freeze_trunk` the trunk) frozen. Build it inside the strategy scope, before `compile`
    (the optimizer must see the final trainable variables)."""
    model = SpeakerClassifier(model_config, num_classes, config.head, config.aam_margin,
                              config.aam_scale)
    if config.init_from:
        source = source or check_init_from(config.init_from, model_config)
        load_streams(model.face_stream, model.audio_stream, source)
    frozen = freeze_stream_parts(model.audio_stream, config.freeze_trunk)
    log.info("frozen audio layers: %s; trainable variables: %d", ", ".join(frozen),
             len(model.trainable_variables))
    return model
