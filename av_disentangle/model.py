"""The two-stream model with a custom `train_step` / `test_step` for the three losses.

Negatives are PER REPLICA by default: under a tf.distribute strategy each replica computes the
identity term over its own slice of the global batch (batch_tracks / num_replicas tracks), as
the reference code does on one GPU. With `LossConfig.gather_negatives` the face and voice
identity embeddings are all-gathered, so every track is matched against all voices of the
global batch (the same loss as one device on the global batch), and so are the content
embeddings of the identity-task disentanglement terms: the gathering belongs to the identity
loss (`losses.IdentityLoss`), which hands the same negatives to the disentanglement mode
(`disentangle.py`). The content term is within-track and needs no gathering. The loss is
divided by the number of replicas because Keras sums gradients across replicas. Losses are
computed in float32 under mixed precision.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import tensorflow as tf

from av_disentangle import compat, losses
from av_disentangle.config import LossConfig, ModelConfig
# Keys of the input batch: FRAMES (B, T, H, W, 3) uint8, AUDIO and AUDIO_2 (B, T * 640) float32.
from av_disentangle.constants import AUDIO, AUDIO_2, FACE_STEP, FRAMES
from av_disentangle.disentangle import WrongFactorTasks, make_disentangler
from av_disentangle.layers import ScaledCosine
from av_disentangle.streams import CONTENT, IDENTITY, build_audio_stream, build_face_stream

LOSS_NAMES = ("loss", "content_loss", "identity_loss", "confusion_content", "confusion_identity",
              "aux_loss")
ACCURACY_NAMES = ("content_acc", "identity_acc", "leak_content_acc", "leak_identity_acc")


class Losses(NamedTuple):
    """What `DisentangleModel.compute_losses` returns.

    Attributes:
      values: LOSS_NAMES + ACCURACY_NAMES -> scalar, the logged values (`values["loss"]` is
        `main + aux`).
      main: the loss that trains the streams, similarities and the `grl` heads:
        a_c L_content + a_i L_identity + a_d (confusion_content + confusion_identity).
      aux: the loss that trains only the `adversarial` heads (0 in the other modes).
    """

    values: dict[str, tf.Tensor]
    main: tf.Tensor
    aux: tf.Tensor


class TrackedModel(compat.OptimizerOnlySymbolicBuild, keras.Model):
    """A keras.Model whose variables are all created in `build()` and whose `metrics` are the
    `self._trackers` Mean trackers of its custom train/test steps (shared by
    `DisentangleModel` and `supervised.SpeakerClassifier`). It has no compiled losses or
    metrics, so Keras' symbolic build only builds the optimizer (`compat`)."""

    _trackers: dict

    @property
    def metrics(self):
        return list(self._trackers.values())

    def _update_trackers(self, values: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Updates the Mean trackers with this step's values; returns the logs of the step."""
        for name, value in values.items():
            self._trackers[name].update_state(value)
        logs = {name: tracker.result() for name, tracker in self._trackers.items()}
        return compat.logs_for_reduction(logs)


class DisentangleModel(TrackedModel):
    """Face + audio streams trained with content, identity and disentanglement losses.

    Args:
      model_config: stream sizes.
      loss_config: loss weights and the disentanglement mode (`disentangle.MODES`).

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
        self.identity_loss = losses.IdentityLoss(self.identity_similarity,
                                                 loss_config.symmetric_identity,
                                                 loss_config.gather_negatives)
        self.disentangler = make_disentangler(loss_config, model_config.embedding_dim)
        self._trackers = {name: keras.metrics.Mean(name=name)
                          for name in LOSS_NAMES + ACCURACY_NAMES}
        self.build()

    # The mode's learned heads (None in `none` / `confusion`). Also what keeps their weights at
    # the checkpoint paths `aux_content/...`, `aux_identity/...` (Keras saves by attribute name).
    @property
    def aux_content(self):
        return self.disentangler.aux_content

    @property
    def aux_identity(self):
        return self.disentangler.aux_identity

    def build(self, input_shape=None):
        """Creates every variable (streams are built at construction; similarities and
        auxiliary heads here), so the optimizer can be built before the first step."""
        # The mode's heads are built here, in the model's name scope, so their variables keep
        # the paths `<model>/aux_content/...` they had before the modes became objects.
        for layer in (self.content_similarity, self.identity_similarity, self.aux_content,
                      self.aux_identity, self.disentangler):
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

    def _face_identity(self, face_identity: tf.Tensor, training: bool,
                       face_step: tf.Tensor | None = None) -> tf.Tensor:
        """(B, T', D) unit steps -> (B, D): in training one time step for the whole batch,
        drawn at random (the reference: `ri = random.randint(0, time_size - 1)`, SyncNetDist.py
        train_network) unless `face_step` gives it, or the time mean."""
        if self.loss_config.face_identity_pooling == "mean" or not training:
            return losses.time_pool(face_identity)
        if face_step is None:
            face_step = tf.random.uniform([], 0, tf.shape(face_identity)[1], dtype=tf.int32)
        return tf.gather(face_identity, tf.cast(face_step, tf.int32), axis=1)

    def compute_losses(self, batch: dict[str, tf.Tensor], training: bool) -> Losses:
        """All loss terms and accuracies for one batch (see `Losses`). A `FACE_STEP` entry of
        the batch fixes the time step of the face identity embedding (default: random)."""
        cfg = self.loss_config
        raw = self(batch, training=training)
        # Per-step terms take cosines of unit steps; time pooling averages the streams' own
        # steps (raw ones with `normalize_steps=False`, as the reference's voice identity).
        out = raw if self.model_config.normalize_steps else {
            k: tf.math.l2_normalize(v, axis=-1, epsilon=1e-12) for k, v in raw.items()}
        face_content, face_identity = out["face_content"], out["face_identity"]  # (B, T', D)
        audio_content, audio_identity = out["audio_content"], out["audio_identity"]
        # The identity task's voice comes from window 2 when the batch has one.
        voice_content_steps = raw.get("audio_content_2", raw["audio_content"])
        voice_identity_steps = raw.get("audio_identity_2", raw["audio_identity"])

        content_logits = losses.content_logits(face_content, audio_content,
                                               self.content_similarity)  # (B, T', T')
        content = losses.content_loss(content_logits)
        identity = self.identity_loss(
            self._face_identity(face_identity, training, batch.get(FACE_STEP)),
            losses.time_pool(voice_identity_steps))

        # The wrong factor on each task: identity embeddings on the content task (per step,
        # within track) and time-pooled content embeddings on the identity task (across tracks,
        # against the identity loss's negatives: all-gathered when it gathers, so the term
        # equals the one-device term on the global batch).
        pooled_face_content = losses.time_pool(raw["face_content"])  # (B, D)
        voice_content = self.identity_loss.negatives(losses.time_pool(voice_content_steps))
        tasks = WrongFactorTasks(
            face_identity=face_identity, audio_identity=audio_identity,
            pooled_face_content=pooled_face_content, voice_content=voice_content,
            content_task_logits=self.content_similarity(face_identity, audio_identity,
                                                        frozen=True),
            identity_task_logits=self.identity_similarity(pooled_face_content,
                                                          voice_content.embeddings, frozen=True))
        terms = self.disentangler(tasks=tasks)  # a keyword: Keras takes only tensors by position

        main = (cfg.content_weight * content + cfg.identity_weight * identity.loss
                + cfg.disentangle_weight * (terms.confusion_content + terms.confusion_identity))
        values = {
            "loss": main + terms.aux_loss, "content_loss": content,
            "identity_loss": identity.loss,
            "confusion_content": terms.confusion_content,
            "confusion_identity": terms.confusion_identity, "aux_loss": terms.aux_loss,
            "content_acc": losses.matching_accuracy(content_logits),
            "identity_acc": losses.matching_accuracy(identity.logits, identity.offset),
            "leak_content_acc": losses.matching_accuracy(tasks.content_task_logits),
            "leak_identity_acc": losses.matching_accuracy(tasks.identity_task_logits,
                                                          voice_content.offset),
        }
        return Losses(values, main, terms.aux_loss)

    def train_step(self, data):
        aux_vars = self.disentangler.aux_variables
        aux_ids = {id(v) for v in aux_vars}
        main_vars = [v for v in self.trainable_variables if id(v) not in aux_ids]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape(persistent=bool(aux_vars)) as tape:
            result = self.compute_losses(data, training=True)
            # scale_loss: loss scaling under mixed_float16 (identity otherwise).
            main_scaled = self.optimizer.scale_loss(result.main / replicas)
            aux_scaled = self.optimizer.scale_loss(result.aux / replicas)
        grads = tape.gradient(main_scaled, main_vars)
        pairs = list(zip(grads, main_vars))
        if aux_vars:
            pairs += list(zip(tape.gradient(aux_scaled, aux_vars), aux_vars))
            del tape
        pairs = [(g, v) for g, v in pairs if g is not None]
        self.optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])
        return self._update_trackers(result.values)

    def test_step(self, data):
        return self._update_trackers(self.compute_losses(data, training=False).values)
