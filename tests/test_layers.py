"""Gradient reversal, scaled cosine and log-mel features against hand-computed values."""

import keras
import numpy as np
import tensorflow as tf

from av_disentangle.features import LogMelSpectrogram, log_mel_spectrogram
from av_disentangle.layers import GradientReversal, ScaledCosine


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


def _unit(rng, shape):
    x = rng.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_scaled_cosine_matches_numpy_for_its_current_w_and_b():
    rng = np.random.default_rng(0)
    a, b = _unit(rng, (2, 3, 5)), _unit(rng, (2, 4, 5))
    sim = ScaledCosine(init_scale=3.0, init_bias=0.5)
    np.testing.assert_allclose(sim(a, b).numpy(), 3.0 * a @ b.transpose(0, 2, 1) + 0.5,
                               rtol=1e-5, atol=1e-6)
    sim.scale.assign(-1.5)
    sim.bias.assign(2.0)
    expected = -1.5 * a @ b.transpose(0, 2, 1) + 2.0
    np.testing.assert_allclose(sim(a, b).numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sim(a, b, frozen=True).numpy(), expected, rtol=1e-5, atol=1e-6)
    # Defaults: the reference's LossScale(init_w=10.0, init_b=-5.0) (syncnet_trainer
    # SyncNetDist.py:13).
    np.testing.assert_allclose(ScaledCosine()(a, b).numpy(), 10 * a @ b.transpose(0, 2, 1) - 5,
                               rtol=1e-5, atol=1e-5)


def test_scaled_cosine_w_and_b_are_trainable_and_move():
    """One SGD(0.1) step on loss = sum(logits * t): dL/dw = sum(cos * t), dL/db = sum(t)."""
    rng = np.random.default_rng(1)
    a, b = _unit(rng, (3, 4)), _unit(rng, (2, 4))
    target = rng.normal(size=(3, 2)).astype(np.float32)
    sim = ScaledCosine()
    sim.build()
    assert {id(v) for v in sim.trainable_variables} == {id(sim.scale), id(sim.bias)}
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(sim(a, b) * target)
    grads = tape.gradient(loss, sim.trainable_variables)
    keras.optimizers.SGD(0.1).apply(grads, sim.trainable_variables)
    np.testing.assert_allclose(float(sim.scale.numpy()), 10 - 0.1 * np.sum(a @ b.T * target),
                               rtol=1e-5)
    np.testing.assert_allclose(float(sim.bias.numpy()), -5 - 0.1 * np.sum(target), rtol=1e-5)


def test_scaled_cosine_config_and_weights_round_trip(tmp_path):
    sim = ScaledCosine(init_scale=2.5, init_bias=-1.25, name="sim")
    clone = ScaledCosine.from_config(sim.get_config())
    assert (clone.init_scale, clone.init_bias, clone.name) == (2.5, -1.25, "sim")
    rng = np.random.default_rng(2)
    a, b = _unit(rng, (3, 4)), _unit(rng, (5, 4))
    in_a, in_b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([in_a, in_b], sim(in_a, in_b))
    sim.scale.assign(7.0)  # a trained value, not the initial one, must survive saving
    sim.bias.assign(0.75)
    path = str(tmp_path / "sim.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("sim"), ScaledCosine)
    np.testing.assert_allclose(loaded([a, b]).numpy(), 7.0 * a @ b.T + 0.75, rtol=1e-5, atol=1e-6)


def test_scaled_cosine_frozen_passes_no_gradient_to_w_and_b():
    sim = ScaledCosine()
    a = tf.constant([[1.0, 0.0]])
    with tf.GradientTape(persistent=True) as tape:
        frozen = tf.reduce_sum(sim(a, a, frozen=True))
        free = tf.reduce_sum(sim(a, a))
    assert tape.gradient(frozen, [sim.scale, sim.bias]) == [None, None]
    assert [float(g) for g in tape.gradient(free, [sim.scale, sim.bias])] == [1.0, 1.0]


def test_log_mel_frame_count_is_four_per_video_frame():
    for frames in (1, 25, 50):
        out = log_mel_spectrogram(tf.zeros([2, frames * 640]))
        assert out.shape == (2, 4 * frames, 40)
    assert LogMelSpectrogram(frames_multiple_of=4)(tf.zeros([1, 16000 + 500])).shape == (1, 100, 40)


def test_log_mel_tone_peaks_in_the_right_band_and_is_normalised():
    t = np.arange(16000) / 16000.0
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)[None]
    raw = log_mel_spectrogram(tone, normalize=False).numpy()[0]
    mel_edges = np.linspace(0.0, 2595 * np.log10(1 + 8000 / 700), 42)  # the reference's bands
    centres_hz = 700 * (10 ** (mel_edges[1:-1] / 2595) - 1)
    assert raw.mean(axis=0).argmax() == np.abs(centres_hz - 1000).argmin()
    noise = np.random.default_rng(0).normal(size=(1, 32000)).astype(np.float32)
    normed = log_mel_spectrogram(noise).numpy()[0]
    np.testing.assert_allclose(normed.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(normed.std(axis=0), 1, atol=1e-3)
