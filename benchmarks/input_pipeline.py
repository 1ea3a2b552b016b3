"""Training-input cost per clip: bytes read, CPU, clips/s per core, and storage per hour.

    python -m benchmarks.input_pipeline [--sizes 224,112] [--chunk_seconds 0,4] \
        [--jpeg_qualities 90] [--window_frames 50] [--seconds 12] [--rounds 4] [--json OUT.json] \
        [--naive]

For every (storage size S, chunk length, JPEG quality) the bundled VoxCeleb2-style clips
(data/samples/pcavs_vox2, 14 h264 224x224 mp4 face tracks) are prepared into a temporary
folder with the real command line, `python -m pipelines.prepare --source videos --no_detect
--face_size S [--chunk_seconds C] [--jpeg_quality Q]`, and `pipelines.input.make_dataset`
(output size S, `--window_frames` frames: the reference's 50) is timed for `--seconds` on
`--threads` CPU threads (default 1: per core), in `--rounds` rounds that time the rows in
turn, so a changing load on a shared machine hits every row alike. Reported per configuration:

  MB/clip     bytes of the records one training clip reads: the shard bytes divided by the
              records long enough for a window (each pass turns every such record into one
              clip; a record is read whole). Exact, not a timing.
  CPU-ms/clip process CPU time (all threads, `time.process_time`) / clips delivered: median
              and min over the rounds. On an oversubscribed machine CPU time inflates too
              (shared cores and caches): the min is the least disturbed round.
  clips/s     clips delivered per wall-clock second (median, max over rounds): with
              `--threads 1` the clips/s per core. One thread means
              `tf.data.Options().threading.private_threadpool_size = 1`,
              `max_intra_op_parallelism = 1`, `autotune.cpu_budget = 1` and TF's inter-op pool
              set to 1 (intra-op 1) before any op runs. 1000 / CPU-ms is printed beside it.
  MB/hour     shard bytes per hour of video (frames / 25 fps), and the same for the source
              mp4 files of the tracks written (the ratio is the storage cost of preparing).

`--naive` adds the old comparison: decoding one mp4 per training sample in a process per core
(what the reference PyTorch loader does), clips/s over all cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

from av_disentangle import files

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE = REPO / "data" / "samples" / "pcavs_vox2"
CLIPS = sorted(SOURCE.glob("*/*.mp4"))

FPS = 25.0


# === Preparation (the real command line, in a child process) ===

def prepare_clips(workdir: str, size: int, chunk_seconds: float, jpeg_quality: int,
                  window: int) -> float:
    """Prepares the bundled clips with `python -m pipelines.prepare`; returns its seconds."""
    cmd = [sys.executable, "-m", "pipelines.prepare", "--source", "videos", "--no_detect",
           "--input", str(SOURCE), "--output", workdir, "--face_size", str(size),
           "--min_frames", str(window), "--workers", "1", "--no_progress",
           "--log_level", "WARNING"]
    cmd += ["--chunk_seconds", str(chunk_seconds), "--jpeg_quality", str(jpeg_quality)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return time.perf_counter() - t0


def storage_stats(workdir: str, window: int) -> dict[str, float]:
    """Exact byte counts of the prepared folder: records, frames, bytes per usable record."""
    import tensorflow as tf

    from pipelines.input import META_SPEC

    shard_files = sorted(pathlib.Path(workdir).glob("shard-*.tfrecord"))
    shard_bytes = sum(p.stat().st_size for p in shard_files)
    frames = records = usable = 0
    for raw in tf.data.TFRecordDataset([str(p) for p in shard_files]):
        num = int(tf.io.parse_single_example(raw, META_SPEC)["num_frames"])
        records += 1
        frames += num
        usable += num >= window
    with open(os.path.join(workdir, "manifest.json")) as fh:
        manifest = json.load(fh)
    sources = sorted({t["source_path"] for t in manifest["tracks"]})
    mp4_bytes = sum(os.path.getsize(p) for p in sources)
    hours = frames / FPS / 3600
    return {"records": records, "usable_records": usable, "tracks": len(manifest["tracks"]),
            "frames": frames, "hours": hours, "shard_bytes": shard_bytes,
            "mp4_bytes": mp4_bytes, "mb_per_clip": shard_bytes / max(usable, 1) / 1e6,
            "mb_per_hour": shard_bytes / hours / 1e6, "mp4_mb_per_hour": mp4_bytes / hours / 1e6,
            "storage_vs_mp4": shard_bytes / mp4_bytes}


# === Throughput on one thread ===

def single_thread_iterator(workdir: str, size: int, window: int, batch: int, threads: int = 1):
    """An iterator over the training input of `workdir` on `threads` tf.data threads (0: TF's
    defaults, all cores), warmed up."""
    import tensorflow as tf

    from pipelines.input import InputConfig, make_dataset

    ds = make_dataset(InputConfig(os.path.join(workdir, "shard-*.tfrecord"), batch_tracks=batch,
                                  window_frames=window, face_size=size, seed=0))
    options = tf.data.Options()
    if threads:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
        options.autotune.cpu_budget = threads
    it = iter(ds.with_options(options))
    for _ in range(3):  # warm-up: graph tracing, buffers
        next(it)
    return it


def time_iterator(it, batch: int, seconds: float, untimed: int = 10) -> dict[str, float]:
    """Clips, wall seconds and process CPU seconds of pulling batches for `seconds`, after
    `untimed` batches that empty what its prefetch buffer filled while other rows were timed
    (the other iterators then sit with full buffers, idle: the process CPU time is this one's)."""
    for _ in range(untimed):
        next(it)
    clips, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        next(it)
        clips += batch
    return {"clips": clips, "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0}


def summarise_rounds(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Medians over rounds of clips/s (wall) and CPU-ms per clip, and the spread."""
    rates = [r["clips"] / r["wall_s"] for r in rounds]
    cpu_ms = [1000 * r["cpu_s"] / r["clips"] for r in rounds]
    return {"clips": sum(r["clips"] for r in rounds), "rounds": len(rounds),
            "clips_per_s": float(np.median(rates)), "clips_per_s_max": max(rates),
            "cpu_ms_per_clip": float(np.median(cpu_ms)),
            "cpu_ms_per_clip_min": min(cpu_ms), "cpu_ms_per_clip_max": max(cpu_ms),
            "clips_per_cpu_s": 1000 / float(np.median(cpu_ms))}


# === The naive mp4 loader (optional) ===

def naive_sample(path: pathlib.Path, window: int, size: int, rng: np.random.Generator):
    """Per-sample decoding, as a PyTorch Dataset.__getitem__ over mp4 files would do."""
    from pipelines import faces, media

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
    import multiprocessing

    from pipelines import media

    clips = [c for c in CLIPS if media.decode_video(c)[0].shape[0] >= window]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        t0 = time.perf_counter()
        counts = pool.map(_naive_worker, [(clips[i:] + clips[:i], window, size, seconds, i)
                                          for i in range(workers)])
        elapsed = time.perf_counter() - t0
    return sum(counts) / elapsed


# === Table ===

def format_table(rows: list[dict]) -> str:
    head = (f"{'size':>4} {'chunk_s':>7} {'q':>3} {'records':>7} {'MB/clip':>8} "
            f"{'CPU-ms/clip':>11} {'(min)':>6} {'clips/s':>8} {'(max)':>6} {'1000/CPU-ms':>11} "
            f"{'MB/hour':>8} {'mp4 MB/h':>8} {'x mp4':>6}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['size']:>4} {r['chunk_seconds']:>7g} {r['jpeg_quality']:>3} "
                     f"{r['records']:>7} {r['mb_per_clip']:>8.3f} {r['cpu_ms_per_clip']:>11.2f} "
                     f"{r['cpu_ms_per_clip_min']:>6.1f} {r['clips_per_s']:>8.1f} "
                     f"{r['clips_per_s_max']:>6.1f} {r['clips_per_cpu_s']:>11.1f} "
                     f"{r['mb_per_hour']:>8.0f} {r['mp4_mb_per_hour']:>8.0f} "
                     f"{r['storage_vs_mp4']:>6.1f}")
    return "\n".join(lines)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.input_pipeline",
                                description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="224,112", help="storage (= output) face sizes")
    p.add_argument("--chunk_seconds", default="0,4",
                   help="prepare --chunk_seconds values to compare (0: whole tracks)")
    p.add_argument("--jpeg_qualities", default="90", help="prepare --jpeg_quality values")
    p.add_argument("--window_frames", type=int, default=50)
    p.add_argument("--batch_tracks", type=int, default=2,
                   help="small, so the 14 bundled tracks fill whole batches every pass")
    p.add_argument("--seconds", type=float, default=12.0,
                   help="timed seconds per row, split over --rounds")
    p.add_argument("--rounds", type=int, default=4,
                   help="the rows are timed in turn, this many times each (medians), so a "
                        "changing load on a shared machine hits them alike")
    p.add_argument("--threads", type=int, default=1,
                   help="tf.data threads (1: clips/s per core; 0: TF's defaults, all cores)")
    p.add_argument("--naive", action="store_true", help="also time decoding an mp4 per sample")
    p.add_argument("--json", default="", help="also write the rows here")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)  # before any op
        tf.config.threading.set_intra_op_parallelism_threads(1)
    rows, iterators = [], []
    with contextlib.ExitStack() as stack:
        for size in [int(s) for s in _floats(args.sizes)]:
            for chunk in _floats(args.chunk_seconds):
                for quality in [int(q) for q in _floats(args.jpeg_qualities)]:
                    workdir = stack.enter_context(tempfile.TemporaryDirectory())
                    prep_s = prepare_clips(workdir, size, chunk, quality, args.window_frames)
                    rows.append({"size": size, "chunk_seconds": chunk, "jpeg_quality": quality,
                                 "window_frames": args.window_frames, "prepare_s": prep_s,
                                 **storage_stats(workdir, args.window_frames)})
                    iterators.append(single_thread_iterator(workdir, size, args.window_frames,
                                                            args.batch_tracks, args.threads))
        timings: list[list[dict[str, float]]] = [[] for _ in rows]
        for _ in range(args.rounds):  # interleaved: a load change hits every row alike
            for i, it in enumerate(iterators):
                timings[i].append(time_iterator(it, args.batch_tracks,
                                                args.seconds / args.rounds))
        for row, rounds in zip(rows, timings):
            row.update(summarise_rounds(rounds))
    out = {"cores": os.cpu_count(), "threads": args.threads,
           "window_frames": args.window_frames,
           "batch_tracks": args.batch_tracks, "seconds": args.seconds, "rounds": args.rounds,
           "rows": rows}
    if args.naive:
        out["naive_clips_per_s_all_cores"] = {
            size: bench_naive(args.seconds, args.window_frames, size, os.cpu_count() or 1)
            for size in [int(s) for s in _floats(args.sizes)]}
    print(f"\n{len(CLIPS)} clips of {SOURCE.relative_to(REPO)}; window {args.window_frames} "
          f"frames + 2 x {args.window_frames * 640} audio samples; tf.data on "
          f"{args.threads or 'all'} thread(s); median (min / max) of {args.rounds} rounds")
    print(format_table(rows))
    if args.naive:
        for size, rate in out["naive_clips_per_s_all_cores"].items():
            print(f"naive mp4 decode per sample, {size}px, {os.cpu_count()} procs: "
                  f"{rate:.1f} clips/s")
    if args.json:
        files.write_json_atomic(args.json, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
