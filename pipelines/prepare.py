"""Preparation command: talking-face videos -> sharded TFRecords (one Example per track).

    python -m pipelines.prepare --source {voxceleb2,videos} --input DIR --output DIR \
        [--workers N] [--num_shards N --shard_index I] [--face_size 112] [--min_frames 50] \
        [--tracks_per_shard K] [--chunk_seconds 4] [--jpeg_quality 75] [--no_detect]

Sources:
  voxceleb2  `DIR/mp4/<id>/<video>/<utt>.mp4` (or DIR is the mp4 folder itself) with
             `DIR/txt/<id>/<video>/<utt>.txt` (or a sibling `txt/` folder, or the .txt beside
             the .mp4). The clips are face crops already: whole frames are resized. The txt
             `Offset` is applied to the audio (convention in `records.py`); a missing txt
             means offset 0 and the identity from the folder name, listed as a warning.
  videos     any folder (recursive) of .mp4 .mpg .avi .mov .mkv .webm with audio; the face
             is detected and tracked with OpenCV's Haar cascade and cropped (`faces.py`),
             unless `--no_detect` (clips that are crops already). Identity = parent folder.

Sharding and resumption: the input files are sorted by track id, put in a seeded random order
(`--shard_seed`, recorded in the manifest) and split into fixed chunks of `--tracks_per_shard`
files; chunk s becomes `shard-{s:05d}-of-{S:05d}.tfrecord` (a shard can hold fewer tracks when
files are skipped). The random order makes every shard a random sample of all identities and
videos: shards of id-sorted tracks (one person each) would fill training batches with
several tracks of one person, false negatives of the identity task (DESIGN.md "Negatives").
The plan depends only on the input list and the seed, so reruns find the same shards.
`--num_shards J --shard_index I` makes this run do only the chunks with `s % J == I`, so J
cluster jobs can write into the same folder.
A shard is written to a hidden temp name and renamed when complete, then its sidecar
`shard-...json` (tracks, skipped files, warnings, fingerprint of inputs + settings) is
written the same way. A shard counts as finished when both exist and the fingerprint matches;
a rerun skips finished shards. `manifest.json`, `report.json` and `report.txt` are rebuilt
from all sidecars present (so concurrent jobs never lose each other's results; the last job
to finish, or `--merge_only`, leaves the complete view).

Chunks (`--chunk_seconds C`, default 4): a track of F frames is stored as n = F // (25 C)
records of consecutive frames, each with the audio of exactly its frames (`records.split_track`:
n near-equal chunks of at least 25 C and fewer than 50 C frames, the tail spread over them;
a track shorter than 2 C seconds stays whole; `--chunk_seconds 0` keeps every track whole).
A training example reads one record, so it reads a chunk instead of the whole track, and both
of its windows come from that chunk: C must hold two windows that do not overlap, so
25 C >= 2 x `--min_frames` (the training window) is required. All chunks of a track are
written one after another into the track's shard, with the track's `track_id` and `video_id`
(so the input never puts two chunks of one video in a batch) and `chunk_index` /
`num_chunks` / `chunk_start_frame` (`records.py`). Evaluation reads whole tracks:
`records.read_tracks` joins the chunks back. The sidecars and the manifest give `num_records`
(records) beside `num_tracks` (tracks), and each manifest track its `chunks` ([start, stop)
frame ranges).

Data format version (`FORMAT_VERSION`, in the manifest and every sidecar): 2 since chunks.
`pipelines.input` refuses shards whose manifest or sidecar says another version, naming the
file; a rerun of `prepare` into a folder of version-1 shards writes them again.

Workers (`--workers`) decode, track and crop in `spawn` processes that never import
TensorFlow; only the main process imports it, to serialise and write the shards. A worker
exits by itself when the main process dies (even by kill -9).

Exit status: 0 when done; 1 when the output folder holds no track at all (every input was
skipped: the reasons are in report.txt); 2 for bad arguments or a missing input folder.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import pathlib
import sys
import threading
import time
from typing import Iterator, Sequence

import numpy as np

from av_disentangle import files
from av_disentangle.constants import VIDEO_EXTENSIONS, VIDEO_FPS
from av_disentangle.errors import UserError, run_cli
from av_disentangle.logs import setup_logging
from pipelines import faces as faces_lib
from pipelines import media, shards
from pipelines.shards import shard_name, sidecar_name
from pipelines.sources import ClipSpec, bundled_sample_specs, list_videos, list_voxceleb2

log = logging.getLogger("pipelines.prepare")

FORMAT_VERSION = 2
"""Version of the prepared data (records + sidecars + manifest). 1: one record per track;
2: long tracks stored as chunks (`--chunk_seconds`), `num_records` in sidecars/manifest."""


# === Config ===

@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """Settings that change what is written (part of each shard's fingerprint).

    Attributes:
      face_size: side of the stored face crops.
      min_frames: clips shorter than this (after reconciliation) are skipped.
      tracks_per_shard: input files per shard.
      shard_seed: seed of the random order in which tracks are dealt into shards
        (`plan_shards`); None keeps the id-sorted order (one person per shard: a defect,
        only for comparisons).
      max_side: frames are downscaled while decoding so the longer side is at most this
        (face detection sources only; crops are never larger than the source anyway).
      jpeg_quality: JPEG quality of the stored frames (OpenCV, 1-100). 75: with 4 s chunks,
        half the bytes per training clip of 90 whole tracks at 224x224, and no learning
        difference beyond the seed spread on the synthetic benchmark (BENCHMARKS.md, issue 15).
      chunk_seconds: tracks are stored as chunks of at least this many seconds
        (`records.chunk_bounds`); 0 keeps tracks whole. Must hold two windows of
        `min_frames`: 25 * chunk_seconds >= 2 * min_frames.
      max_av_mismatch_frames: see `media.reconcile_lengths`.
      face: face tracking settings (its `face_size` is overridden by `face_size`).
    """

    face_size: int = 112
    min_frames: int = 50
    tracks_per_shard: int = 64
    shard_seed: int | None = 0
    max_side: int = 720
    jpeg_quality: int = 75  # BENCHMARKS.md, issue 15: learns as 90 does (6 seeds), half the bytes
    chunk_seconds: float = 4.0
    max_av_mismatch_frames: float = media.DEFAULT_MAX_AV_MISMATCH_FRAMES
    face: faces_lib.FaceConfig = faces_lib.FaceConfig()

    def __post_init__(self) -> None:
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.chunk_seconds < 0 or (self.chunk_seconds
                                      and self.chunk_frames < 2 * self.min_frames):
            raise ValueError(
                f"chunk_seconds {self.chunk_seconds:g} ({self.chunk_frames} frames) must be 0 "
                f"(whole tracks) or hold two windows of min_frames {self.min_frames} "
                f"(>= {2 * self.min_frames / VIDEO_FPS:g} s)")

    @property
    def chunk_frames(self) -> int:
        """Minimum chunk length in frames (0: whole tracks)."""
        return int(round(self.chunk_seconds * VIDEO_FPS))


@dataclasses.dataclass(frozen=True)
class ClipResult:
    """What a worker returns: either frames+audio or a skip reason.

    Attributes:
      spec: the input.
      frames: (F, face_size, face_size, 3) uint8, or None when skipped.
      audio: (F * 640,) int16, or None when skipped.
      skip_reason: `corrupt`, `no_audio`, `no_video`, `too_short`, `no_face`, `error`
        (or None).
      skip_detail: free text.
      warnings: notes for the report.
    """

    spec: ClipSpec
    frames: np.ndarray | None = None
    audio: np.ndarray | None = None
    skip_reason: str | None = None
    skip_detail: str = ""
    warnings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class PrepareSummary:
    """Outcome of one `prepare` call (this job's shards plus the merged folder view)."""

    output_dir: str
    shards_total: int
    shards_written: int
    shards_skipped_finished: int
    tracks_written: int
    files_skipped: int
    shard_paths: tuple[str, ...]
    complete: bool
    seconds: float


# === Worker (no TensorFlow here) ===

def _init_worker(parent_pid: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    setup_logging(level=logging.WARNING)  # the one format, in each spawned worker
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True,
                     name="parent-watch").start()


def _exit_when_orphaned(parent_pid: int, interval_s: float = 0.5) -> None:
    """Ends this worker when the parent dies (e.g. kill -9). An idle worker waits on the
    task queue's pipe, whose write end every worker holds too, so the parent's death never
    wakes it: without this it would live on, re-parented, forever."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(interval_s)


def process_clip(spec: ClipSpec, config: PrepareConfig, threads: int = 0) -> ClipResult:
    """Decodes, synchronises and crops one clip. Never raises: failures become skip reasons."""
    warnings = list(spec.warnings)
    try:
        clip = media.decode_clip(spec.path, av_offset_frames=spec.av_offset_frames,
                                 max_side=config.max_side if spec.detect else None,
                                 max_mismatch_frames=config.max_av_mismatch_frames,
                                 threads=threads)
        warnings.extend(clip.warnings)
        if clip.num_frames < config.min_frames:
            return ClipResult(spec, skip_reason="too_short", warnings=tuple(warnings),
                              skip_detail=f"{clip.num_frames} frames "
                                          f"({clip.num_frames / VIDEO_FPS:.2f} s) < min_frames "
                                          f"{config.min_frames}")
        if spec.detect:
            face_cfg = dataclasses.replace(config.face, face_size=config.face_size)
            crops = faces_lib.crop_faces(clip.frames, face_cfg)
        else:
            crops = faces_lib.resize_frames(clip.frames, config.face_size)
        return ClipResult(spec, frames=crops, audio=clip.audio, warnings=tuple(warnings))
    except media.MediaError as e:
        return ClipResult(spec, skip_reason=e.reason, skip_detail=e.detail,
                          warnings=tuple(warnings))
    except faces_lib.NoFaceError as e:
        return ClipResult(spec, skip_reason="no_face", skip_detail=e.detail,
                          warnings=tuple(warnings))
    except Exception as e:  # noqa: BLE001 - one bad file must never abort the job
        log.exception("%s: unexpected error", spec.path)
        return ClipResult(spec, skip_reason="error", skip_detail=repr(e),
                          warnings=tuple(warnings))


def _process_in_worker(args: tuple[ClipSpec, PrepareConfig]) -> ClipResult:
    return process_clip(args[0], args[1], threads=1)


def _results_in_order(specs: Sequence[ClipSpec], config: PrepareConfig,
                      workers: int) -> Iterator[ClipResult]:
    """Yields `process_clip` results in input order, with at most 4 * workers in flight."""
    if workers <= 1:
        for spec in specs:
            yield process_clip(spec, config)
        return
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx,
                                                initializer=_init_worker,
                                                initargs=(os.getpid(),)) as pool:
        pending: collections.deque = collections.deque()
        it = iter(specs)
        for spec in it:
            pending.append((spec, pool.submit(_process_in_worker, (spec, config))))
            if len(pending) >= 4 * workers:
                break
        while pending:
            spec, future = pending.popleft()
            try:
                result = future.result()
            except concurrent.futures.process.BrokenProcessPool:
                raise
            except Exception as e:  # noqa: BLE001 - e.g. an unpicklable result
                result = ClipResult(spec, skip_reason="error", skip_detail=repr(e))
            yield result
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_process_in_worker, (nxt, config))))


# === Shards ===

def _sidecar_path(output_dir: pathlib.Path, index: int, total: int) -> pathlib.Path:
    return output_dir / sidecar_name(index, total)


def _fingerprint(specs: Sequence[ClipSpec], config: PrepareConfig) -> str:
    payload = json.dumps({"version": FORMAT_VERSION, "config": dataclasses.asdict(config),
                          "inputs": [dataclasses.asdict(s) for s in specs]}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _shard_finished(output_dir: pathlib.Path, index: int, total: int, fingerprint: str) -> bool:
    final = output_dir / shard_name(index, total)
    sidecar = files.read_json(_sidecar_path(output_dir, index, total),
                              missing_ok=True, unreadable_ok=True)
    if final.is_file() and sidecar is not None and sidecar.get("format_version",
                                                                1) != FORMAT_VERSION:
        log.warning("%s was prepared with data format version %s; writing it again as version "
                    "%d", final, sidecar.get("format_version", 1), FORMAT_VERSION)
    return final.is_file() and sidecar is not None and sidecar.get("fingerprint") == fingerprint


def _remove_stale_temps(output_dir: pathlib.Path, index: int, total: int) -> None:
    name = shard_name(index, total)
    # this shard's temps only: other jobs may be writing other shards into the same folder
    for stale in output_dir.glob(f"{files.TEMP_PREFIX}*-{name}{files.TEMP_SUFFIX}"):
        log.info("removing leftover temp file %s", stale)
        stale.unlink(missing_ok=True)


def _write_shard(output_dir: pathlib.Path, index: int, total: int, results: list[ClipResult],
                 fingerprint: str, config: PrepareConfig) -> dict:
    """Writes one shard atomically and then its sidecar; returns the sidecar dict."""
    import tensorflow as tf  # only the writing process imports TensorFlow

    from pipelines import records

    final = output_dir / shard_name(index, total)
    tracks, skipped, warnings = [], [], []
    num_records = 0

    def write(tmp: str) -> None:
        nonlocal num_records
        with tf.io.TFRecordWriter(tmp) as writer:
            for r in results:
                for w in r.warnings:
                    warnings.append({"path": r.spec.path, "track_id": r.spec.track_id,
                                     "message": w})
                if r.skip_reason is not None:
                    skipped.append({"path": r.spec.path, "track_id": r.spec.track_id,
                                    "reason": r.skip_reason, "detail": r.skip_detail})
                    continue
                track = records.Track(frames=r.frames, audio=r.audio, track_id=r.spec.track_id,
                                      video_id=r.spec.video_id, identity=r.spec.identity,
                                      source_path=r.spec.path,
                                      av_offset_frames=r.spec.av_offset_frames)
                chunks = records.split_track(track, config.chunk_frames)
                for chunk in chunks:  # consecutive, in order: `records.join_chunks`
                    writer.write(records.encode_track(chunk, jpeg_quality=config.jpeg_quality))
                num_records += len(chunks)
                tracks.append({"track_id": r.spec.track_id, "video_id": r.spec.video_id,
                               "identity": r.spec.identity, "num_frames": int(r.frames.shape[0]),
                               "av_offset_frames": r.spec.av_offset_frames,
                               "source": r.spec.source, "source_path": r.spec.path,
                               "chunks": [[c.chunk_start_frame,
                                           c.chunk_start_frame + c.frames.shape[0]]
                                          for c in chunks]})

    files.write_atomic_with(final, write, fault="shard")
    sidecar = {"shard": final.name, "index": index, "num_shards": total,
               "format_version": FORMAT_VERSION,
               "fingerprint": fingerprint, "shard_seed": config.shard_seed,
               "num_tracks": len(tracks), "num_records": num_records, "tracks": tracks,
               "skipped": skipped, "warnings": warnings,
               "inputs": [r.spec.path for r in results], "finished_at": time.time()}
    files.write_json_atomic(_sidecar_path(output_dir, index, total), sidecar, indent=1)
    return sidecar


def merge_reports(output_dir: str | os.PathLike, shard_fingerprints: dict[int, str] | None = None,
                  total: int | None = None) -> dict:
    """Rebuilds `manifest.json`, `report.json` and `report.txt` from the shard sidecars.

    Args:
      output_dir: the output folder.
      shard_fingerprints: expected fingerprint per shard index; sidecars that do not match
        (left over from a run with other inputs/settings) are ignored. None accepts all
        sidecars of the `total` with the most sidecars.
      total: number of shards of the current input list.
    Returns:
      The manifest dict.
    """
    out = pathlib.Path(output_dir)
    sidecars = []
    for path in sorted(out.glob("shard-*-of-*.json")):
        sc = files.read_json(path, missing_ok=True, unreadable_ok=True)
        if sc is None or not (out / sc.get("shard", "")).is_file():
            continue
        sidecars.append(sc)
    if total is None and sidecars:
        total = collections.Counter(sc["num_shards"] for sc in sidecars).most_common(1)[0][0]
    valid = [sc for sc in sidecars if sc["num_shards"] == total and (
        shard_fingerprints is None or shard_fingerprints.get(sc["index"]) == sc["fingerprint"])]
    valid.sort(key=lambda sc: sc["index"])
    done = {sc["index"] for sc in valid}
    missing = [shard_name(i, total) for i in range(total or 0) if i not in done]
    seeds = sorted({sc.get("shard_seed") for sc in valid}, key=str)
    manifest = {
        "format_version": FORMAT_VERSION,
        "num_shards": total or 0,
        # the order tracks were dealt into shards: seeded random (`plan_shards`)
        "shard_seed": seeds[0] if len(seeds) == 1 else seeds,
        "complete": not missing,
        "missing_shards": missing,
        "num_tracks": sum(sc["num_tracks"] for sc in valid),
        "num_records": sum(sc.get("num_records", sc["num_tracks"]) for sc in valid),
        "shards": [{"file": sc["shard"], "num_tracks": sc["num_tracks"],
                    "num_records": sc.get("num_records", sc["num_tracks"])} for sc in valid],
        "tracks": [dict(t, shard=sc["shard"]) for sc in valid for t in sc["tracks"]],
    }
    skipped = [s for sc in valid for s in sc["skipped"]]
    warnings = [w for sc in valid for w in sc["warnings"]]
    reasons = collections.Counter(s["reason"] for s in skipped)
    report = {"complete": not missing, "num_shards": total or 0, "shards_done": len(valid),
              "shard_seed": manifest["shard_seed"],
              "missing_shards": missing, "num_tracks": manifest["num_tracks"],
              "num_skipped": len(skipped), "skipped_by_reason": dict(sorted(reasons.items())),
              "num_warnings": len(warnings), "skipped": skipped, "warnings": warnings}
    files.write_json_atomic(out / "manifest.json", manifest, indent=1)
    files.write_json_atomic(out / "report.json", report, indent=1)
    lines = [f"Preparation report for {out}",
             f"shards: {len(valid)} of {total or 0} done" + ("" if not missing else
                                                            f" ({len(missing)} missing)"),
             f"tracks written: {manifest['num_tracks']} (shard order: "
             + ("id-sorted" if manifest["shard_seed"] is None
                else f"random, shard_seed {manifest['shard_seed']}") + ")",
             f"files skipped: {len(skipped)}"
             + "".join(f"\n  {k}: {v}" for k, v in sorted(reasons.items())),
             f"warnings: {len(warnings)}", "", "Skipped files:"]
    lines += [f"  {s['path']}: {s['reason']}" + (f" - {s['detail']}" if s["detail"] else "")
              for s in skipped] or ["  (none)"]
    lines += ["", "Warnings (files kept):"]
    lines += [f"  {w['path']}: {w['message']}" for w in warnings] or ["  (none)"]
    files.write_text_atomic(out / "report.txt", "\n".join(lines) + "\n")
    return manifest


# === Shard plan ===

def plan_shards(specs: Sequence[ClipSpec], tracks_per_shard: int,
                seed: int | None) -> list[list[ClipSpec]]:
    """Splits the inputs into shards: sorted by track id, then in a seeded random order.

    Args:
      specs: input clips (any order; track ids must be unique).
      tracks_per_shard: files per shard (the last shard may hold fewer).
      seed: seed of the order; None keeps the id-sorted order (consecutive tracks of one
        person per shard: only for comparisons, see benchmarks/negatives.py).
    Returns:
      The shards' specs; a deterministic function of the input list and the seed.
    """
    specs = sorted(specs, key=lambda s: s.track_id)
    ids = collections.Counter(s.track_id for s in specs)
    dupes = [t for t, n in ids.items() if n > 1]
    if dupes:
        raise ValueError(f"duplicate track ids: {dupes[:5]}")
    return shards.plan_shards(specs, None if seed is None else int(seed),
                              tracks_per_shard=tracks_per_shard)


# === Driver ===

def remove_stale_shard_sets(out: pathlib.Path, total: int) -> list[str]:
    """Removes the shards and sidecars of other shard sets in `out` (a preparation into the
    same folder with another plan, e.g. another `--tracks_per_shard`: `*-of-00005` beside
    this run's `*-of-00003`), which a `shard-*.tfrecord` glob would otherwise train on
    together with this set, every track twice. Returns the names removed (logged)."""
    stale = [name for count, names in shards.shard_sets(p.name for p in out.iterdir()).items()
             if count != total for name in names]
    if stale:
        tfrecords = sorted(n for n in stale if n.endswith(".tfrecord"))
        log.warning("removing %d shard(s) of an earlier preparation with another shard plan "
                    "from %s (%s%s) and their sidecars: they would be read beside this run's "
                    "%d shards", len(tfrecords), out, ", ".join(tfrecords[:3]),
                    ", ..." if len(tfrecords) > 3 else "", total)
        for name in stale:
            (out / name).unlink(missing_ok=True)
    return sorted(stale)


def prepare(specs: Sequence[ClipSpec], output_dir: str | os.PathLike,
            config: PrepareConfig = PrepareConfig(), workers: int = 1, num_jobs: int = 1,
            job_index: int = 0, progress: bool = True) -> PrepareSummary:
    """Prepares `specs` into sharded TFRecords in `output_dir` (resumable, atomic shards).

    Args:
      specs: input clips; dealt into shards by `plan_shards` (seeded random order).
      output_dir: created if needed.
      config: what to write.
      workers: local processes (1 = in this process).
      num_jobs, job_index: this run does the shards with `index % num_jobs == job_index`.
      progress: show a tqdm progress bar.
    Returns:
      PrepareSummary; the folder's merged manifest/report are written as a side effect.
    """
    import tqdm

    if not 0 <= job_index < num_jobs:
        raise ValueError(f"shard_index {job_index} not in [0, {num_jobs})")
    start = time.time()
    out = pathlib.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    chunks = plan_shards(specs, config.tracks_per_shard, config.shard_seed)
    total = len(chunks)
    fingerprints = {i: _fingerprint(chunk, config) for i, chunk in enumerate(chunks)}
    mine = [i for i in range(total) if i % num_jobs == job_index]
    todo = [i for i in mine if not _shard_finished(out, i, total, fingerprints[i])]
    finished = len(mine) - len(todo)
    if finished:
        log.info("%d of this job's %d shards already finished, skipping them", finished,
                 len(mine))
    for i in todo:
        _remove_stale_temps(out, i, total)
    remove_stale_shard_sets(out, total)

    todo_specs = [s for i in todo for s in chunks[i]]
    written = 0
    bar = tqdm.tqdm(total=len(todo_specs), unit="clip", desc="prepare", disable=not progress)
    results = _results_in_order(todo_specs, config, workers)
    try:
        for i in todo:
            shard_results = []
            for _ in chunks[i]:
                r = next(results)
                if r.skip_reason:
                    log.warning("skipped %s: %s %s", r.spec.path, r.skip_reason, r.skip_detail)
                for w in r.warnings:
                    log.warning("%s: %s", r.spec.path, w)
                shard_results.append(r)
                bar.update(1)
            sidecar = _write_shard(out, i, total, shard_results, fingerprints[i], config)
            written += 1
            log.info("wrote %s (%d tracks, %d skipped)", sidecar["shard"], sidecar["num_tracks"],
                     len(sidecar["skipped"]))
    finally:
        bar.close()
        results.close()
    manifest = merge_reports(out, fingerprints, total)
    return PrepareSummary(
        output_dir=str(out), shards_total=total, shards_written=written,
        shards_skipped_finished=finished, tracks_written=manifest["num_tracks"],
        files_skipped=sum(1 for _ in _iter_skipped(out)),
        shard_paths=tuple(str(out / s["file"]) for s in manifest["shards"]),
        complete=manifest["complete"], seconds=time.time() - start)


def _iter_skipped(out: pathlib.Path) -> Iterator[dict]:
    report = files.read_json(out / "report.json", missing_ok=True, unreadable_ok=True) or {}
    yield from report.get("skipped", [])


def prepare_bundled_samples(output_dir: str | os.PathLike, face_size: int = 112,
                            workers: int = 1, tracks_per_shard: int = 8,
                            min_frames: int = 50) -> list[str]:
    """Prepares the bundled sample videos into `output_dir` unless already there.

    `data/samples/pcavs_vox2/**/*.mp4` are face crops (resized, no detection);
    `data/samples/grid/**/*.mpg` get face detection. track ids are `pcavs_vox2/<rel path>`
    and `grid/<rel path>` without extension. Finished shards are reused.

    Returns:
      Paths of the shards holding at least one track, sorted.
    """
    config = PrepareConfig(face_size=face_size, min_frames=min_frames,
                           tracks_per_shard=tracks_per_shard)
    prepare(bundled_sample_specs(), output_dir, config, workers=workers, progress=False)
    manifest = files.read_json(pathlib.Path(output_dir) / "manifest.json",
                               missing_ok=True, unreadable_ok=True) or {}
    return sorted(str(pathlib.Path(output_dir) / s["file"]) for s in manifest.get("shards", [])
                  if s["num_tracks"] > 0)


# === CLI ===

def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    p = argparse.ArgumentParser(prog="python -m pipelines.prepare", description=__doc__.split(
        "\n\n")[0], formatter_class=Formatter)
    p.add_argument("--source", choices=("voxceleb2", "videos"), required=True,
                   help="voxceleb2: mp4/<id>/<video>/<utt>.mp4 with txt/ offsets; videos: any "
                        "folder of videos, identity from the first folder level")
    p.add_argument("--input", required=True, help="input folder")
    p.add_argument("--output", required=True, help="output folder (shards, manifest, report)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="local worker processes (this machine's cores)")
    p.add_argument("--num_shards", type=int, default=1,
                   help="number of independent jobs the shard list is split into")
    p.add_argument("--shard_index", type=int, default=0, help="which of those jobs this is")
    p.add_argument("--face_size", type=int, default=112,
                   help="side of the stored square face crops, px: the model's face size "
                        "(224 for --model_size reference; training refuses to upsample)")
    p.add_argument("--min_frames", type=int, default=50,
                   help="skip clips shorter than this many frames (the training window)")
    p.add_argument("--tracks_per_shard", type=int, default=64,
                   help="tracks per TFRecord shard (rerunning with another value rewrites the "
                        "folder's shards)")
    p.add_argument("--chunk_seconds", type=float, default=PrepareConfig.chunk_seconds,
                   help="store tracks as records of chunks of at least this many seconds "
                        "(a training example reads one chunk); must hold 2 x --min_frames; "
                        "0: whole tracks")
    p.add_argument("--jpeg_quality", type=int, default=PrepareConfig.jpeg_quality,
                   help="JPEG quality of the stored face crops, 1-100")
    p.add_argument("--shard_seed", type=int, default=0,
                   help="seed of the random order in which tracks are dealt into shards")
    p.add_argument("--no_detect", action="store_true",
                   help="videos source: clips are face crops already, resize whole frames")
    p.add_argument("--max_side", type=int, default=720,
                   help="downscale frames to this longer side (px) before face detection")
    p.add_argument("--merge_only", action="store_true",
                   help="only rebuild manifest/report from the shard sidecars")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--log_level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="logging level (DEBUG also shows TensorFlow's start-up messages)")
    return p.parse_args(argv)


def _main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    setup_logging(level=args.log_level.upper())
    if not 0 <= args.shard_index < args.num_shards:
        raise UserError(f"--shard_index {args.shard_index} not in [0, --num_shards "
                        f"{args.num_shards})")
    if not pathlib.Path(args.input).is_dir():
        raise UserError(f"input folder {args.input} does not exist")
    if args.source == "voxceleb2":
        specs = list_voxceleb2(args.input)
    else:
        specs = list_videos(args.input, detect=not args.no_detect)
    try:
        config = PrepareConfig(face_size=args.face_size, min_frames=args.min_frames,
                               tracks_per_shard=args.tracks_per_shard,
                               shard_seed=args.shard_seed, max_side=args.max_side,
                               jpeg_quality=args.jpeg_quality,
                               chunk_seconds=args.chunk_seconds)
    except ValueError as e:
        raise UserError(f"bad arguments: {e}") from e
    if args.merge_only:
        chunks = plan_shards(specs, config.tracks_per_shard, config.shard_seed)
        total = len(chunks)
        fps = {i: _fingerprint(chunk, config) for i, chunk in enumerate(chunks)}
        manifest = merge_reports(args.output, fps, total)
        print(f"merged: {manifest['num_tracks']} tracks in {len(manifest['shards'])} of "
              f"{total} shards, complete={manifest['complete']}")
        return 0 if manifest["num_tracks"] else 1
    if not specs:
        raise UserError(f"no input videos ({', '.join(VIDEO_EXTENSIONS)}) found under "
                        f"{args.input}")
    log.info("%d input files, %d per shard", len(specs), config.tracks_per_shard)
    summary = prepare(specs, args.output, config, workers=args.workers,
                      num_jobs=args.num_shards, job_index=args.shard_index,
                      progress=not args.no_progress)
    print(f"prepared {args.output}: {summary.tracks_written} tracks in "
          f"{len(summary.shard_paths)} of {summary.shards_total} shards, "
          f"{summary.files_skipped} files skipped (see report.txt); this job wrote "
          f"{summary.shards_written} shards, {summary.shards_skipped_finished} already done; "
          f"complete={summary.complete}; {summary.seconds:.1f} s")
    if not summary.tracks_written:
        log.error("%s holds no track: every input was skipped (reasons in %s)", args.output,
                  pathlib.Path(args.output) / "report.txt")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; a `UserError` becomes one line on stderr and exit status 2."""
    return run_cli(_main, "pipelines.prepare", argv)


if __name__ == "__main__":
    sys.exit(main())
