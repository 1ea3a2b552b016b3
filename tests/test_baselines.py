"""The free verification baselines (evaluation/baselines.py, `evaluate.py --baseline`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from av_disentangle.evaluation import EvaluationError, baselines, cli
from av_disentangle.evaluation.trials import make_trials
from av_disentangle.melscale import mel_filterbank
from conftest import write_wav

REPO = Path(__file__).resolve().parents[1]
LIBRISPEECH = REPO / "data" / "samples" / "librispeech_subset"


def test_mfcc_stats_are_the_textbook_dct_of_the_log_mel_frames():
    """MFCC k = sqrt(2 / M) sum_m x_m cos(pi k (2m + 1) / 2M) for k = 1..19 (orthonormal
    DCT-II, c0 left out), written out here as the sum; then mean and std over time."""
    rng = np.random.default_rng(0)
    log_mel = rng.normal(size=(30, 40))
    m = np.arange(40)
    basis = np.stack([np.sqrt(2 / 40) * np.cos(np.pi * k * (2 * m + 1) / 80)
                      for k in range(1, 20)])  # (19, 40)
    mfcc = log_mel @ basis.T
    expected = np.concatenate([mfcc.mean(axis=0), mfcc.std(axis=0)])
    np.testing.assert_allclose(baselines.mfcc_stats(log_mel), expected, atol=1e-12)
    assert baselines.mfcc_stats(log_mel).shape == (38,)


def test_zscore_and_ltas():
    table = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]])
    z = baselines.zscore(table)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(z[:, [0, 2]].std(axis=0), 1)
    np.testing.assert_array_equal(z[:, 1], 0)  # a constant dimension
    np.testing.assert_allclose(z[:, 0], [-np.sqrt(1.5), 0, np.sqrt(1.5)])
    np.testing.assert_allclose(baselines.ltas(table), [3.0, 5.0, 5.0])


def test_ltas_of_a_tone_peaks_in_the_tones_mel_band():
    """The long-term spectrum of a 1 kHz tone is largest in the band whose triangle weighs
    1 kHz most (the front end's own filterbank); raw log-mel, not normalised away."""
    t = np.arange(16000) / 16000
    log_mel = baselines.log_mel_frames(0.5 * np.sin(2 * np.pi * 1000 * t))
    assert log_mel.shape == (100, 40)
    bank = mel_filterbank(40)  # (257, 40)
    assert int(np.argmax(baselines.ltas(log_mel))) == int(np.argmax(bank[1000 * 512 // 16000]))


def test_baseline_table_kinds_and_unknown():
    rng = np.random.default_rng(1)
    frames = [rng.normal(size=(20, 40)) + i for i in range(4)]
    assert baselines.baseline_table("mfcc", frames).shape == (4, 38)
    assert baselines.baseline_table("ltas_z", frames).shape == (4, 40)
    np.testing.assert_allclose(baselines.baseline_table("ltas_z", frames).mean(axis=0), 0,
                               atol=1e-6)
    with pytest.raises(EvaluationError, match="unknown baseline 'mel'"):
        baselines.baseline_table("mel", frames)


def _args(**kw):
    ns = cli.build_parser().parse_args([])
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


@pytest.fixture(scope="module")
def ls_trials(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("baselines") / "ls.txt"
    make_trials(LIBRISPEECH, path)
    return path


# Measured on all 1,225 pairs of the bundled LibriSpeech subset (5 speakers x 10 utterances,
# 225 target): what `evaluate.py --baseline K` prints (README). The quick-start (5-step) model:
# 31.80%; train.py's default recipe after 250 steps on 30 real voices: 12.8% (BENCHMARKS.md).
MEASURED_EER = {"mfcc": 0.0770, "mfcc_z": 0.0178, "ltas": 0.1170, "ltas_z": 0.1156}


@pytest.mark.parametrize("kind", sorted(MEASURED_EER))
def test_librispeech_baselines_score_as_the_readme_says(kind, ls_trials):
    logs = cli.run_verification(_args(baseline=kind, trials=str(ls_trials),
                                               audio_root=str(LIBRISPEECH)))
    assert logs["eer"] == pytest.approx(MEASURED_EER[kind], abs=0.0005)


def test_baseline_cli_errors_and_a_short_file_named(tmp_path, ls_trials):
    def run(*flags):
        return subprocess.run([sys.executable, str(REPO / "evaluate.py"), *flags], cwd=REPO,
                              capture_output=True, text=True, timeout=300)

    r = run("--baseline", "mfcc", "--task", "sync", "--videos", str(tmp_path))
    assert r.returncode == 2 and "--baseline replaces --model" in r.stderr
    r = run("--baseline", "mfcc", "--model", str(tmp_path), "--trials", str(ls_trials),
            "--audio_root", str(LIBRISPEECH))
    assert r.returncode == 2 and "--baseline replaces --model" in r.stderr
    # A 100-sample file has no analysis window: named, or its trials dropped with --skip_missing.
    root = tmp_path / "audio"
    rng = np.random.default_rng(2)
    for spk, n in (("a", 16000), ("b", 100), ("c", 16000)):
        for u in range(2):
            write_wav(root / spk / f"{u}.wav", 0.1 * rng.normal(size=n))
    trials = tmp_path / "t.txt"
    trials.write_text("1 a/0.wav a/1.wav\n0 a/0.wav b/0.wav\n0 a/1.wav c/1.wav\n")
    r = run("--baseline", "mfcc", "--trials", str(trials), "--audio_root", str(root))
    assert r.returncode == 2 and "b/0.wav: 100 samples, shorter than one 400-sample" in r.stderr
    args = _args(baseline="mfcc", trials=str(trials), audio_root=str(root), skip_missing=True)
    logs = cli.run_verification(args)  # 2 trials left, one of each class
    assert set(logs) == {"eer", "min_dcf_0.01", "min_dcf_0.05"}

