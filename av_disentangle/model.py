"""The two-stream model with a custom `train_step` / `test_step` for the three losses.

Negatives are PER REPLICA by default: under a tf.distribute strategy each replica computes the
identity term over its own slice of the global batch (batch_tracks / num_replicas tracks), as
the reference code does on one GPU. With `LossConfig.gather_negatives` the face and voice
identity embeddings are all-gathered, so every track is matched against all voices of the
global batch (the same loss as one device on the global batch), and so are the content
embeddings of the identity-task confusion term. The content term is
within-track and needs no gathering. The loss is divided by the number of replicas because
Keras sums gradients across replicas. Losses are computed in float32 under mixed precision.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from av_disentangle import losses
from av_disentangle.config import LossConfig, ModelConfig
from av_disentangle.layers import GradientReversal, L2Normalize, ScaledCosine
from av_disentangle.streams import CONTENT, IDENTITY, build_audio_stream, build_face_stream

# Keys of the input batch (see pipelines/input.py).
FRAMES = "frames"  # (B, T, H, W, 3) uint8, window 1
AUDIO = "audio"  # (B, T * 640) float32, window 1, synchronised with FRAMES
AUDIO_2 = "audio_2"  # (B, T * 640) float32, a different window of the same track

LOSS_NAMES = ("loss", "content_loss", "identity_loss", "confusion_content", "confusion_identity",
              "aux_loss")
ACCURACY_NAMES = ("content_acc", "identity_acc", "leak_content_acc", "leak_identity_acc")


class _AuxiliaryMatcher(keras.layers.Layer):
    """Learned auxiliary head for the `adversarial` / `grl` modes: Dense -> L2 -> w*cos+b.

    Call with (a, b) of shape (..., N, D) and (..., M, D); returns logits (..., N, M).
    """

    def __init__(self, embedding_dim: int, grl_scale: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.embedding_dim = embedding_dim
        self.grl_scale = grl_scale
        self.reverse = GradientReversal(grl_scale) if grl_scale is not None else None
        self.projection = layers.Dense(embedding_dim, name="projection")
        self.normalize = L2Normalize()
        self.similarity = ScaledCosine(name="similarity")

    def build(self, input_shape=None):
        self.projection.build((None, self.embedding_dim))
        self.similarity.build()
        self.built = True

    def call(self, a, b):
        if self.reverse is not None:
            a, b = self.reverse(a), self.reverse(b)
        a = self.normalize(self.projection(a))
        b = self.normalize(self.projection(b))
        return self.similarity(a, b)


class TrackedModel(keras.Model):
    """A keras.Model whose variables are all created in `build()` and whose `metrics` are the
    `self._trackers` Mean trackers of its custom train/test steps (shared by
    `DisentangleModel` and `supervised.SpeakerClassifier`)."""

    _trackers: dict

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Overrides a Keras 3.15 private hook. Keras reduces the first distributed batch with
        `strategy.reduce(MEAN, batch)` to build compiled losses/metrics; under
        MultiWorkerMirroredStrategy that fails for a dict of tensors. These models have no
        compiled losses or metrics and create all state in `build()`, so only the optimizer
        needs building (inside the strategy scope, as tf.distribute requires)."""
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        return list(self._trackers.values())


class DisentangleModel(TrackedModel):
    """Face + audio streams trained with content, identity and disentanglement losses.

    Args:
      model_config: stream sizes.
      loss_config: loss weights and the disentanglement mode.

    Example:
    >>> model = DisentangleModel(ModelConfig.tiny(), LossConfig())
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> model.fit(dataset_of_batches, steps_per_epoch=10)  # see pipelines.input
    """

    def __init__(self, model_config: ModelConfig, loss_config: LossConfig, **kwargs):
        super().__init__(**kwargs)
        self.model_config = model_config
        self.loss_config = loss_config
        self.face_stream = build_face_stream(model_config)
        self.audio_stream = build_audio_stream(model_config)
        self.content_similarity = ScaledCosine(name="content_similarity")
        self.identity_similarity = ScaledCosine(name="identity_similarity")
        mode = loss_config.disentangle
        self.aux_content = self.aux_identity = None
        if mode in ("adversarial", "grl"):
            scale = loss_config.grl_scale if mode == "grl" else None
            dim = model_config.embedding_dim
            self.aux_content = _AuxiliaryMatcher(dim, scale, name="aux_content")
            self.aux_identity = _AuxiliaryMatcher(dim, scale, name="aux_identity")
        self._trackers = {name: keras.metrics.Mean(name=name)
                          for name in LOSS_NAMES + ACCURACY_NAMES}
        self.build()

    def build(self, input_shape=None):
        """Creates every variable (streams are built at construction; similarities and
        auxiliary heads here), so the optimizer can be built before the first step."""
        for layer in (self.content_similarity, self.identity_similarity, self.aux_content,
                      self.aux_identity):
            if layer is not None and not layer.built:
                layer.build()
        self.built = True

    def call(self, inputs, training=False):
        """Runs both streams on window 1 (and window 2 audio when present).

        Returns a dict of (B, T', D) sequences: face_content, face_identity, audio_content,
        audio_identity, and audio_content_2 / audio_identity_2 if `audio_2` is given.
        """
        face = self.face_stream(inputs[FRAMES], training=training)
        audio = self.audio_stream(inputs[AUDIO], training=training)
        out = {"face_content": face[CONTENT], "face_identity": face[IDENTITY],
               "audio_content": audio[CONTENT], "audio_identity": audio[IDENTITY]}
        if AUDIO_2 in inputs:
            audio_2 = self.audio_stream(inputs[AUDIO_2], training=training)
            out["audio_content_2"] = audio_2[CONTENT]
            out["audio_identity_2"] = audio_2[IDENTITY]
        return {k: tf.cast(v, tf.float32) for k, v in out.items()}  # float32 losses

    def _face_identity(self, face_identity: tf.Tensor, training: bool) -> tf.Tensor:
        """(B, T', D) -> (B, D): one random step (reference code) or the time mean."""
        if self.loss_config.face_identity_pooling == "mean" or not training:
            return losses.time_pool(face_identity)
        shape = tf.shape(face_identity)
        steps = tf.random.uniform([shape[0]], 0, shape[1], dtype=tf.int32)
        return losses.select_steps(face_identity, steps)

    def _gathering(self) -> bool:
        """True when identity-task negatives come from every replica (see module doc)."""
        context = tf.distribute.get_replica_context()
        return bool(self.loss_config.gather_negatives and context is not None
                    and context.num_replicas_in_sync > 1)

    def _gather(self, tensor: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | int]:
        """(B_local, ...) -> (B_global, ...) all-gathered (differentiable), and the offset of
        this replica's rows in it; the tensor itself and 0 when not gathering."""
        if not self._gathering():
            return tensor, 0
        context = tf.distribute.get_replica_context()
        offset = context.replica_id_in_sync_group * tf.shape(tensor)[0]
        return context.all_gather(tensor, axis=0), offset

    def _identity_logits(self, face_id: tf.Tensor, voice_id: tf.Tensor):
        """Identity logits (face -> voice, voice -> face or None) and the target offset.

        Per-replica: (B, B) with diagonal targets. Gathered: (B_local, B_global) against the
        all-gathered other modality, row n targets replica_id * B_local + n.
        """
        if not self._gathering():
            return losses.identity_logits(face_id, voice_id, self.identity_similarity), None, 0
        all_voices, offset = self._gather(voice_id)
        all_faces, _ = self._gather(face_id)
        forward = losses.identity_logits(face_id, all_voices, self.identity_similarity)
        reverse = losses.identity_logits(voice_id, all_faces, self.identity_similarity)
        return forward, reverse, offset

    def compute_losses(self, batch: dict[str, tf.Tensor], training: bool):
        """All loss terms and accuracies for one batch.

        Returns (values, main_loss, aux_loss): `values` maps LOSS_NAMES + ACCURACY_NAMES to
        scalars; `main_loss` trains the streams; `aux_loss` trains only the auxiliary heads.
        """
        cfg = self.loss_config
        out = self(batch, training=training)
        fc, fi = out["face_content"], out["face_identity"]
        ac, ai = out["audio_content"], out["audio_identity"]
        ac2 = out.get("audio_content_2", ac)
        ai2 = out.get("audio_identity_2", ai)

        c_logits = losses.content_logits(fc, ac, self.content_similarity)
        content = losses.content_loss(c_logits)
        face_id = self._face_identity(fi, training)
        voice_id = losses.time_pool(ai2)
        i_logits, reverse_logits, offset = self._identity_logits(face_id, voice_id)
        identity = losses.identity_loss(i_logits, cfg.symmetric_identity, reverse_logits, offset)

        # The wrong factor on each task: identity embeddings on the content task (per step,
        # within track) and time-pooled content embeddings on the identity task (across tracks).
        # With gathered negatives the identity-task confusion uses the same (global) voices
        # as the identity loss, so it equals the one-device loss on the global batch.
        pooled_fc = losses.time_pool(fc)
        pooled_ac2, leak_offset = self._gather(losses.time_pool(ac2))
        leak_c_logits = self.content_similarity(fi, ai, frozen=True)
        leak_i_logits = self.identity_similarity(pooled_fc, pooled_ac2, frozen=True)
        zero = tf.constant(0.0)
        conf_c = conf_i = aux = zero
        if cfg.disentangle == "confusion":
            conf_c = losses.uniform_confusion(leak_c_logits)
            conf_i = losses.uniform_confusion(leak_i_logits)
        elif cfg.disentangle == "adversarial":
            # Aux heads learn the task on frozen embeddings; the streams learn to confuse them.
            sg = tf.stop_gradient
            aux = (losses.matching_cross_entropy(self.aux_content(sg(fi), sg(ai)))
                   + losses.matching_cross_entropy(
                       self.aux_identity(sg(pooled_fc), sg(pooled_ac2)), leak_offset))
            conf_c = losses.uniform_confusion(self.aux_content(fi, ai))
            conf_i = losses.uniform_confusion(self.aux_identity(pooled_fc, pooled_ac2))
        elif cfg.disentangle == "grl":
            # Ordinary CE through gradient reversal: heads minimise it, streams maximise it.
            conf_c = losses.matching_cross_entropy(self.aux_content(fi, ai))
            conf_i = losses.matching_cross_entropy(self.aux_identity(pooled_fc, pooled_ac2),
                                                   leak_offset)

        main = (cfg.content_weight * content + cfg.identity_weight * identity
                + cfg.disentangle_weight * (conf_c + conf_i))
        values = {
            "loss": main + aux, "content_loss": content, "identity_loss": identity,
            "confusion_content": conf_c, "confusion_identity": conf_i, "aux_loss": aux,
            "content_acc": losses.matching_accuracy(c_logits),
            "identity_acc": losses.matching_accuracy(i_logits, offset),
            "leak_content_acc": losses.matching_accuracy(leak_c_logits),
            "leak_identity_acc": losses.matching_accuracy(leak_i_logits, leak_offset),
        }
        return values, main, aux

    def _aux_variables(self) -> list:
        if self.loss_config.disentangle != "adversarial":
            return []
        return self.aux_content.trainable_variables + self.aux_identity.trainable_variables

    def train_step(self, data):
        aux_vars = self._aux_variables()
        aux_ids = {id(v) for v in aux_vars}
        main_vars = [v for v in self.trainable_variables if id(v) not in aux_ids]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape(persistent=bool(aux_vars)) as tape:
            values, main, aux = self.compute_losses(data, training=True)
            # scale_loss: loss scaling under mixed_float16 (identity otherwise).
            main_scaled = self.optimizer.scale_loss(main / replicas)
            aux_scaled = self.optimizer.scale_loss(aux / replicas)
        grads = tape.gradient(main_scaled, main_vars)
        pairs = list(zip(grads, main_vars))
        if aux_vars:
            pairs += list(zip(tape.gradient(aux_scaled, aux_vars), aux_vars))
            del tape
        pairs = [(g, v) for g, v in pairs if g is not None]
        self.optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])
        return self._update_trackers(values)

    def test_step(self, data):
        values, _, _ = self.compute_losses(data, training=False)
        return self._update_trackers(values)

    def _update_trackers(self, values: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        for name, value in values.items():
            self._trackers[name].update_state(value)
        logs = {name: tracker.result() for name, tracker in self._trackers.items()}
        if _multi_worker(tf.distribute.get_strategy()):
            # Keras 3.15 reduces logs across workers with strategy.reduce(MEAN, v, axis=0),
            # which needs a batch axis: give the scalars one (the reduced result is scalar).
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs


def _multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True under MultiWorkerMirroredStrategy with a cluster of more than one task."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    resolver = strategy.cluster_resolver
    return bool(resolver and resolver.task_type and
                sum(len(tasks) for tasks in resolver.cluster_spec().as_dict().values()) > 1)
