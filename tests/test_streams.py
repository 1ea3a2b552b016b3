"""The face and audio streams are joonson/syncnet_trainer's SyncNetModelFBank, layer for layer.

Reference: github joonson/syncnet_trainer, models/SyncNetModelFBank.py (commit 15e5cfc), cited
below by line. PyTorch's layouts are (N, C, T, H, W) for faces and (N, 1, mel, time) for audio;
ours are channels-last (B, T, H, W, C) and (B, time, mel, C), so the reference's audio kernel
(5, 7) = (mel 5, time 7) is our (time 7, mel 5).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from av_disentangle.config import ModelConfig
from av_disentangle.constants import MEL_HOP_SAMPLES as HOP_SAMPLES
from av_disentangle.streams import FoldTime, build_audio_stream, build_face_stream

FRAMES = 50  # 2 s at 25 fps, the reference's --maxFrames 50
SAMPLES = FRAMES * 640  # 32,000 samples at 16 kHz -> 200 log-mel frames
STEPS = 23  # (50 - 5) // 2 + 1 at --temporal_stride 2

# Output shape (without batch) after each layer at the reference size, derived by hand from the
# PyTorch layers (floor-mode pooling; line numbers of SyncNetModelFBank.py).
FACE_SHAPES = {  # the T' steps are folded into the batch from face_fold to face_fc6
    "face_fold": (224, 224, 15),  # 5 frames per step stacked on channels (FoldTime)
    "face_conv1": (109, 109, 96),  # l.70 Conv3d (5,7,7) stride (2,2,2) pad 0
    "face_pool1": (54, 54, 96),  # l.73 MaxPool3d (1,3,3) / (1,2,2)
    "face_conv2": (26, 26, 256),  # l.75 Conv3d (1,5,5) / (1,2,2) pad (0,1,1)
    "face_pool2": (13, 13, 256),  # l.78 MaxPool3d (1,3,3) / (1,2,2) pad (0,1,1)
    "face_conv3": (13, 13, 256),  # l.80 Conv3d (1,3,3) pad (0,1,1)
    "face_conv4": (13, 13, 256),  # l.84
    "face_conv5": (13, 13, 256),  # l.88
    "face_pool5": (6, 6, 256),  # l.91 MaxPool3d (1,3,3) / (1,2,2)
    "face_fc6": (1, 1, 512),  # l.93 Conv3d (1,6,6) pad 0
    "face_trunk": (STEPS, 512),  # l.107 view (N, 512, T')
    "face_content_fc7": (STEPS, 512),  # l.48-52 netfclip: Conv1d 512->512, BN, ReLU,
    "face_content_fc8": (STEPS, 1024),  # Conv1d 512->1024
    "face_identity_fc7": (STEPS, 512),  # l.62-66 netfcface
    "face_identity_fc8": (STEPS, 1024),
}
AUDIO_SHAPES = {  # (time, mel, channels)
    "log_mel": (200, 40),
    "audio_conv1": (198, 40, 96),  # l.13 Conv2d (5,7) pad (2,2)
    "audio_pool1": (98, 40, 96),  # l.16 MaxPool2d (1,3) / (1,2)
    "audio_conv2": (96, 19, 256),  # l.18 Conv2d (5,5) / (2,1) pad (1,1)
    "audio_pool2": (94, 9, 256),  # l.21 MaxPool2d (3,3) / (2,1)
    "audio_conv3": (94, 9, 384),  # l.23 Conv2d (3,3) pad (1,1)
    "audio_conv4": (94, 9, 256),  # l.27
    "audio_conv5": (94, 9, 256),  # l.31
    "audio_pool5": (46, 4, 256),  # l.34 MaxPool2d (3,3) / (2,2)
    "audio_fc6": (STEPS, 1, 512),  # l.36 Conv2d (4,1) stride (1, temporal_stride)
    "audio_trunk": (STEPS, 512),  # l.123 view (N, 512, T')
    "audio_content_fc7": (STEPS, 512),  # l.41-45 netfcaud
    "audio_content_fc8": (STEPS, 1024),
    "audio_identity_fc7": (STEPS, 512),  # l.55-59 netfcspk
    "audio_identity_fc8": (STEPS, 1024),
}


def _reference_trainable_count(n_out: int = 1024) -> int:
    """Trainable parameters of SyncNetModelFBank(nOut): every conv has a bias (PyTorch's
    default, bias=True), every BatchNorm a weight and a bias; counted from its layer list."""
    convs = [  # (in, out, kernel)
        (1, 96, (5, 7)), (96, 256, (5, 5)), (256, 384, (3, 3)), (384, 256, (3, 3)),  # audio
        (256, 256, (3, 3)), (256, 512, (4, 1)),
        (3, 96, (5, 7, 7)), (96, 256, (1, 5, 5)), (256, 256, (1, 3, 3)),  # face
        (256, 256, (1, 3, 3)), (256, 256, (1, 3, 3)), (256, 512, (1, 6, 6)),
    ]
    total = sum(cin * cout * int(np.prod(k)) + cout + 2 * cout for cin, cout, k in convs)
    head = (512 * 512 + 512) + 2 * 512 + (512 * n_out + n_out)  # conv1d, BN, conv1d
    return total + 4 * head


@pytest.fixture(scope="module")
def reference_streams():
    config = ModelConfig.reference()
    return (build_face_stream(config, num_frames=FRAMES),
            build_audio_stream(config, num_frames=FRAMES))


def test_reference_layer_shapes_for_two_seconds(reference_streams):
    face, audio = reference_streams
    for stream, expected in ((face, FACE_SHAPES), (audio, AUDIO_SHAPES)):
        got = {layer.name: tuple(layer.output.shape[1:]) for layer in stream.layers}
        assert {name: got.get(name) for name in expected} == expected


def test_reference_trainable_parameters_equal_syncnet_model_fbank(reference_streams):
    assert _reference_trainable_count() == 13_840_512  # the figure of issue 9
    count = sum(int(np.prod(w.shape)) for stream in reference_streams
                for w in stream.trainable_weights)
    assert count == _reference_trainable_count()


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_both_streams_give_the_same_number_of_steps(stride):
    config = dataclasses.replace(ModelConfig.tiny(), temporal_stride=stride)
    face, audio = build_face_stream(config), build_audio_stream(config)
    size = config.face_size
    for frames in (5, 6, 7, 8, 13):
        face_out = face(np.zeros((1, frames, size, size, 3), np.uint8))
        # an extra 100 samples past the last whole video frame are dropped
        audio_out = audio(np.zeros((1, frames * 640 + 100), np.float32))
        expected = config.num_steps(frames)
        assert face_out["content"].shape[1] == expected, (stride, frames)
        assert audio_out["identity"].shape[1] == expected, (stride, frames)


def _time_centres(stream: keras.Model) -> tuple[float, float]:
    """(start, jump) such that output step j of the stream's trunk is centred on input sample
    (audio: log-mel frame; face: video frame) start + j * jump, walking the layers' time axis
    (axis 1 of the audio's (B, time, mel, C); the face's FoldTime, after which time is folded
    into the batch and the 2-D layers act per step)."""
    start, jump, folded = 0.0, 1.0, False
    for layer in stream.layers:
        config = layer.get_config()
        if isinstance(layer, FoldTime):
            start += (layer.frames - 1) / 2 * jump
            jump *= layer.stride
            folded = True
        elif folded:
            pass
        elif isinstance(layer, keras.layers.ZeroPadding2D):
            start -= config["padding"][0][0] * jump
        elif isinstance(layer, keras.layers.Conv2D):
            assert config["padding"] == "valid", layer.name  # padding is explicit
            kernel, stride = config["kernel_size"][0], config["strides"][0]
            start += (kernel - 1) / 2 * jump
            jump *= stride
        elif isinstance(layer, keras.layers.MaxPooling2D):
            assert config["padding"] == "valid", layer.name
            kernel, stride = config["pool_size"][0], config["strides"][0]
            start += (kernel - 1) / 2 * jump
            jump *= stride
        else:
            assert not isinstance(layer, (keras.layers.Conv3D, keras.layers.MaxPooling3D,
                                          keras.layers.ZeroPadding3D)), layer.name
        if layer.name.endswith("_trunk"):
            return start, jump
    raise AssertionError(f"no trunk layer in {stream.name}")


@pytest.mark.parametrize("stride", [1, 2])
def test_audio_and_face_steps_are_centred_on_the_same_instant(stride):
    """Video frame i is the instant i * 40 ms, and log-mel frame n is centred on sample
    n * 160 (features.py), i.e. n * 10 ms: step j of both streams must be centred alike."""
    config = dataclasses.replace(ModelConfig.tiny(), temporal_stride=stride)
    face_start, face_jump = _time_centres(build_face_stream(config))
    audio_start, audio_jump = _time_centres(build_audio_stream(config))
    ms_per_mel_frame = 1000 * HOP_SAMPLES / 16000
    assert face_jump * 40 == audio_jump * ms_per_mel_frame == 40 * stride
    assert face_start * 40 == audio_start * ms_per_mel_frame


def test_minimum_face_size():
    """51 px is the smallest input for which the reference face trunk leaves a map before fc6."""
    config = dataclasses.replace(ModelConfig.tiny(), face_size=51)
    face = build_face_stream(config, num_frames=5)
    assert tuple(face.get_layer("face_pool5").output.shape[1:3]) == (1, 1)
    with pytest.raises(ValueError, match="face_size"):
        dataclasses.replace(ModelConfig.tiny(), face_size=50)
    for size in (ModelConfig.small, ModelConfig.tiny):
        config = size()
        built = build_face_stream(config, num_frames=5)
        assert built.get_layer("face_trunk").output.shape[1:] == (1, config.trunk_dim)


@pytest.mark.parametrize("stride", [1, 2])
def test_folded_conv2d_equals_the_reference_conv3d(stride):
    """FoldTime + valid Conv2D (our face conv1) = Conv3D (5,7,7), stride (stride,2,2), valid
    (the reference's l.70), with the Conv3D kernel (5, 7, 7, 3, out) reshaped."""
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(2, 11, 23, 23, 3)).astype(np.float32)
    conv3d = keras.layers.Conv3D(4, (5, 7, 7), strides=(stride, 2, 2))
    expected = conv3d(frames).numpy()  # (2, T', 9, 9, 4)
    kernel, bias = conv3d.get_weights()
    conv2d = keras.layers.Conv2D(4, 7, strides=2)
    folded = FoldTime(5, stride)(frames)
    conv2d.build(folded.shape)
    conv2d.set_weights([np.transpose(kernel, (1, 2, 0, 3, 4)).reshape(7, 7, 15, 4), bias])
    got = conv2d(folded).numpy().reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
