"""`av_disentangle.batchnorm`: precise-BN re-estimation of the streams' moving statistics."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from harness import tiny_model
from av_disentangle.batchnorm import reestimate_batchnorm, stream_batchnorm_layers
from av_disentangle.constants import AUDIO, AUDIO_2, FRAMES, SAMPLES_PER_FRAME

WINDOW = 9


def test_reestimated_statistics_are_those_of_the_final_weights():
    """Momentum 0 over one batch: the moving statistics become that batch's; the weights and
    the layers' momentum are unchanged."""
    import keras

    keras.utils.set_random_seed(0)
    model = tiny_model()
    rng = np.random.default_rng(0)
    batch = {FRAMES: rng.integers(0, 256, (4, WINDOW, 64, 64, 3), dtype=np.uint8),
             AUDIO: (0.1 * rng.normal(size=(4, WINDOW * SAMPLES_PER_FRAME))).astype(np.float32),
             AUDIO_2: (0.1 * rng.normal(size=(4, WINDOW * SAMPLES_PER_FRAME))).astype(np.float32)}
    audio = np.concatenate([batch[AUDIO], batch[AUDIO_2]])
    model.face_stream(batch[FRAMES]), model.audio_stream(audio)  # build

    def gap(stream, x):  # inference first: a training call moves the moving statistics
        infer = stream(x, training=False)
        train = stream(x, training=True)
        return max(float(np.max(np.abs(train[k] - infer[k]))) for k in train)

    layers = stream_batchnorm_layers(model)
    assert layers and {layer.momentum for layer in layers} == {0.9}
    weights = [w.numpy().copy() for w in model.trainable_weights]
    assert gap(model.face_stream, batch[FRAMES]) > 1e-2  # fresh moving statistics: 0 and 1
    reestimate_batchnorm(model, tf.data.Dataset.from_tensors(batch), batches=1, momentum=0.0)
    # Each layer now holds its input's batch mean and unbiased batch variance (as PyTorch's
    # BatchNorm, layers.FusedBatchNormalization), so inference mode reproduces training mode
    # up to that n / (n - 1): close, where the fresh statistics were far off.
    # Undoing that n / (n - 1), inference mode reproduces training mode on the batch.
    for stream, x in ((model.face_stream, batch[FRAMES]), (model.audio_stream, audio)):
        for layer in (l for l in stream.layers if l in layers):
            seen = keras.Model(stream.input, layer.input)(x, training=True).numpy()
            seen = seen.reshape(-1, seen.shape[-1]).astype(np.float64)
            np.testing.assert_allclose(layer.moving_mean.numpy(), seen.mean(0), rtol=1e-4,
                                       atol=1e-5, err_msg=layer.name)
            np.testing.assert_allclose(layer.moving_variance.numpy(), seen.var(0, ddof=1),
                                       rtol=1e-3, atol=1e-6, err_msg=layer.name)
        for layer in (l for l in stream.layers if l in layers):  # after all were read
            n = int(np.prod(keras.Model(stream.input, layer.input)(x).shape[:-1]))
            layer.moving_variance.assign(layer.moving_variance * ((n - 1) / n))
        assert gap(stream, x) < 1e-3, stream.name
    assert {layer.momentum for layer in layers} == {0.9}
    for before, after in zip(weights, model.trainable_weights):
        np.testing.assert_array_equal(before, after.numpy())
