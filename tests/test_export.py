"""SavedModel export: round trip, signatures, in-graph input checks, saved_model_cli."""

import numpy as np
import pytest
import tensorflow as tf

from av_disentangle.config import LossConfig, ModelConfig
from av_disentangle.export import SIGNATURES, export_saved_model, next_version_dir
from av_disentangle.model import DisentangleModel
from conftest import run_script


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = DisentangleModel(ModelConfig.tiny(), LossConfig())
    root = tmp_path_factory.mktemp("export")
    path = export_saved_model(model.face_stream, model.audio_stream, model.model_config,
                              next_version_dir(str(root / "tiny")))
    return model, path


def test_export_round_trip_matches_keras(exported):
    model, path = exported
    assert path.endswith("/tiny/1")
    loaded = tf.saved_model.load(path)
    assert set(SIGNATURES) <= set(loaded.signatures)
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.normal(size=(2, 25 * 640))).astype(np.float32)
    frames = rng.integers(0, 256, (2, 25, 32, 32, 3), dtype=np.uint8)
    sr = tf.constant(16000)
    keras_audio = model.audio_stream(wave, training=False)
    keras_face = model.face_stream(frames, training=False)
    emb = loaded.signatures["serving_default"](waveform=wave, sample_rate=sr)["embedding"]
    expected = tf.math.l2_normalize(tf.reduce_mean(keras_audio["identity"], 1), -1)
    np.testing.assert_allclose(emb, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    content = loaded.signatures["content"](waveform=wave, sample_rate=sr)["content"]
    np.testing.assert_allclose(content, keras_audio["content"], atol=1e-5)
    face_emb = loaded.signatures["embed_face"](frames=frames)["embedding"]
    np.testing.assert_allclose(
        face_emb, tf.math.l2_normalize(tf.reduce_mean(keras_face["identity"], 1), -1), atol=1e-5)
    face_content = loaded.signatures["face_content"](frames=frames)["content"]
    assert face_content.shape == content.shape


def test_serving_signature_rejects_bad_input_clearly(exported):
    _, path = exported
    serve = tf.saved_model.load(path).signatures["serving_default"]
    wave = np.zeros((1, 16000), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="sample_rate must be 16000 Hz"):
        serve(waveform=wave, sample_rate=tf.constant(44100))
    with pytest.raises(tf.errors.InvalidArgumentError, match="waveform is too short"):
        serve(waveform=wave[:, :4000], sample_rate=tf.constant(16000))
    with pytest.raises((ValueError, TypeError), match="waveform"):
        serve(waveform=np.zeros((16000,), np.float32), sample_rate=tf.constant(16000))
    with pytest.raises(FileExistsError, match="already exists"):
        model, _ = exported
        export_saved_model(model.face_stream, model.audio_stream, model.model_config, path)


def test_saved_model_cli_show_and_run(exported, tmp_path):
    _, path = exported
    shown = run_script(["-m", "tensorflow.python.tools.saved_model_cli", "show", "--dir", path,
                        "--all"], timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "signature_def['serving_default']" in shown.stdout
    assert "signature_def['embed_face']" in shown.stdout
    wave = tmp_path / "wave.npy"
    np.save(wave, (0.1 * np.random.default_rng(1).normal(size=(1, 48000))).astype(np.float32))
    rate = tmp_path / "rate.npy"
    np.save(rate, np.int32(16000))
    out = tmp_path / "out"
    ran = run_script(["-m", "tensorflow.python.tools.saved_model_cli", "run", "--dir", path,
                      "--tag_set", "serve", "--signature_def", "serving_default",
                      "--inputs", f"waveform={wave};sample_rate={rate}", "--outdir", str(out)],
                     timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    embedding = np.load(out / "embedding.npy")
    assert embedding.shape == (1, 16)
    np.testing.assert_allclose(np.linalg.norm(embedding), 1.0, rtol=1e-5)
