"""Shared fixtures: small random TFRecord shards and helpers for subprocess runs."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_random_shard(path: str, num_tracks: int, face_size: int = 32, min_frames: int = 30,
                       seed: int = 0) -> str:
    """Writes `num_tracks` random tracks (noise frames, noise audio) of varying length."""
    import tensorflow as tf

    from av_disentangle import constants
    from pipelines import records

    rng = np.random.default_rng(seed)
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(num_tracks):
            frames_n = min_frames + 3 * i
            track = records.Track(
                frames=rng.integers(0, 256, (frames_n, face_size, face_size, 3), dtype=np.uint8),
                audio=(rng.normal(size=frames_n * constants.SAMPLES_PER_FRAME)
                       * 3000).astype(np.int16),
                track_id=f"random/{i:03d}", video_id=f"random/{i:03d}", identity=f"id{i}")
            writer.write(records.encode_track(track))
    return path


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """(model, export_dir): the tiny model (`harness.tiny_model()`) exported once per test
    process to `<tmp>/av_disentangle/1` (TF Serving's layout), shared read-only by the export
    and serving tests; `harness.assert_export_matches_keras` checks it."""
    from harness import tiny_model

    from av_disentangle.export import export_saved_model, next_version_dir

    model = tiny_model()
    root = tmp_path_factory.mktemp("tiny_export") / "av_disentangle"
    return model, export_saved_model(model.face_stream, model.audio_stream, model.model_config,
                                     next_version_dir(str(root)))


@pytest.fixture(scope="session")
def random_shards(tmp_path_factory) -> str:
    """Glob of 2 shards x 6 random tracks, 64x64 faces (the tiny/small models'), 30..45 frames."""
    root = tmp_path_factory.mktemp("random_shards")
    for shard in range(2):
        write_random_shard(str(root / f"shard-{shard:05d}-of-00002.tfrecord"), 6, face_size=64,
                           seed=shard)
    return str(root / "*.tfrecord")


def write_wav(path, samples: np.ndarray, rate: int = 16000) -> None:
    """A 16-bit mono WAV of `samples` (clipped to [-1, 1]), its folders created."""
    import wave
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def write_mp4(path, frames: np.ndarray, audio: np.ndarray, high_quality: bool = False) -> None:
    """Writes an mp4 (MPEG-4 video at 25 fps + AAC 16 kHz mono audio) with PyAV.

    Args:
      frames: (F, H, W, 3) uint8 RGB.
      audio: (S,) float32 in [-1, 1].
      high_quality: near-lossless video (qscale 2) and 128 kbit/s audio.
    """
    import av

    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=25)
        vs.height, vs.width = frames.shape[1:3]
        vs.pix_fmt = "yuv420p"
        aus = c.add_stream("aac", rate=16000)
        aus.layout = "mono"
        if high_quality:
            vs.bit_rate = 4_000_000
            vs.options = {"qscale": "2"}
            aus.bit_rate = 128000
        for img in frames:
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        audio = audio.astype(np.float32)
        for i in range(0, audio.size, 1024):
            af = av.AudioFrame.from_ndarray(audio[None, i:i + 1024], format="flt",
                                            layout="mono")
            af.sample_rate = 16000
            af.pts = i
            for p in aus.encode(af):
                c.mux(p)
        for p in aus.encode():
            c.mux(p)


def run_script(args: list[str], timeout: float = 600, env: dict | None = None,
               **kwargs) -> subprocess.CompletedProcess:
    """Runs `python <args>` from the repo root, capturing text output (`env`: variables to
    set on top of this process's)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="session")
def standin_model(tmp_path_factory) -> str:
    """Path of the tiny stand-in SavedModel (tests/standin.py), exported once per session."""
    from standin import export_standin

    return export_standin(str(tmp_path_factory.mktemp("saved_models") / "standin" / "1"))


def lagged_corr(x: np.ndarray, y: np.ndarray, lag: int) -> float:
    """corr(x[t], y[t + lag]) of two (F,) series (lag in frames, either sign)."""
    if lag > 0:
        x, y = x[:-lag], y[lag:]
    elif lag < 0:
        x, y = x[-lag:], y[:lag]
    return float(np.corrcoef(x, y)[0, 1])
