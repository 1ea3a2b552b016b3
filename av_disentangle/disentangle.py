"""Disentanglement modes as objects chosen by name (`LossConfig.disentangle`).

Each mode turns the two wrong-factor tasks (see `losses.py` and DESIGN.md "Losses") into the
confusion terms of the total loss:
- content task from IDENTITY embeddings: within each track, face identity step t must pick
  audio identity step t among the track's T' steps;
- identity task from time-pooled CONTENT embeddings: the face content of track b must pick the
  voice content of track b among the identity task's negatives (per replica, or all-gathered
  across replicas together with the identity loss's: `losses.IdentityLoss.negatives`).

Modes (`MODES`, the registry; `make_disentangler` builds one by name):
- `none`: no terms.
- `confusion`: the tasks' own w * cos + b (frozen) on the wrong factor, pushed to the uniform
  distribution (Alvi et al. 2018); parameter-free.
- `adversarial`: learned auxiliary heads solve the tasks on stopped embeddings (their CE is
  `aux_loss`, trained on the heads only); the streams are trained to confuse the heads.
- `grl`: ordinary task CE of learned heads behind a gradient-reversal layer (scale lambda):
  the heads minimise it, the streams maximise it.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import tensorflow as tf
from keras import layers

from av_disentangle import losses
from av_disentangle.config import DISENTANGLE_MODES, LossConfig
from av_disentangle.layers import GradientReversal, L2Normalize, ScaledCosine


class WrongFactorTasks(NamedTuple):
    """The inputs of every mode: the two tasks posed to the wrong factor.

    Attributes:
      face_identity: (B, T', D) face identity sequence.
      audio_identity: (B, T', D) audio identity sequence (window 1, synchronous with the face).
      pooled_face_content: (B, D) time-pooled face content.
      voice_content: `losses.Negatives` of the time-pooled audio content (B_neg, D) of the
        identity task's voice window, with this replica's target offset.
      content_task_logits: (B, T', T') the content task's frozen w * cos + b on the identity
        sequences.
      identity_task_logits: (B, B_neg) the identity task's frozen w * cos + b on the pooled
        content embeddings.
    """

    face_identity: tf.Tensor
    audio_identity: tf.Tensor
    pooled_face_content: tf.Tensor
    voice_content: losses.Negatives
    content_task_logits: tf.Tensor
    identity_task_logits: tf.Tensor


class DisentangleTerms(NamedTuple):
    """What a mode returns (scalars): the two confusion terms, weighted by a_d in the main loss,
    and `aux_loss`, trained on `DisentangleMode.aux_variables` only."""

    confusion_content: tf.Tensor
    confusion_identity: tf.Tensor
    aux_loss: tf.Tensor


class AuxiliaryMatcher(keras.layers.Layer):
    """Learned auxiliary head for the `adversarial` / `grl` modes: Dense -> L2 -> w*cos+b.

    Call with (a, b) of shape (..., N, D) and (..., M, D); returns logits (..., N, M).
    With `grl_scale`, a gradient-reversal layer (lambda = grl_scale) comes first.
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


class DisentangleMode(keras.layers.Layer):
    """Base of the modes: `mode(tasks=WrongFactorTasks(...)) -> DisentangleTerms` (`tasks` as a
    keyword: Keras layers take only tensors as positional arguments). Float32, also under a
    mixed-precision policy, as the losses are.

    `aux_content` / `aux_identity` are the learned heads (None in parameter-free modes);
    `aux_variables` are those trained on `aux_loss` alone (not on the main loss)."""

    aux_content: AuxiliaryMatcher | None = None
    aux_identity: AuxiliaryMatcher | None = None

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    @classmethod
    def create(cls, config: LossConfig, embedding_dim: int) -> "DisentangleMode":
        """The mode for `config`, its heads (if any) sized for `embedding_dim`."""
        return cls(name="disentangler")

    def build(self, input_shape=None):
        for head in (self.aux_content, self.aux_identity):
            if head is not None and not head.built:
                head.build()
        self.built = True

    @property
    def aux_variables(self) -> list:
        return []

    def call(self, tasks: WrongFactorTasks) -> DisentangleTerms:
        raise NotImplementedError


class NoDisentangle(DisentangleMode):
    """`none`: no disentanglement terms."""

    def call(self, tasks: WrongFactorTasks) -> DisentangleTerms:
        zero = tf.constant(0.0)
        return DisentangleTerms(zero, zero, zero)


class Confusion(DisentangleMode):
    """`confusion`: each task solved by the wrong factor, pushed to uniform; the task's w, b
    frozen (they are in `tasks`' logits), so only the streams learn from these terms."""

    def call(self, tasks: WrongFactorTasks) -> DisentangleTerms:
        return DisentangleTerms(losses.uniform_confusion(tasks.content_task_logits),
                                losses.uniform_confusion(tasks.identity_task_logits),
                                tf.constant(0.0))


class Adversarial(DisentangleMode):
    """`adversarial`: auxiliary heads learn the tasks on stopped embeddings (`aux_loss`, their
    variables only); the streams learn to confuse them (uniform-target CE through the heads,
    which does not move the heads: see `aux_variables`)."""

    def __init__(self, embedding_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.aux_content = AuxiliaryMatcher(embedding_dim, name="aux_content")
        self.aux_identity = AuxiliaryMatcher(embedding_dim, name="aux_identity")

    @classmethod
    def create(cls, config: LossConfig, embedding_dim: int) -> "Adversarial":
        return cls(embedding_dim, name="disentangler")

    @property
    def aux_variables(self) -> list:
        return self.aux_content.trainable_variables + self.aux_identity.trainable_variables

    def call(self, tasks: WrongFactorTasks) -> DisentangleTerms:
        stop = tf.stop_gradient
        voices = tasks.voice_content
        aux = (losses.matching_cross_entropy(
                   self.aux_content(stop(tasks.face_identity), stop(tasks.audio_identity)))
               + losses.matching_cross_entropy(
                   self.aux_identity(stop(tasks.pooled_face_content), stop(voices.embeddings)),
                   voices.offset))
        confusion_content = losses.uniform_confusion(
            self.aux_content(tasks.face_identity, tasks.audio_identity))
        confusion_identity = losses.uniform_confusion(
            self.aux_identity(tasks.pooled_face_content, voices.embeddings))
        return DisentangleTerms(confusion_content, confusion_identity, aux)


class GradientReversalMode(DisentangleMode):
    """`grl`: the task CE of auxiliary heads behind gradient reversal (lambda = `grl_scale`):
    the heads minimise it, the streams get -lambda times its gradient. Trained with the main
    loss (no `aux_variables`)."""

    def __init__(self, embedding_dim: int, grl_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.aux_content = AuxiliaryMatcher(embedding_dim, grl_scale, name="aux_content")
        self.aux_identity = AuxiliaryMatcher(embedding_dim, grl_scale, name="aux_identity")

    @classmethod
    def create(cls, config: LossConfig, embedding_dim: int) -> "GradientReversalMode":
        return cls(embedding_dim, config.grl_scale, name="disentangler")

    def call(self, tasks: WrongFactorTasks) -> DisentangleTerms:
        voices = tasks.voice_content
        confusion_content = losses.matching_cross_entropy(
            self.aux_content(tasks.face_identity, tasks.audio_identity))
        confusion_identity = losses.matching_cross_entropy(
            self.aux_identity(tasks.pooled_face_content, voices.embeddings), voices.offset)
        return DisentangleTerms(confusion_content, confusion_identity, tf.constant(0.0))


MODES: dict[str, type[DisentangleMode]] = {
    "none": NoDisentangle,
    "confusion": Confusion,
    "adversarial": Adversarial,
    "grl": GradientReversalMode,
}
assert set(MODES) == set(DISENTANGLE_MODES), "config.DISENTANGLE_MODES and MODES disagree"


def make_disentangler(config: LossConfig, embedding_dim: int) -> DisentangleMode:
    """The mode named by `config.disentangle`, its heads sized for `embedding_dim`."""
    return MODES[config.disentangle].create(config, embedding_dim)
