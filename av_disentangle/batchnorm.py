"""Re-estimating BatchNormalization statistics with the final weights ("precise BN").

What: every BatchNormalization layer of the face and audio streams gets new moving mean and
variance from forward passes in training mode over a few training batches, with the weights
frozen (no gradient step; only the moving statistics change).

Why: a BN layer normalises with the statistics of the current batch during training, but with
its moving averages at inference. Those averages mix batches seen under many different
weights; with the streams' momentum 0.9 they span the last ~10 steps, so after a short or
fast-changing run they lag the final weights and inference-mode numbers (sync accuracy, EER)
come out worse than the network is. Recomputing them with the final weights removes the lag
(what Wu & Johnson, "Rethinking 'Batch' in BatchNorm", arXiv:2105.07576, call PreciseBN).
Used before evaluation by benchmarks/learning.py, whose `raw BN` columns show the numbers
without it.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from av_disentangle.constants import AUDIO, AUDIO_2, FRAMES


def stream_batchnorm_layers(model) -> list[keras.layers.BatchNormalization]:
    """The BatchNormalization layers of `model.face_stream` and `model.audio_stream`."""
    return [layer for stream in (model.face_stream, model.audio_stream)
            for layer in stream.layers if isinstance(layer, keras.layers.BatchNormalization)]


def reestimate_batchnorm(model, dataset: tf.data.Dataset, batches: int,
                         momentum: float = 0.8) -> None:
    """Re-estimates the streams' BN moving statistics over `batches` batches of `dataset`.

    Args:
      model: a `DisentangleModel` (anything with `face_stream` and `audio_stream`).
      dataset: training batches, dicts with FRAMES (B, T, S, S, 3) and AUDIO, AUDIO_2
        (B, T * 640); the audio stream sees both audio windows, (2B, T * 640), as in training.
      batches: how many batches to run; with `momentum` m the result weighs the last
        ~1 / (1 - m) of them (0.8: about 5).
      momentum: BN momentum during the re-estimation; each layer's own is restored after.
    """
    layers = stream_batchnorm_layers(model)
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = momentum
    face_fn = tf.function(lambda x: model.face_stream(x, training=True))
    audio_fn = tf.function(lambda x: model.audio_stream(x, training=True))
    try:
        for batch in dataset.take(batches):
            face_fn(batch[FRAMES])
            audio_fn(tf.concat([batch[AUDIO], batch[AUDIO_2]], axis=0))
    finally:
        for layer, value in zip(layers, saved):
            layer.momentum = value
