"""Tests for evaluate.py against a tiny stand-in SavedModel with the export contract.

The stand-in's content streams are designed so that sync offsets are recoverable: a
synthetic clip shows, in frame t, a 4x4 grid of grey levels v[t, k]; its audio holds the same
16 values as 40-sample constant runs (640 samples per frame). Face content = centred 4x4 grid
means, audio content = centred 40-sample run means, so the cosine is ~1 only when aligned.
"""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # evaluate.py is a script at the repo root
    sys.path.insert(0, str(REPO))

import evaluate  # noqa: E402
from av_disentangle.metrics import compute_eer  # noqa: E402

LIBRISPEECH = REPO / "data" / "samples" / "librispeech_subset"
FACE = 32  # static face size of the stand-in's face_content signature
D_ID = 8


# === Stand-in SavedModel ===


def _centre_normalise(x):
    x = x - tf.reduce_mean(x, axis=-1, keepdims=True)
    return tf.math.l2_normalize(x, axis=-1, epsilon=1e-9)


class StandInModel(tf.Module):
    """Fixed random projections of simple features, exposing the four serving signatures."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(0)
        self.w_voice = tf.constant(rng.normal(size=(257, D_ID)).astype(np.float32))
        self.w_face = tf.constant(rng.normal(size=(19, D_ID)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform")])
    def embed(self, waveform):
        spec = tf.abs(tf.signal.stft(waveform, 400, 160, 512))  # (B, F, 257)
        logspec = tf.reduce_mean(tf.math.log(spec + 1e-3), axis=1)
        feat = logspec - tf.reduce_mean(logspec, axis=-1, keepdims=True)
        return {"embedding": tf.math.l2_normalize(feat @ self.w_voice, axis=-1)}

    @staticmethod
    def _grid(frames):
        g = tf.reduce_mean(tf.cast(frames, tf.float32), axis=-1)  # (B, T, H, W)
        s = tf.shape(g)
        g = tf.reshape(g, [s[0], s[1], 4, FACE // 4, 4, FACE // 4])
        return tf.reshape(tf.reduce_mean(g, axis=[3, 5]), [s[0], s[1], 16])

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, FACE, FACE, 3], tf.uint8, name="frames")])
    def embed_face(self, frames):
        colour = tf.reduce_mean(tf.cast(frames, tf.float32), axis=[1, 2, 3]) / 255.0
        grid = tf.reduce_mean(self._grid(frames), axis=1) / 255.0
        feat = tf.concat([grid, colour], axis=-1)
        return {"embedding": tf.math.l2_normalize(feat @ self.w_face, axis=-1)}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform")])
    def content(self, waveform):
        s = tf.shape(waveform)
        steps = s[1] // 640
        x = tf.reshape(waveform[:, :steps * 640], [s[0], steps, 16, 40])
        return {"content": _centre_normalise(tf.reduce_mean(x, axis=-1))}

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, FACE, FACE, 3], tf.uint8, name="frames")])
    def face_content(self, frames):
        return {"content": _centre_normalise(self._grid(frames))}


@pytest.fixture(scope="session")
def standin_model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("saved_models") / "standin" / "1"
    module = StandInModel()
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.embed,
        "embed_face": module.embed_face,
        "content": module.content,
        "face_content": module.face_content,
    })
    return str(path)


# === Synthetic data ===


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


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
    assert evaluate.read_trials(good) == [evaluate.Trial(1, "a/x.wav", "a/y.wav"),
                                          evaluate.Trial(0, "a/x.wav", "b/z.wav")]
    bad = tmp_path / "bad.txt"
    bad.write_text("1 a.wav b.wav\n0 a.wav b.wav\n2 a.wav b.wav\n")
    with pytest.raises(evaluate.EvaluationError, match=r"bad\.txt:3:"):
        evaluate.read_trials(bad)
    bad.write_text("1 a.wav\n")
    with pytest.raises(evaluate.EvaluationError, match=r":1: expected"):
        evaluate.read_trials(bad)


def test_read_real_voxceleb_trial_list():
    trials = evaluate.read_trials(REPO / "data/samples/voxceleb1_trials/veri_test2.txt")
    assert len(trials) == 37611
    assert trials[0] == evaluate.Trial(1, "id10270/x6uYqmx31kE/00001.wav",
                                       "id10270/8jEAjG6SegY/00008.wav")


def test_make_trials_librispeech(tmp_path):
    out = tmp_path / "ls.txt"
    n = evaluate.make_trials(LIBRISPEECH, out)
    trials = evaluate.read_trials(out)
    assert n == len(trials) == 50 * 49 // 2
    assert sum(t.label for t in trials) == 5 * (10 * 9 // 2)
    assert all((t.path1.split("/")[0] == t.path2.split("/")[0]) == bool(t.label)
               for t in trials)


# === Decoding and cropping ===


def test_load_audio_flac_and_corrupt(tmp_path):
    flac = sorted(LIBRISPEECH.glob("*/*.flac"))[0]
    wav = evaluate.load_audio(flac)
    assert wav.dtype == np.float32 and wav.ndim == 1 and wav.size > 16000
    assert np.abs(wav).max() <= 1.0
    corrupt = tmp_path / "broken.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(evaluate.EvaluationError, match="broken.wav"):
        evaluate.load_audio(corrupt)


def test_crop_waveform():
    wav = np.arange(100, dtype=np.float32)
    crops = evaluate.crop_waveform(wav, 3, 40)
    assert crops.shape == (3, 40)
    assert crops[0, 0] == 0 and crops[-1, -1] == 99 and crops[1, 0] == 30
    short = evaluate.crop_waveform(np.arange(10, dtype=np.float32), 2, 25)
    np.testing.assert_array_equal(short[0], np.tile(np.arange(10), 3)[:25])


# === Verification ===


def _args(**kw):
    ns = evaluate.build_parser().parse_args([])
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
    with pytest.raises(evaluate.EvaluationError, match=r"2 of \d+ audio files are missing.*"
                                                        r"spkA/gone.wav, spkB/nope.wav"):
        evaluate.run_verification(args)
    args.skip_missing = True
    args.scores_out = str(tmp_path / "scores.txt")
    logs = evaluate.run_verification(args)
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
    evaluate.make_trials(tone_root, trials)  # 15 trials, 6 target
    scores_out, plot_out = tmp_path / "scores.txt", tmp_path / "det.png"
    args = _args(model=standin_model, trials=str(trials), audio_root=str(tone_root),
                 num_crops=3, batch_size=4, scores_out=str(scores_out),
                 plot_out=str(plot_out))
    logs = evaluate.run_verification(args)
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1
    assert summary[0] == evaluate.format_summary(logs)
    assert summary[0].startswith("EER ") and "minDCF(0.01)" in summary[0]

    lines = scores_out.read_text().splitlines()
    assert len(lines) == 15
    parsed = [ln.split() for ln in lines]
    assert all(len(p) == 4 and p[1] in ("0", "1") for p in parsed)
    assert [(int(p[1]), p[2], p[3]) for p in parsed] == [
        (t.label, t.path1, t.path2) for t in evaluate.read_trials(trials)]
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
    evaluate.make_trials(tone_root, trials)
    args = _args(model=standin_model, trials=str(trials), audio_root=str(tone_root),
                 num_crops=2)
    with pytest.raises(evaluate.EvaluationError, match=r"spkB/u1\.wav"):
        evaluate.run_verification(args)


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
    summary = [ln for ln in r.stdout.splitlines() if ln.startswith("EER ")]
    assert len(summary) == 1, r.stdout
    assert len(scores.read_text().splitlines()) == 45

    r = run_cli("--model", standin_model, "--trials", str(small), "--audio_root",
                str(tmp_path))
    assert r.returncode == 2 and "10 of 10 audio files are missing" in r.stderr


# === Sync and cross-modal ===


def test_sync_offsets_recovered(standin_model, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    make_sync_clip(videos / "clip0.mp4", seed=0)
    make_sync_clip(videos / "clip1.mp4", seed=1)
    model = evaluate.ExportedModel(standin_model)
    assert model.face_size(112) == (FACE, FACE)
    frames, audio = evaluate.load_video(videos / "clip0.mp4", (FACE, FACE))
    assert frames.shape == (75, FACE, FACE, 3) and audio.shape == (75 * 640,)
    scores = evaluate.sync_offset_scores(model, frames, audio, max_offset=15, true_shift=5)
    assert scores.shape == (31,) and int(np.argmax(scores)) - 15 == 5

    result = evaluate.run_sync(_args(task="sync", model=standin_model, videos=str(videos)))
    assert result["exact"] == 1.0 and result["n"] == 6
    assert "sync offset accuracy: exact 100.0%  within+-1 100.0%" in capsys.readouterr().out


def _spy_on_score_pairs(monkeypatch) -> list:
    """Records every score_pairs call's (scores, labels, idx1, idx2) and passes it through."""
    calls = []
    real = evaluate.score_pairs

    def spy(table1, table2, idx1, idx2, labels, batch_size=1024):
        scores, logs = real(table1, table2, idx1, idx2, labels, batch_size)
        calls.append((scores, labels, idx1, idx2))
        return scores, logs

    monkeypatch.setattr(evaluate, "score_pairs", spy)
    return calls


def test_crossmodal_pairs_labels_and_eer(standin_model, tmp_path, capsys, monkeypatch):
    """Every face segment against every voice segment; a pair is a target when both segments
    come from the same clip (no --identities) or the same identity. 3 clips of 60 frames, 2
    segments each: 6 x 6 = 36 pairs, 3 * 2^2 = 12 targets by clip, 4^2 + 2^2 = 20 with
    c0, c1 = alice. The EER reported is the EER of those pairs' scores."""
    calls = _spy_on_score_pairs(monkeypatch)
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        make_sync_clip(videos / f"c{i}.mp4", n_frames=60, seed=10 + i)
    logs = evaluate.run_crossmodal(_args(task="crossmodal", model=standin_model,
                                         videos=str(videos), segment_seconds=1.0))
    assert capsys.readouterr().out.startswith("EER ")
    scores, labels, idx1, idx2 = calls[-1]
    assert len(labels) == 36 and labels.sum() == 12
    assert sorted(zip(idx1.tolist(), idx2.tolist())) == [(a, b) for a in range(6)
                                                         for b in range(6)]
    # Segments are in clip order, two per clip: a target iff the same clip.
    np.testing.assert_array_equal(labels, (idx1 // 2 == idx2 // 2).astype(np.float32))
    assert logs["eer"] == pytest.approx(compute_eer(scores, labels)[0], abs=1e-6)

    ids = tmp_path / "ids.csv"
    ids.write_text("path,identity\nc0.mp4,alice\nc1.mp4,alice\nc2.mp4,bob\n")
    logs = evaluate.run_crossmodal(_args(task="crossmodal", model=standin_model,
                                         videos=str(videos), identities=str(ids)))
    scores, labels, idx1, idx2 = calls[-1]
    assert len(labels) == 36 and labels.sum() == 20
    np.testing.assert_array_equal(labels, ((idx1 < 4) == (idx2 < 4)).astype(np.float32))
    assert logs["eer"] == pytest.approx(compute_eer(scores, labels)[0], abs=1e-6)


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
    scores, logs = evaluate.score_pairs(table1, table2, np.zeros(6, int), np.arange(6), labels)
    np.testing.assert_allclose(scores, cosines, atol=1e-6)
    assert logs["eer"] == pytest.approx(1 / 3, abs=1e-6)
    assert logs["min_dcf_0.01"] == pytest.approx(1 / 3, abs=1e-6)
    assert logs["min_dcf_0.05"] == pytest.approx(1 / 3, abs=1e-6)
    # Crop tables (F, N, D): the score is the mean cosine over all N x M crop pairs.
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    crops1 = np.array([[e1, e2]], np.float32)  # cosines with e1: 1 and 0
    crops2 = np.array([[e1, e1], [e2, e2]], np.float32)
    scores, _ = evaluate.score_pairs(crops1, crops2, np.zeros(2, int), np.arange(2),
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
    _, logs = evaluate.score_pairs(table.astype(np.float32), table.astype(np.float32),
                                   idx1, idx2, labels)
    assert logs["eer"] == 0.0
    shuffled = table[rng.permutation(100)].astype(np.float32)
    _, logs = evaluate.score_pairs(shuffled, shuffled, idx1, idx2, labels)
    assert 0.4 < logs["eer"] < 0.6


def test_crop_faces_and_detect_on_grid():
    frames = np.zeros((2, 40, 60, 3), np.uint8)
    frames[:, 10:20, 30:40] = 200  # bright square centred at (35, 15), side 10
    crop = evaluate.crop_faces(frames, (35, 15, 10), (8, 8))
    assert crop.shape == (2, 8, 8, 3) and crop.min() == 200

    grid = sorted((REPO / "data/samples/grid/lipnet_samples").glob("*.mpg"))[0]
    frames, audio = evaluate.load_face_video(grid, (FACE, FACE), detect_faces=True,
                                             max_seconds=1.0)
    assert frames.shape == (25, FACE, FACE, 3) and audio.shape == (25 * 640,)
    cx, cy, side = evaluate.detect_face_box(evaluate.load_video(grid, None, max_seconds=0.4)[0])
    assert 100 < cx < 260 and 80 < cy < 240 and 80 < side < 288  # 360x288 frame, one face


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
    model = evaluate.ExportedModel(tmp_path / "m")
    emb = model.embed_waveforms(np.ones((2, 16000), np.float32))
    assert emb.shape == (2, 2)
    assert model.face_size(112) == (112, 112)  # no face_content signature: the default
