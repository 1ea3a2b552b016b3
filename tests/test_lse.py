"""LSE-D / LSE-C with syncnet_python's SyncNet, number for number against ITS code.

`fixtures/syncnet_python_parity.npz` holds what joonson/syncnet_python's own
`SyncNetInstance.evaluate` computed (`fixtures/make_syncnet_python_fixture.py`, run with
PyTorch): seeded weights in its state-dict layout, three bundled face clips (frames and
audio), and its MFCCs, per-window features, distance curves, offset, min dist, confidence and
printed per-frame confidence. No torch here: the weights are regenerated from the seed.
"""

from __future__ import annotations

import csv
import os
import sys

import numpy as np
import pytest

from av_disentangle import convert, syncnet_v2
from av_disentangle.evaluation import lse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_weights import load_fixture, seeded_parameters  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                       "syncnet_python_parity.npz")
CLIPS = 3


@pytest.fixture(scope="module")
def ref():
    return load_fixture(FIXTURE)


def state_of(ref) -> dict[str, np.ndarray]:
    shapes = {k: tuple(int(x) for x in s.split(",")) for k, s in zip(ref["keys"], ref["shapes"])}
    state = seeded_parameters(shapes, int(ref["seed"]))
    state.update({k[len("bn/"):]: v for k, v in ref.items() if k.startswith("bn/")})
    return state


def clip(ref, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, 224, 224, 3) uint8 BGR and (N,) int16, as the generator fed them to its code."""
    block = int(ref["block"])
    frames = ref[f"{n}/frames"].repeat(block, axis=1).repeat(block, axis=2)
    return frames, ref[f"{n}/audio"]


class KerasPair:
    """The converted Keras models behind the interface `lse.window_features` uses."""

    def __init__(self, lip, audio):
        self._lip, self._audio = lip, audio

    def lip(self, x):
        return self._lip(np.asarray(x, np.float32), training=False).numpy()

    def audio(self, x):
        return self._audio(np.asarray(x, np.float32), training=False).numpy()


@pytest.fixture(scope="module")
def converted(ref):
    return KerasPair(*syncnet_v2.build_models(state_of(ref), "fixture"))


@pytest.fixture(scope="module")
def features(ref, converted):
    return [lse.window_features(converted, *clip(ref, n)) for n in range(CLIPS)]


def close(ours, theirs, rel=1e-4):
    """Equal to `rel` of the reference's largest magnitude (float32 convs in two libraries)."""
    theirs = np.asarray(theirs, np.float64)
    np.testing.assert_allclose(ours, theirs, rtol=rel, atol=rel * np.max(np.abs(theirs)))


def test_mfccs_are_its_python_speech_features_matrix(ref):
    for n in range(CLIPS):
        ours = lse.mfcc(clip(ref, n)[1])
        assert ours.shape == ref[f"{n}/mfcc"].T.shape and ours.shape[0] == 13
        np.testing.assert_allclose(ours, np.asarray(ref[f"{n}/mfcc"]).T, rtol=1e-9, atol=1e-9)


def test_converted_features_equal_its_forward_lip_and_forward_aud(ref, features):
    for n, (lip, aud) in enumerate(features):
        kept = ref[f"{n}/lip_features"].shape[0]
        assert lip.shape == (ref[f"{n}/dists"].shape[0], 1024) == aud.shape
        close(lip[:kept], ref[f"{n}/lip_features"])
        close(aud[:kept], ref[f"{n}/audio_features"])


def test_offset_lse_d_lse_c_and_framewise_confidence_equal_its_evaluate(ref, features):
    vshift = int(ref["vshift"])
    for n, (lip, aud) in enumerate(features):
        row = lse.measure(f"clip{n}", lip, aud, vshift)
        theirs = ref[f"{n}/dists"]                        # (W, 2 vshift + 1): its layout
        close(row.dists.T, theirs)
        assert row.av_offset == int(ref[f"{n}/offset"])
        assert row.confidence == pytest.approx(float(ref[f"{n}/confidence"]), rel=1e-4)
        assert row.min_dist == pytest.approx(float(theirs.mean(axis=0).min()), rel=1e-4)
        assert row.min_dist == pytest.approx(float(ref[f"{n}/printed_min_dist"]), abs=6e-4)
        assert row.confidence == pytest.approx(float(ref[f"{n}/printed_confidence"]), abs=6e-4)
        np.testing.assert_allclose(row.framewise_confidence, ref[f"{n}/printed_framewise"],
                                   atol=6e-4)


def test_the_fixture_can_tell_a_broken_converter(ref, features, monkeypatch):
    """The same checks fail when the conversion is wrong: lip kernels with height and width
    swapped, or the frames fed as RGB rather than its BGR."""
    right = syncnet_v2._keras_kernel

    def swapped(key, weight):
        if weight.ndim == 5 and key != "netcnnlip.0.weight":
            return weight[:, :, 0].transpose(3, 2, 1, 0)
        return right(key, weight)

    monkeypatch.setattr(syncnet_v2, "_keras_kernel", swapped)
    broken = KerasPair(*syncnet_v2.build_models(state_of(ref), "fixture"))
    frames, audio = clip(ref, 0)
    kept = ref["0/lip_features"].shape[0]
    with pytest.raises(AssertionError):
        close(lse.window_features(broken, frames[:12], audio[:12 * 640])[0][:kept],
              ref["0/lip_features"][:7])
    monkeypatch.setattr(syncnet_v2, "_keras_kernel", right)
    good = KerasPair(*syncnet_v2.build_models(state_of(ref), "fixture"))
    rgb = lse.window_features(good, frames[:12, :, :, ::-1], audio[:12 * 640])[0]
    with pytest.raises(AssertionError):
        close(rgb, ref["0/lip_features"][:7])
    close(lse.window_features(good, frames[:12], audio[:12 * 640])[0], ref["0/lip_features"][:7])


def test_state_dict_round_trip_and_a_wrong_one_is_one_line(ref, converted):
    state = state_of(ref)
    back = syncnet_v2.state_from_models(converted._lip, converted._audio)
    assert set(back) == set(syncnet_v2.expected_shapes())
    for key, value in back.items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    bad = dict(state)
    del bad["netcnnlip.4.weight"]
    bad["netfclip.3.bias"] = np.zeros(7, np.float32)
    with pytest.raises(syncnet_v2.SyncNetWeightsError,
                       match=r"bad\.model: .*1 missing \(netcnnlip\.4\.weight\).*netfclip\.3"):
        syncnet_v2.check_state(bad, "bad.model")
    with pytest.raises(syncnet_v2.SyncNetWeightsError, match="not a syncnet_python"):
        syncnet_v2.check_state({"__S__.netcnnaud.0.weight": np.zeros(1)}, "trainer.model")


def write_video(path, frames_bgr: np.ndarray, audio: np.ndarray) -> None:
    """A lossless 25 fps video (FFV1 + PCM), so decoding gives back exactly these pixels."""
    import av

    with av.open(str(path), "w") as c:
        v = c.add_stream("ffv1", rate=25)
        v.width, v.height, v.pix_fmt = frames_bgr.shape[2], frames_bgr.shape[1], "bgr0"
        a = c.add_stream("pcm_s16le", rate=16000)
        a.layout = "mono"
        for f in frames_bgr:
            for p in v.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), "bgr24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        samples = av.AudioFrame.from_ndarray(audio[None], format="s16", layout="mono")
        samples.sample_rate, samples.pts = 16000, 0
        for p in list(a.encode(samples)) + list(a.encode()):
            c.mux(p)


def test_convert_then_evaluate_sync_csv_equals_its_numbers(ref, tmp_path, capsys):
    """The user's path: `convert syncnet_python` (here from the state as .npz, no torch), then
    `evaluate.py --task sync --syncnet DIR --videos FOLDER --sync_csv OUT` on the clips as
    video files: per-video offset, LSE-D and LSE-C equal its code's, and the mean row."""
    from av_disentangle.evaluation.cli import main as evaluate

    checkpoint = tmp_path / "syncnet_seeded.npz"
    np.savez(checkpoint, **state_of(ref))
    export = tmp_path / "syncnet" / "1"
    assert convert.main(["syncnet_python", str(checkpoint), "--export_dir", str(export)]) == 0
    assert "NOT the published syncnet_v2.model" in capsys.readouterr().out
    videos = tmp_path / "pycrop"
    videos.mkdir()
    for n in range(CLIPS):
        write_video(videos / f"{n:05d}.mkv", *clip(ref, n))
    (videos / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "lse.csv"
    assert evaluate(["--task", "sync", "--syncnet", str(export), "--videos", str(videos),
                     "--sync_csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "LSE-D (min dist)" in printed and "1 videos skipped" in printed
    rows = list(csv.DictReader(out.open()))
    assert [r["video"] for r in rows] == [f"{n:05d}.mkv" for n in range(CLIPS)] + ["mean"]
    for n, row in enumerate(rows[:CLIPS]):
        theirs = ref[f"{n}/dists"].astype(np.float64)
        assert int(row["av_offset"]) == int(ref[f"{n}/offset"])
        assert float(row["min_dist"]) == pytest.approx(theirs.mean(axis=0).min(), rel=1e-4)
        assert float(row["confidence"]) == pytest.approx(float(ref[f"{n}/confidence"]),
                                                         rel=1e-4)
        assert int(row["windows"]) == theirs.shape[0]
    assert float(rows[-1]["min_dist"]) == pytest.approx(
        np.mean([ref[f"{n}/dists"].astype(np.float64).mean(axis=0).min()
                 for n in range(CLIPS)]), rel=1e-4)
    assert evaluate(["--task", "sync", "--syncnet", str(export), "--videos", str(videos),
                     "--shifts", "3"]) == 2
    assert "--shifts is not used with --syncnet" in capsys.readouterr().err
    assert evaluate(["--task", "sync", "--syncnet", str(tmp_path), "--videos",
                     str(videos)]) == 2
    assert "is not a converted SyncNet SavedModel" in capsys.readouterr().err


def test_crop_syncnet_has_run_pipelines_geometry():
    """Box centre (100, 80), side 40, crop_scale 0.4: bs 20, padding int(20 * 1.8) = 36; rows
    [80 - 20, 80 + 36) and columns [100 - 28, 100 + 28) of the frame, a 56-px square."""
    from pipelines.faces import crop_syncnet

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (200, 240, 3), dtype=np.uint8)
    crop = crop_syncnet(frame[None], np.array([[100.0, 80.0, 40.0]]), 0.4, size=56)[0]
    np.testing.assert_array_equal(crop, frame[60:116, 72:128])
    edge = crop_syncnet(frame[None], np.array([[10.0, 10.0, 40.0]]), 0.4, size=56)[0]
    assert (edge[:10, :] == 110).all() and (edge[:, :18] == 110).all()  # its padding value
