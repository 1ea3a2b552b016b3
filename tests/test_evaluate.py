"""Tests for evaluate.py (`av_disentangle.evaluation`) against a tiny stand-in SavedModel with
the export contract (tests/standin.py, fixture `standin_model` in conftest.py), whose content
streams make sync offsets recoverable on the clips of `make_sync_clip`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from av_disentangle.evaluation import (EvaluationError, cli, exported, scoring, sync, verification,
                                       video)
from av_disentangle.evaluation.trials import Trial, make_trials, read_trials
from av_disentangle.verification_metrics import compute_eer

REPO = Path(__file__).resolve().parents[1]

LIBRISPEECH = REPO / "data" / "samples" / "librispeech_subset"
from conftest import write_wav  # noqa: E402
from standin import FACE  # the stand-in SavedModel; its fixture is in conftest.py


# === Synthetic data ===



@pytest.fixture()
def tone_root(tmp_path) -> Path:
    """Two 'speakers' (different tone mixtures) x 3 utterances of 0.7-2.5 s (some < crop)."""
    rng = np.random.default_rng(1)
    for spk, freqs in (("spkA", (220, 660)), ("spkB", (400, 1300))):
        for u, dur in enumerate((0.7, 1.5, 2.5)):
            t = np.arange(int(dur * 16000)) / 16000
            x = sum(0.2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in freqs)
            write_wav(tmp_path / "audio" / spk / f"u{u}.wav", x + 0.01 * rng.normal(size=t.size))
    return tmp_path / "audio"


def make_sync_clip(path: Path, n_frames: int = 75, size: int = 64, seed: int = 0) -> None:
    """Writes an mp4 (MPEG-4 video + AAC audio) whose content is alignable by the stand-in."""
    from conftest import write_mp4

    rng = np.random.default_rng(seed)
    v = rng.uniform(-1, 1, size=(n_frames, 16)).astype(np.float32)
    blk = size // 4
    grey = (128 + 100 * v.reshape(n_frames, 4, 4)).repeat(blk, 1).repeat(blk, 2)
    frames = np.repeat(grey[..., None], 3, -1).astype(np.uint8)
    write_mp4(path, frames, 0.5 * np.repeat(v, 40, axis=1).reshape(-1), high_quality=True)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "evaluate.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


# === Trials ===


def test_read_trials_and_errors(tmp_path):
    good = tmp_path / "t.txt"
    good.write_text("1 a/x.wav a/y.wav\n\n# comment\n0 a/x.wav b/z.wav\n")
    assert read_trials(good) == [Trial(1, "a/x.wav", "a/y.wav"),
                                          Trial(0, "a/x.wav", "b/z.wav")]
    bad = tmp_path / "bad.txt"
    bad.write_text("1 a.wav b.wav\n0 a.wav b.wav\n2 a.wav b.wav\n")
    with pytest.raises(EvaluationError, match=r"bad\.txt:3:"):
        read_trials(bad)
    bad.write_text("1 a.wav\n")
    with pytest.raises(EvaluationError, match=r":1: expected"):
        read_trials(bad)


def test_read_real_voxceleb_trial_list():
    trials = read_trials(REPO / "data/samples/voxceleb1_trials/veri_test2.txt")
    assert len(trials) == 37611
    assert trials[0] == Trial(1, "id10270/x6uYqmx31kE/00001.wav",
                                       "id10270/8jEAjG6SegY/00008.wav")


def test_make_trials_librispeech(tmp_path):
    out = tmp_path / "ls.txt"
    n = make_trials(LIBRISPEECH, out)
    trials = read_trials(out)
    assert n == len(trials) == 50 * 49 // 2
    assert sum(t.label for t in trials) == 5 * (10 * 9 // 2)
    assert all((t.path1.split("/")[0] == t.path2.split("/")[0]) == bool(t.label)
               for t in trials)


# === Decoding and cropping ===


def test_load_audio_flac_and_corrupt(tmp_path):
    flac = sorted(LIBRISPEECH.glob("*/*.flac"))[0]
    wav = verification.load_audio(flac)
    assert wav.dtype == np.float32 and wav.ndim == 1 and wav.size > 16000
    assert np.abs(wav).max() <= 1.0
    corrupt = tmp_path / "broken.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(EvaluationError, match="broken.wav"):
        verification.load_audio(corrupt)


def test_crop_waveform():
    wav = np.arange(100, dtype=np.float32)
    crops = verification.crop_waveform(wav, 3, 40)
    assert crops.shape == (3, 40)
    assert crops[0, 0] == 0 and crops[-1, -1] == 99 and crops[1, 0] == 30
    short = verification.crop_waveform(np.arange(10, dtype=np.float32), 2, 25)
    np.testing.assert_array_equal(short[0], np.tile(np.arange(10), 3)[:25])


# === Verification ===


def _args(**kw):
    ns = cli.build_parser().parse_args([])
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def test_verification_missing_files(standin_model, tone_root, tmp_path):
    trials = tmp_path / "t.txt"
    trials.write_text("1 spkA/u0.wav spkA/u1.wav\n0 spkA/u0.wav spkB/u2.wav\n"
                      "1 spkB/u1.wav spkB/u2.wav\n0 spkA/u2.wav spkB/nope.wav\n"
                      "1 spkA/gone.wav spkA/u2.wav\n")
    args = _args(model=standin_model, trials=str(trials), audio_root=str(tone_root),
                 num_crops=2, batch_size=8)
    with pytest.raises(EvaluationError, match=r"2 of \d+ audio files are missing.*"
                                                        r"spkA/gone.wav, spkB/nope.wav"):
        cli.run_verification(args)
    args.skip_missing = True
    args.scores_out = str(tmp_path / "scores.txt")
    logs = cli.run_verification(args)
    kept = [ln.split() for ln in (tmp_path / "scores.txt").read_text().splitlines()]
    assert [p[1:] for p in kept] == [["1", "spkA/u0.wav", "spkA/u1.wav"],
                                     ["0", "spkA/u0.wav", "spkB/u2.wav"],
                                     ["1", "spkB/u1.wav", "spkB/u2.wav"]]
    scores = [float(p[0]) for p in kept]
    # The stand-in tells the two tone "speakers" apart: both targets outscore the non-target.
    assert min(scores[0], scores[2]) > scores[1]
    assert logs["eer"] == 0.0


def test_verification_scores_and_plot(standin_model, tone_root, tmp_path, capsys):
    trials = tmp_path / "t.txt"
    make_trials(tone_root, trials)  # 15 trials, 6 target
    scores_out, plot_out = tmp_path / "scores.txt", tmp_path / "det.png"
    args = _args(model=standin_model, trials=str(trials), audio_root=str(tone_root),
                 num_crops=3, batch_size=4, scores_out=str(scores_out),
                 plot_out=str(plot_out))
    logs = cli.run_verification(args)
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1
    assert summary[0] == scoring.format_summary(logs)
    assert summary[0].startswith("EER ") and "minDCF(0.01)" in summary[0]

    lines = scores_out.read_text().splitlines()
    assert len(lines) == 15
    parsed = [ln.split() for ln in lines]
    assert all(len(p) == 4 and p[1] in ("0", "1") for p in parsed)
    assert [(int(p[1]), p[2], p[3]) for p in parsed] == [
        (t.label, t.path1, t.path2) for t in read_trials(trials)]
    scores = np.array([float(p[0]) for p in parsed])
    labels = np.array([int(p[1]) for p in parsed])
    assert logs["eer"] == pytest.approx(compute_eer(scores, labels)[0], abs=1e-3)
    assert labels.sum() == 6 and scores[labels == 1].min() > scores[labels == 0].max()
    assert logs["eer"] == 0.0 and logs["min_dcf_0.01"] == 0.0
    assert plot_out.stat().st_size > 10_000
    assert plot_out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verification_corrupt_file_named(standin_model, tone_root, tmp_path):
    (tone_root / "spkB" / "u1.wav").write_bytes(b"not a wav file at all" * 20)
    trials = tmp_path / "t.txt"
    make_trials(tone_root, trials)
    args = _args(model=standin_model, trials=str(trials), audio_root=str(tone_root),
                 num_crops=2)
    with pytest.raises(EvaluationError, match=r"spkB/u1\.wav"):
        cli.run_verification(args)


@pytest.mark.slow
def test_cli_end_to_end_librispeech(standin_model, tmp_path):
    trials = tmp_path / "ls.txt"
    r = run_cli("--make_trials", str(LIBRISPEECH), "--trials_out", str(trials))
    assert r.returncode == 0, r.stderr
    # Keep it small: trials among 2 utterances of each of the 5 speakers.
    keep = {p.relative_to(LIBRISPEECH).as_posix()
            for spk in sorted(LIBRISPEECH.iterdir()) if spk.is_dir()
            for p in sorted(spk.glob("*.flac"))[:2]}
    small = tmp_path / "small.txt"
    small.write_text("".join(ln for ln in trials.read_text().splitlines(keepends=True)
                             if ln.split()[1] in keep and ln.split()[2] in keep))
    scores = tmp_path / "scores.txt"
    r = run_cli("--model", standin_model, "--trials", str(small), "--audio_root",
                str(LIBRISPEECH), "--num_crops", "4", "--scores_out", str(scores))
    assert r.returncode == 0, r.stderr
    # A normal run shows no TensorFlow start-up noise (absl-style C++ log lines such as
    # "E0000 ... cuInit failed" on machines without a GPU) and no stack trace.
    noise = [ln for ln in r.stderr.splitlines()
             if re.match(r"[EWIF]\d{4} ", ln) or "cuInit" in ln or "Traceback" in ln]
    assert not noise, noise
    summary = [ln for ln in r.stdout.splitlines() if ln.startswith("EER ")]
    assert len(summary) == 1, r.stdout
    assert len(scores.read_text().splitlines()) == 45

    r = run_cli("--model", standin_model, "--trials", str(small), "--audio_root",
                str(tmp_path))
    assert r.returncode == 2 and "10 of 10 audio files are missing" in r.stderr


# Measured with evaluate.py of commit 778fdc0 (before evaluate.py became the
# av_disentangle.evaluation package, issue 13): the stand-in below (fixed seeded weights) on all
# 1,225 pairs of the bundled LibriSpeech subset (225 target), README defaults (10 crops x 2 s).
# The refactor (shared decoding, crops batched across files) must not move any of them.
PINNED_LIBRISPEECH = {"eer": 0.29, "min_dcf_0.01": 0.7511111111111111,
                      "min_dcf_0.05": 0.7511111111111111}
PINNED_MEAN_SCORE = {1: 0.8179234799999999, 0: 0.548711841}  # per label, from --scores_out


@pytest.mark.parametrize("batch_size", [None, 7])  # the default; 7 splits a file's crops
def test_librispeech_verification_numbers_pinned(batch_size, standin_model, tmp_path):
    trials, scores_out = tmp_path / "ls.txt", tmp_path / "scores.txt"
    make_trials(LIBRISPEECH, trials)
    args = _args(model=standin_model, trials=str(trials), audio_root=str(LIBRISPEECH),
                 scores_out=str(scores_out))
    if batch_size is not None:
        args.batch_size = batch_size
    logs = cli.run_verification(args)
    for key, value in PINNED_LIBRISPEECH.items():
        assert logs[key] == pytest.approx(value, abs=1e-6), key
    rows = [ln.split() for ln in scores_out.read_text().splitlines()]
    scores = np.array([float(r[0]) for r in rows])
    labels = np.array([int(r[1]) for r in rows])
    assert len(rows) == 1225 and labels.sum() == 225
    for label, mean in PINNED_MEAN_SCORE.items():
        assert scores[labels == label].mean() == pytest.approx(mean, abs=1e-6), label


# === Sync and cross-modal ===


def test_sync_offsets_recovered(standin_model, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    make_sync_clip(videos / "clip0.mp4", seed=0)
    make_sync_clip(videos / "clip1.mp4", seed=1)
    model = exported.ExportedModel(standin_model)
    assert model.face_size(112) == (FACE, FACE)
    frames, audio = video.load_face_clip(videos / "clip0.mp4", FACE, detect_faces=False)
    assert frames.shape == (75, FACE, FACE, 3) and audio.shape == (75 * 640,)
    [row] = sync.measure_video(model, "clip0", frames, audio, vshift=15, applied_offsets=[5])
    assert row.mean_dists.shape == (31,) and row.av_offset == 5 and row.error == 0

    result = cli.run_sync(_args(task="sync", model=standin_model, videos=str(videos)))
    assert result["exact"] == 1.0 and result["n"] == 6
    assert "sync offset accuracy: exact 100.0%  within+-1 100.0%" in capsys.readouterr().out


# === Scoring ===


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_score_pairs_known_scores_eer_and_min_dcf():
    """Cosines set by angle: targets 0.9, 0.8, 0.3; non-targets 0.7, 0.2, 0.1. One target
    below one non-target: at threshold 0.7 FPR = FNR = 1/3, so EER = 1/3; the cheapest
    threshold for both DCF priors is 0.8 (P_miss 1/3, P_fa 0): normalised minDCF = 1/3."""
    cosines = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0], np.float32)
    table1 = np.array([[1.0, 0.0]], np.float32)
    table2 = np.stack([cosines, np.sqrt(1 - cosines ** 2)], axis=1).astype(np.float32)
    scores, logs = scoring.score_pairs(table1, table2, np.zeros(6, int), np.arange(6), labels)
    np.testing.assert_allclose(scores, cosines, atol=1e-6)
    assert logs["eer"] == pytest.approx(1 / 3, abs=1e-6)
    assert logs["min_dcf_0.01"] == pytest.approx(1 / 3, abs=1e-6)
    assert logs["min_dcf_0.05"] == pytest.approx(1 / 3, abs=1e-6)
    # Crop tables (F, N, D): the score is the mean cosine over all N x M crop pairs.
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    crops1 = np.array([[e1, e2]], np.float32)  # cosines with e1: 1 and 0
    crops2 = np.array([[e1, e1], [e2, e2]], np.float32)
    scores, _ = scoring.score_pairs(crops1, crops2, np.zeros(2, int), np.arange(2),
                                     np.array([1, 0], np.float32))
    np.testing.assert_allclose(scores, [0.5, 0.5], atol=1e-6)


def test_score_pairs_good_embeddings_low_eer_shuffled_chance():
    """20 speakers x 5 files, embeddings = speaker centre + small noise: every target pair
    outscores every non-target (EER 0). The same embeddings assigned to the files in a random
    order carry no speaker information: EER near 50% (4,950 pairs, 200 targets)."""
    rng = np.random.default_rng(0)
    speakers = np.repeat(np.arange(20), 5)
    table = _unit_rows(rng.normal(size=(20, 16))[speakers] + 0.1 * rng.normal(size=(100, 16)))
    idx1, idx2 = np.triu_indices(100, k=1)
    labels = (speakers[idx1] == speakers[idx2]).astype(np.float32)
    assert labels.sum() == 20 * 10
    _, logs = scoring.score_pairs(table.astype(np.float32), table.astype(np.float32),
                                   idx1, idx2, labels)
    assert logs["eer"] == 0.0
    shuffled = table[rng.permutation(100)].astype(np.float32)
    _, logs = scoring.score_pairs(shuffled, shuffled, idx1, idx2, labels)
    assert 0.4 < logs["eer"] < 0.6


def test_face_clips_read_as_prepare_reads_them(tmp_path, monkeypatch):
    """Evaluation reads video only through `pipelines.prepare.process_clip` (decode_clip, then
    the tracked crop or the centre-square resize), with prepare's options: the frames equal
    prepare's own output for the same file, and a non-square video is centre-cropped, not
    stretched."""
    from conftest import write_mp4
    from pipelines import faces, media, prepare, sources

    calls = []
    real_decode = media.decode_clip
    monkeypatch.setattr(media, "decode_clip",
                        lambda *a, **k: calls.append((a, k)) or real_decode(*a, **k))
    # 64 x 32 frames: left and right quarters black, centre square white -> a centre crop is
    # all white, a stretched resize would be half black.
    frames = np.zeros((30, 32, 64, 3), np.uint8)
    frames[:, :, 16:48] = 255
    clip = tmp_path / "wide.mp4"
    write_mp4(clip, frames, 0.1 * np.sin(np.arange(30 * 640) / 5.0), high_quality=True)
    got, audio = video.load_face_clip(clip, 16, detect_faces=False)
    assert got.shape == (30, 16, 16, 3) and audio.shape == (30 * 640,)
    assert got[:, 2:-2, 2:-2].min() > 200
    assert calls and calls[-1][1]["max_side"] is None
    expected = prepare.process_clip(sources.ClipSpec(str(clip), "wide", detect=False),
                                    prepare.PrepareConfig(face_size=16, min_frames=1))
    np.testing.assert_array_equal(got, expected.frames)
    np.testing.assert_array_equal(audio, expected.audio.astype(np.float32) / 32768.0)

    grid = sorted((REPO / "data/samples/grid/lipnet_samples").glob("*.mpg"))[0]
    frames, audio = video.load_face_clip(grid, FACE, detect_faces=True, max_seconds=1.0)
    assert frames.shape == (25, FACE, FACE, 3) and audio.shape == (25 * 640,)
    assert calls[-1][1]["max_side"] == prepare.PrepareConfig().max_side
    whole = prepare.process_clip(sources.ClipSpec(str(grid), "grid", detect=True),
                                 prepare.PrepareConfig(face_size=FACE, min_frames=1))
    np.testing.assert_array_equal(frames, whole.frames[:25])  # tracked, as prepare crops it
    boxes = faces.track_face(media.decode_clip(grid).frames[:10])
    cx, cy, side = np.median(boxes, axis=0)
    assert 100 < cx < 260 and 80 < cy < 240 and 80 / 1.6 < side < 288  # 360x288, one face
    frame = np.zeros((40, 60, 3), np.uint8)
    frame[10:20, 30:40] = 200  # bright square centred at (35, 15), side 10
    crop = faces.crop_square(frame, 35, 15, 10, 8)
    assert crop.shape == (8, 8, 3) and crop.min() == 200


def test_audio_signature_with_sample_rate_input(tmp_path):
    """The exporter may add a scalar int32 `sample_rate` input; evaluate.py feeds 16000."""

    class WithRate(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform"),
                                      tf.TensorSpec([], tf.int32, name="sample_rate")])
        def embed(self, waveform, sample_rate):
            check = tf.debugging.assert_equal(sample_rate, 16000)
            with tf.control_dependencies([check]):
                e = tf.stack([tf.reduce_mean(waveform, 1), tf.math.reduce_std(waveform, 1)], 1)
            return {"embedding": tf.math.l2_normalize(e, axis=-1)}

    module = WithRate()
    tf.saved_model.save(module, str(tmp_path / "m"), signatures={"serving_default": module.embed})
    model = exported.ExportedModel(tmp_path / "m")
    emb = model.embed_waveforms(np.ones((2, 16000), np.float32))
    assert emb.shape == (2, 2)
    assert model.face_size(112) == (112, 112)  # no face_content signature: the default
