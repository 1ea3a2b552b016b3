"""In-memory evaluation on track windows (`av_disentangle.evaluation.windows`), the benchmarks'
path: the same scores `evaluate.py` gives for the exported SavedModel."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from harness import tiny_model
from av_disentangle.evaluation import EvaluationError
from av_disentangle.evaluation.exported import ExportedModel
from av_disentangle.evaluation.scoring import score_pairs
from av_disentangle.evaluation.verification import crop_waveform
from av_disentangle.evaluation.windows import (WindowEmbedder, track_trials, track_windows,
                                               verify_tables)
from av_disentangle.export import export_saved_model

WINDOW = 25


def _tracks(num_tracks: int, frames: int, size: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for t in range(num_tracks):
        tone = np.sin(2 * np.pi * (150 + 40 * (t // 2)) * np.arange(frames * 640) / 16000)
        out.append({"frames": rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8),
                    "audio": (0.3 * tone + 0.05 * rng.normal(size=frames * 640)
                              ).astype(np.float32)})
    return out


@pytest.fixture(scope="module")
def bf16_model():
    """A tiny model built under the mixed_bfloat16 policy (as `--mixed_precision auto` trains
    on a bf16 CPU), the caller's policy restored."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        model = tiny_model()
    finally:
        keras.mixed_precision.set_global_policy(policy)
    return model


def test_windows_cut_every_track_from_frame_zero():
    tracks = _tracks(3, 80, 64)
    win = track_windows(tracks, WINDOW, ["a", "b", "c"], ["x", "y", "x"],
                        units=[np.arange(80)] * 3)
    assert win.frames.shape == (9, WINDOW, 64, 64, 3) and win.audio.shape == (9, WINDOW * 640)
    assert win.track.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert win.start.tolist() == [0, 25, 50] * 3
    assert win.identities == ["x", "y"] and win.track_identity().tolist() == [0, 1, 0]
    np.testing.assert_array_equal(win.units[1], np.arange(25, 50))
    np.testing.assert_array_equal(win.frames[4], tracks[1]["frames"][25:50])
    np.testing.assert_array_equal(win.audio[4], tracks[1]["audio"][25 * 640:50 * 640])
    sub = win.subset({"y"})
    assert sub.track_ids == ["b"] and sub.track.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="at least 25 frames"):
        track_windows(_tracks(1, 20, 64), WINDOW, ["a"], ["x"])


def test_trials_pairs_and_exclusions():
    ident = np.array([0, 0, 1, 1])
    i, j, labels = track_trials(ident)
    assert len(labels) == 6 and labels.sum() == 2 and np.all(i < j)
    i, j, labels = track_trials(ident, ordered=True)
    assert len(labels) == 12 and labels.sum() == 4 and not np.any(i == j)
    i, j, labels = track_trials(ident, exclude_same=np.array(["u", "u", "v", "w"]))
    assert (0, 1) not in set(zip(i.tolist(), j.tolist())) and len(labels) == 5
    with pytest.raises(EvaluationError, match="all 1 pairs are target"):
        verify_tables(np.eye(4), np.eye(4), (np.array([0]), np.array([1]), np.array([1])))


def test_track_scores_are_evaluate_py_scores_of_the_float32_export(bf16_model, tmp_path):
    """A bf16-trained model's track scores are evaluate.py's scores of its (float32) export:
    per track the crops `verification.crop_waveform` cuts from its audio (and the same spacing
    of its frames), embedded by the SavedModel's signatures, scored by `score_pairs` on
    (F, N, D) tables. Embedding in the training policy (bf16) would miss by ~1e-2."""
    num_crops, crop = 4, 20
    win = track_windows(_tracks(6, 3 * WINDOW, 64), WINDOW, [f"t{k}" for k in range(6)],
                        ["a", "a", "b", "b", "c", "c"])
    tables = WindowEmbedder(bf16_model).crop_tables(win, num_crops, crop)
    assert {k: v.shape for k, v in tables.items()} == {
        k: (6, num_crops, 16) for k in ("face_identity", "audio_identity", "audio_content")}
    audio_only = WindowEmbedder(bf16_model).crop_tables(win, num_crops, crop, faces=False)
    assert sorted(audio_only) == ["audio_content", "audio_identity"]
    for key, table in audio_only.items():
        np.testing.assert_array_equal(table, tables[key])

    path = export_saved_model(bf16_model.face_stream, bf16_model.audio_stream,
                              bf16_model.model_config, str(tmp_path / "m" / "1"))
    exported = ExportedModel(path)
    voices, faces = [], []
    for t in range(6):
        frames, audio = win.track_arrays(t)
        voices.append(exported.embed_waveforms(crop_waveform(audio, num_crops, crop * 640)))
        starts = np.linspace(0, frames.shape[0] - crop, num_crops).astype(int)
        faces.append(exported.embed_faces(np.stack([frames[s:s + crop] for s in starts])))
    voices, faces = np.stack(voices), np.stack(faces)
    np.testing.assert_allclose(tables["audio_identity"], voices, atol=2e-5)
    np.testing.assert_allclose(tables["face_identity"], faces, atol=2e-5)

    sv = track_trials(win.track_identity())
    theirs, theirs_logs = score_pairs(voices, voices, *sv)
    ours, _ = score_pairs(tables["audio_identity"], tables["audio_identity"], *sv)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
    result = verify_tables(tables["audio_identity"], tables["audio_identity"], sv)
    assert result["eer"] == pytest.approx(theirs_logs["eer"])
    assert (result["trials"], result["targets"]) == (15, 3)
    xm = track_trials(win.track_identity(), ordered=True)
    assert verify_tables(tables["face_identity"], tables["audio_identity"], xm)["eer"] == \
        pytest.approx(score_pairs(faces, voices, *xm)[1]["eer"])


def test_embedder_follows_the_model_through_weight_changes(bf16_model):
    """One embedder serves a model through training and BN re-estimation: every `embed` reads
    the model's weights of that moment."""
    win = track_windows(_tracks(2, WINDOW, 64, seed=1), WINDOW, ["a", "b"], ["x", "y"])
    embedder = WindowEmbedder(bf16_model)
    before = embedder.embed(win)["audio_identity"]
    weights = bf16_model.audio_stream.get_weights()
    try:
        rng = np.random.default_rng(2)  # (a uniform scale would be undone by BN and L2)
        bf16_model.audio_stream.set_weights(
            [w + 0.1 * rng.normal(size=w.shape).astype(w.dtype) * (np.std(w) + 0.1)
             for w in weights])
        after = embedder.embed(win)["audio_identity"]
        fresh = WindowEmbedder(bf16_model).embed(win)["audio_identity"]
    finally:
        bf16_model.audio_stream.set_weights(weights)
    assert np.max(np.abs(after - before)) > 1e-3
    np.testing.assert_allclose(after, fresh, atol=1e-6)
