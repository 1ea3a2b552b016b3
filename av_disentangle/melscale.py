"""The reference front end's constants in numpy (TF-free, so PyTorch-side scripts can use
them): torchaudio's HTK mel filterbank and the periodic Hann window (`features.py` uses them in
the graph; `benchmarks/reference_code.py` in its torchaudio stand-in)."""

from __future__ import annotations

import numpy as np

from av_disentangle.constants import SAMPLE_RATE

WINDOW_SAMPLES = 400  # 25 ms
FFT_LENGTH = 512


def hz_to_mel(hz):
    """HTK mel scale (torchaudio's default `mel_scale="htk"`)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(num_mels: int = 40, low_hz: float = 0.0, high_hz: float = SAMPLE_RATE / 2,
                   fft_length: int = FFT_LENGTH, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The reference's mel filterbank, (fft_length // 2 + 1, num_mels) float32.

    torchaudio.functional.melscale_fbanks(n_freqs, f_min, f_max, n_mels, sample_rate,
    norm=None, mel_scale="htk"): triangles whose corners are `num_mels + 2` points evenly
    spaced on the HTK mel scale, with slopes computed in Hz over the FFT bin frequencies
    linspace(0, sample_rate / 2, n_freqs). Written here (10 lines of numpy) because
    torchaudio is a PyTorch package and `tf.signal.linear_to_mel_weight_matrix` builds other
    triangles (slopes in mel, DC bin zeroed); `convert.py` checks it against the
    `torchfb.mel_scale.fb` buffer a reference checkpoint carries.
    """
    freqs = np.linspace(0.0, sample_rate / 2, fft_length // 2 + 1)
    corners = mel_to_hz(np.linspace(hz_to_mel(low_hz), hz_to_mel(high_hz), num_mels + 2))
    widths = np.diff(corners)  # (M + 1,)
    slopes = corners[None, :] - freqs[:, None]  # (F, M + 2)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    return np.maximum(0.0, np.minimum(down, up)).astype(np.float32)


def hann_window() -> np.ndarray:
    """(WINDOW_SAMPLES,) float32 periodic Hann window, torch.hann_window(400)."""
    n = np.arange(WINDOW_SAMPLES)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / WINDOW_SAMPLES)).astype(np.float32)
