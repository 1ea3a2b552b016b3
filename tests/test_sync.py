"""SyncNet-style sync measures (AV offset, min distance, confidence) and their sign.

Sign (joonson/syncnet_python SyncNetInstance.py `calc_pdist` and `offset = vshift - minidx`,
pipelines/media.py `shift_audio`): an AV offset of k means the sound of video frame i is at audio
frame i - k (positive k: the audio leads), and `media.shift_audio(source, k)` puts such a
source back in sync. So `media.shift_audio(in_sync, -k)` is a clip whose offset is k.
"""

from __future__ import annotations

import numpy as np
import pytest

from av_disentangle.constants import SAMPLES_PER_FRAME
from av_disentangle.evaluation import sync
from pipelines import media


def _clip(n_frames: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic in-sync clip as the tests/test_evaluate.py stand-in sees it: frame t shows a
    4x4 grid of values v[t] and its audio holds the same 16 values as 40-sample runs.

    Returns:
        v (T, 16), frames (T, 8, 8, 3) uint8, audio (T * 640,) float32.
    """
    rng = np.random.default_rng(seed)
    v = rng.uniform(-1, 1, size=(n_frames, 16)).astype(np.float32)
    grey = (128 + 100 * v.reshape(n_frames, 4, 4)).repeat(2, 1).repeat(2, 2)
    frames = np.repeat(grey[..., None], 3, -1).round().astype(np.uint8)
    audio = 0.5 * np.repeat(v, 40, axis=1).reshape(-1)
    return v, frames, audio


def _audio_features(audio: np.ndarray) -> np.ndarray:
    """(T * 640,) -> (T, 16) run means (the stand-in's audio content, one step per frame)."""
    return audio.reshape(-1, 16, 40).mean(axis=-1)


class NumpyStandIn:
    """The stand-in's content streams in numpy, one content step per video frame."""

    @staticmethod
    def face_content(frames: np.ndarray) -> np.ndarray:  # (B, T, H, W, 3) -> (B, T, 16)
        g = frames.astype(np.float32).mean(-1)
        b, t, h, w = g.shape
        g = g.reshape(b, t, 4, h // 4, 4, w // 4).mean(axis=(3, 5)).reshape(b, t, 16)
        return g - g.mean(-1, keepdims=True)

    @staticmethod
    def audio_content(waveforms: np.ndarray) -> np.ndarray:  # (B, S) -> (B, S // 640, 16)
        b, s = waveforms.shape
        x = waveforms[:, :s // SAMPLES_PER_FRAME * SAMPLES_PER_FRAME]
        x = x.reshape(b, -1, 16, 40).mean(-1)
        return x - x.mean(-1, keepdims=True)


def test_measures_on_a_distance_matrix_with_a_known_minimum():
    """Index j of the (K, T) matrix pairs video frame i with audio frame i + j - vshift, so a
    minimum at j0 is the AV offset vshift - j0 (SyncNetInstance.py lines 19-31 and 134)."""
    vshift, steps = 6, 20
    rng = np.random.default_rng(0)
    for j0 in (0, 2, 6, 9, 12):
        curve = 1.0 + 0.1 * np.abs(np.arange(2 * vshift + 1) - j0)  # (K,)
        dists = curve[:, None] + 0.01 * rng.normal(size=(2 * vshift + 1, steps))
        m = sync.sync_measures(dists)
        mean = dists.mean(axis=1)
        assert m.av_offset == vshift - j0
        assert m.min_dist == pytest.approx(mean[j0])
        assert m.confidence == pytest.approx(np.median(mean) - mean[j0])
        np.testing.assert_allclose(m.mean_dists, mean)
    np.testing.assert_array_equal(sync.av_offsets(2), [2, 1, 0, -1, -2])
    with pytest.raises(ValueError):
        sync.sync_measures(np.ones((4, 3)))  # K must be odd: 2 * vshift + 1


@pytest.mark.parametrize("k", [-5, -1, 0, 3, 7])
def test_syncnet_distances_sign_matches_media_shift_audio(k):
    """A source whose sound of frame i is at audio frame i - k (made with media.shift_audio,
    which puts such a source back in sync when given k) is measured at AV offset k."""
    v, _, audio = _clip()
    source = media.shift_audio(audio, -k)
    # media.shift_audio's own contract: shifting by k restores the in-sync audio (inside)
    np.testing.assert_array_equal(media.shift_audio(source, k)[abs(k) * 640:-abs(k) * 640 or None],
                                  audio[abs(k) * 640:-abs(k) * 640 or None])
    dists = sync.syncnet_distances(v, _audio_features(source), vshift=10)
    assert dists.shape == (21, v.shape[0])
    m = sync.sync_measures(dists)
    assert m.av_offset == k and m.confidence > 0


@pytest.mark.parametrize("k", [-4, 0, 5])
def test_offset_distances_through_content_streams(k):
    """The model path (content streams of the face frames and of the audio at each candidate
    lag) finds the offset of a clip made with media.shift_audio, and of the in-sync clip with
    the offset applied on purpose by `applied_offset`."""
    _, frames, audio = _clip(n_frames=60, seed=1)
    model = NumpyStandIn()
    vshift = 8
    made = sync.offset_distances(model, frames, media.shift_audio(audio, -k), vshift)
    applied = sync.offset_distances(model, frames, audio, vshift, applied_offset=k)
    for dists in (made, applied):
        assert dists.shape[0] == 2 * vshift + 1
        m = sync.sync_measures(dists)
        assert m.av_offset == k and m.min_dist < 0.05 and m.confidence > 0.5
    with pytest.raises(ValueError, match="too short"):
        sync.offset_distances(model, frames[:20], audio[:20 * 640], vshift)


def test_summary_and_csv(tmp_path):
    rows = [sync.SyncRow("a.mp4", 0, 0, 0.2, 0.5, np.zeros(5)),
            sync.SyncRow("a.mp4", 2, 3, 0.3, 0.4, np.zeros(5)),
            sync.SyncRow("b.mp4", 0, -2, 0.6, 0.1, np.zeros(5)),
            sync.SyncRow("b.mp4", 2, 2, 0.4, 0.3, np.zeros(5))]
    s = sync.summarise(rows)
    assert s["n"] == 4 and s["exact"] == pytest.approx(0.5) and s["within1"] == pytest.approx(0.75)
    assert s["min_dist"] == pytest.approx(0.4) and s["confidence"] == pytest.approx(0.3)
    assert s["abs_offset"] == pytest.approx(1.0)
    path = tmp_path / "sync.csv"
    sync.write_sync_csv(path, rows)
    lines = path.read_text().splitlines()
    assert lines[0] == "video,applied_offset,av_offset,error,min_dist,confidence"
    assert lines[2] == "a.mp4,2,3,1,0.300000,0.400000" and len(lines) == 5


# === Through a tiny exported model and real mp4 decoding ===



def _args(**kw):
    from av_disentangle.evaluation import cli

    ns = cli.build_parser().parse_args([])
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def _write_clip(path, av_offset: int, seed: int, n_frames: int = 75) -> None:
    """An mp4 (32x32 stand-in grid frames) whose audio leads the video by ``av_offset``
    frames: the sound of frame i at audio frame i - av_offset (media.shift_audio(., -k))."""
    from conftest import write_mp4

    v, _, audio = _clip(n_frames, seed)
    grey = (128 + 100 * v.reshape(n_frames, 4, 4)).repeat(8, 1).repeat(8, 2)
    frames = np.repeat(grey[..., None], 3, -1).astype(np.uint8)
    write_mp4(path, frames, media.shift_audio(audio, -av_offset), high_quality=True)


def test_run_sync_clips_with_known_offsets(standin_model, tmp_path, capsys):
    """Two in-sync clips evaluated as is and with offsets applied on purpose, and one clip
    encoded with its audio leading by 4 frames: the measured AV offsets have SyncNet's sign;
    the per-video CSV and the plot are written."""
    from av_disentangle.evaluation.cli import run_sync

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(2):
        _write_clip(videos / f"sync{i}.mp4", 0, seed=i)
    csv_path, png = tmp_path / "sync.csv", tmp_path / "sync.png"
    s = run_sync(_args(task="sync", model=standin_model, videos=str(videos), shifts="0,5,-7",
                       sync_csv=str(csv_path), plot_out=str(png)))
    out = capsys.readouterr().out
    assert "sync offset accuracy: exact 100.0%  within+-1 100.0%" in out
    assert s["n"] == 6 and s["exact"] == 1.0 and s["abs_offset"] == 0.0
    rows = [ln.split(",") for ln in csv_path.read_text().splitlines()]
    assert rows[0] == list(sync.CSV_COLUMNS) and len(rows) == 7
    assert sorted((r[0], int(r[1]), int(r[2])) for r in rows[1:]) == [
        (f"sync{i}.mp4", k, k) for i in range(2) for k in (-7, 0, 5)]
    assert all(float(r[5]) > 0.1 for r in rows[1:])  # confident
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    shifted = tmp_path / "shifted"
    shifted.mkdir()
    _write_clip(shifted / "lead4.mp4", 4, seed=5)
    s = run_sync(_args(task="sync", model=standin_model, videos=str(shifted), shifts="0",
                       sync_csv=str(csv_path)))
    assert s["abs_offset"] == 4.0 and "lead4.mp4" in capsys.readouterr().out
    assert csv_path.read_text().splitlines()[1].startswith("lead4.mp4,0,4,4,")  # + = audio leads
