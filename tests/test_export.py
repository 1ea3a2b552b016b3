"""SavedModel export: round trip, signatures, in-graph input checks, saved_model_cli."""

import os
import numpy as np
import pytest
import tensorflow as tf

from harness import assert_export_matches_keras, tiny_model
from av_disentangle.export import export_saved_model
from conftest import run_script


@pytest.fixture(scope="module")
def exported(tiny_export):
    return tiny_export


def test_export_round_trip_matches_keras(exported):
    model, path = exported
    assert path.endswith("/av_disentangle/1")
    assert_export_matches_keras(model, path)


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


class _ServedModel:
    """Runs signatures as tensorflow_model_server does, through a C++ Session::Run that does NOT
    check fed tensors against the signature's declared shapes (Python's Session.run and the
    eager signature call do, and would hide the in-graph check from the test)."""

    def __init__(self, path: str) -> None:
        self.session = tf.compat.v1.Session(graph=tf.Graph())
        self.meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)

    def __call__(self, signature: str, inputs: dict) -> list[np.ndarray]:
        sig = self.meta.signature_def[signature]
        graph = self.session.graph
        feeds = {graph.get_tensor_by_name(sig.inputs[k].name)._as_tf_output(): v
                 for k, v in inputs.items()}
        fetches = [graph.get_tensor_by_name(t.name)._as_tf_output()
                   for t in sig.outputs.values()]
        return self.session._call_tf_sessionrun(None, feeds, fetches, [], None)


def test_serving_signatures_reject_non_finite_waveform(exported):
    """One NaN/Inf sample used to give a normal-looking (unit-norm or zero) embedding."""
    _, path = exported
    loaded = tf.saved_model.load(path)
    wave = (0.1 * np.random.default_rng(2).normal(size=(3, 16000))).astype(np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        wave[1, 1234] = bad
        for name in ("serving_default", "embed_audio", "content"):
            with pytest.raises(tf.errors.InvalidArgumentError,
                               match=r"(?s)waveform has NaN or Inf samples.*"
                                     r"Batch rows with NaN/Inf:\] \[1\]"):
                loaded.signatures[name](waveform=wave, sample_rate=tf.constant(16000))
    wave[1, 1234] = 0.0  # the same batch without the bad sample is accepted
    out = loaded.signatures["serving_default"](waveform=wave, sample_rate=tf.constant(16000))
    assert np.all(np.isfinite(out["embedding"]))


def test_serving_wrong_rank_named_as_served(exported):
    """TF Serving feeds the request tensor unchecked: a 1-D waveform failed deep in the graph
    with 'slice index 1 of dimension 0 out of bounds'; 4-D frames failed in a convolution."""
    model, path = exported
    size = model.model_config.face_size
    served = _ServedModel(path)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"(?s)waveform must be float32 \(batch, samples\).*\[16000\]"):
        served("serving_default", {"waveform": np.zeros(16000, np.float32),
                                   "sample_rate": np.int32(16000)})
    for wrong in (np.float32(0.5), np.zeros((1, 16000, 1), np.float32)):  # rank 0 and 3
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"\(batch, samples\)"):
            served("serving_default", {"waveform": wrong, "sample_rate": np.int32(16000)})
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"frames must be uint8 \(batch, time, height, width, 3\)"):
        served("embed_face", {"frames": np.zeros((25, size, size, 3), np.uint8)})
    wave = np.zeros((1, 16000), np.float32)
    wave[0, 7] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="waveform has NaN or Inf"):
        served("serving_default", {"waveform": wave, "sample_rate": np.int32(16000)})
    wave[0, 7] = 0.0
    (embedding,) = served("serving_default", {"waveform": wave, "sample_rate": np.int32(16000)})
    assert embedding.shape[0] == 1 and np.all(np.isfinite(embedding))
    (embedding,) = served("embed_face", {"frames": np.zeros((1, 25, size, size, 3), np.uint8)})
    assert embedding.shape[0] == 1
    served.session.close()


def test_a_full_disk_during_export_is_one_error_naming_the_folder(tmp_path, monkeypatch):
    """The export ended in a raw ResourceExhaustedError and left its half-written `.tmp`."""
    from av_disentangle import export
    from av_disentangle.errors import DiskFullError

    class Full:
        def write_out(self, path, **kwargs):
            os.makedirs(os.path.join(path, "variables"))
            open(os.path.join(path, "variables", "part"), "wb").write(b"x" * 100)
            raise tf.errors.ResourceExhaustedError(
                None, None, f"{path}/variables/variables.data-00000-of-00001; No space left "
                            "on device")

    monkeypatch.setattr(export, "build_export_archive", lambda *args: Full())
    model = tiny_model()
    target = str(tmp_path / "m" / "1")
    with pytest.raises(DiskFullError, match=rf"no space left on device writing {target};"):
        export_saved_model(model.face_stream, model.audio_stream, model.model_config, target)
    assert os.listdir(tmp_path / "m") == []  # neither the export nor its temp folder


def _graph_dtypes(concrete) -> set[str]:
    """Every dtype attribute of every op in a concrete function's graph and its library."""
    graph = concrete.graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return {tf.dtypes.as_dtype(v.type).name for n in nodes for v in n.attr.values()
            if v.WhichOneof("value") == "type"}


def test_a_bfloat16_model_is_exported_computing_in_float32(tmp_path):
    """A model trained under mixed_bfloat16 (train.py's default on bf16 CPUs) is served in
    float32: no bfloat16 op in the export, the same embedding as float32 streams holding its
    weights (1e-5); `compute_dtype=None` keeps bfloat16 (and differs)."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(3)
        mixed = tiny_model()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    plain = tiny_model()
    plain.audio_stream.set_weights(mixed.audio_stream.get_weights())
    path = export_saved_model(mixed.face_stream, mixed.audio_stream, mixed.model_config,
                              str(tmp_path / "f32" / "1"))
    kept = export_saved_model(mixed.face_stream, mixed.audio_stream, mixed.model_config,
                              str(tmp_path / "bf16" / "1"), compute_dtype=None)
    wave = (0.1 * np.random.default_rng(0).normal(size=(2, 25 * 640))).astype(np.float32)
    sr = tf.constant(16000)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    assert "bfloat16" not in _graph_dtypes(serve)
    expected = tf.math.l2_normalize(
        tf.reduce_mean(plain.audio_stream(wave, training=False)["identity"], 1), -1)
    np.testing.assert_allclose(serve(waveform=wave, sample_rate=sr)["embedding"], expected,
                               atol=1e-5)
    serve_kept = tf.saved_model.load(kept).signatures["serving_default"]
    assert "bfloat16" in _graph_dtypes(serve_kept)
    emb_kept = serve_kept(waveform=wave, sample_rate=sr)["embedding"].numpy()
    assert np.abs(emb_kept - expected.numpy()).max() > 1e-4
