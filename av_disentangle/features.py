"""In-graph audio features: 40 log-mel bands, 25 ms window, 10 ms hop, per-utterance CMVN.

Computed with `tf.signal` inside the model, so the exported SavedModel takes raw 16 kHz
waveforms and contains only TF ops (servable by TF Serving, no Python preprocessing).

Front ends (`ModelConfig.front_end`, `config.FRONT_ENDS`):
- `syncnet_trainer`: exactly the reference's (joonson/syncnet_trainer
  models/SyncNetModelFBank.py `forward_aud`): the waveform at int16 scale (its loader feeds the
  int16 values as floats; ours are in [-1, 1], so x 32768), torchaudio
  `MelSpectrogram(sample_rate=16000, n_fft=512, win_length=400, hop_length=160, f_min=0,
  f_max=8000, n_mels=40)` (centred frames: reflect padding of 256 samples, a periodic Hann
  window of 400 samples centred in the 512-point FFT, power 2, HTK-mel triangles in Hz,
  unnormalised), `+ 1e-6`, log, `InstanceNorm1d` over time (biased variance, eps 1e-5), and the
  first and last frame dropped: S samples -> S // 160 - 1 frames (32,240 -> 200).
- `centered` (ours, the default): the same features, but only the LAST frame is dropped
  (and the normalisation is over the frames kept):
  S samples -> S // 160 frames, frame n centred on sample n * 160, so 640 samples (one video
  frame) are exactly 4 frames and audio step j of the stream is centred on the same instant as
  face step j (`streams.py`; the reference's first-frame drop centres its audio steps 10 ms
  later). That alignment is the only difference, kept because every sync offset reported by
  evaluation would otherwise be biased by a quarter frame (tests/test_streams.py derives the
  alignment from the built layers).
- `tf_mel_v1`: the front end of models trained before 2026-12 (and of their run directories and
  exports): `tf.signal.linear_to_mel_weight_matrix` with band edges 20-7600 Hz, zero padding,
  log(power + 1e-6) at [-1, 1] scale. Its top bands differed from the reference's (0-8000 Hz;
  correlation 0.45-0.9), which is why it is no longer the default; it is kept so those models
  load, resume and export as they were trained.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from av_disentangle.constants import MEL_HOP_SAMPLES, SAMPLE_RATE
from av_disentangle.melscale import FFT_LENGTH, WINDOW_SAMPLES, hann_window, mel_filterbank
INT16_SCALE = 32768.0  # [-1, 1] -> int16 values, the scale the reference computes at
LOG_FLOOR = 1e-6  # the reference's `MelSpectrogram(x) + 1e-6` before the log
INSTANCE_NORM_EPS = 1e-5  # torch.nn.InstanceNorm1d's default


def stft_window() -> np.ndarray:
    """(FFT_LENGTH,) float32: `hann_window` zero-padded on both sides to FFT_LENGTH, as
    torch.stft pads a `win_length` window to `n_fft` (torchaudio's `Spectrogram`)."""
    left = (FFT_LENGTH - WINDOW_SAMPLES) // 2
    return np.pad(hann_window(), (left, FFT_LENGTH - WINDOW_SAMPLES - left))


def _instance_norm(features: tf.Tensor) -> tf.Tensor:
    """(B, N, M) normalised over time per band: biased variance, eps 1e-5 (InstanceNorm1d)."""
    mean, variance = tf.nn.moments(features, axes=[1], keepdims=True)
    return (features - mean) * tf.math.rsqrt(variance + INSTANCE_NORM_EPS)


def _reference_log_mel(waveform: tf.Tensor, num_mels: int, normalize: bool) -> tf.Tensor:
    """(B, S) in [-1, 1] -> (B, 1 + S // 160, M): every centred frame of torchaudio's
    MelSpectrogram at int16 scale, + 1e-6, log, instance norm (before any frame is dropped,
    as the reference). S must exceed 256 samples (reflect padding)."""
    x = waveform * INT16_SCALE
    half = FFT_LENGTH // 2
    x = tf.pad(x, [[0, 0], [half, half]], mode="REFLECT")
    frames = tf.signal.frame(x, FFT_LENGTH, MEL_HOP_SAMPLES)  # (B, 1 + S // 160, 512)
    spectrum = tf.signal.rfft(frames * stft_window())
    power = tf.math.square(tf.math.real(spectrum)) + tf.math.square(tf.math.imag(spectrum))
    mel = tf.tensordot(power, mel_filterbank(num_mels), axes=1)
    log_mel = tf.math.log(mel + LOG_FLOOR)
    return _instance_norm(log_mel) if normalize else log_mel


def _tf_mel_v1(waveform: tf.Tensor, num_mels: int, normalize: bool) -> tf.Tensor:
    """The `tf_mel_v1` front end (see the module docstring): (B, S) -> (B, S // 160, M)."""
    num_frames = tf.shape(waveform)[1] // MEL_HOP_SAMPLES
    padded = tf.pad(waveform, [[0, 0], [WINDOW_SAMPLES // 2, WINDOW_SAMPLES // 2]])
    stft = tf.signal.stft(padded, frame_length=WINDOW_SAMPLES, frame_step=MEL_HOP_SAMPLES,
                          fft_length=FFT_LENGTH, window_fn=tf.signal.hann_window,
                          pad_end=False)
    power = tf.math.square(tf.abs(stft))[:, :num_frames]  # (B, N, 257)
    mel_matrix = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=num_mels, num_spectrogram_bins=FFT_LENGTH // 2 + 1,
        sample_rate=SAMPLE_RATE, lower_edge_hertz=20.0, upper_edge_hertz=7600.0)
    log_mel = tf.math.log(tf.tensordot(power, mel_matrix, axes=1) + 1e-6)
    if normalize:
        mean, variance = tf.nn.moments(log_mel, axes=[1], keepdims=True)
        log_mel = (log_mel - mean) * tf.math.rsqrt(variance + 1e-5)
    return log_mel


def log_mel_spectrogram(waveform: tf.Tensor, num_mels: int = 40, normalize: bool = True,
                        front_end: str = "centered") -> tf.Tensor:
    """Log-mel features of a batch of waveforms (front ends: module docstring).

    Args:
      waveform: (B, S) float32, 16 kHz mono in [-1, 1]; S > 256.
      num_mels: number of mel bands.
      normalize: per-utterance mean/variance normalisation over time, per band.
      front_end: `centered`, `syncnet_trainer` or `tf_mel_v1`.

    Returns:
      (B, N, num_mels) float32: N = S // 160 (`centered`, `tf_mel_v1`: 640 samples, one video
      frame, are 4 frames) or S // 160 - 1 (`syncnet_trainer`).
    """
    waveform = tf.convert_to_tensor(waveform, tf.float32)
    if front_end == "tf_mel_v1":
        return _tf_mel_v1(waveform, num_mels, normalize)
    if front_end == "syncnet_trainer":
        return _reference_log_mel(waveform, num_mels, normalize)[:, 1:-1]
    if front_end == "centered":  # normalised over the frames it keeps
        features = _reference_log_mel(waveform, num_mels, normalize=False)[:, :-1]
        return _instance_norm(features) if normalize else features
    raise ValueError(f"unknown front_end {front_end!r}")


@keras.saving.register_keras_serializable(package="av_disentangle")
class LogMelSpectrogram(keras.layers.Layer):
    """Keras layer wrapper of `log_mel_spectrogram`: (B, S) -> (B, N, num_mels).

    Example:
    >>> LogMelSpectrogram(num_mels=40)(tf.zeros([2, 16000])).shape
    TensorShape([2, 100, 40])

    Args:
      num_mels: mel bands.
      normalize: per-utterance mean/variance normalisation.
      frames_multiple_of: crop the frame axis to a multiple of this (4 = whole video frames).
      front_end: see the module docstring.
    """

    def __init__(self, num_mels: int = 40, normalize: bool = True, frames_multiple_of: int = 1,
                 front_end: str = "tf_mel_v1", **kwargs):
        # The default is the front end of layers saved before `front_end` existed.
        kwargs.setdefault("dtype", "float32")  # features in float32 under mixed precision
        super().__init__(**kwargs)
        self.num_mels = num_mels
        self.normalize = normalize
        self.frames_multiple_of = frames_multiple_of
        self.front_end = front_end

    def call(self, waveform):
        features = log_mel_spectrogram(waveform, self.num_mels, self.normalize, self.front_end)
        keep = tf.shape(features)[1] // self.frames_multiple_of * self.frames_multiple_of
        return features[:, :keep]

    def compute_output_shape(self, input_shape):
        samples = input_shape[1]
        frames = None
        if samples is not None:
            frames = samples // MEL_HOP_SAMPLES - (self.front_end == "syncnet_trainer")
            frames = frames // self.frames_multiple_of * self.frames_multiple_of
        return (input_shape[0], frames, self.num_mels)

    def get_config(self):
        return {**super().get_config(), "num_mels": self.num_mels, "normalize": self.normalize,
                "frames_multiple_of": self.frames_multiple_of, "front_end": self.front_end}
