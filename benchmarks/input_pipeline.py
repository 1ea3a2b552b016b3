"""Training-input throughput: our TFRecord tf.data pipeline vs decoding an mp4 per sample.

    python benchmarks/input_pipeline.py [--seconds 20] [--face_size 112] [--window_frames 50]

"naive" is what the reference PyTorch loader does for every training sample: open the mp4,
decode video frames up to the window, decode + resample the audio, cut the window, resize the
faces. It runs single-process here; the reference runs N such loader workers, so the ratio
per core is what this measures. "tfrecord" is `pipelines.input.make_dataset` on the same clips
prepared once with `pipelines.prepare`. Both use all cores: the naive loader through a
process pool (like PyTorch DataLoader workers), tf.data through AUTOTUNE. Both produce
windows of `window_frames` face frames + synchronised audio (plus the 2nd audio window).
Printed: clips/s side by side and the ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pathlib
import tempfile
import time

import numpy as np

from pipelines import faces, media

REPO = pathlib.Path(__file__).resolve().parents[1]

CLIPS = sorted((REPO / "data" / "samples" / "pcavs_vox2").glob("*/*.mp4"))


def naive_sample(path: pathlib.Path, window: int, size: int, rng: np.random.Generator):
    """Per-sample decoding, as a PyTorch Dataset.__getitem__ over mp4 files would do."""
    frames, audio = media.decode_video(path)
    start = int(rng.integers(0, len(frames) - window + 1))
    crop = faces.resize_frames(frames[start:start + window], size)
    a = audio[start * 640:(start + window) * 640].astype(np.float32) / 32768.0
    return crop, a


def _naive_worker(args) -> int:
    paths, window, size, seconds, seed = args
    rng = np.random.default_rng(seed)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        naive_sample(paths[count % len(paths)], window, size, rng)
        count += 1
    return count


def bench_naive(seconds: float, window: int, size: int, workers: int) -> float:
    """clips/s of `workers` processes each decoding one mp4 per sample for `seconds`."""
    clips = [c for c in CLIPS if media.decode_video(c)[0].shape[0] >= window]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        t0 = time.perf_counter()
        counts = pool.map(_naive_worker, [(clips[i:] + clips[:i], window, size, seconds, i)
                                          for i in range(workers)])
        elapsed = time.perf_counter() - t0
    return sum(counts) / elapsed


def bench_tfrecord(seconds: float, window: int, size: int, batch: int, workdir: str) -> float:
    from pipelines.input import InputConfig, make_dataset
    from pipelines.prepare import PrepareConfig, list_videos, prepare

    prepare(list_videos(REPO / "data" / "samples" / "pcavs_vox2", detect=False), workdir,
            PrepareConfig(face_size=size, min_frames=window), workers=os.cpu_count() or 1,
            progress=False)
    ds = make_dataset(InputConfig(os.path.join(workdir, "*.tfrecord"), batch_tracks=batch,
                                  window_frames=window, face_size=size, seed=0))
    it = iter(ds)
    for _ in range(3):  # warm-up: graph tracing, thread pools, prefetch buffers
        next(it)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        next(it)
        count += batch
    return count / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--face_size", type=int, default=112)
    p.add_argument("--window_frames", type=int, default=50)
    p.add_argument("--batch_tracks", type=int, default=8)
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as workdir:
        tfrecord = bench_tfrecord(args.seconds, args.window_frames, args.face_size,
                                  args.batch_tracks, workdir)
    workers = os.cpu_count() or 1
    naive = bench_naive(args.seconds, args.window_frames, args.face_size, workers)
    print(f"cores: {os.cpu_count()}  window: {args.window_frames} frames at "
          f"{args.face_size}x{args.face_size} + {args.window_frames * 640} samples x2")
    print(f"{'input':<34}{'clips/s':>10}")
    print(f"{f'naive: decode mp4 per sample ({workers} procs)':<34}{naive:>10.1f}")
    print(f"{'tfrecord: pipelines.input (tf.data)':<34}{tfrecord:>10.1f}")
    print(f"ratio tfrecord / naive: {tfrecord / naive:.1f}x")


if __name__ == "__main__":
    main()
