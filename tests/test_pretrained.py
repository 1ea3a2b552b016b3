"""`--init_from` a reference checkpoint, the conventions that come with it, and the audit's
defects that live in configuration (learning rate, band edges, configs saved before them)."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import sys

import numpy as np
import pytest
import tensorflow as tf

from harness import run_train, tiny_model
from av_disentangle import convert, run
from av_disentangle.config import (LEGACY_MODEL_VALUES, REFERENCE_LEARNING_RATE, LossConfig,
                                   ModelConfig, to_dict)
from av_disentangle.features import log_mel_spectrogram
from av_disentangle.flags import build_parser, resolve_settings, settings_record
from av_disentangle.model import DisentangleModel
from av_disentangle.pretrained import check_init_from, load_streams
from av_disentangle.supervised import build_supervised_model
from av_disentangle.supervised_config import SupervisedConfig
from av_disentangle.errors import UserError
from conftest import REPO_ROOT, run_script, write_random_shard

sys.path.insert(0, os.path.dirname(__file__))
from reference_weights import load_fixture, reference_state  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """The parity fixture's state dict as an .npz checkpoint (DataParallel's `module.` keys)."""
    path = tmp_path_factory.mktemp("reference") / "baseline.npz"
    np.savez(path, **{f"module.{k}": v for k, v in reference_state(load_fixture()).items()})
    return str(path)


def test_a_reference_checkpoint_needs_the_reference_conventions(checkpoint):
    with pytest.raises(UserError) as err:
        check_init_from(checkpoint, ModelConfig.reference())
    message = str(err.value)
    assert "\n" not in message and "its --model_size was syncnet_trainer" in message
    for field in ("front_end", "face_pixels", "normalize_steps"):
        assert field in message
    source = check_init_from(checkpoint, ModelConfig.syncnet_trainer())
    assert source.kind == "syncnet_trainer"


def test_self_supervised_and_supervised_models_start_from_the_checkpoint(checkpoint):
    state = convert.strip_module_prefix(dict(np.load(checkpoint)))
    config = ModelConfig.syncnet_trainer()
    model = DisentangleModel(config, LossConfig())
    load_streams(model.face_stream, model.audio_stream, check_init_from(checkpoint, config),
                 model)
    back = convert.state_from_streams(model.face_stream, model.audio_stream, model)
    for key in ("__S__.netcnnaud.0.weight", "__S__.netfcface.3.bias", "__L__.wC", "__L__.bI"):
        np.testing.assert_array_equal(back[key], state[key], err_msg=key)
    classifier = build_supervised_model(config, SupervisedConfig(init_from=checkpoint), 3)
    audio = convert.state_from_streams(classifier.face_stream, classifier.audio_stream)
    np.testing.assert_array_equal(audio["__S__.netfcspk.3.weight"],
                                  state["__S__.netfcspk.3.weight"])


@pytest.mark.slow
def test_train_py_starts_a_self_supervised_run_from_the_checkpoint(checkpoint, tmp_path):
    """`train.py --init_from X --model_size syncnet_trainer`: one step at the reference's
    learning rate moves the weights by ~1e-4 x the gradient, so the first checkpoint is the
    reference's weights to 1e-3, not a fresh initialisation."""
    shard = write_random_shard(str(tmp_path / "shard-00000-of-00001.tfrecord"), 3,
                               face_size=224, min_frames=14)
    run_dir = tmp_path / "run"
    result = run_script(["train.py", "--train_data", shard, "--model_dir", str(run_dir),
                         "--model_size", "syncnet_trainer", "--init_from", checkpoint,
                         "--batch_tracks", "2", "--window_frames", "13", "--epochs", "1",
                         "--steps_per_epoch", "1", "--learning_rate", "1e-4", "--no_export",
                         "--verbose", "2"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "initialised the streams from" in result.stderr
    model = DisentangleModel(ModelConfig.syncnet_trainer(), LossConfig())
    model.load_weights(str(run_dir / "checkpoints" / "epoch-001.weights.h5"))
    trained = convert.state_from_streams(model.face_stream, model.audio_stream, model)
    state = convert.strip_module_prefix(dict(np.load(checkpoint)))
    for key in ("__S__.netcnnaud.4.weight", "__S__.netcnnlip.0.weight",
                "__S__.netfcspk.3.weight"):
        assert np.abs(trained[key] - state[key]).max() < 1e-3, key
        assert not np.array_equal(trained[key], state[key]), key  # and it did train


def test_a_wrong_init_from_checkpoint_stops_train_py_in_one_line(tmp_path, capsys):
    bad = tmp_path / "partial.npz"
    np.savez(bad, **{"__S__.netcnnaud.0.weight": np.zeros((96, 1, 5, 7), np.float32)})
    code, _, err = run_train(["--init_from", str(bad), "--model_size", "syncnet_trainer",
                              "--model_dir", str(tmp_path / "run")], capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("train.py: error: --init_from") and str(bad) in line, line
    assert "not a syncnet_trainer checkpoint" in line and "__S__.netcnnlip.0.weight" in line
    assert not (tmp_path / "run" / "config.json").exists()


# === Configuration the audit found wrong ===
def _readme_command(marker: str) -> list[str]:
    """The README's `python train.py ...` command (backslash continuations joined) that
    contains `marker`."""
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    commands = [line for line in text.splitlines()
                if line.strip().startswith("python train.py") and marker in line]
    assert commands, f"no train.py command with {marker} in README.md"
    return shlex.split(commands[0].strip())[2:]


def test_the_readme_reference_recipe_runs_the_references_learning_rate():
    """The reference trains at 1e-4 (SyncNetDist.py:25, 33: its --lr flag never reaches
    SGD); the recipe that claims to be it must say so, and prepare at the model's size."""
    settings = resolve_settings(build_parser().parse_args(_readme_command("--model_size reference")))
    assert settings.train.learning_rate == REFERENCE_LEARNING_RATE == 1e-4
    assert settings.train.batch_tracks == 30 and settings.train.window_frames == 50
    assert settings.train.optimizer == "sgd" and settings.train.weight_decay == 1e-5
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read().replace("\\\n", " ")
    prepare = [line for line in readme.splitlines()
               if "pipelines.prepare --source voxceleb2" in line]
    assert prepare and all(re.search(r"--face_size 224\b", line) for line in prepare), prepare


def test_the_default_front_end_has_the_references_bands():
    """0-8000 Hz as torchaudio's MelSpectrogram in the reference, not the 20-7600 Hz of
    before: a 7.8 kHz tone lands in the top band (above every band of `tf_mel_v1`)."""
    assert ModelConfig().front_end == ModelConfig.small().front_end == "centered"
    t = np.arange(16000) / 16000.0
    tone = np.sin(2 * np.pi * 7800 * t).astype(np.float32)[None]
    ours = log_mel_spectrogram(tone, normalize=False).numpy()[0].mean(axis=0)
    assert ours.argmax() == 39
    old = log_mel_spectrogram(tone, normalize=False, front_end="tf_mel_v1").numpy()[0]
    assert old.mean(axis=0).max() < ours.max() - 10  # nearly no energy in any old band


def test_centered_front_end_is_the_references_frames_one_later():
    """Before normalisation, our frame n is the reference's frame n + 1 (its first frame is
    dropped, ours is not): the same features, centred on sample 160 n."""
    wave = np.random.default_rng(0).normal(size=(2, 6400)).astype(np.float32) * 0.1
    ours = log_mel_spectrogram(wave, normalize=False).numpy()  # (2, 40, 40): frames 0..39
    theirs = log_mel_spectrogram(wave, normalize=False, front_end="syncnet_trainer").numpy()
    assert ours.shape == (2, 40, 40) and theirs.shape == (2, 39, 40)
    np.testing.assert_allclose(ours[:, 1:], theirs, rtol=1e-5, atol=1e-5)


def test_configs_saved_before_the_new_fields_keep_what_they_were_built_with():
    old = {k: v for k, v in to_dict(ModelConfig.small()).items() if k not in LEGACY_MODEL_VALUES}
    config = ModelConfig.from_saved(old)
    assert config.front_end == "tf_mel_v1" and config.normalize_steps
    assert config == dataclasses.replace(ModelConfig.small(), front_end="tf_mel_v1")
    # an old run's config.json: resuming it today names the front end, --front_end resumes it
    args = build_parser().parse_args(["--model_size", "small"])
    stored = {**settings_record(resolve_settings(args)), "model": old}
    diffs = run.config_differences(stored, settings_record(resolve_settings(args)))
    assert diffs == ['model.front_end: "tf_mel_v1" -> "centered"']
    args = build_parser().parse_args(["--model_size", "small", "--front_end", "tf_mel_v1"])
    assert run.config_differences(stored, settings_record(resolve_settings(args))) == []


def test_face_identity_is_one_step_for_the_whole_batch():
    """The reference draws one `ri` for the batch (SyncNetDist.py train_network)."""
    model = tiny_model()
    steps = tf.reshape(tf.range(2 * 4 * 3, dtype=tf.float32), (2, 4, 3))
    picked = model._face_identity(steps, training=True, face_step=tf.constant(2))
    np.testing.assert_array_equal(picked.numpy(), steps.numpy()[:, 2])
    for _ in range(5):
        drawn = model._face_identity(steps, training=True).numpy()
        step = int(drawn[0, 0] // 3) % 4
        np.testing.assert_array_equal(drawn, steps.numpy()[:, step])
