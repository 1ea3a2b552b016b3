"""The reference schedule and regularisation: lr decay every `lr_decay_steps` steps (not per
epoch) and PyTorch-style (coupled) weight decay, against hand-computed numbers.

Reference (github joonson/syncnet_trainer): SyncNetDist.py:33
`torch.optim.SGD(self.parameters(), lr=learning_rate, momentum=0.9, weight_decay=1e-5)`;
trainSyncNet.py:24,38,138 x0.95 after every epoch of 100,000 tracks (batch 30; it runs lr 1e-4, see
config.TrainConfig).
"""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from harness import tiny_model
from av_disentangle import flags
from av_disentangle.training import TrainConfig, current_learning_rate, make_optimizer


@pytest.mark.parametrize("steps_per_epoch", [5, 50, 3333])
def test_learning_rate_decays_every_lr_decay_steps_whatever_the_epoch_length(steps_per_epoch):
    config = TrainConfig(steps_per_epoch=steps_per_epoch, lr_decay_steps=100)
    optimizer = make_optimizer(config)
    optimizer.build([tf.Variable(0.0)])
    for step in (0, 1, 99, 100, 101, 250, 1000, 5000):
        optimizer.iterations.assign(step)
        expected = config.learning_rate * 0.95 ** math.floor(step / 100)
        assert current_learning_rate(optimizer) == pytest.approx(expected, rel=1e-6), step


def test_default_schedule_is_the_reference_one():
    """x0.95 after 3,333 steps (100,000 tracks of batch 30), whatever steps_per_epoch is."""
    for optimizer_name in ("sgd", "adam"):
        optimizer = make_optimizer(TrainConfig(steps_per_epoch=50, optimizer=optimizer_name))
        optimizer.build([tf.Variable(0.0)])
        lrs = []
        for step in (0, 3332, 3333, 6665, 6666):
            optimizer.iterations.assign(step)
            lrs.append(current_learning_rate(optimizer))
        lr = TrainConfig().learning_rate
        np.testing.assert_allclose(lrs, [lr, lr, 0.95 * lr, 0.95 * lr, 0.95 ** 2 * lr],
                                   rtol=1e-6)


def test_sgd_weight_decay_is_coupled_l2_as_in_pytorch():
    """Two SGD steps with the same gradient g, hand-computed with PyTorch's SGD
    (d = g + wd * w; buf = d on the first step, else 0.9 * buf + d; w -= lr * buf):
      w0 = [1, -2, 3], g = [0.5, 0.1, -0.3], lr = 0.1, wd = 0.01
      d1 = [0.51, 0.08, -0.27]             w1 = [0.949, -2.008, 3.027]
      d2 = [0.50949, 0.07992, -0.26973]    buf2 = [0.96849, 0.15192, -0.51273]
      w2 = [0.8521510, -2.0231920, 3.0782730]
    Keras' own decoupled `weight_decay` gives w2 = [0.853051, -2.024992, 3.080973]."""
    config = TrainConfig(optimizer="sgd", learning_rate=0.1, weight_decay=0.01)
    optimizer = make_optimizer(config)
    w = tf.Variable([1.0, -2.0, 3.0])
    g = tf.constant([0.5, 0.1, -0.3])
    optimizer.apply([g], [w])
    np.testing.assert_allclose(w.numpy(), [0.949, -2.008, 3.027], rtol=1e-6)
    optimizer.apply([g], [w])
    np.testing.assert_allclose(w.numpy(), [0.852151, -2.023192, 3.078273], rtol=1e-6)


def test_weight_decay_reaches_every_trainable_variable():
    """As PyTorch's `weight_decay` on `self.parameters()` (SyncNetDist.py:33): conv/dense
    kernels and biases, BatchNorm gammas/betas and the similarity scales/biases (the reference's
    LossScale wI, bI, wC, bC are among those parameters). With a zero gradient one SGD step
    multiplies each by (1 - lr * wd); BN moving statistics (not trainable) are untouched."""
    model = tiny_model(disentangle="adversarial")
    optimizer = make_optimizer(TrainConfig(optimizer="sgd", learning_rate=0.1,
                                           weight_decay=0.01))
    variables = model.trainable_variables
    names = " ".join(v.path for v in variables)
    assert "gamma" in names and "beta" in names and "similarity/bias" in names
    before = [v.numpy().copy() for v in variables]
    frozen_before = [v.numpy().copy() for v in model.non_trainable_variables]
    optimizer.apply([tf.zeros_like(v) for v in variables], variables)
    for b, v in zip(before, variables):
        np.testing.assert_allclose(v.numpy(), b * (1 - 0.1 * 0.01), rtol=1e-6, err_msg=v.path)
    for b, v in zip(frozen_before, model.non_trainable_variables):
        np.testing.assert_array_equal(v.numpy(), b)


def test_weight_decay_zero_is_plain_sgd_and_flags_reach_the_config():
    args = flags.parse_flags(["--optimizer", "sgd", "--lr_decay_steps", "1667",
                              "--weight_decay", "0"])
    _, _, config = flags.resolve_configs(args)
    assert config.lr_decay_steps == 1667 and config.weight_decay == 0.0
    optimizer = make_optimizer(dataclasses.replace(config, learning_rate=0.1))
    w = tf.Variable([1.0, -2.0])
    optimizer.apply([tf.constant([0.5, 0.1])], [w])
    np.testing.assert_allclose(w.numpy(), [0.95, -2.01], rtol=1e-6)
    with pytest.raises(ValueError, match="lr_decay_steps"):
        TrainConfig(lr_decay_steps=0)
    with pytest.raises(ValueError, match="weight_decay"):
        TrainConfig(weight_decay=-1e-5)

