"""Parity with joonson/syncnet_trainer's own code, number for number (no PyTorch needed).

`fixtures/syncnet_trainer_parity.npz` holds what the reference's code computed
(`fixtures/make_syncnet_trainer_fixture.py` ran its `SyncNetModelFBank`, `SyncNetDist` and
`dataLoader` on CPU) with the seeded weights of `reference_weights.py`, which are regenerated
here, and its calibrated BatchNorm statistics and torchaudio's front-end buffers, which are
stored. A model converted from that state dict (`av_disentangle.convert`) must reproduce:
  - `forward_aud` / `forward_vid` per step (eval mode), relative error <= 1e-4;
  - `evaluateFromListSave` (10 crops of 32,240 samples, raw time mean, mean of the 10 x 10
    cosines) through the exported SavedModel and `evaluation.verification`, to 1e-5;
  - its `sync_loss` and identity term on a training batch with its random face step;
  - the gradients of its training step (float64 on both sides, 1e-4) and one step of our SGD
    (momentum 0.9, weight decay 1e-5, its effective learning rate 1e-4).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from av_disentangle import compat, convert
from av_disentangle.config import REFERENCE_LEARNING_RATE, LossConfig, ModelConfig, TrainConfig
from av_disentangle.constants import AUDIO, FACE_STEP, FRAMES
from av_disentangle.melscale import hann_window, mel_filterbank
from av_disentangle.model import DisentangleModel
from av_disentangle.training import make_optimizer

sys.path.insert(0, os.path.dirname(__file__))
from reference_weights import (SEED, load_fixture, reference_state,  # noqa: E402
                               seeded_parameters)

HERE = os.path.dirname(os.path.abspath(__file__))
WAV_DIR = os.path.join(HERE, "fixtures", "syncnet_trainer")
# Conv biases right before a BatchNorm: their gradient is zero in exact arithmetic (the
# BatchNorm subtracts them), so their one-step update is rounding noise on both sides.
PRE_BATCHNORM_BIAS = re.compile(r"(netcnn(aud|lip)\.(0|4|8|11|14|18)|netfc\w+\.0)\.bias$")


@pytest.fixture(scope="module")
def ref():
    return load_fixture()


def converted(ref, loss_config: LossConfig | None = None) -> DisentangleModel:
    state = reference_state(ref)
    config = convert.config_from_state(state)
    convert.check_state(state, config)
    model = DisentangleModel(config, loss_config or LossConfig(disentangle="none"))
    convert.assign_streams(model.face_stream, model.audio_stream, state)
    convert.assign_similarities(model, state)
    return model


def faces(ref) -> np.ndarray:
    """(B, T, 224, 224, 3) uint8 RGB: the stored 112-px frames as 2 x 2 blocks, as the
    reference saw them."""
    return ref["frames_112"].repeat(2, axis=2).repeat(2, axis=3)


def waveform(int16: np.ndarray) -> np.ndarray:
    """int16 samples -> our [-1, 1] float32 input (exact: a power-of-two scale)."""
    return int16.astype(np.float32) / 32768.0


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))


def training_batch(ref) -> dict[str, tf.Tensor]:
    return {FRAMES: tf.constant(faces(ref)), AUDIO: tf.constant(waveform(ref["train_audio"])),
            FACE_STEP: tf.constant(int(ref["face_step"]))}


def test_fixture_weights_regenerate_from_the_seed(ref):
    """The numpy draw of the weights is the one the fixture was made with (else every other
    test here would fail for the wrong reason)."""
    state = reference_state(ref)
    params = seeded_parameters({k: v.shape for k, v in state.items()}, SEED)
    total = sum(float(np.sum(np.abs(v))) for v in params.values())
    assert total == pytest.approx(float(ref["param_checksum"]), rel=1e-12)
    assert str(ref["reference_commit"]).startswith("15e5cfc")


def test_front_end_constants_equal_torchaudios_buffers(ref):
    np.testing.assert_allclose(hann_window(), ref["buffer/__S__.torchfb.spectrogram.window"],
                               atol=1e-6)
    # torchaudio computes its triangles in float32, ours in float64: 3e-6 apart at most.
    np.testing.assert_allclose(mel_filterbank(40), ref["buffer/__S__.torchfb.mel_scale.fb"],
                               atol=1e-5)


def test_converted_streams_equal_forward_aud_and_forward_vid(ref):
    """Eval mode, per step, content and identity: the reference's (B, D, T') outputs."""
    model = converted(ref)
    assert model.model_config == convert.config_from_state(reference_state(ref))
    for key in ("eval_audio", "train_audio"):  # 32,240 samples (200 mel frames), 8,560 (52)
        out = model.audio_stream(waveform(ref[key]), training=False)
        for head in ("content", "identity"):
            theirs = ref[f"{key}_{head}"].transpose(0, 2, 1)
            assert out[head].shape == theirs.shape, (key, head)
            assert relative_error(out[head].numpy(), theirs) <= 1e-4, (key, head)
    out = model.face_stream(faces(ref), training=False)
    for head in ("content", "identity"):
        theirs = ref[f"face_{head}"].transpose(0, 2, 1)
        assert relative_error(out[head].numpy(), theirs) <= 1e-4, head


def test_state_dict_round_trip(ref):
    """Keras weights -> PyTorch layouts gives back the checkpoint, key for key."""
    state = reference_state(ref)
    model = converted(ref)
    back = convert.state_from_streams(model.face_stream, model.audio_stream, model)
    assert set(back) == set(convert.expected_shapes(model.model_config))
    for key, value in back.items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)


@pytest.mark.slow
def test_converted_export_scores_trials_as_evaluate_from_list_save(ref, tmp_path):
    """The user's path: `python -m av_disentangle.convert` on a state dict file, the SavedModel,
    and evaluate.py's embedding and scoring with the reference's protocol (10 crops of 32,240
    samples = --crop_seconds 2.015, evaluate.py's default for a converted model): the
    reference's crop embeddings and trial scores."""
    from av_disentangle.evaluation.exported import ExportedModel
    from av_disentangle.evaluation.scoring import score_pairs
    from av_disentangle.evaluation.verification import embed_files

    checkpoint = tmp_path / "reference.npz"
    np.savez(checkpoint, **{f"module.{k}": v for k, v in reference_state(ref).items()})
    export_dir = tmp_path / "syncnet_trainer" / "1"
    assert convert.main(["syncnet_trainer", str(checkpoint), "--export_dir",
                         str(export_dir)]) == 0
    assert (export_dir / "converted_from.json").is_file()

    files = [str(f) for f in ref["wav_files"]]
    emb, bad = embed_files(ExportedModel(export_dir), files, WAV_DIR, num_crops=10,
                           crop_seconds=2.015, batch_size=16)
    assert not bad and emb.shape == ref["crop_embeddings"].shape
    theirs = ref["crop_embeddings"] / np.linalg.norm(ref["crop_embeddings"], axis=-1,
                                                     keepdims=True)
    np.testing.assert_allclose(emb, theirs, atol=1e-5)
    index = {f: i for i, f in enumerate(files)}
    idx1 = np.array([index[a] for a, _ in ref["trial_files"]])
    idx2 = np.array([index[b] for _, b in ref["trial_files"]])
    labels = np.array([1, 0, 0], np.float32)  # the scores do not depend on the labels
    scores, _ = score_pairs(emb, emb, idx1, idx2, labels)
    np.testing.assert_allclose(scores, ref["trial_scores"], atol=1e-5)

    # evaluate.py itself, with its defaults: a converted model gets the reference's crop
    from av_disentangle.evaluation.cli import main as evaluate

    trials = tmp_path / "trials.txt"
    trials.write_text("".join(f"{lab:.0f} {a} {b}\n" for lab, (a, b) in
                              zip(labels, ref["trial_files"])))
    scores_out = tmp_path / "scores.txt"
    assert evaluate(["--model", str(export_dir), "--trials", str(trials), "--audio_root",
                     WAV_DIR, "--scores_out", str(scores_out)]) == 0
    written = [float(line.split()[0]) for line in scores_out.read_text().splitlines()]
    np.testing.assert_allclose(written, ref["trial_scores"], atol=1e-5)


def test_losses_equal_sync_loss_and_identity_term(ref):
    """Train mode (batch statistics), its face step: content = its `sync_loss`, identity =
    its loss minus that (its `alpC = alpI = 1`)."""
    model = converted(ref)
    result = model.compute_losses(training_batch(ref), training=True)
    content = float(ref["train_content_loss"])
    identity = float(ref["train_loss"]) - content
    assert float(result.values["content_loss"]) == pytest.approx(content, rel=1e-5)
    assert float(result.values["identity_loss"]) == pytest.approx(identity, rel=1e-5)
    assert float(result.main) == pytest.approx(float(ref["train_loss"]), rel=1e-5)


def _gradients(model: DisentangleModel, batch) -> dict[str, np.ndarray]:
    """d(loss)/d(parameter) in PyTorch layout and names (`convert.state_from_streams` of a
    copy of the model holding the gradients in place of the weights)."""
    with tf.GradientTape() as tape:
        loss = model.compute_losses(batch, training=True).main
    grads = dict(zip((id(v) for v in model.trainable_variables),
                     tape.gradient(loss, model.trainable_variables)))
    holder = DisentangleModel(model.model_config, model.loss_config)
    for source, target in zip(model.weights, holder.weights, strict=True):
        target.assign(tf.cast(grads.get(id(source), tf.zeros_like(source)), target.dtype))
    return convert.state_from_streams(holder.face_stream, holder.audio_stream, holder)


def test_training_step_gradients_equal_the_references_in_float64(ref):
    """Both sides in float64 (the fixture also ran its step in double precision; here Keras'
    floatx; our front end and similarity scales stay float32): every stream parameter's gradient
    to 1e-4 (measured: at most 6e-6), the similarity scales' to 1e-3. In float32 a
    ReLU whose input sits within rounding of 0 can flip, and one flip moved 1.6% of the audio
    trunk's gradient here; float64 leaves the semantics alone to compare."""
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        model = converted(ref)
        assert model.audio_stream.get_layer("audio_conv1").kernel.dtype == "float64"
        grads = _gradients(model, training_batch(ref))
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
    checked = 0
    for name in ref["parameter_names"]:
        if PRE_BATCHNORM_BIAS.search(name) or name in ("__L__.bI", "__L__.bC"):
            continue  # zero in exact arithmetic (a softmax cancels the biases too)
        theirs = ref[f"grad64/{name}"]
        ours = grads[name].reshape(-1)[ref[f"update_index/{name}"]]
        # The similarity scales stay float32 under any policy (`layers.ScaledCosine`).
        assert relative_error(ours, theirs) <= (1e-3 if name.startswith("__L__") else 1e-4), name
        checked += 1
    assert checked == 58  # of 76: 16 conv biases before a BatchNorm, 2 similarity biases


def test_one_sgd_step_leaves_the_references_weights(ref):
    """Our optimizer (`make_optimizer(TrainConfig.syncnet_trainer())`: SGD momentum 0.9, coupled
    weight decay 1e-5, lr 1e-4) through `train_step`: the weights after one step equal the
    reference's to 1e-5, and every parameter's update matches its float64 update to 5% plus
    the float32 spacing of the weight (the one-step updates are ~1e-4 x the gradient, near
    that spacing; 5% covers the ReLU flips of float32, a 10x learning rate would be 900%)."""
    assert float(ref["learning_rate"]) == REFERENCE_LEARNING_RATE
    train = TrainConfig.syncnet_trainer()
    assert train.learning_rate == REFERENCE_LEARNING_RATE
    model = converted(ref)
    before = reference_state(ref)
    model.compile(optimizer=make_optimizer(train))
    compat.build_optimizer(model)
    logs = model.train_step(training_batch(ref))
    assert float(logs["loss"]) == pytest.approx(float(ref["train_loss"]), rel=1e-5)
    after = convert.state_from_streams(model.face_stream, model.audio_stream, model)
    for name in ref["parameter_names"]:
        idx = ref[f"update_index/{name}"]
        w0 = before[name].reshape(-1)[idx]
        ours = after[name].reshape(-1)[idx]
        np.testing.assert_allclose(ours, w0 + ref[f"update/{name}"], atol=1e-5, err_msg=name)
        if PRE_BATCHNORM_BIAS.search(name):
            continue
        update64 = ref[f"update64/{name}"]
        spacing = np.spacing(np.abs(w0)).astype(np.float64)
        excess = np.linalg.norm((ours - w0) - update64) - np.linalg.norm(spacing)
        assert excess <= 0.05 * np.linalg.norm(update64), name
    # Running means and variances move as the reference's: momentum 0.1, and the variance's
    # update from the unbiased batch variance, as PyTorch's (`layers.FusedBatchNormalization`;
    # Keras' own BatchNormalization uses the biased one, 2% off here).
    for key in (k for k in ref if k.startswith("bn_after/")):
        name = key[len("bn_after/"):]
        assert relative_error(after[name], ref[key]) <= 1e-4, name


# === The converter's errors ===
def test_a_partial_or_wrong_checkpoint_is_one_line_naming_keys_and_shapes(ref, tmp_path):
    state = reference_state(ref)
    del state["__S__.netfcspk.3.weight"]
    state["__S__.netcnnaud.0.weight"] = state["__S__.netcnnaud.0.weight"][:, :, :4]
    state["__S__.extra.weight"] = np.zeros(3, np.float32)
    path = tmp_path / "bad.npz"
    np.savez(path, **state)
    with pytest.raises(convert.ConvertError) as err:
        convert.load_checkpoint(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "1 missing: __S__.netfcspk.3.weight" in message
    assert "__S__.netcnnaud.0.weight (96, 1, 4, 7) (expected (96, 1, 5, 7))" in message
    assert "1 unexpected: __S__.extra.weight" in message


def test_a_checkpoint_of_another_front_end_is_refused(ref, tmp_path):
    state = reference_state(ref)
    state["__S__.torchfb.mel_scale.fb"] = mel_filterbank(40, low_hz=20.0, high_hz=7600.0)
    path = tmp_path / "other_front_end.npz"
    np.savez(path, **state)
    with pytest.raises(convert.ConvertError, match="torchfb.mel_scale.fb is not torchaudio's"):
        convert.load_checkpoint(path)


def test_a_pytorch_file_without_torch_or_unreadable_is_one_line(tmp_path):
    path = tmp_path / "broken.model"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(convert.ConvertError) as err:
        convert.read_state_dict(path)
    try:
        import torch  # noqa: F401
        assert "not a readable PyTorch checkpoint" in str(err.value)
    except ImportError:
        assert "pip install -e '.[convert]'" in str(err.value)
    with pytest.raises(convert.ConvertError, match="checkpoint not found"):
        convert.read_state_dict(tmp_path / "missing.model")


def test_widths_and_embedding_size_come_from_the_checkpoint(ref):
    config = convert.config_from_state(reference_state(ref), temporal_stride=1)
    assert config == dataclasses.replace(ModelConfig.syncnet_trainer(), temporal_stride=1)
    assert convert.expected_shapes(config)["__S__.netcnnlip.18.weight"] == (512, 256, 1, 6, 6)


def test_a_real_pytorch_checkpoint_converts_like_its_state_dict(ref, tmp_path):
    """With torch installed (the `convert` extra): `torch.save` of the state dict, with the
    `module.` prefix DataParallel adds, reads back to the same arrays. Skipped without torch:
    the suite does not need it."""
    torch = pytest.importorskip("torch")
    state = reference_state(ref)
    path = tmp_path / "model000000001.model"
    torch.save({f"module.{k}": torch.from_numpy(np.array(v)) for k, v in state.items()}, path)
    read = convert.read_state_dict(path)
    assert set(read) == set(state)
    for key, value in state.items():
        np.testing.assert_array_equal(read[key], value, err_msg=key)
