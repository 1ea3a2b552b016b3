"""Gradient reversal, scaled cosine and log-mel features against hand-computed values."""

import keras
import numpy as np
import tensorflow as tf

from av_disentangle.features import LogMelSpectrogram, log_mel_spectrogram
from av_disentangle.layers import GradientReversal, L2Normalize, ScaledCosine


def test_gradient_reversal_forward_identity_backward_negated():
    layer = GradientReversal(scale=0.7)
    x = tf.constant([[1.0, -2.0, 3.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * tf.constant([[2.0, 3.0, 4.0]]))
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), [[-1.4, -2.1, -2.8]], rtol=1e-6)


def test_gradient_reversal_serializes_in_a_model(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, GradientReversal(scale=0.25, name="grl")(inputs))
    path = str(tmp_path / "grl.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("grl").scale == 0.25
    np.testing.assert_array_equal(loaded(np.ones((1, 3))), np.ones((1, 3)))


def test_scaled_cosine_initial_values_and_logits():
    sim = ScaledCosine()
    a = L2Normalize()(tf.constant([[1.0, 0.0], [0.0, 2.0]]))
    b = L2Normalize()(tf.constant([[1.0, 1.0]]))
    logits = sim(a, b).numpy()
    assert float(sim.scale.numpy()) == 10.0 and float(sim.bias.numpy()) == -5.0
    np.testing.assert_allclose(logits, [[10 / np.sqrt(2) - 5], [10 / np.sqrt(2) - 5]], rtol=1e-6)


def test_scaled_cosine_frozen_passes_no_gradient_to_scale():
    sim = ScaledCosine()
    a = tf.constant([[1.0, 0.0]])
    with tf.GradientTape(persistent=True) as tape:
        frozen = tf.reduce_sum(sim(a, a, frozen=True))
        free = tf.reduce_sum(sim(a, a))
    assert tape.gradient(frozen, sim.scale) is None
    assert float(tape.gradient(free, sim.scale)) == 1.0


def test_log_mel_frame_count_is_four_per_video_frame():
    for frames in (1, 25, 50):
        out = log_mel_spectrogram(tf.zeros([2, frames * 640]))
        assert out.shape == (2, 4 * frames, 40)
    assert LogMelSpectrogram(frames_multiple_of=4)(tf.zeros([1, 16000 + 500])).shape == (1, 100, 40)


def test_log_mel_tone_peaks_in_the_right_band_and_is_normalised():
    t = np.arange(16000) / 16000.0
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)[None]
    raw = log_mel_spectrogram(tone, normalize=False).numpy()[0]
    mel_edges = np.linspace(2595 * np.log10(1 + 20 / 700), 2595 * np.log10(1 + 7600 / 700), 42)
    centres_hz = 700 * (10 ** (mel_edges[1:-1] / 2595) - 1)
    assert raw.mean(axis=0).argmax() == np.abs(centres_hz - 1000).argmin()
    noise = np.random.default_rng(0).normal(size=(1, 32000)).astype(np.float32)
    normed = log_mel_spectrogram(noise).numpy()[0]
    np.testing.assert_allclose(normed.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(normed.std(axis=0), 1, atol=1e-3)
