"""Tests of the synthetic talking-heads generator (pipelines/synthetic.py)."""

from __future__ import annotations

import dataclasses
import glob
import itertools
import json
import os

import numpy as np
import pytest

from av_disentangle import constants
from pipelines import drawn_faces, records, synthetic

from conftest import lagged_corr

SMALL = synthetic.SyntheticConfig(num_identities=2, tracks_per_identity=2, num_frames=12,
                                  face_size=32, seed=3)
# Clips long enough for the sync/pitch statistics.
MEDIUM = synthetic.SyntheticConfig(num_frames=75, face_size=64, seed=0)


def _frame_energy(audio_i16: np.ndarray) -> np.ndarray:
    x = audio_i16.astype(np.float64) / 32768.0
    return np.mean(x.reshape(-1, constants.SAMPLES_PER_FRAME) ** 2, axis=1)


def _mouth_pixels(frames: np.ndarray) -> np.ndarray:
    """Count of dark-red (open mouth interior) pixels in the lower middle of each frame."""
    h, w = frames.shape[1:3]
    region = frames[:, int(0.55 * h):int(0.9 * h), int(0.25 * w):int(0.75 * w)].astype(int)
    r, g, b = region[..., 0], region[..., 1], region[..., 2]
    return ((r - g > 25) & (g < 40) & (b < 60)).sum(axis=(1, 2)).astype(np.float64)


def _estimate_f0(audio_i16: np.ndarray) -> float:
    """Median autocorrelation pitch over the loudest frames."""
    x = audio_i16.astype(np.float64) / 32768.0
    energy = _frame_energy(audio_i16)
    lo, hi = constants.SAMPLE_RATE // 400, constants.SAMPLE_RATE // 60
    estimates = []
    for i in np.argsort(energy)[-15:]:
        seg = x[max(0, i * 640 - 320):i * 640 + 960]
        seg = seg - seg.mean()
        ac = np.correlate(seg, seg, "full")[len(seg) - 1:]
        estimates.append(constants.SAMPLE_RATE / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(estimates))


def _face_chroma(frames: np.ndarray) -> np.ndarray:
    """Mean chromaticity (r, g, b) / sum of the face centre: lighting gain cancels."""
    h, w = frames.shape[1:3]
    centre = frames[:, int(0.3 * h):int(0.7 * h), int(0.3 * w):int(0.7 * w)].reshape(-1, 3)
    mean = centre.astype(np.float64).mean(axis=0)
    return mean / mean.sum()


def test_reproducible_and_seed_dependent():
    a, ua = synthetic.generate_track_with_labels(SMALL, "syn_0001", 1)
    b, ub = synthetic.generate_track_with_labels(SMALL, 1, 1)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.audio, b.audio)
    np.testing.assert_array_equal(ua, ub)
    # Compare parsed Examples: protobuf map order (hence raw bytes) may differ across processes
    # unless serialized with deterministic=True.
    import tensorflow as tf
    assert (tf.train.Example.FromString(records.encode_track(a))
            == tf.train.Example.FromString(records.encode_track(b)))
    assert a.track_id == "syn_0001/t01" and a.video_id == a.track_id and a.identity == "syn_0001"
    c = synthetic.generate_track(dataclasses.replace(SMALL, seed=4), 1, 1)
    assert not np.array_equal(a.audio, c.audio)
    assert not np.array_equal(a.frames, c.frames)
    # Identity parameters do not depend on the rest of the config.
    assert drawn_faces.identity_params(5, 3) == drawn_faces.identity_params(5, 3)
    assert drawn_faces.identity_params(5, 3) != drawn_faces.identity_params(5, 4)


def test_shapes_and_labels():
    track, truth = synthetic.generate_track_ground_truth(SMALL, 0, 0)
    assert track.frames.shape == (12, 32, 32, 3) and track.frames.dtype == np.uint8
    assert track.audio.shape == (12 * constants.SAMPLES_PER_FRAME,)
    assert track.audio.dtype == np.int16
    assert truth["units"].shape == (12,)
    assert truth["units"].min() >= 0 and truth["units"].max() < synthetic.NUM_UNITS
    for key in ("mouth_open", "mouth_width", "envelope", "f0_hz"):
        assert truth[key].shape == (12,)
    # Silence frames have a closed mouth.
    assert np.all(truth["mouth_open"][truth["units"] == synthetic.SILENCE] < 0.35)


def test_write_dataset_round_trip(tmp_path):
    out = str(tmp_path / "syn")
    paths = synthetic.write_dataset(SMALL, out, num_shards=2)
    assert [os.path.basename(p) for p in paths] == ["shard-00000-of-00002.tfrecord",
                                                    "shard-00001-of-00002.tfrecord"]
    assert sorted(glob.glob(os.path.join(out, "*.tfrecord"))) == sorted(paths)
    manifest = synthetic.load_manifest(out)
    by_id = {t["track_id"]: t for t in manifest["tracks"]}
    assert len(by_id) == 4
    assert [i["name"] for i in manifest["identities"]] == ["syn_0000", "syn_0001"]
    assert [u["name"] for u in manifest["units"]] == list(synthetic.UNIT_NAMES)
    json.dumps(manifest)  # plain JSON
    seen = 0
    for path in paths:
        for item in records.read_tracks(path):
            seen += 1
            tid = item["track_id"].decode()
            entry = by_id[tid]
            assert entry["shard"] == os.path.basename(path)
            assert item["identity"].decode() == entry["identity"]
            assert item["num_frames"] == 12 and item["num_samples"] == 12 * 640
            assert item["audio"].shape == (12 * 640,)
            assert item["frames"].shape == (12, 32, 32, 3)
            assert item["av_offset_frames"] == 0 and item["sample_rate"] == 16000
            track, units = synthetic.generate_track_with_labels(
                SMALL, entry["identity"], entry["track_index"])
            assert entry["units"] == units.tolist()
            np.testing.assert_allclose(item["audio"], track.audio / 32768.0, atol=1e-6)
            # JPEG is lossy; the decoded frames stay close to what was drawn.
            assert np.abs(item["frames"].astype(int) - track.frames.astype(int)).mean() < 8
    assert seen == 4


def test_cli_split(tmp_path):
    out = str(tmp_path / "cli")
    rc = synthetic.main(["--output", out, "--split", "train:2,test:1", "--tracks_per_identity",
                         "1", "--frames", "5", "--face_size", "32", "--seed", "1"])
    assert rc == 0
    train = synthetic.load_manifest(os.path.join(out, "train"))
    test = synthetic.load_manifest(os.path.join(out, "test"))
    assert [t["identity"] for t in train["tracks"]] == ["syn_0000", "syn_0001"]
    assert [t["identity"] for t in test["tracks"]] == ["syn_0002"]
    # The held-out identity is the same person it would be in a single run.
    assert test["identities"][0] == drawn_faces.identity_params(2, 1).to_json()


def test_cli_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert synthetic.main(["--output", str(tmp_path), "--split", "train"]) == 2
    assert synthetic.main(["--output", str(tmp_path), "--frames", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("pipelines.synthetic: error: ") for line in err)
    assert "bad --split entry 'train'" in err[0]
    assert not os.listdir(tmp_path)


def test_lips_are_synchronised_with_audio():
    lag0, lag3 = [], []
    for ident, t in itertools.product(range(3), range(2)):
        track = synthetic.generate_track(MEDIUM, ident, t)
        mouth = _mouth_pixels(track.frames)
        energy = _frame_energy(track.audio)
        lag0.append(lagged_corr(mouth, energy, 0))
        lag3.append(max(lagged_corr(mouth, energy, 3), lagged_corr(mouth, energy, -3)))
    assert np.mean(lag0) > 0.5
    assert np.mean(lag0) > np.mean(lag3) + 0.3
    assert all(a > b for a, b in zip(lag0, lag3))


def test_identity_is_consistent_across_tracks_and_differs_between_identities():
    f0, chroma = {}, {}
    for ident in range(4):
        for t in range(2):
            track = synthetic.generate_track(MEDIUM, ident, t)
            f0[ident, t] = _estimate_f0(track.audio)
            chroma[ident, t] = _face_chroma(track.frames)
        # The estimate finds the generator's pitch.
        true_f0 = drawn_faces.identity_params(ident, MEDIUM.seed).f0_hz
        assert abs(np.log(f0[ident, 0] / true_f0)) < 0.1
    within_f0 = max(abs(np.log(f0[i, 0] / f0[i, 1])) for i in range(4))
    between_f0 = min(abs(np.log(f0[i, 0] / f0[j, 0])) for i in range(4) for j in range(i))
    assert between_f0 > within_f0
    # Face colour: per-track pose and clothes/background vary, and beards move in and out of
    # the measured box, so compare average distances (measured ratio 0.04-0.15 over seeds 0-7).
    within_c = np.mean([np.linalg.norm(chroma[i, 0] - chroma[i, 1]) for i in range(4)])
    between_c = np.mean([np.linalg.norm(chroma[i, s] - chroma[j, u])
                         for i in range(4) for j in range(i) for s in range(2) for u in range(2)])
    assert within_c < 0.3 * between_c


def test_content_differs_between_tracks():
    _, u0 = synthetic.generate_track_with_labels(MEDIUM, 0, 0)
    _, u1 = synthetic.generate_track_with_labels(MEDIUM, 0, 1)
    _, v0 = synthetic.generate_track_with_labels(MEDIUM, 1, 0)
    assert not np.array_equal(u0, u1) and not np.array_equal(u0, v0)
    # Several distinct units per clip, and silence is present but not dominant.
    assert len(np.unique(u0)) >= 5
    assert np.mean(np.concatenate([u0, u1, v0]) == synthetic.SILENCE) < 0.4


def test_config_validation():
    with pytest.raises(ValueError):
        synthetic.SyntheticConfig(num_frames=0)
    with pytest.raises(ValueError):
        synthetic.generate_track(SMALL, "speaker7", 0)
