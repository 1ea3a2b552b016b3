"""Who is in a training batch: input statistics against a uniformly random batch.

The command behind `python -m pipelines.input --stats GLOB`:
    python -m pipelines.input --stats "data/prepared/vox2/shard-*.tfrecord" --batch_tracks 30
measures the first batches of the training input (`pipelines.input.record_batches`, the same
records per batch as `make_dataset`, no window decoded): distinct videos and identities per
batch and same-identity / same-video pairs, beside their expectation for a uniformly random
batch of the same dataset (`uniform_batch_expectation`).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import math
import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from av_disentangle.errors import UserError, run_cli
from av_disentangle.files import write_json_atomic
from av_disentangle.files import read_json
from av_disentangle.logs import setup_logging
from pipelines.input import META_SPEC, InputConfig, list_shards, record_batches

log = logging.getLogger(__name__)


def _pairs(n: int) -> int:
    return n * (n - 1) // 2


def uniform_batch_expectation(group_sizes: Sequence[int], batch: int) -> dict[str, float]:
    """What a uniformly random batch of `batch` distinct tracks looks like.

    Args:
      group_sizes: tracks per group (identity or video) over the whole dataset, N in total.
      batch: B.
    Returns:
      `same_group_pairs`: expected pairs of one group in a batch,
        C(B, 2) * sum_g C(n_g, 2) / C(N, 2);
      `distinct_groups`: expected groups in a batch, sum_g 1 - C(N - n_g, B) / C(N, B).
    """
    total = sum(group_sizes)
    if total < batch or total < 2:
        return {"same_group_pairs": float("nan"), "distinct_groups": float("nan")}
    pairs = _pairs(batch) * sum(_pairs(n) for n in group_sizes) / _pairs(total)

    def log_choose(n: int, k: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)

    absent = [math.exp(log_choose(total - n, batch) - log_choose(total, batch))
              if total - n >= batch else 0.0 for n in group_sizes]
    return {"same_group_pairs": pairs, "distinct_groups": sum(1.0 - a for a in absent)}


def dataset_metadata(files: Sequence[str], window_frames: int) -> list[dict[str, str]]:
    """track_id / video_id / identity of every record of `files` at least `window_frames` long
    (a record is a track or, with chunks, one chunk of a track: one entry per chunk).

    Taken from the `manifest.json` beside the shards when it lists all of them (written by
    `pipelines.prepare` and `pipelines.synthetic`), else read from the records (every shard
    is read once: slow on a large dataset).
    """
    by_dir = collections.defaultdict(set)
    for f in files:
        by_dir[os.path.dirname(f)].add(os.path.basename(f))
    tracks: list[dict[str, str]] = []
    for folder, names in sorted(by_dir.items()):
        path = os.path.join(folder, "manifest.json")
        manifest = read_json(path, missing_ok=True)
        if manifest is not None:
            listed = {s if isinstance(s, str) else s["file"] for s in manifest.get("shards", [])}
            if not names <= listed:
                manifest = None
        if manifest is None:
            log.warning("%s: no manifest listing all shards; reading every record", folder)
            ds = tf.data.TFRecordDataset(sorted(os.path.join(folder, n) for n in names))
            for ex in ds.map(lambda x: tf.io.parse_single_example(x, META_SPEC)):
                if int(ex["num_frames"]) >= window_frames:
                    tracks.append({k: ex[k].numpy().decode() for k in
                                   ("track_id", "video_id", "identity")})
            continue
        for t in manifest["tracks"]:
            for start, stop in t.get("chunks") or [[0, t["num_frames"]]]:
                if t["shard"] in names and stop - start >= window_frames:
                    tracks.append({"track_id": t["track_id"],
                                   "video_id": t.get("video_id") or t["track_id"],
                                   "identity": t.get("identity", "")})
    for t in tracks:
        t["video_id"] = t["video_id"] or t["track_id"]
    return tracks


def batch_metadata(config: InputConfig, num_batches: int) -> list[list[dict[str, str]]]:
    """The first `num_batches` batches of the training input, as track metadata.

    The same batches as `make_dataset(config)` (same seed, same records per batch), read
    without decoding any window.
    """
    ds = record_batches(config)
    if config.repeat:
        ds = ds.repeat()
    ds = ds.take(num_batches).map(lambda batch: tf.io.parse_example(batch, META_SPEC))
    out = []
    for batch in ds:
        names = ("track_id", "video_id", "identity")
        columns = {k: [v.decode() for v in batch[k].numpy()] for k in names}
        out.append([{k: columns[k][b] or (columns["track_id"][b] if k == "video_id" else "")
                     for k in names} for b in range(len(columns["track_id"]))])
    return out


def input_statistics(config: InputConfig, num_batches: int = 100) -> dict[str, float]:
    """Per-batch averages of who is in a batch, beside a uniformly random batch.

    Returns a dict: `batches`, `batch_tracks`, `tracks`, `videos`, `identities` (dataset;
    identities 0 when the metadata has none), and for `video` and `identity`:
    `distinct_{g}s` / `same_{g}_pairs` measured per batch and `uniform_...` expected.
    """
    tracks = dataset_metadata(list_shards(config.file_pattern), config.window_frames)
    batches = batch_metadata(config, num_batches)
    if not batches:
        raise ValueError(f"{config.file_pattern}: no full batch of {config.batch_tracks} "
                         f"tracks of >= {config.window_frames} frames")
    stats: dict[str, float] = {"batches": len(batches), "batch_tracks": config.batch_tracks,
                               "tracks": len(tracks)}
    for group, plural, key in (("video", "videos", "video_id"),
                               ("identity", "identities", "identity")):
        known = all(t[key] for t in tracks) and all(t[key] for b in batches for t in b)
        sizes = collections.Counter(t[key] for t in tracks)
        stats[plural] = len(sizes) if known else 0
        if not known:
            continue
        per_batch = [collections.Counter(t[key] for t in b) for b in batches]
        uniform = uniform_batch_expectation(list(sizes.values()), config.batch_tracks)
        stats[f"distinct_{plural}"] = float(np.mean([len(c) for c in per_batch]))
        stats[f"uniform_distinct_{plural}"] = uniform["distinct_groups"]
        stats[f"same_{group}_pairs"] = float(np.mean(
            [sum(_pairs(n) for n in c.values()) for c in per_batch]))
        stats[f"uniform_same_{group}_pairs"] = uniform["same_group_pairs"]
    return stats


def format_statistics(stats: dict[str, float]) -> str:
    """A small table of `input_statistics`."""
    lines = [f"{stats['tracks']} tracks, {stats['videos']} videos, "
             f"{stats['identities'] or 'no'} identities; {stats['batches']} batches of "
             f"{stats['batch_tracks']} tracks",
             f"{'per batch':28s} {'this input':>12s} {'uniform random':>15s}"]
    for name, label in (("distinct_videos", "distinct videos"),
                        ("distinct_identities", "distinct identities"),
                        ("same_identity_pairs", "same-identity pairs"),
                        ("same_video_pairs", "same-video pairs")):
        if name in stats:
            lines.append(f"{label:28s} {stats[name]:12.3f} {stats['uniform_' + name]:15.3f}")
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.input",
                                description="Input statistics: who is in a training batch.")
    p.add_argument("--stats", required=True, metavar="GLOB",
                   help="TFRecord glob(s), comma-separated")
    p.add_argument("--batches", type=int, default=100, help="batches to measure")
    p.add_argument("--json", help="also write the statistics to this JSON file")
    skip = {"file_pattern", "face_size", "repeat", "include_ids"}
    for f in dataclasses.fields(InputConfig):
        if f.name in skip:
            continue
        if isinstance(f.default, bool):
            p.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction,
                           default=f.default)
        else:
            p.add_argument(f"--{f.name}", type=int, default=f.default)
    return p.parse_args(argv)


def _main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    setup_logging(level="WARNING")
    fields = {f.name for f in dataclasses.fields(InputConfig)}
    try:
        config = InputConfig(args.stats, **{k: v for k, v in vars(args).items()
                                            if k in fields and k != "file_pattern"})
        stats = input_statistics(config, args.batches)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from e
    print(format_statistics(stats))
    if args.json:
        write_json_atomic(args.json, stats, indent=1)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; a `UserError` becomes one line on stderr and exit status 2."""
    return run_cli(_main, "pipelines.input", argv)
