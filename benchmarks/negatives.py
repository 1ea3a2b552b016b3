"""Negatives in a training batch: how often two tracks of one person, or of one video, meet.

    python benchmarks/negatives.py [--identities 240] [--videos 24] [--tracks 7] [--batches 200]

Every other track of a batch is a negative of the identity task, so a second track of the same
person is a false negative (DESIGN.md "Negatives"). This builds a VoxCeleb2-like layout
(`<identity>/<video>/<track>`, listed in id order as a directory listing gives it; VoxCeleb2
dev: 5,994 identities, 145,569 videos, 1,092,009 tracks = 24 videos x 7.5 tracks per person)
of tiny tracks (2 frames of 8x8: decoding is stubbed out, everything from the shard plan on
is `pipelines.prepare`'s own code), in two layouts:
  random  tracks dealt into shards in a seeded random order (`prepare.plan_shards`, now)
  sorted  shards of consecutive id-sorted tracks (before: about one person per shard)
and measures the first `--batches` training batches with `pipelines.input_stats.input_statistics`
under the current input (`interleave_shards` 256, no video twice in a batch) and the old one
(16 shards interleaved, no video constraint), shuffle buffer 2048 in both, beside the
expectation for a uniformly random batch. Prints a table; `--json` writes the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from typing import Iterator
from unittest import mock

import numpy as np

from av_disentangle import constants, files
from pipelines import prepare, sources
from pipelines.input import InputConfig, record_batches
from pipelines.input_stats import input_statistics

TINY_FRAMES = 2  # frames per simulated track; statistics use window_frames=TINY_FRAMES


def simulated_specs(identities: int, videos: int, tracks: int) -> list[sources.ClipSpec]:
    """`identities` x `videos` x `tracks` clips named like VoxCeleb2 (id-sorted listing)."""
    return [sources.ClipSpec(path=f"sim/id{i:05d}/v{i:05d}_{v:03d}/{t:05d}.mp4",
                             track_id=f"id{i:05d}/v{i:05d}_{v:03d}/{t:05d}",
                             video_id=f"v{i:05d}_{v:03d}", identity=f"id{i:05d}",
                             source="voxceleb2", detect=False)
            for i in range(identities) for v in range(videos) for t in range(tracks)]


def _tiny_clip(spec: sources.ClipSpec, config: prepare.PrepareConfig,
               threads: int = 0) -> prepare.ClipResult:
    frames = np.zeros((TINY_FRAMES, config.face_size, config.face_size, 3), np.uint8)
    audio = np.zeros(TINY_FRAMES * constants.SAMPLES_PER_FRAME, np.int16)
    return prepare.ClipResult(spec, frames=frames, audio=audio)


def write_layout(specs: list[sources.ClipSpec], output_dir: str | os.PathLike,
                 shard_seed: int | None, tracks_per_shard: int = 64) -> list[str]:
    """Runs `prepare.prepare` on `specs` with clip decoding stubbed out (tiny black tracks).

    shard_seed None writes the old layout (id-sorted shards). Returns the shard paths.
    """
    config = prepare.PrepareConfig(face_size=8, min_frames=1, tracks_per_shard=tracks_per_shard,
                                   shard_seed=shard_seed)
    with mock.patch.object(prepare, "process_clip", _tiny_clip):
        summary = prepare.prepare(specs, output_dir, config, workers=1, progress=False)
    return list(summary.shard_paths)


OLD_INPUT = {"interleave_shards": 16, "distinct_videos": False}


def measure(pattern: str, batches: int, batch_tracks: int = 30, old_input: bool = False,
            shuffle_buffer: int = 2048, seed: int = 0) -> dict[str, float]:
    """`input_statistics` of the training batches of `pattern` (tiny tracks)."""
    config = InputConfig(pattern, batch_tracks=batch_tracks, window_frames=TINY_FRAMES,
                         shuffle_buffer=shuffle_buffer, seed=seed,
                         **(OLD_INPUT if old_input else {}))
    return input_statistics(config, batches)


def pass_usage(pattern: str, batch_tracks: int = 30, old_input: bool = False,
               shuffle_buffer: int = 2048, seed: int = 0) -> float:
    """Fraction of the tracks that one pass of the training input puts into batches (the
    rest: the last incomplete batch, and records whose video was in every batch with room)."""
    config = InputConfig(pattern, batch_tracks=batch_tracks, window_frames=TINY_FRAMES,
                         shuffle_buffer=shuffle_buffer, seed=seed, repeat=False,
                         **(OLD_INPUT if old_input else {}))
    used = sum(1 for _ in record_batches(config)) * batch_tracks
    total = sum(1 for _ in record_batches(InputConfig(
        pattern, batch_tracks=1, window_frames=TINY_FRAMES, repeat=False,
        distinct_videos=False)))
    return used / total


@contextlib.contextmanager
def _folder(path: str | None) -> Iterator[str]:
    if path:
        os.makedirs(path, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory() as tmp:
            yield tmp


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--identities", type=int, default=240)
    p.add_argument("--videos", type=int, default=24, help="videos per identity")
    p.add_argument("--tracks", type=int, default=7, help="tracks per video")
    p.add_argument("--tracks_per_shard", type=int, default=64)
    p.add_argument("--batch_tracks", type=int, default=30)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--work_dir", help="keep the shards here (default: a temp folder)")
    p.add_argument("--json", help="write the numbers to this file")
    args = p.parse_args(argv)

    specs = simulated_specs(args.identities, args.videos, args.tracks)
    rows = []
    with _folder(args.work_dir) as work:
        for layout, seed in (("sorted", None), ("random", 0)):
            start = time.time()
            folder = os.path.join(work, layout)
            write_layout(specs, folder, seed, args.tracks_per_shard)
            print(f"{layout}: {len(specs)} tracks written in {time.time() - start:.0f} s",
                  flush=True)
            for old in (True, False):
                stats = measure(os.path.join(folder, "shard-*.tfrecord"), args.batches,
                                args.batch_tracks, old_input=old)
                used = pass_usage(os.path.join(folder, "shard-*.tfrecord"), args.batch_tracks,
                                  old_input=old)
                rows.append({"layout": layout, "input": "old" if old else "new", **stats,
                             "used_per_pass": used})
    print(f"\n{len(specs)} tracks: {args.identities} identities x {args.videos} videos x "
          f"{args.tracks} tracks, {args.tracks_per_shard} tracks per shard; "
          f"{args.batches} batches of {args.batch_tracks}")
    header = (f"{'shards':8s} {'input':6s} {'same-id pairs':>14s} {'uniform':>8s} "
              f"{'same-video pairs':>17s} {'uniform':>8s} {'distinct ids':>13s} {'uniform':>8s} "
              f"{'used/pass':>10s}")
    print(header)
    for r in rows:
        print(f"{r['layout']:8s} {r['input']:6s} {r['same_identity_pairs']:14.3f} "
              f"{r['uniform_same_identity_pairs']:8.3f} {r['same_video_pairs']:17.3f} "
              f"{r['uniform_same_video_pairs']:8.3f} {r['distinct_identities']:13.2f} "
              f"{r['uniform_distinct_identities']:8.2f} {r['used_per_pass']:10.4f}")
    if args.json:
        files.write_json_atomic(args.json, {"args": vars(args), "rows": rows}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
