"""The DisentangleModel: one fitted step per mode, gradient routing, input pipeline contract."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from harness import tiny_model
from av_disentangle import disentangle, losses
from av_disentangle.constants import FACE_STEP
from av_disentangle.config import DISENTANGLE_MODES, LossConfig, ModelConfig
from av_disentangle.model import ACCURACY_NAMES, LOSS_NAMES, DisentangleModel, Losses
from pipelines.input import InputConfig, make_dataset

WINDOW = 9  # T' = 3 steps at temporal stride 2: the smallest window with a real content task


def _dataset(pattern, batch=4):
    return make_dataset(InputConfig(pattern, batch_tracks=batch, window_frames=WINDOW,
                                    face_size=ModelConfig.tiny().face_size, seed=0))


def _weights(model):
    return [v.numpy().copy() for v in model.trainable_variables]


@pytest.mark.parametrize("mode", DISENTANGLE_MODES)
def test_one_step_changes_weights_and_keeps_losses_finite(random_shards, mode):
    keras.utils.set_random_seed(0)
    model = tiny_model(disentangle=mode)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    before = _weights(model)
    history = model.fit(_dataset(random_shards, batch=2), epochs=1, steps_per_epoch=1,
                        verbose=0).history
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


LR = 0.5  # plain SGD, large enough that every update is far above float32 rounding


def _random_batch(tracks: int = 3, seed: int = 0) -> dict[str, tf.Tensor]:
    """A batch of noise (the routing of gradients does not need real clips)."""
    rng = np.random.default_rng(seed)
    size = ModelConfig.tiny().face_size
    shape = (tracks, WINDOW * 640)
    return {"frames": tf.constant(rng.integers(0, 256, (tracks, WINDOW, size, size, 3),
                                               dtype=np.uint8)),
            "audio": tf.constant(0.1 * rng.normal(size=shape), tf.float32),
            "audio_2": tf.constant(0.1 * rng.normal(size=shape), tf.float32)}


def _routing_model(mode: str, **loss_kwargs) -> DisentangleModel:
    """Tiny model with deterministic losses (time-mean face identity) and face_conv1 frozen.

    Frozen only for speed: TF's CPU Conv3D backprop of face_conv1 takes ~8 s a step, and it is
    fed by data, so freezing it changes no other gradient. Keras' `trainable = False` leaves
    the underlying tf.Variable trainable (GradientTape would still watch it and run the
    backprop), hence its TF-level flag is cleared too (TF 2.21; if that private flag ever goes,
    this only gets slower)."""
    keras.utils.set_random_seed(0)
    model = tiny_model(
        disentangle=mode, face_identity_pooling="mean", **loss_kwargs)
    conv1 = model.face_stream.get_layer("face_conv1")
    conv1.trainable = False
    for variable in conv1.weights:
        variable.value._trainable = False
    return model


def _gradients(model, batch, variables, **loss_fns):
    """{name: d loss_fns[name](terms) / d variables} at the current weights, training mode;
    `terms` holds the logged values plus `main` and `aux` (see `compute_losses`). Only
    `variables` are watched, so the backprop stays on their paths."""
    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        tape.watch([v.value for v in variables])
        values, main, aux = model.compute_losses(batch, training=True)
        terms = {**values, "main": main, "aux": aux}
        losses = {name: fn(terms) for name, fn in loss_fns.items()}
    return {name: tape.gradient(loss, variables) for name, loss in losses.items()}


def _sgd_step(model, batch, variables):
    """One real `train_step` with SGD(LR); returns the change of each of `variables`."""
    model.compile(optimizer=keras.optimizers.SGD(LR))
    model.optimizer.build(model.trainable_variables)
    before = [v.numpy().copy() for v in variables]
    model.train_step(batch)
    return [v.numpy() - b for v, b in zip(variables, before)]


def _assert_update(delta, grad, name):
    """The step moved the variable by exactly -LR * grad (and grad is not negligible)."""
    assert grad is not None, f"{name}: no gradient"
    expected = -LR * np.asarray(grad)
    scale = float(np.abs(expected).max())
    assert scale > 1e-5, f"{name}: zero gradient, the check would be vacuous"
    np.testing.assert_allclose(delta, expected, rtol=1e-3, atol=1e-3 * scale, err_msg=name)


def _max_abs(grads) -> float:
    return max(float(tf.reduce_max(tf.abs(g))) for g in grads if g is not None)


def _task_scales(model):
    return [model.content_similarity.scale, model.identity_similarity.scale]


def _task_scale_gradients(cfg):
    """What may move the tasks' w: a_c * L_content and a_i * L_identity, nothing else."""
    return {"content": lambda t: cfg.content_weight * t["content_loss"],
            "identity": lambda t: cfg.identity_weight * t["identity_loss"]}


def test_confusion_leaves_the_task_scales_to_their_own_task():
    """`confusion`: the wrong-factor logits use the tasks' w (scale) frozen, so one real SGD
    step moves content_similarity.scale by -LR * a_c * dL_content/dw and identity_similarity.scale
    by -LR * a_i * dL_identity/dw; the confusion terms (which, unfrozen, would shrink w towards
    the uniform target instead of sharpening the task) contribute nothing, although they do
    train the streams."""
    model = _routing_model("confusion", identity_weight=0.7)
    batch = _random_batch()
    grads = _gradients(model, batch, _task_scales(model),
                       **_task_scale_gradients(model.loss_config))
    streams = _gradients(model, batch, model.audio_stream.trainable_variables,
                         confusion=lambda t: t["confusion_content"] + t["confusion_identity"])
    assert _max_abs(streams["confusion"]) > 1e-4
    delta = _sgd_step(model, batch, _task_scales(model))
    _assert_update(delta[0], grads["content"][0], "content scale")
    _assert_update(delta[1], grads["identity"][1], "identity scale")


def _aux_variables(model):
    """Auxiliary-head variables that get a gradient (their similarity bias cancels in the
    softmax, as the tasks' biases do)."""
    return [v for v in model.aux_content.trainable_variables
            + model.aux_identity.trainable_variables
            if not v.path.endswith("similarity/bias")]


def _assert_step_moves_heads_and_scales(model, batch, heads, head_grads, scales, scale_grads):
    """One real SGD step moves each auxiliary-head variable by -LR * `head_grads` and the
    content / identity scales by -LR * their own task's gradient only."""
    delta = _sgd_step(model, batch, heads + scales)
    for d, g, v in zip(delta, head_grads, heads):
        _assert_update(d, g, v.path)
    _assert_update(delta[-2], scale_grads["content"][0], "content scale")
    _assert_update(delta[-1], scale_grads["identity"][1], "identity scale")


def test_adversarial_heads_learn_from_their_cross_entropy_only():
    """`adversarial`: the auxiliary heads descend their own task CE (aux_loss) on stopped
    embeddings; the confusion loss, which also depends on them, must not move them, and their
    CE must not reach the streams. One real SGD step moves every head variable by
    -LR * d aux_loss / dv, although d main / dv is large; the tasks' scales as in `confusion`."""
    model = _routing_model("adversarial")
    batch = _random_batch()
    heads, scales = _aux_variables(model), _task_scales(model)
    grads = _gradients(model, batch, heads, aux=lambda t: t["aux"], main=lambda t: t["main"])
    assert _max_abs(grads["main"]) > 1e-3  # the confusion terms see the heads ...
    scale_grads = _gradients(model, batch, scales, **_task_scale_gradients(model.loss_config))
    streams = _gradients(model, batch, model.audio_stream.trainable_variables,
                         aux=lambda t: t["aux"],
                         confusion=lambda t: t["confusion_content"] + t["confusion_identity"])
    assert all(g is None for g in streams["aux"])  # ... the heads' CE stops before the streams
    assert _max_abs(streams["confusion"]) > 1e-4  # ... and the confusion trains the streams
    _assert_step_moves_heads_and_scales(model, batch, heads, grads["aux"], scales, scale_grads)


def test_grl_heads_descend_the_task_loss_that_the_streams_ascend():
    """`grl`: the heads sit after the reversal, so one real SGD step moves them by
    -LR * a_d * d(task CE)/dv, the gradient of the plain task CE (computed here with the
    reversal layers taken out): they learn the task, while the streams get the reversed
    gradient (next test); the tasks' scales as in `confusion`."""
    model = _routing_model("grl")
    batch = _random_batch()
    heads, scales = _aux_variables(model), _task_scales(model)
    cfg = model.loss_config
    matchers = (model.aux_content, model.aux_identity)
    reversals = [m.reverse for m in matchers]
    for matcher in matchers:
        matcher.reverse = None  # plain CE: what the heads must descend
    grads = _gradients(model, batch, heads, task=lambda t: cfg.disentangle_weight
                       * (t["confusion_content"] + t["confusion_identity"]))
    for matcher, reversal in zip(matchers, reversals):
        matcher.reverse = reversal
    scale_grads = _gradients(model, batch, scales, **_task_scale_gradients(cfg))
    _assert_step_moves_heads_and_scales(model, batch, heads, grads["task"], scales,
                                        scale_grads)


def test_grl_reverses_and_scales_the_stream_gradient_of_the_auxiliary_task():
    """The gradient of the grl task CE wrt a stream weight is -lambda times the gradient of
    the same CE without reversal (lambda = 0.5 here)."""
    batch = _random_batch()
    grl = _routing_model("grl", content_weight=0, identity_weight=0, grl_scale=0.5)
    head = grl.audio_stream.get_layer("audio_identity_fc8").kernel
    task = {"ce": lambda t: t["confusion_content"] + t["confusion_identity"]}
    reversed_grad = _gradients(grl, batch, [head], **task)["ce"][0]
    grl.aux_content.reverse.scale = -1.0  # reversal off: forward unchanged, grad * +1
    grl.aux_identity.reverse.scale = -1.0
    plain_grad = _gradients(grl, batch, [head], **task)["ce"][0]
    assert float(tf.reduce_max(tf.abs(plain_grad))) > 1e-5
    np.testing.assert_allclose(reversed_grad.numpy(), -0.5 * plain_grad.numpy(), rtol=1e-4,
                               atol=1e-7)


def test_model_output_lengths_match_between_streams():
    config = ModelConfig.tiny()
    model = DisentangleModel(config, LossConfig())
    for frames in (9, 15, 25):
        size = config.face_size
        batch = {"frames": np.zeros((2, frames, size, size, 3), np.uint8),
                 "audio": np.zeros((2, frames * 640), np.float32)}
        out = model(batch)
        assert out["face_content"].shape == out["audio_identity"].shape
        assert out["face_content"].shape == (2, config.num_steps(frames), config.embedding_dim)
        norms = np.linalg.norm(out["audio_content"].numpy(), axis=-1)
        np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_every_configurable_mode_is_a_registered_object():
    assert set(disentangle.MODES) == set(DISENTANGLE_MODES)
    for name, cls in disentangle.MODES.items():
        mode = disentangle.make_disentangler(LossConfig(disentangle=name), 16)
        assert type(mode) is cls and isinstance(mode, disentangle.DisentangleMode)
        has_heads = name in ("adversarial", "grl")
        assert (mode.aux_content is not None) == (mode.aux_identity is not None) == has_heads


def _expected_terms(model, batch):
    """The DESIGN.md formulas of every term, written out from the model's outputs and the pure
    loss functions (evaluation mode, one device): what `compute_losses` must return."""
    cfg, sg = model.loss_config, tf.stop_gradient
    out = model(batch, training=False)
    fc, fi = out["face_content"], out["face_identity"]
    ac, ai = out["audio_content"], out["audio_identity"]
    ac2, ai2 = out["audio_content_2"], out["audio_identity_2"]
    content = losses.matching_cross_entropy(model.content_similarity(fc, ac))
    i_logits = model.identity_similarity(losses.time_pool(fi), losses.time_pool(ai2))
    identity = 0.5 * (losses.matching_cross_entropy(i_logits)
                      + losses.matching_cross_entropy(tf.transpose(i_logits)))  # symmetric
    pooled_fc, pooled_ac2 = losses.time_pool(fc), losses.time_pool(ac2)
    zero = tf.constant(0.0)
    conf_c = conf_i = aux = zero
    if cfg.disentangle == "confusion":
        conf_c = losses.uniform_confusion(model.content_similarity(fi, ai))
        conf_i = losses.uniform_confusion(model.identity_similarity(pooled_fc, pooled_ac2))
    elif cfg.disentangle == "adversarial":
        aux = (losses.matching_cross_entropy(model.aux_content(sg(fi), sg(ai)))
               + losses.matching_cross_entropy(model.aux_identity(sg(pooled_fc), sg(pooled_ac2))))
        conf_c = losses.uniform_confusion(model.aux_content(fi, ai))
        conf_i = losses.uniform_confusion(model.aux_identity(pooled_fc, pooled_ac2))
    elif cfg.disentangle == "grl":
        conf_c = losses.matching_cross_entropy(model.aux_content(fi, ai))
        conf_i = losses.matching_cross_entropy(model.aux_identity(pooled_fc, pooled_ac2))
    main = (cfg.content_weight * content + cfg.identity_weight * identity
            + cfg.disentangle_weight * (conf_c + conf_i))
    return {"content_loss": content, "identity_loss": identity, "confusion_content": conf_c,
            "confusion_identity": conf_i, "aux_loss": aux, "main": main, "aux": aux,
            "loss": main + aux}


@pytest.mark.parametrize("mode", DISENTANGLE_MODES)
def test_compute_losses_returns_the_formulas_of_each_mode(mode):
    """The mode objects compute what the if/elif over modes computed (its formulas, kept here),
    to float32 rounding, with weights that make every term count."""
    keras.utils.set_random_seed(0)
    model = tiny_model(
        disentangle=mode, symmetric_identity=True, identity_weight=0.7, disentangle_weight=0.3)
    batch = _random_batch()
    result = model.compute_losses(batch, training=False)
    assert isinstance(result, Losses) and set(result.values) == set(LOSS_NAMES + ACCURACY_NAMES)
    got = {**result.values, "main": result.main, "aux": result.aux}
    for name, value in _expected_terms(model, batch).items():
        np.testing.assert_allclose(float(got[name]), float(value), rtol=1e-6, atol=1e-6,
                                   err_msg=name)
    assert float(got["content_loss"]) > 0 and float(got["identity_loss"]) > 0
    if mode != "none":
        assert float(got["confusion_content"]) > 0 and float(got["confusion_identity"]) > 0


def _one_step_update(policy: str, batch) -> tuple[dict, list[np.ndarray]]:
    """Losses and per-variable updates of one SGD step of the tiny model (seed 0) under a
    Keras precision policy."""
    from av_disentangle import compat
    from av_disentangle.config import TrainConfig
    from av_disentangle.training import make_optimizer

    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = tiny_model()
        model.compile(optimizer=make_optimizer(
            TrainConfig(optimizer="sgd", learning_rate=0.05)))
        compat.build_optimizer(model)
        before = [v.numpy().astype(np.float32) for v in model.trainable_variables]
        logs = model.train_step(batch)
        after = [v.numpy().astype(np.float32) for v in model.trainable_variables]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return ({k: float(v) for k, v in logs.items()}, [a - b for a, b in zip(after, before)])


def test_a_bfloat16_step_keeps_losses_and_updates_finite_and_close_to_float32():
    """`--mixed_precision bfloat16` (the CPU's matrix units): the same step as float32 up to
    bf16's 8-bit mantissa - losses within 2%, every variable's update finite and pointing the
    same way (cosine > 0.8 per variable, > 0.9 for the whole update), the whole update's
    norm within 10%."""
    batch = {**_random_batch(), FACE_STEP: tf.constant(1)}  # no random draw between the two
    logs32, updates32 = _one_step_update("float32", batch)
    logs16, updates16 = _one_step_update("mixed_bfloat16", batch)
    for name in ("loss", "content_loss", "identity_loss", "confusion_content"):
        assert np.isfinite(logs16[name]), name
        assert logs16[name] == pytest.approx(logs32[name], rel=0.02), name
    moved, cosines = 0, []
    for u32, u16 in zip(updates32, updates16):
        assert np.all(np.isfinite(u16))
        if np.linalg.norm(u32) > 1e-6:
            cosine = float(np.dot(u32.ravel(), u16.ravel())
                           / (np.linalg.norm(u32) * np.linalg.norm(u16)))
            cosines.append(cosine)
            moved += 1
    assert min(cosines) > 0.8, sorted(cosines)[:5]  # measured: 0.85 at the least
    assert moved > 20
    all32 = np.concatenate([u.ravel() for u in updates32])
    all16 = np.concatenate([u.ravel() for u in updates16])
    assert np.dot(all32, all16) / (np.linalg.norm(all32) * np.linalg.norm(all16)) > 0.9  # 0.94
    assert np.linalg.norm(all16) == pytest.approx(np.linalg.norm(all32), rel=0.1)


def test_a_float16_step_wraps_the_optimizer_in_loss_scaling_and_stays_finite():
    """`--mixed_precision float16` (GPUs): compile wraps our SGD in Keras' dynamic
    LossScaleOptimizer and train_step scales the loss with `optimizer.scale_loss`. Its first
    steps overflow float16 at the initial scale 2**15 and are skipped (scale halved each
    time); the first step it applies is the float32 step's update (norm within 10%, cosine
    > 0.9), with the losses within 2%. Never scaled by train_step, the applied update would
    shrink by the loss scale; never applied, the loop would not end."""
    from av_disentangle import compat
    from av_disentangle.config import TrainConfig
    from av_disentangle.training import make_optimizer

    batch = {**_random_batch(), FACE_STEP: tf.constant(1)}
    logs32, updates32 = _one_step_update("float32", batch)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = tiny_model()
        model.compile(optimizer=make_optimizer(
            TrainConfig(optimizer="sgd", learning_rate=0.05)))
        compat.build_optimizer(model)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        before = [v.numpy().astype(np.float32) for v in model.trainable_variables]
        for skipped in range(12):
            logs = {k: float(v) for k, v in model.train_step(batch).items()}
            after = [v.numpy().astype(np.float32) for v in model.trainable_variables]
            if any(np.any(a != b) for a, b in zip(after, before)):
                break
        else:
            raise AssertionError("12 float16 steps and no update applied")
        scale = float(model.optimizer.dynamic_scale)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert scale == 2.0 ** (15 - skipped), (scale, skipped)  # measured: 4 skipped, 2**11
    for name in ("loss", "content_loss", "identity_loss"):
        assert logs[name] == pytest.approx(logs32[name], rel=0.02), name
    all32 = np.concatenate([u.ravel() for u in updates32])
    all16 = np.concatenate([a.ravel() - b.ravel() for a, b in zip(after, before)])
    assert np.all(np.isfinite(all16))
    assert np.dot(all32, all16) / (np.linalg.norm(all32) * np.linalg.norm(all16)) > 0.9
    assert np.linalg.norm(all16) == pytest.approx(np.linalg.norm(all32), rel=0.1)
