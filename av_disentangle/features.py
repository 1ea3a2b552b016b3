"""In-graph audio features: 40 log-mel bands, 25 ms window, 10 ms hop, per-utterance CMVN.

Computed with `tf.signal` inside the model, so the exported SavedModel takes raw 16 kHz
waveforms and contains only TF ops (servable by TF Serving, no Python preprocessing).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from av_disentangle.constants import MEL_HOP_SAMPLES, SAMPLE_RATE

WINDOW_SAMPLES = 400  # 25 ms
FFT_LENGTH = 512


def log_mel_spectrogram(waveform: tf.Tensor, num_mels: int = 40,
                        normalize: bool = True) -> tf.Tensor:
    """Log-mel features of a batch of waveforms.

    The signal is zero-padded by half a window on both sides (centred frames), so frame `n`
    is centred on sample `n * 160` and a waveform of S samples gives exactly `S // 160` frames:
    640 samples (one video frame at 25 fps) -> 4 feature frames.

    Args:
      waveform: (B, S) float32, 16 kHz mono in [-1, 1].
      num_mels: number of mel bands.
      normalize: per-utterance mean/variance normalisation over time, per band.

    Returns:
      (B, S // 160, num_mels) float32.
    """
    waveform = tf.convert_to_tensor(waveform, tf.float32)
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


@keras.saving.register_keras_serializable(package="av_disentangle")
class LogMelSpectrogram(keras.layers.Layer):
    """Keras layer wrapper of `log_mel_spectrogram`: (B, S) -> (B, S // 160, num_mels).

    Example:
    >>> LogMelSpectrogram(num_mels=40)(tf.zeros([2, 16000])).shape
    TensorShape([2, 100, 40])

    Args:
      num_mels: mel bands.
      normalize: per-utterance mean/variance normalisation.
      frames_multiple_of: crop the frame axis to a multiple of this (4 = whole video frames).
    """

    def __init__(self, num_mels: int = 40, normalize: bool = True, frames_multiple_of: int = 1,
                 **kwargs):
        kwargs.setdefault("dtype", "float32")  # features in float32 under mixed precision
        super().__init__(**kwargs)
        self.num_mels = num_mels
        self.normalize = normalize
        self.frames_multiple_of = frames_multiple_of

    def call(self, waveform):
        features = log_mel_spectrogram(waveform, self.num_mels, self.normalize)
        keep = tf.shape(features)[1] // self.frames_multiple_of * self.frames_multiple_of
        return features[:, :keep]

    def compute_output_shape(self, input_shape):
        samples = input_shape[1]
        frames = None
        if samples is not None:
            frames = samples // MEL_HOP_SAMPLES // self.frames_multiple_of * self.frames_multiple_of
        return (input_shape[0], frames, self.num_mels)

    def get_config(self):
        return {**super().get_config(), "num_mels": self.num_mels, "normalize": self.normalize,
                "frames_multiple_of": self.frames_multiple_of}
