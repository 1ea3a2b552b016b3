"""TF Serving readiness without the server binary: a real PredictRequest against the
SavedModel's SignatureDefs, answered through the loaded signatures."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.tools import saved_model_utils
from tensorflow_serving.apis import predict_pb2

from av_disentangle.config import LossConfig, ModelConfig
from av_disentangle.export import export_saved_model
from av_disentangle.model import DisentangleModel


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    model = DisentangleModel(ModelConfig.tiny(), LossConfig())
    path = str(tmp_path_factory.mktemp("serving") / "av_disentangle" / "1")
    return export_saved_model(model.face_stream, model.audio_stream, model.model_config, path)


def _request(signature_name: str, inputs: dict) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "av_disentangle"
    request.model_spec.signature_name = signature_name
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def _check_against_signature(request, signature) -> None:
    assert set(request.inputs) == set(signature.inputs)
    for key, tensor in request.inputs.items():
        spec = signature.inputs[key]
        assert tensor.dtype == spec.dtype, key
        expected = [d.size for d in spec.tensor_shape.dim]
        got = [d.size for d in tensor.tensor_shape.dim]
        assert len(got) == len(expected), key
        assert all(e in (-1, g) for e, g in zip(expected, got)), (key, expected, got)


def _answer(export_dir, request):
    """What tensorflow_model_server does with the request, using the same SavedModel."""
    fn = tf.saved_model.load(export_dir).signatures[request.model_spec.signature_name]
    outputs = fn(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
    return {k: v.numpy() for k, v in outputs.items()}


def test_predict_request_matches_serving_default(export_dir):
    meta = saved_model_utils.get_meta_graph_def(export_dir, "serve")
    signature = meta.signature_def["serving_default"]
    wave = (0.1 * np.random.default_rng(0).normal(size=(2, 48000))).astype(np.float32)
    request = _request("serving_default", {"waveform": wave, "sample_rate": np.int32(16000)})
    _check_against_signature(request, signature)
    assert signature.inputs["waveform"].dtype == tf.float32.as_datatype_enum
    assert signature.inputs["sample_rate"].dtype == tf.int32.as_datatype_enum
    assert list(signature.outputs) == ["embedding"]
    answer = _answer(export_dir, request)
    assert answer["embedding"].shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(answer["embedding"], axis=1), 1.0, rtol=1e-5)


def test_predict_request_for_face_signature_and_wrong_dtype(export_dir):
    meta = saved_model_utils.get_meta_graph_def(export_dir, "serve")
    assert {"serving_default", "embed_audio", "embed_face", "content",
            "face_content"} <= set(meta.signature_def)
    frames = np.zeros((1, 25, 32, 32, 3), np.uint8)
    request = _request("embed_face", {"frames": frames})
    _check_against_signature(request, meta.signature_def["embed_face"])
    assert _answer(export_dir, request)["embedding"].shape == (1, 16)
    bad = _request("embed_face", {"frames": frames.astype(np.float32)})
    with pytest.raises(AssertionError):
        _check_against_signature(bad, meta.signature_def["embed_face"])
