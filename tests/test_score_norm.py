"""AS-norm (`evaluation/score_norm.py`): hand-computed values, then `evaluate.py`'s path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from av_disentangle.evaluation import EvaluationError, score_norm
from av_disentangle.evaluation.cli import main as evaluate
from av_disentangle.evaluation.trials import make_trials

REPO = Path(__file__).resolve().parents[1]
LIBRISPEECH = REPO / "data" / "samples" / "librispeech_subset"
SPEECH_COMMANDS = REPO / "data" / "samples" / "speech_commands_subset"


def test_file_and_cohort_vectors_by_hand():
    # crops (2, 0) and (0, 3): unit (1, 0) and (0, 1), mean (0.5, 0.5), not renormalised
    np.testing.assert_allclose(score_norm.file_vectors(np.array([[[2.0, 0], [0, 3.0]]])),
                               [[0.5, 0.5]])
    # speaker "a": files (2, 0) and (0, 5) -> (1, 0), (0, 1) -> mean (0.5, 0.5) -> unit
    vectors, names = score_norm.cohort_vectors(
        np.array([[[2.0, 0]], [[0, 5.0]], [[0, -1.0]]]), ["a", "a", "b"])
    assert names == ["a", "b"]
    np.testing.assert_allclose(vectors, [[0.5 ** 0.5, 0.5 ** 0.5], [0, -1]])


def test_as_norm_by_hand():
    """Cohort (1, 0), (0, 1), (0.6, 0.8); top 2. File e = (1, 0): cohort scores 1, 0, 0.6 ->
    top {1, 0.6}: mean 0.8, std 0.2. File t = (0, 1): 0, 1, 0.8 -> {1, 0.8}: 0.9, 0.1.
    Trial (e, t), raw score 0: 0.5 * ((0 - 0.8) / 0.2 + (0 - 0.9) / 0.1) = -6.5; trial (e, e),
    raw 1: 0.5 * (0.2 / 0.2 + 0.2 / 0.2) = 1."""
    cohort = np.array([[1.0, 0], [0, 1.0], [0.6, 0.8]])
    vectors = np.array([[1.0, 0], [0, 1.0]])
    mean, std = score_norm.top_k_stats(vectors, cohort, top_k=2)
    np.testing.assert_allclose(mean, [0.8, 0.9])
    np.testing.assert_allclose(std, [0.2, 0.1])
    normed = score_norm.as_norm(np.array([0.0, 1.0]), np.array([0, 0]), np.array([1, 0]),
                                mean, std)
    np.testing.assert_allclose(normed, [-6.5, 1.0], rtol=1e-6)
    # top_k beyond the cohort keeps all of it: e's scores 1, 0, 0.6
    mean, std = score_norm.top_k_stats(vectors[:1], cohort, top_k=10)
    np.testing.assert_allclose([mean[0], std[0]], [np.mean([1, 0, 0.6]), np.std([1, 0, 0.6])])
    with pytest.raises(EvaluationError, match="--top_k"):
        score_norm.top_k_stats(vectors, cohort, top_k=0)


def test_evaluate_asnorm_with_a_cohort_prints_both_and_caches(tmp_path, capsys, monkeypatch):
    """The MFCC baseline on the bundled LibriSpeech trials, the 8 bundled Speech Commands
    speakers as cohort: one summary line with the normalised and the raw metrics; the cache is
    written, then reused (no cohort file decoded the second time)."""
    trials = tmp_path / "ls.txt"
    make_trials(LIBRISPEECH, trials)
    cache = tmp_path / "cohort.npz"
    argv = ["--baseline", "mfcc", "--trials", str(trials), "--audio_root", str(LIBRISPEECH),
            "--score_norm", "asnorm", "--cohort", str(SPEECH_COMMANDS), "--top_k", "5",
            "--cohort_cache", str(cache)]
    capsys.readouterr()
    assert evaluate(argv) == 0
    first = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("EER ")]
    assert len(first) == 1 and "(AS-norm, top 5 of 8 cohort speakers; raw: EER " in first[0]
    assert cache.is_file()
    raw = evaluate(["--baseline", "mfcc", "--trials", str(trials), "--audio_root",
                    str(LIBRISPEECH)])
    assert raw == 0
    plain = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("EER ")][0]
    assert first[0].split("raw: ")[1].startswith(plain.split("  minDCF")[0])  # same raw EER

    from av_disentangle.evaluation import verification
    decoded = []
    real = verification.decoded_files

    def counting(paths, *a, **k):
        decoded.append(len(paths))
        return real(paths, *a, **k)

    monkeypatch.setattr(verification, "decoded_files", counting)
    assert evaluate(argv) == 0
    again = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("EER ")]
    assert again == first and len(decoded) == 1  # the trial files only: the cohort cached

    assert evaluate(argv[:6] + ["--score_norm", "asnorm"]) == 2
    assert "needs --cohort" in capsys.readouterr().err
    assert evaluate(["--baseline", "mfcc_z"] + argv[2:]) == 2
    assert "use --baseline mfcc" in capsys.readouterr().err
    assert evaluate(argv[:6] + ["--cohort", str(SPEECH_COMMANDS)]) == 2
    assert "are for --score_norm asnorm" in capsys.readouterr().err
