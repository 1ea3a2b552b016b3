"""The face and audio streams: SyncNetModelFBank's VGG-M trunks, each with a content and an
identity head.

Layer for layer as github joonson/syncnet_trainer, models/SyncNetModelFBank.py (commit
15e5cfc; `l.N` below is its line): kernels, strides, zero padding, floor-mode max pooling,
widths, BatchNorm + ReLU after every conv, conv biases (PyTorch's default bias=True, also before
BatchNorm, where they are redundant but trainable: the reference counts them), and four heads
conv1d 512->512 - BN - ReLU - conv1d 512->nOut. Our layouts are channels-last: faces
(B, T, H, W, C) and audio (B, time, mel, C); PyTorch's audio is (N, 1, mel, time), so its
kernel (5, 7) = (mel 5, time 7) is our (time 7, mel 5). Where PyTorch pads, we pad with zeros
explicitly and then run a valid conv/pool (the pooled inputs are ReLU outputs >= 0, so zero
padding equals PyTorch's -inf pool padding). The reference's face Conv3d/MaxPool3d layers run
as the equal 2-D layers on the T' output steps folded into the batch (`FoldTime`: conv1's 5
frames stacked on channels), since TensorFlow's Conv3D gradient is pathologically slow on CPU.
Output shapes at the reference size for a window of 50 frames (2 s, 32,000 samples), temporal
stride 2 (face rows: T' x H x W x C, run as (B * T', H, W, C)):

    face (T, H, W, C)                          audio (time, mel, C)
    input         50 x 224 x 224 x 3           log_mel     200 x 40 (x 1)
    face_conv1    23 x 109 x 109 x 96          audio_conv1 198 x 40 x 96
    face_pool1    23 x  54 x  54 x 96          audio_pool1  98 x 40 x 96
    face_conv2    23 x  26 x  26 x 256         audio_conv2  96 x 19 x 256
    face_pool2    23 x  13 x  13 x 256         audio_pool2  94 x  9 x 256
    face_conv3-5  23 x  13 x  13 x 256         audio_conv3  94 x  9 x 384, conv4-5 x 256
    face_pool5    23 x   6 x   6 x 256         audio_pool5  46 x  4 x 256
    face_fc6      23 x   1 x   1 x 512         audio_fc6    23 x  1 x 512
    heads         23 x 512 -> 23 x 1024        heads        23 x 512 -> 23 x 1024

Trainable parameters at the reference size: 13,840,512 (the reference's, nOut 1024).

Face sizes other than 224: fc6 spans the whole remaining spatial map (6x6 at 224, 2x2 at 112,
1x1 for 51..82); 51 px is the smallest face that works (`ModelConfig` rejects less).

Temporal stride (as the reference: on the FIRST face conv, l.70, and on the LAST audio conv,
l.36). For a window of T >= 5 video frames both streams give T' = (T - 5) // stride + 1 steps.
Alignment: video frame i is the instant i * 40 ms, and log-mel frame n is centred on sample
n * 160 = n * 10 ms (features.py `centered`: centred STFT frames, S // 160 of them). Face
step j sees frames stride*j .. stride*j + 4 and is centred on frame stride*j + 2, i.e.
40 * stride * j + 80 ms. Audio step j is centred on log-mel frame 4 * stride * j + 8, i.e. also
40 * stride * j + 80 ms (4 = MEL_FRAMES_PER_VIDEO_FRAME, which the audio trunk's two x2 time
poolings assume; receptive field 37 log-mel frames = 370 ms, plus the 25 ms STFT
window, frames 4*stride*j - 10 .. 4*stride*j + 26, zero padding included at the edges).
So step j of both streams is centred on the same instant; the test `test_streams.py` derives
this from the built layers. (In the reference itself, which drops the first and last mel frame
(l.120) and reads video from `startidx + offset - 1` for audio from `startidx`
(DatasetLoader.py), audio step j is centred 10 ms later, on mel frame 4*stride*j + 9, and with
Offset 0 the video step on frame startidx - 1 + stride*j + 2, 50 ms before its audio step.)
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from av_disentangle.config import ModelConfig
from av_disentangle.constants import MEL_FRAMES_PER_VIDEO_FRAME, SAMPLES_PER_FRAME
from av_disentangle.features import LogMelSpectrogram
from av_disentangle.layers import FusedBatchNormalization, L2Normalize

CONTENT = "content"
IDENTITY = "identity"


def _bn_relu(x, name: str):
    # momentum 0.9 / eps 1e-5 = PyTorch BatchNorm defaults (reference code); Keras' 0.99 lags
    # far behind the weights in short runs, so inference-mode (exported) features go stale.
    x = FusedBatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _head(x, config: ModelConfig, name: str):
    """Two 1x1 temporal convs: (B, T', trunk_dim) -> (B, T', D) float32, L2-normalised per
    step when `config.normalize_steps` (else raw, as the reference's heads).
    Reference l.41-66: Conv1d(512, 512, 1), BatchNorm1d, ReLU, Conv1d(512, nOut, 1)."""
    x = layers.Conv1D(config.head_hidden, 1, name=f"{name}_fc7")(x)
    x = _bn_relu(x, f"{name}_fc7")
    x = layers.Conv1D(config.embedding_dim, 1, name=f"{name}_fc8")(x)
    if config.normalize_steps:
        return L2Normalize(name=f"{name}_l2")(x)
    return layers.Activation("linear", dtype="float32", name=f"{name}_raw")(x)


@keras.saving.register_keras_serializable(package="av_disentangle")
class BgrPixels(keras.layers.Layer):
    """(B, T, H, W, 3) uint8 RGB -> the same frames in BGR order as floats 0..255, the
    reference's face input (syncnet_trainer dataLoader.get_frames: OpenCV's BGR frames, cast
    to float, no scaling); `ModelConfig.face_pixels == "bgr_255"`."""

    def call(self, frames):
        return tf.cast(tf.reverse(frames, axis=[-1]), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="av_disentangle")
class FoldTime(keras.layers.Layer):
    """(B, T, H, W, C) -> (B * T', H, W, frames * C): for each output step j the `frames`
    consecutive frames stride*j .. stride*j + frames - 1, stacked on channels frame-major
    (channel k * C + c = colour c of frame k); T' = (T - frames) // stride + 1.

    A valid Conv2D on the result is exactly a Conv3D with temporal kernel `frames`, temporal
    stride `stride`, valid in time: its kernel (kh, kw, frames * C, out) is the Conv3D kernel
    (frames, kh, kw, C, out) reshaped (PyTorch's (out, C, frames, kh, kw) permuted to
    (kh, kw, frames, C, out) and reshaped). Done so because TensorFlow's Conv3D filter gradient
    is ~100-200x slower than the equal Conv2D on CPU (measured: 10.9 s vs 62 ms for the tiny
    model's conv1 on 6 x 15 frames of 64x64), and after the first layer every face kernel is
    1 frame long: the rest of the face trunk runs per step as 2-D layers on (B * T', H, W, C).
    """

    def __init__(self, frames: int = 5, stride: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.frames = frames
        self.stride = stride

    def call(self, x):
        # One gather of whole frames and one transpose: 11x faster on CPU than the `frames`
        # strided slices + concat this replaced (measured: 12.9 vs 141.6 ms for
        # (8, 50, 64, 64, 3) uint8 at stride 2; TF's strided-slice kernel copies element-wise).
        steps = (tf.shape(x)[1] - self.frames) // self.stride + 1
        index = self.stride * tf.range(steps)[:, None] + tf.range(self.frames)[None, :]
        windows = tf.gather(x, index, axis=1)  # (B, T', frames, H, W, C)
        windows = tf.transpose(windows, [0, 1, 3, 4, 2, 5])  # (B, T', H, W, frames, C)
        shape = tf.shape(windows)
        return tf.reshape(windows, tf.concat([[-1], shape[2:4], [self.frames * shape[5]]], 0))

    def compute_output_shape(self, input_shape):
        _, _, height, width, channels = input_shape
        return (None, height, width, self.frames * channels)

    def get_config(self):
        return {**super().get_config(), "frames": self.frames, "stride": self.stride}


@keras.saving.register_keras_serializable(package="av_disentangle")
class UnfoldTime(keras.layers.Layer):
    """Call on [x (B * T', 1, 1, D), frames (B, T, ...)]: returns (B, T', D), undoing the
    batch folding of `FoldTime(frames, stride)`."""

    def __init__(self, frames: int = 5, stride: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.frames = frames
        self.stride = stride

    def call(self, inputs):
        x, frames = inputs
        return tf.reshape(x, [tf.shape(frames)[0], -1, x.shape[-1]])

    def compute_output_shape(self, input_shape):
        x_shape, frames_shape = input_shape
        num_frames = frames_shape[1]
        steps = None if num_frames is None else (num_frames - self.frames) // self.stride + 1
        return (frames_shape[0], steps, x_shape[-1])

    def get_config(self):
        return {**super().get_config(), "frames": self.frames, "stride": self.stride}


def _conv2d(x, width: int, kernel: tuple[int, int], name: str,
            strides: tuple[int, int] = (1, 1), pad: tuple[int, int] = (0, 0)):
    """Zero padding `pad` (symmetric, per axis), valid Conv2D with bias, BN, ReLU."""
    if pad != (0, 0):
        x = layers.ZeroPadding2D(((pad[0], pad[0]), (pad[1], pad[1])), name=f"{name}_pad")(x)
    x = layers.Conv2D(width, kernel, strides=strides, name=name)(x)
    return _bn_relu(x, name)


def build_face_stream(config: ModelConfig, num_frames: int | None = None) -> keras.Model:
    """Face stream as a Keras functional model (reference `netcnnlip`, l.69-96).

    Input `frames`: (B, T, H, W, 3) uint8 RGB face crops at 25 fps, H = W = config.face_size,
    T >= 5 (`num_frames` fixes T in the model's static shapes; default any). Outputs a dict:
    `content` and `identity`, each (B, T', D) float32, L2-normalised per step (raw with
    `normalize_steps=False`). Inside, the reference's
    Conv3d/MaxPool3d layers run as 2-D layers on (B * T', H, W, C) (see `FoldTime`).
    """
    c1, c2, c3, c4, c5 = config.face_channels
    size, stride = config.face_size, config.temporal_stride
    frames = keras.Input((num_frames, size, size, 3), dtype="uint8", name="frames")
    # l.70 Conv3d (5,7,7) stride (stride,2,2) pad 0 = fold 5 frames, Conv2D 7x7 / 2.
    # The pixels become floats in float32 whatever the policy; conv1 casts them to its compute
    # dtype. Under mixed_bfloat16 that is 3.5x faster than Rescaling in bfloat16 (measured on
    # (184, 64, 64, 15) uint8: 9.6-11.3 ms vs 33.7-36.1 ms; TF's elementwise bf16 kernels are
    # scalar), and exact for every uint8 value.
    if config.face_pixels == "bgr_255":
        x = FoldTime(5, stride, name="face_fold")(
            BgrPixels(name="face_bgr", dtype="float32")(frames))
    else:
        x = FoldTime(5, stride, name="face_fold")(frames)  # (B * T', H, W, 15)
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="face_rescale",
                             dtype="float32")(x)
    x = _conv2d(x, c1, (7, 7), "face_conv1", strides=(2, 2))
    x = layers.MaxPool2D(3, strides=2, name="face_pool1")(x)  # l.73 (1,3,3) / (1,2,2)
    x = _conv2d(x, c2, (5, 5), "face_conv2", strides=(2, 2), pad=(1, 1))  # l.75
    x = layers.ZeroPadding2D(1, name="face_pool2_pad")(x)
    x = layers.MaxPool2D(3, strides=2, name="face_pool2")(x)  # l.78 pad (0,1,1)
    for i, width in ((3, c3), (4, c4), (5, c5)):  # l.80, 84, 88
        x = _conv2d(x, width, (3, 3), f"face_conv{i}", pad=(1, 1))
    x = layers.MaxPool2D(3, strides=2, name="face_pool5")(x)  # l.91
    # fc6: a valid conv over the whole remaining spatial map (l.93: 6x6 at 224).
    x = _conv2d(x, config.trunk_dim, (x.shape[1], x.shape[2]), "face_fc6")
    trunk = UnfoldTime(5, stride, name="face_trunk")([x, frames])  # (B, T', trunk_dim)
    outputs = {CONTENT: _head(trunk, config, "face_content"),
               IDENTITY: _head(trunk, config, "face_identity")}
    return keras.Model(frames, outputs, name="face_stream")


def build_audio_stream(config: ModelConfig, num_frames: int | None = None) -> keras.Model:
    """Audio stream as a Keras functional model (reference `netcnnaud`, l.12-39).

    Input `waveform`: (B, S) float32 16 kHz mono; S = SAMPLES_PER_FRAME * T (640 * T) for a
    window of T video frames (extra samples past a whole video frame are dropped; `num_frames`
    fixes S in the model's static shapes; default any). Log-mel features are computed in the
    graph. Outputs a dict: `content` and `identity`, each (B, T', D) float32, L2-normalised per
    step (raw with `normalize_steps=False`).
    """
    c1, c2, c3, c4, c5 = config.audio_channels
    samples = None if num_frames is None else SAMPLES_PER_FRAME * num_frames
    waveform = keras.Input((samples,), dtype="float32", name="waveform")
    # Whole video frames of log-mel frames: (B, MEL_FRAMES_PER_VIDEO_FRAME * T, M) = (B, 4T, M);
    # the reference's front end keeps all its S // 160 - 1 frames (4T - 1 for T video frames,
    # which its floor-mode pools turn into the same T' steps as 4T).
    multiple = 1 if config.front_end == "syncnet_trainer" else MEL_FRAMES_PER_VIDEO_FRAME
    x = LogMelSpectrogram(config.num_mels, frames_multiple_of=multiple,
                          front_end=config.front_end, name="log_mel")(waveform)
    x = layers.Reshape((-1, config.num_mels, 1), name="audio_add_channel")(x)  # (B, 4T, M, 1)
    # Kernels, strides and pads below are (time, mel): the reference's (mel, time) swapped.
    x = _conv2d(x, c1, (7, 5), "audio_conv1", pad=(2, 2))  # l.13
    x = layers.MaxPool2D((3, 1), strides=(2, 1), name="audio_pool1")(x)  # l.16
    x = _conv2d(x, c2, (5, 5), "audio_conv2", strides=(1, 2), pad=(1, 1))  # l.18
    x = layers.MaxPool2D((3, 3), strides=(1, 2), name="audio_pool2")(x)  # l.21
    for i, width in ((3, c3), (4, c4), (5, c5)):  # l.23, 27, 31
        x = _conv2d(x, width, (3, 3), f"audio_conv{i}", pad=(1, 1))
    x = layers.MaxPool2D((3, 3), strides=(2, 2), name="audio_pool5")(x)  # l.34: time T - 4
    # fc6 (l.36): all remaining mel bins (4 of 40), one step in time, the temporal stride.
    x = _conv2d(x, config.trunk_dim, (1, x.shape[2]), "audio_fc6",
                    strides=(config.temporal_stride, 1))
    trunk = layers.Reshape((-1, config.trunk_dim), name="audio_trunk")(x)  # (B, T', trunk_dim)
    outputs = {CONTENT: _head(trunk, config, "audio_content"),
               IDENTITY: _head(trunk, config, "audio_identity")}
    return keras.Model(waveform, outputs, name="audio_stream")
