"""The DisentangleModel: one fitted step per mode, gradient routing, input pipeline contract."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from av_disentangle.config import DISENTANGLE_MODES, LossConfig, ModelConfig
from av_disentangle.model import ACCURACY_NAMES, LOSS_NAMES, DisentangleModel
from pipelines.input import InputConfig, make_dataset

WINDOW = 15


def _dataset(pattern, batch=4):
    return make_dataset(InputConfig(pattern, batch_tracks=batch, window_frames=WINDOW,
                                    face_size=32, seed=0))


def _weights(model):
    return [v.numpy().copy() for v in model.trainable_variables]


@pytest.mark.parametrize("mode", DISENTANGLE_MODES)
def test_one_step_changes_weights_and_keeps_losses_finite(random_shards, mode):
    keras.utils.set_random_seed(0)
    model = DisentangleModel(ModelConfig.tiny(), LossConfig(disentangle=mode))
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    before = _weights(model)
    history = model.fit(_dataset(random_shards), epochs=1, steps_per_epoch=1, verbose=0).history
    assert set(history) == set(LOSS_NAMES + ACCURACY_NAMES)
    assert all(np.isfinite(v[-1]) for v in history.values())
    unchanged = {v.path for v, b in zip(model.trainable_variables, before)
                 if np.array_equal(v.numpy(), b)}
    # Every weight moves except the similarity biases: softmax is shift-invariant, so the
    # bias of w * cos + b gets exactly zero gradient (the reference code has it all the same).
    assert unchanged and all(p.endswith("similarity/bias") for p in unchanged), unchanged
    if mode == "none":
        assert history["confusion_content"][-1] == 0.0 and history["aux_loss"][-1] == 0.0
    else:
        assert history["confusion_content"][-1] > 0.0


def test_adversarial_confusion_does_not_train_auxiliary_heads(random_shards):
    """Aux heads must be updated by their own CE only: with aux weight 0 they must stay put
    even though the confusion loss depends on them."""
    model = DisentangleModel(ModelConfig.tiny(), LossConfig(disentangle="adversarial"))
    batch = next(iter(_dataset(random_shards)))
    aux_vars = model.aux_content.trainable_variables + model.aux_identity.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        _, main, aux = model.compute_losses(batch, training=True)
    main_grads = tape.gradient(main, aux_vars)
    aux_grads = tape.gradient(aux, aux_vars)
    stream_grads = tape.gradient(aux, model.audio_stream.trainable_variables)
    assert any(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in main_grads)
    assert all(g is not None for g in aux_grads)  # aux CE trains aux heads ...
    assert all(g is None for g in stream_grads)  # ... and nothing upstream of them
    # train_step applies main-loss gradients to non-aux variables only:
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    model.optimizer.build(model.trainable_variables)
    before = [v.numpy().copy() for v in aux_vars]
    model.train_step(batch)
    for b, v in zip(before, aux_vars):
        np.testing.assert_array_equal(b, v.numpy())


def test_grl_reverses_stream_gradient_of_the_auxiliary_task(random_shards):
    batch = next(iter(_dataset(random_shards)))
    grl = DisentangleModel(ModelConfig.tiny(), LossConfig(disentangle="grl",
                                                          content_weight=0, identity_weight=0))
    with tf.GradientTape() as tape:
        values, main, _ = grl.compute_losses(batch, training=False)
        aux_ce = values["confusion_content"] + values["confusion_identity"]
    # Gradient of the reversed task wrt the last identity-head layer equals minus the
    # gradient of the same CE computed without reversal (lambda = 1).
    head = grl.audio_stream.get_layer("audio_identity_fc8").kernel
    reversed_grad = tape.gradient(aux_ce, head)
    grl.aux_content.reverse.scale = -1.0  # turn reversal off: forward unchanged, grad * +1
    grl.aux_identity.reverse.scale = -1.0
    with tf.GradientTape() as tape:
        values, _, _ = grl.compute_losses(batch, training=False)
        plain = values["confusion_content"] + values["confusion_identity"]
    plain_grad = tape.gradient(plain, head)
    np.testing.assert_allclose(float(aux_ce), float(plain), rtol=1e-6)
    np.testing.assert_allclose(reversed_grad.numpy(), -plain_grad.numpy(), rtol=1e-4, atol=1e-7)


def test_model_output_lengths_match_between_streams():
    config = ModelConfig.tiny()
    model = DisentangleModel(config, LossConfig())
    for frames in (9, 15, 25):
        batch = {"frames": np.zeros((2, frames, 32, 32, 3), np.uint8),
                 "audio": np.zeros((2, frames * 640), np.float32)}
        out = model(batch)
        assert out["face_content"].shape == out["audio_identity"].shape
        assert out["face_content"].shape == (2, config.num_steps(frames), config.embedding_dim)
        norms = np.linalg.norm(out["audio_content"].numpy(), axis=-1)
        np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
