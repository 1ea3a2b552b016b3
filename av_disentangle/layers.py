"""Small custom layers: gradient reversal, L2 normalisation, scaled cosine similarity."""

from __future__ import annotations

import keras
import tensorflow as tf


# === Layers ===
@keras.saving.register_keras_serializable(package="av_disentangle")
class GradientReversal(keras.layers.Layer):
    """Identity in the forward pass, gradient multiplied by `-scale` in the backward pass.

    Written here (10 lines) because tensorflow-addons is dead with Keras 3 and Keras has none.

    Args:
      scale: lambda, the factor of the reversed gradient.

    Example:
    >>> GradientReversal(scale=0.5)(tf.ones([2, 3]))  # forward: unchanged
    """

    def __init__(self, scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        scale = self.scale

        @tf.custom_gradient
        def reverse(x):
            return tf.identity(x), lambda dy: -scale * dy

        return reverse(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="av_disentangle")
class L2Normalize(keras.layers.Layer):
    """L2-normalises the last axis: (..., D) -> (..., D) of unit norm. Always float32 (also
    under a mixed-precision policy), so embeddings and losses are float32."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        return tf.math.l2_normalize(inputs, axis=-1, epsilon=1e-12)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="av_disentangle")
class ScaledCosine(keras.layers.Layer):
    """Learnable affine map of cosine similarities, `w * cos + b` (reference: w=10, b=-5).

    Call with two L2-normalised tensors `a` (..., N, D) and `b` (..., M, D); returns logits
    (..., N, M) = w * a @ b^T + b. Under a softmax over M the bias cancels (zero gradient);
    it is kept for parity with the reference code and for sigmoid-style uses of the logits.

    Args:
      init_scale, init_bias: initial w and b.
    """

    def __init__(self, init_scale: float = 10.0, init_bias: float = -5.0, **kwargs):
        kwargs.setdefault("dtype", "float32")  # logits in float32 under mixed precision
        super().__init__(**kwargs)
        self.init_scale = float(init_scale)
        self.init_bias = float(init_bias)

    def build(self, input_shape=None):
        self.scale = self.add_weight(name="scale", shape=(),
                                     initializer=keras.initializers.Constant(self.init_scale))
        self.bias = self.add_weight(name="bias", shape=(),
                                    initializer=keras.initializers.Constant(self.init_bias))

    def call(self, a, b, frozen: bool = False):
        """`frozen=True` uses w and b without passing gradients to them (confusion terms)."""
        scale, bias = self.scale, self.bias
        if frozen:
            scale, bias = tf.stop_gradient(scale), tf.stop_gradient(bias)
        return scale * tf.linalg.matmul(a, b, transpose_b=True) + bias

    def get_config(self):
        return {**super().get_config(), "init_scale": self.init_scale,
                "init_bias": self.init_bias}


@keras.saving.register_keras_serializable(package="av_disentangle")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization computed by one fused kernel (FusedBatchNormV3, oneDNN on
    CPU): the same weights, checkpoints, momentum and epsilon, in and out in the compute dtype.

    Why: Keras 3's BatchNormalization builds moments and the normalisation from elementwise ops
    and upcasts bfloat16 / float16 inputs to float32 first; in our `reference` step those ops
    (Mul, Sum, Mean, Tile, SquaredDifference, Sub) took 12% of float32 op time and, with the
    casts, 29% under mixed bfloat16 (`python -m benchmarks.step_profile`). The fused kernel
    takes bf16 / f16 inputs with float32 statistics and returns the UNBIASED batch variance for
    the moving average, as PyTorch's BatchNorm does (the reference); Keras' is biased. Batch
    normalisation itself uses the biased variance in both. Falls back to Keras' computation for
    what the kernel does not take: float64 inputs, masks, renorm, an axis other than the last,
    inputs of rank > 4, and no scale or centre.

    Inputs (B, C), (B, T, C) or (B, H, W, C); normalised over all but the last axis.
    """

    def _fusable(self, inputs, mask) -> bool:
        return (mask is None and not self.renorm and self.scale and self.center
                and self.axis in (-1, len(inputs.shape) - 1)
                and 2 <= len(inputs.shape) <= 4
                and inputs.dtype in (tf.float32, tf.bfloat16, tf.float16))

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        rank = len(inputs.shape)
        # (B, C) / (B, T, C) -> (N, 1, 1, C): the kernel's NHWC, same statistics per channel.
        x = inputs if rank == 4 else tf.reshape(inputs, [-1, 1, 1, inputs.shape[-1]])
        gamma = tf.cast(self.gamma, tf.float32)
        beta = tf.cast(self.beta, tf.float32)
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(self.moving_variance * momentum
                                        + variance * (1.0 - momentum))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
                data_format="NHWC", is_training=False)
        if rank < 4:
            y = tf.reshape(y, tf.shape(inputs))
        return tf.cast(y, self.compute_dtype)
