"""The loss functions against hand-computed values and their defining properties."""

import numpy as np
import tensorflow as tf

from av_disentangle import losses
from av_disentangle.layers import ScaledCosine


def _unit(x):
    return tf.math.l2_normalize(tf.constant(x, tf.float32), axis=-1)


def test_matching_cross_entropy_hand_value():
    logits = tf.constant([[2.0, 0.0], [0.0, 2.0]])
    expected = np.log(1 + np.exp(-2.0))
    np.testing.assert_allclose(losses.matching_cross_entropy(logits), expected, rtol=1e-6)
    np.testing.assert_allclose(losses.matching_accuracy(logits), 1.0)
    np.testing.assert_allclose(losses.matching_accuracy(tf.constant([[0.0, 1.0], [0.0, 2.0]])), 0.5)


def test_content_loss_lower_for_aligned_than_shuffled_audio():
    rng = np.random.default_rng(0)
    face = _unit(rng.normal(size=(4, 12, 16)))
    audio = _unit(face.numpy() + 0.3 * rng.normal(size=(4, 12, 16)))
    shuffled = tf.gather(audio, rng.permutation(12), axis=1)
    sim = ScaledCosine()
    aligned_loss = losses.content_loss(losses.content_logits(face, audio, sim))
    shuffled_loss = losses.content_loss(losses.content_logits(face, shuffled, sim))
    assert float(aligned_loss) < float(shuffled_loss) - 1.0
    assert float(losses.matching_accuracy(losses.content_logits(face, audio, sim))) > 0.9


def test_content_logits_are_within_track():
    face = _unit([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    sim = ScaledCosine(init_scale=1.0, init_bias=0.0)
    logits = losses.content_logits(face, face, sim).numpy()
    assert logits.shape == (2, 2, 2)
    np.testing.assert_allclose(logits[0], np.eye(2), atol=1e-6)


def test_identity_loss_symmetric_is_mean_of_both_directions():
    logits = tf.constant([[3.0, 1.0, 0.0], [2.0, 0.5, 0.0], [0.0, 1.0, 4.0]])
    forward = losses.matching_cross_entropy(logits)
    backward = losses.matching_cross_entropy(tf.transpose(logits))
    np.testing.assert_allclose(losses.identity_loss(logits), forward, rtol=1e-6)
    np.testing.assert_allclose(losses.identity_loss(logits, symmetric=True),
                               0.5 * (forward + backward), rtol=1e-6)


def test_uniform_confusion_is_minimal_at_uniform_predictions():
    k = 7
    uniform = tf.zeros([3, k])
    np.testing.assert_allclose(losses.uniform_confusion(uniform), np.log(k), rtol=1e-6)
    rng = np.random.default_rng(1)
    for _ in range(20):
        peaked = tf.constant(rng.normal(size=(3, k)) * 3, tf.float32)
        assert float(losses.uniform_confusion(peaked)) > np.log(k)
    x = tf.Variable(tf.fill([2, k], 1.5))
    with tf.GradientTape() as tape:
        value = losses.uniform_confusion(x)
    np.testing.assert_allclose(tape.gradient(value, x), 0.0, atol=1e-7)


def test_time_pool_and_select_steps():
    seq = tf.constant([[[3.0, 0.0], [0.0, 0.0], [1.0, 0.0]]])
    np.testing.assert_allclose(losses.time_pool(seq), [[1.0, 0.0]])
    picked = losses.select_steps(tf.constant(np.arange(12.0).reshape(2, 3, 2)), tf.constant([2, 0]))
    np.testing.assert_allclose(picked, [[4.0, 5.0], [6.0, 7.0]])
