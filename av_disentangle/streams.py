"""The face and audio streams: a VGG-M-style trunk shared by a content head and an identity head.

Both streams map a window of T video frames (25 fps) to sequences of T' = (T - 5) // stride + 1
steps, aligned in time: step j of either stream sees video frames [stride*j, stride*j + 4]
(the audio stream sees the same 200 ms of sound, 4 log-mel frames per video frame).
"""

from __future__ import annotations

import keras
from keras import layers

from av_disentangle.config import ModelConfig
from av_disentangle.features import LogMelSpectrogram
from av_disentangle.layers import L2Normalize

CONTENT = "content"
IDENTITY = "identity"


def _bn_relu(x, name: str):
    # momentum 0.9 / eps 1e-5 = PyTorch BatchNorm defaults (reference code); Keras' 0.99 lags
    # far behind the weights in short runs, so inference-mode (exported) features go stale.
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _head(x, config: ModelConfig, name: str):
    """Two 1x1 temporal convs + L2 norm: (B, T', trunk_dim) -> (B, T', D), unit norm."""
    x = layers.Conv1D(config.head_hidden, 1, use_bias=False, name=f"{name}_fc7")(x)
    x = _bn_relu(x, f"{name}_fc7")
    x = layers.Conv1D(config.embedding_dim, 1, name=f"{name}_fc8")(x)
    return L2Normalize(name=f"{name}_l2")(x)


def build_face_stream(config: ModelConfig) -> keras.Model:
    """Face stream as a Keras functional model.

    Input `frames`: (B, T, H, W, 3) uint8 RGB face crops at 25 fps, H = W = config.face_size,
    T >= 5. Outputs a dict: `content` and `identity`, each (B, T', D), L2-normalised per step.
    """
    c1, c2, c3, c4, c5 = config.face_channels
    size = config.face_size
    frames = keras.Input((None, size, size, 3), dtype="uint8", name="frames")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="face_rescale")(frames)
    # conv1: 3-D, 5-frame temporal kernel, valid in time (T -> T - 4), same in space.
    x = layers.ZeroPadding3D(((0, 0), (3, 3), (3, 3)), name="face_conv1_pad")(x)
    x = layers.Conv3D(c1, (5, 7, 7), strides=(1, 2, 2), use_bias=False, name="face_conv1")(x)
    x = _bn_relu(x, "face_conv1")
    x = layers.MaxPool3D((1, 3, 3), strides=(1, 2, 2), padding="same", name="face_pool1")(x)
    x = layers.Conv3D(c2, (1, 5, 5), strides=(1, 2, 2), padding="same", use_bias=False,
                      name="face_conv2")(x)
    x = _bn_relu(x, "face_conv2")
    x = layers.MaxPool3D((1, 3, 3), strides=(1, 2, 2), padding="same", name="face_pool2")(x)
    for i, width in ((3, c3), (4, c4), (5, c5)):
        x = layers.Conv3D(width, (1, 3, 3), padding="same", use_bias=False,
                          name=f"face_conv{i}")(x)
        x = _bn_relu(x, f"face_conv{i}")
    x = layers.MaxPool3D((1, 3, 3), strides=(1, 2, 2), padding="same", name="face_pool5")(x)
    # fc6: a conv over the whole remaining spatial map (ceil(size / 32): 224 -> 7, 112 -> 4),
    # with the temporal stride.
    spatial = x.shape[2]
    x = layers.Conv3D(config.trunk_dim, (1, spatial, spatial), strides=(config.temporal_stride, 1, 1),
                      use_bias=False, name="face_fc6")(x)
    x = _bn_relu(x, "face_fc6")
    trunk = layers.Reshape((-1, config.trunk_dim), name="face_trunk")(x)  # (B, T', trunk_dim)
    outputs = {CONTENT: _head(trunk, config, "face_content"),
               IDENTITY: _head(trunk, config, "face_identity")}
    return keras.Model(frames, outputs, name="face_stream")


def build_audio_stream(config: ModelConfig) -> keras.Model:
    """Audio stream as a Keras functional model.

    Input `waveform`: (B, S) float32 16 kHz mono; S = 640 * T for a window of T video frames
    (extra samples past a whole video frame are dropped). Log-mel features are computed in the
    graph. Outputs a dict: `content` and `identity`, each (B, T', D), L2-normalised per step.
    """
    if config.num_mels % 8:
        raise ValueError(f"num_mels must be a multiple of 8, got {config.num_mels}")
    c1, c2, c3, c4, c5 = config.audio_channels
    waveform = keras.Input((None,), dtype="float32", name="waveform")
    x = LogMelSpectrogram(config.num_mels, frames_multiple_of=4, name="log_mel")(waveform)
    x = layers.Reshape((-1, config.num_mels, 1), name="audio_add_channel")(x)  # (B, 4T, M, 1)
    x = layers.Conv2D(c1, 3, padding="same", use_bias=False, name="audio_conv1")(x)
    x = _bn_relu(x, "audio_conv1")
    x = layers.MaxPool2D((1, 2), name="audio_pool1")(x)  # mel / 2
    x = layers.Conv2D(c2, 3, padding="same", use_bias=False, name="audio_conv2")(x)
    x = _bn_relu(x, "audio_conv2")
    x = layers.MaxPool2D((2, 2), name="audio_pool2")(x)  # time 2T, mel / 4
    for i, width in ((3, c3), (4, c4), (5, c5)):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"audio_conv{i}")(x)
        x = _bn_relu(x, f"audio_conv{i}")
    x = layers.MaxPool2D((2, 2), name="audio_pool5")(x)  # time T (video rate), mel / 8
    # fc6: 5 video frames x all remaining mel bins, valid, temporal stride: T -> T'.
    x = layers.Conv2D(config.trunk_dim, (5, config.num_mels // 8),
                      strides=(config.temporal_stride, 1), use_bias=False, name="audio_fc6")(x)
    x = _bn_relu(x, "audio_fc6")
    trunk = layers.Reshape((-1, config.trunk_dim), name="audio_trunk")(x)  # (B, T', trunk_dim)
    outputs = {CONTENT: _head(trunk, config, "audio_content"),
               IDENTITY: _head(trunk, config, "audio_identity")}
    return keras.Model(waveform, outputs, name="audio_stream")
