"""TF Serving readiness without the server binary: a real PredictRequest against the
SavedModel's SignatureDefs, answered as the model server does (C++ Session::Run)."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.tools import saved_model_utils
from tensorflow_serving.apis import predict_pb2

from av_disentangle import losses
from av_disentangle.streams import IDENTITY


@pytest.fixture(scope="module")
def exported(tiny_export):
    """(model, export_dir) of a tiny model (the session's shared export)."""
    return tiny_export


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


class _Server:
    """Answers PredictRequests as tensorflow_model_server does: the request's TensorProtos
    become tensors as they are (no casting) and are fed to the SavedModel's signature through
    the C++ Session::Run, which checks nothing on the client's behalf (Python's Session.run and
    the eager signature call check dtypes and shapes themselves)."""

    def __init__(self, export_dir: str) -> None:
        self.session = tf.compat.v1.Session(graph=tf.Graph())
        self.meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], export_dir)

    def predict(self, request: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
        signature = self.meta.signature_def[request.model_spec.signature_name]
        graph = self.session.graph
        feeds = {graph.get_tensor_by_name(signature.inputs[k].name)._as_tf_output():
                 tf.make_ndarray(v) for k, v in request.inputs.items()}
        names = list(signature.outputs)
        fetches = [graph.get_tensor_by_name(signature.outputs[k].name)._as_tf_output()
                   for k in names]
        return dict(zip(names, self.session._call_tf_sessionrun(None, feeds, fetches, [], None)))


def test_predict_request_matches_serving_default(exported):
    model, export_dir = exported
    meta = saved_model_utils.get_meta_graph_def(export_dir, "serve")
    signature = meta.signature_def["serving_default"]
    wave = (0.1 * np.random.default_rng(0).normal(size=(2, 48000))).astype(np.float32)
    request = _request("serving_default", {"waveform": wave, "sample_rate": np.int32(16000)})
    _check_against_signature(request, signature)
    assert signature.inputs["waveform"].dtype == tf.float32.as_datatype_enum
    assert signature.inputs["sample_rate"].dtype == tf.int32.as_datatype_enum
    assert list(signature.outputs) == ["embedding"]
    answer = _Server(export_dir).predict(request)
    # The served answer is the trained model's speaker embedding: time-mean audio identity.
    expected = losses.time_pool(model.audio_stream(wave, training=False)[IDENTITY]).numpy()
    assert answer["embedding"].shape == expected.shape == (2, model.model_config.embedding_dim)
    np.testing.assert_allclose(answer["embedding"], expected, rtol=1e-4, atol=1e-5)


def test_predict_request_for_face_signature(exported):
    model, export_dir = exported
    meta = saved_model_utils.get_meta_graph_def(export_dir, "serve")
    assert {"serving_default", "embed_audio", "embed_face", "content",
            "face_content"} <= set(meta.signature_def)
    size = model.model_config.face_size
    frames = np.random.default_rng(1).integers(0, 256, (2, 9, size, size, 3), dtype=np.uint8)
    request = _request("embed_face", {"frames": frames})
    _check_against_signature(request, meta.signature_def["embed_face"])
    answer = _Server(export_dir).predict(request)
    expected = losses.time_pool(model.face_stream(frames, training=False)[IDENTITY]).numpy()
    np.testing.assert_allclose(answer["embedding"], expected, rtol=1e-4, atol=1e-5)


def test_served_model_rejects_wrong_dtypes_instead_of_casting(exported):
    """What a client gets for the usual dtype mistakes, from the served SavedModel itself:
    float frames (e.g. normalised to [0, 1]), a float64 waveform (numpy's default) and an int64
    sample_rate (Python ints) are refused with InvalidArgumentError naming the expected dtype,
    never cast silently into a wrong embedding."""
    model, export_dir = exported
    server = _Server(export_dir)
    size = model.model_config.face_size
    frames = np.zeros((1, 9, size, size, 3), np.uint8)
    wave = np.zeros((1, 16000), np.float32)
    cases = [("embed_face", {"frames": frames.astype(np.float32)}, "uint8 but float"),
             ("serving_default", {"waveform": wave.astype(np.float64),
                                  "sample_rate": np.int32(16000)}, "float but double"),
             ("serving_default", {"waveform": wave, "sample_rate": np.int64(16000)},
              "int32 but int64")]
    for signature, inputs, message in cases:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            server.predict(_request(signature, inputs))
    # The same requests with the right dtypes are answered.
    assert server.predict(_request("embed_face", {"frames": frames}))["embedding"].shape == (
        1, model.model_config.embedding_dim)
    assert server.predict(_request("serving_default", {
        "waveform": wave, "sample_rate": np.int32(16000)}))["embedding"].shape == (
        1, model.model_config.embedding_dim)


def test_a_wrong_face_size_or_an_empty_batch_is_an_error_and_the_server_lives(exported):
    """The face signatures declare (-1, -1, S, S, 3), which TF Serving does not enforce: 32 px
    frames killed the process with SIGFPE, 44 px failed inside oneDNN, 112 px returned an
    embedding of the wrong scale, and an empty batch failed with 'Incompatible shapes'. Each is
    now an InvalidArgumentError naming the problem, and the same session answers afterwards."""
    model, export_dir = exported
    server = _Server(export_dir)
    size = model.model_config.face_size
    for signature in ("embed_face", "face_content"):
        for wrong in (32, 44, 112):
            frames = np.zeros((1, 9, wrong, wrong, 3), np.uint8)
            with pytest.raises(tf.errors.InvalidArgumentError,
                               match=rf"(?s)frames must be {size}x{size} face crops.*{wrong}"):
                server.predict(_request(signature, {"frames": frames}))
        with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
            server.predict(_request(signature, {"frames": np.zeros((0, 9, size, size, 3),
                                                                   np.uint8)}))
    for signature in ("serving_default", "content"):
        with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
            server.predict(_request(signature, {"waveform": np.zeros((0, 16000), np.float32),
                                                "sample_rate": np.int32(16000)}))
    frames = np.zeros((2, 9, size, size, 3), np.uint8)
    assert server.predict(_request("embed_face", {"frames": frames}))["embedding"].shape == (
        2, model.model_config.embedding_dim)
