"""Speaker-classification heads for supervised training: AAM softmax and plain softmax.

Each head is a Keras layer called as `head(embedding, labels=None)`: embedding (B, D), labels
(B,) int or None; it returns logits (B, K) in float32 (also under a mixed-precision policy) to
be fed to a softmax cross-entropy. Heads are chosen by name from `HEADS`.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="av_disentangle")
class AAMSoftmax(keras.layers.Layer):
    """Additive angular margin softmax (ArcFace / AAM): the target class's logit is
    s * cos(theta + m), every other class's s * cos(theta).

    Convention of clovaai/voxceleb_trainer loss/aamsoftmax.py (`LossFunction`, easy_margin
    False; commit 3883cd4): weight (K, D) xavier-normal (lines 20-22; here its transpose
    (D, K), glorot-normal is symmetric in fan-in / fan-out), both embedding and weight
    L2-normalised (line 40), phi = cos * cos(m) - sin * sin(m) (lines 42-43), and where
    theta + m would pass pi the target logit is cos - mm with th = cos(pi - m),
    mm = sin(pi - m) * m (lines 29-30, 48), which keeps the target logit decreasing in theta
    over [0, pi]; phi on the target class, cos elsewhere, times s (lines 51-54). The margin is
    applied only when labels are given (training); without labels the logits are
    s * cos(theta) for every class.

    Args:
      num_classes: K.
      margin: m in radians (voxceleb_trainer's AAM experiments and wespeaker: 0.2).
      scale: s (30).

    Example:
    >>> head = AAMSoftmax(num_classes=5)
    >>> logits = head(tf.random.normal([8, 64]), tf.zeros([8], tf.int32))  # (8, 5)
    """

    def __init__(self, num_classes: int, margin: float = 0.2, scale: float = 30.0, **kwargs):
        kwargs.setdefault("dtype", "float32")  # weights and logits in float32
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 0.0 <= margin < math.pi / 2:
            raise ValueError(f"margin must be in [0, pi/2) radians, got {margin}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.num_classes = int(num_classes)
        self.margin = float(margin)
        self.scale = float(scale)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(dim, self.num_classes),
                                      initializer="glorot_normal")

    def cosine(self, embedding: tf.Tensor) -> tf.Tensor:
        """(B, D) -> (B, K) cosines between the embeddings and the class weight columns."""
        x = tf.math.l2_normalize(tf.cast(embedding, tf.float32), axis=-1, epsilon=1e-12)
        w = tf.math.l2_normalize(tf.cast(self.kernel, tf.float32), axis=0, epsilon=1e-12)
        return tf.linalg.matmul(x, w)

    def call(self, embedding, labels=None):
        cos = self.cosine(embedding)
        if labels is None:
            return self.scale * cos
        m = self.margin
        # The floor 1e-7 (not voxceleb_trainer's 0) keeps the gradient of sqrt finite at
        # cos = +-1; it changes sin by at most 3e-4 there.
        sin = tf.sqrt(tf.clip_by_value(1.0 - cos * cos, 1e-7, 1.0))
        phi = cos * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
        th, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
        phi = tf.where(cos - th > 0, phi, cos - mm)
        one_hot = tf.one_hot(tf.cast(labels, tf.int32), self.num_classes, dtype=tf.float32)
        return self.scale * (one_hot * phi + (1.0 - one_hot) * cos)

    def compute_output_shape(self, input_shape, labels_shape=None):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "margin": self.margin, "scale": self.scale}


@keras.saving.register_keras_serializable(package="av_disentangle")
class SoftmaxHead(keras.layers.Layer):
    """Plain softmax classifier: logits = embedding @ W + b (voxceleb_trainer loss/softmax.py:
    `nn.Linear(nOut, nClasses)` then cross-entropy). `labels` is accepted and ignored, so both
    heads are called alike.

    Args:
      num_classes: K.
    """

    def __init__(self, num_classes: int, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.dense = keras.layers.Dense(num_classes, dtype="float32", name="logits")

    def build(self, input_shape):
        self.dense.build((None, int(input_shape[-1])))

    def call(self, embedding, labels=None):
        return self.dense(tf.cast(embedding, tf.float32))

    def compute_output_shape(self, input_shape, labels_shape=None):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


HEADS = {"aam": AAMSoftmax, "softmax": SoftmaxHead}
HEAD_NAMES = tuple(HEADS)  # == supervised_config.HEAD_NAMES (tested)


def make_head(name: str, num_classes: int, *, margin: float = 0.2,
              scale: float = 30.0) -> keras.layers.Layer:
    """The head `name` ('aam' or 'softmax') for `num_classes` speakers; margin and scale are
    used by 'aam' only."""
    if name == "aam":
        return AAMSoftmax(num_classes, margin=margin, scale=scale, name="classifier")
    if name == "softmax":
        return SoftmaxHead(num_classes, name="classifier")
    raise ValueError(f"head must be one of {HEAD_NAMES}, got {name!r}")
