#!/usr/bin/env python
"""Real voices, drawn faces: does audio-visual self-supervision learn real speaker identity?

Usage (from the repository root: it imports `benchmarks.learning`):
    python -m benchmarks.real_voices [--quick] [--voices DIR] [--eval_voices DIR]
        [--seeds 3] [--steps N] [--rows untrained,joint,supervised,...]
        [--train_speakers N] [--holdout_speakers M] [--workdir /tmp/av_real_voices]
        [--json OUT [--resume]] [--curve N]

1. The world (`pipelines.voices`, issue 14): every speaker of `--voices` (default: the 251
   train-clean-100 speakers of ../shared/data/librispeech_train_clean_100_sel when present,
   else the 5 bundled test-other speakers) gets a drawn face; its utterances are cut into
   tracks whose mouth follows the real audio. A seeded split holds `holdout` speakers out;
   the rest are the self-supervised training set (speaker labels never read in training).
   `--eval_voices` (default: the bundled data/samples/librispeech_subset, 5 test-other
   speakers x 10 utterances) is written as a second, fully held-out world.
2. Per seed and row, a model is trained for the same number of steps on the training
   speakers' shards. Rows (`--rows` keys): `untrained` (random initialisation, the same seed),
   the self-supervised `learning.CONFIGS` trained with `benchmarks.learning.train` (`content`
   only, `identity` only, `joint` = both losses on a shared trunk, and joint + each
   disentanglement mode: `confusion`, `adversarial`, `grl`), and `supervised`: the labelled
   reference, a `SpeakerClassifier` trained with the speaker labels of the same training
   speakers (every track of every training speaker; `limited_labels.train_supervised`:
   train.py's trainer with `--objective supervised`, the few-labels recipe: AAM softmax,
   Adam 1e-3) with 2 x `batch_tracks` random 1 s crops per
   step, the audio a self-supervised step puts through the audio stream (`supervised_setting`).
3. Speaker verification of the audio identity embedding (`evaluation.windows`: the streams
   in float32 as exported, per track 10 evenly spaced 1 s crops, each time-pooled as the
   export pools it; the mean cosine over crop pairs through `evaluation.scoring.score_pairs`,
   evaluate.py's scorer) on
   (a) the held-out speakers: all track pairs (a target pair is two tracks of one speaker;
       with one utterance per speaker these are different parts of one utterance);
   (b) the eval world: cross-utterance pairs only (tracks of one utterance are not compared).
   EER and minDCF (p_target 0.05), after the
   precise-BN re-estimation on training batches that `benchmarks/learning.py` applies
   (`reestimate_batchnorm`, `preset.recalibration_batches`); the held-out EER with the moving
   statistics training left is reported too. Rows without learning: the free baselines of
   `evaluate.py --baseline` (MFCC 1-19 mean+std and the long-term average log-mel of each
   track, raw and z-scored; `baseline_runs`), on the same trials. Every trained row,
   the supervised one included, is evaluated by the same `evaluate_row`.
4. Report: per row mean ± std over seeds and the 95% t-interval half-width
   (`learning.summarise`), and the paired differences (same seed) to the untrained row and to
   the joint row (`learning.paired_difference`; `*` where the 95% interval excludes 0); with
   `--json` the results are rewritten atomically after every run, and `--resume` continues
   a run that stopped: the (seed, row) runs already in OUT are kept, not repeated, if OUT was
   written with the same settings (`completed_runs`; otherwise a one-line error names the
   setting that differs). Each self-supervised run keeps its per-epoch training history
   (`identity_acc`: is the face-voice task learned at all?); `--curve N` adds the held-out
   SV EER (moving BN statistics) and sync@1 every N steps (`learning.Curve`, also as
   TensorBoard scalars under WORKDIR/curves/).

`--quick` is a few-minute smoke run (small world, one seed, 100 steps, 4 rows) that shows the
path works end to end; its numbers are not a result. The default (`FULL`: ~200 training and
51 held-out speakers, 3 s tracks, the small model) with `--seeds 3` is the hour-long table of
issue 14 on 2 CPU cores (see `FULL`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from av_disentangle import files  # noqa: E402
from av_disentangle.batchnorm import reestimate_batchnorm  # noqa: E402
from av_disentangle.config import LossConfig  # noqa: E402
from av_disentangle.constants import VIDEO_FPS  # noqa: E402
from av_disentangle.errors import UserError, run_cli  # noqa: E402
from av_disentangle.model import DisentangleModel  # noqa: E402
from av_disentangle.evaluation.windows import (Windows, WindowEmbedder,  # noqa: E402
                                               baseline_track_tables, track_trials,
                                               track_windows, verify_tables)
from benchmarks import learning, limited_labels  # noqa: E402
from pipelines import records, shards, voices  # noqa: E402
from pipelines.input import InputConfig, make_dataset  # noqa: E402

SHARED_VOICES = learning.REPO.parent / "shared" / "data" / "librispeech_train_clean_100_sel"
BUNDLED_VOICES = learning.REPO / "data" / "samples" / "librispeech_subset"
P_TARGET = 0.05

UNTRAINED = learning.UNTRAINED
JOINT = learning.REFERENCE  # both losses on a shared trunk, disentangle="none"
SUPERVISED = "supervised (speaker labels)"
BASELINE_ROWS = learning.BASELINE_ROWS
LTAS = "LTAS (no learning)"
# --rows keys -> row names; the self-supervised rows are `learning.CONFIGS` (one definition).
ROW_KEYS: dict[str, str] = {
    "untrained": UNTRAINED, "content": "content only", "identity": "identity only",
    "joint": JOINT, "confusion": "both + confusion", "adversarial": "both + adversarial",
    "grl": "both + GRL", "supervised": SUPERVISED}
assert set(ROW_KEYS.values()) == {UNTRAINED, SUPERVISED, *learning.CONFIGS}, "rows drifted"
ROWS_QUICK = ("untrained", "identity", "joint", "supervised")


@dataclasses.dataclass(frozen=True)
class Sizes:
    train_speakers: int  # 0: all not held out
    holdout_speakers: int
    track_seconds: float
    preset: learning.Preset


QUICK = Sizes(train_speakers=24, holdout_speakers=12, track_seconds=2.0,
              preset=dataclasses.replace(learning.QUICK, steps=100, steps_per_epoch=50))
# Sized for ~1 h with --seeds 3 on 2 free CPU cores (2026-11-27, measured on the shared,
# loaded machine and scaled by 1/2.4, the wall/CPU ratio of the single-threaded stages there):
# a self-supervised step ~0.6 s (joint and adversarial alike), a supervised step ~0.25 s, an
# evaluation (precise BN + 613 held-out and 360 test-other windows) ~30 s, ~12 s of tracing per
# training, ~40 s to load the evaluation windows and labels; per seed 3.85 s x steps + ~320 s.
# 250 steps: ~65 min (+ ~100 s to write the world once; cached in --workdir).
FULL = Sizes(train_speakers=0, holdout_speakers=51, track_seconds=3.0,
             preset=dataclasses.replace(learning.FULL, steps=250, steps_per_epoch=50))


# === Data ===

def build_world(voices_dir: str, out_dir: str, config: voices.VoicesConfig) -> dict[str, str]:
    """Writes the world once (cached by config and source folder); returns {part: folder}."""
    marker = os.path.join(out_dir, "world.json")
    want = {"voices_dir": os.path.abspath(voices_dir), "config": dataclasses.asdict(config),
            "format": voices.FORMAT}
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as fh:
            stored = json.load(fh)
        if stored.get("world") == want:
            print(f"[data] cached {out_dir}", flush=True)
            return stored["parts"]
    t0 = time.time()
    parts = voices.write_world(config, voices_dir, out_dir)
    files.write_json_atomic(marker, {"world": want, "parts": parts})
    print(f"[data] wrote {voices_dir} -> {out_dir} ({time.time() - t0:.1f} s)", flush=True)
    return parts


@dataclasses.dataclass
class VoiceWindows:
    """Evaluation windows of a voices world and, per track, its speaker and utterance."""

    windows: Windows
    utterances: list[str]  # per track


def load_voice_windows(directory: str, window: int) -> VoiceWindows:
    """Non-overlapping windows from frame 0 of every track (`evaluation.windows.track_windows`),
    sorted by id."""
    manifest = voices.load_manifest(directory)
    by_id = {t["track_id"]: t for t in manifest["tracks"]}
    tracks = [t for name in manifest["shards"]
              for t in records.read_tracks(os.path.join(directory, name))]
    tracks.sort(key=lambda t: t["track_id"].decode())
    ids = [t["track_id"].decode() for t in tracks]
    return VoiceWindows(track_windows(tracks, window, ids,
                                      [t["identity"].decode() for t in tracks]),
                        [by_id[i]["utterance"] for i in ids])


# === Metrics ===

def speaker_verification(embedder: WindowEmbedder, data: VoiceWindows,
                         cross_utterance: bool) -> dict[str, float]:
    """EER and minDCF of the audio identity embedding over track pairs: per track
    `learning.EVAL_CROPS` crops of one window (`WindowEmbedder.crop_tables`, evaluate.py's
    crops and pooling), the mean cosine over crop pairs."""
    tables = embedder.crop_tables(data.windows, learning.EVAL_CROPS, faces=False)
    return track_verification(tables["audio_identity"], data, cross_utterance)


def track_verification(voice: np.ndarray, data: VoiceWindows,
                       cross_utterance: bool) -> dict[str, float]:
    """EER and minDCF (p_target `P_TARGET`) of (num_tracks, [N,] D) track embeddings over track
    pairs (`evaluation.windows.verify_tables`, cosine); `cross_utterance`: only pairs of
    tracks from different utterances."""
    trials = track_trials(data.windows.track_identity(),
                          exclude_same=np.asarray(data.utterances) if cross_utterance else None)
    out = verify_tables(voice, voice, trials, "speaker-verification trials")
    return {"eer": out["eer"], "min_dcf": out[f"min_dcf_{P_TARGET}"], "trials": out["trials"],
            "targets": out["targets"]}


# === Rows ===

def supervised_setting(preset: learning.Preset, steps: int) -> limited_labels.Setting:
    """The few-labels recipe (`limited_labels.train_supervised`: AAM softmax m 0.2 s 30, Adam
    1e-3, the same code and defaults as `benchmarks/limited_labels.py`) with this benchmark's
    step budget and audio per step: a self-supervised step puts 2 x `batch_tracks` windows of
    `window_frames` (1 s) through the audio stream (AUDIO and AUDIO_2, `reestimate_batchnorm`),
    so a supervised step gets 2 x `batch_tracks` random crops of the same length."""
    return limited_labels.Setting(
        world=preset, labelled_identities=0, pretrain_steps=0, steps=steps,
        steps_per_epoch=preset.steps_per_epoch, batch_size=2 * preset.batch_tracks,
        crop_seconds=preset.window_frames / VIDEO_FPS)


def evaluate_row(model, heldout: VoiceWindows, evalw: VoiceWindows, train_glob: str,
                 preset: learning.Preset, seed: int) -> dict:
    """Flat metrics of one trained model (a `DisentangleModel` or a `SpeakerClassifier`, both
    have the two streams): held-out EER with the moving BN statistics training left, then
    precise BN on training batches (as `benchmarks/learning.py`), held-out and eval EER and
    minDCF."""
    t0 = time.time()
    embedder = WindowEmbedder(model)
    raw = speaker_verification(embedder, heldout, cross_utterance=False)
    if preset.recalibration_batches:
        reestimate_batchnorm(model, make_dataset(InputConfig(
            train_glob, batch_tracks=preset.batch_tracks, window_frames=preset.window_frames,
            face_size=preset.face_size, seed=seed + 1000)), preset.recalibration_batches)
    held = speaker_verification(embedder, heldout, cross_utterance=False)
    ev = speaker_verification(embedder, evalw, cross_utterance=True)
    return {"heldout_eer": held["eer"], "heldout_min_dcf": held["min_dcf"],
            "heldout_eer_raw_bn": raw["eer"], "eval_eer": ev["eer"],
            "eval_min_dcf": ev["min_dcf"], "heldout_trials": held["trials"],
            "heldout_targets": held["targets"], "eval_trials": ev["trials"],
            "eval_targets": ev["targets"], "eval_seconds": time.time() - t0}


def baseline_runs(heldout: VoiceWindows, evalw: VoiceWindows) -> dict[str, list[dict]]:
    """The free baselines (`evaluation.windows.baseline_track_tables`: `evaluate.py --baseline`'s
    functions on each track's audio) scored on the same trials as every row; one
    deterministic run per `BASELINE_ROWS` row."""
    held_tables = baseline_track_tables(heldout.windows)
    eval_tables = baseline_track_tables(evalw.windows)
    rows = {}
    for name, kind in BASELINE_ROWS.items():
        held = track_verification(held_tables[kind], heldout, cross_utterance=False)
        ev = track_verification(eval_tables[kind], evalw, cross_utterance=True)
        rows[name] = [{"seed": 0, "data_seed": 0, "steps": 0, "heldout_eer": held["eer"],
                       "heldout_min_dcf": held["min_dcf"], "eval_eer": ev["eer"],
                       "eval_min_dcf": ev["min_dcf"], "heldout_trials": held["trials"],
                       "heldout_targets": held["targets"], "eval_trials": ev["trials"],
                       "eval_targets": ev["targets"]}]
    return rows


METRICS = (("heldout_eer", "held-out EER %"), ("heldout_min_dcf", "held-out minDCF"),
           ("eval_eer", "test-other EER %"), ("eval_min_dcf", "test-other minDCF"))


def make_rows(results: dict[str, list[dict]]) -> list[dict]:
    """Per row: mean, std (ddof 1) and 95% t-interval half-width over seeds
    (`learning.summarise`), and paired differences (row - reference, same seed,
    `learning.paired_difference`) against the untrained row and the joint row (the untrained
    row is not compared with the joint row: that is the joint row's difference negated)."""
    rows = [{"config": name, "num_runs": len(runs), **learning.summarise(runs), "runs": runs,
             "differences": {}} for name, runs in results.items() if runs]
    for ref_name in (UNTRAINED, JOINT):
        ref = results.get(ref_name)
        if not ref:
            continue
        for row in rows:
            if row["config"] in (ref_name, UNTRAINED, *BASELINE_ROWS):
                continue
            row["differences"]["vs " + ref_name] = {
                key: learning.paired_difference(row["runs"], ref, key, 0.0)
                for key, _ in METRICS}
    return rows


def completed_runs(path: str, settings: dict) -> tuple[dict[str, list[dict]], float]:
    """The per-seed runs of every row stored in the results JSON at `path` (as `main` writes
    it), `{row name: [run, ...]}`, and the wall seconds already spent on them; ({}, 0.0) when
    `path` does not exist. `settings` is everything that shapes a run's numbers; raises
    `UserError` naming the file and the setting when one of them is stored with another value
    (a resumed table must not mix runs made under different settings)."""
    if not os.path.exists(path):
        return {}, 0.0
    try:
        with open(path) as fh:
            stored = json.load(fh)
        rows = stored["rows"]
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{path}: cannot resume from it, not a real_voices results JSON "
                        f"({err})") from err
    want = json.loads(json.dumps(learning._json_safe(settings)))
    for key in want:
        if stored.get(key) != want[key]:
            raise UserError(f"{path}: cannot resume, it was written with a different "
                            f"'{key}' ({stored.get(key)!r} there, {want[key]!r} now); "
                            f"use another --json or drop --resume")
    return ({row["config"]: list(row["runs"]) for row in rows
             if row["config"] not in BASELINE_ROWS},
            float(stored.get("total_seconds", 0.0)))


def _value(key: str, x: float) -> str:
    return f"{100 * x:.1f}" if key.endswith("_eer") else f"{x:.3f}"


def format_table(rows: list[dict]) -> str:
    """Markdown: mean ± std [95% t-interval half-width] per cell (one run: the value)."""
    lines = ["| row | " + " | ".join(h for _, h in METRICS) + " | steps | train s | eval s |",
             "|---" * (len(METRICS) + 4) + "|"]
    for r in rows:
        cells = []
        for key, _ in METRICS:
            cell = _value(key, r["mean"][key])
            if r["num_runs"] > 1:
                cell += f" ± {_value(key, r['std'][key])} [{_value(key, r['ci95'][key])}]"
            cells.append(cell)
        runs = r["runs"]
        train_s = np.mean([x.get("train_seconds", 0.0) for x in runs])
        eval_s = np.mean([x.get("eval_seconds", 0.0) for x in runs])
        lines.append(f"| {r['config']} | " + " | ".join(cells)
                     + f" | {runs[0]['steps']} | {train_s:.0f} | {eval_s:.0f} |")
    return "\n".join(lines)


def format_differences(rows: list[dict], ref_name: str) -> str:
    """Markdown: paired difference to `ref_name` (EER in points, minDCF absolute): mean
    [95% t-interval half-width], `*` where the interval excludes 0."""
    label = "vs " + ref_name
    lines = [f"| Δ {label} | " + " | ".join(h for _, h in METRICS) + " |",
             "|---" * (len(METRICS) + 1) + "|"]
    for r in rows:
        diffs = r["differences"].get(label)
        if not diffs:
            continue
        cells = []
        for key, _ in METRICS:
            d = diffs[key]
            scale = 100.0 if key.endswith("_eer") else 1.0
            digits = 1 if key.endswith("_eer") else 3
            cell = f"{scale * d['mean']:+.{digits}f}"
            if np.isfinite(d["ci95"]):
                cell += f" [{scale * d['ci95']:.{digits}f}]"
            cells.append(cell + ("*" if d["significant"] else ""))
        lines.append(f"| {r['config']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# === Main ===

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few-minute smoke run")
    parser.add_argument("--voices", default="", help="LibriSpeech-layout training speech")
    parser.add_argument("--eval_voices", default=str(BUNDLED_VOICES),
                        help="a second labelled folder, scored with cross-utterance trials")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds 0..N-1")
    parser.add_argument("--steps", type=int, default=0,
                        help="training steps of every trained row (0: the mode's default)")
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default=None,
                        help="self-supervised rows: train.py --optimizer (default: the "
                             "preset's, adam)")
    parser.add_argument("--learning_rate", type=float, default=None,
                        help="self-supervised rows: train.py --learning_rate (default 3e-3)")
    parser.add_argument("--weight_decay", type=float, default=None,
                        help="self-supervised rows: train.py --weight_decay (default 0)")
    parser.add_argument("--rows", default="",
                        help=f"comma-separated rows out of {','.join(ROW_KEYS)} (default: "
                             f"{','.join(ROWS_QUICK)} with --quick, all otherwise)")
    parser.add_argument("--train_speakers", type=int, default=-1,
                        help="training speakers (0: all not held out; default: the mode's)")
    parser.add_argument("--holdout_speakers", type=int, default=-1,
                        help="held-out speakers (default: the mode's)")
    parser.add_argument("--workdir", default="/tmp/av_real_voices")
    parser.add_argument("--json", default="", help="results JSON (rewritten after every run)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in --json (same settings) and do the rest")
    parser.add_argument("--curve", type=int, default=0, metavar="N",
                        help="every N steps, the held-out SV EER (moving BN statistics) and "
                             "sync@1 of each self-supervised row: in the JSON and as "
                             "TensorBoard scalars under WORKDIR/curves/")
    args = parser.parse_args(argv)

    row_keys = [k.strip() for k in args.rows.split(",") if k.strip()] or list(
        ROWS_QUICK if args.quick else ROW_KEYS)
    unknown = [k for k in row_keys if k not in ROW_KEYS]
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)} (choose from {', '.join(ROW_KEYS)})")
    if args.seeds < 1 or args.steps < 0:
        parser.error("--seeds must be >= 1 and --steps >= 0")
    if args.resume and not args.json:
        parser.error("--resume needs --json OUT (the results to continue)")
    sizes = QUICK if args.quick else FULL
    steps = args.steps or sizes.preset.steps
    # Whole epochs of at most `steps` steps, so `--steps` is the exact count of every row.
    preset = dataclasses.replace(sizes.preset,
                                 steps_per_epoch=min(sizes.preset.steps_per_epoch, steps))
    recipe = {k: getattr(args, k) for k in ("optimizer", "learning_rate", "weight_decay")
              if getattr(args, k) is not None}
    preset = dataclasses.replace(preset, **recipe)  # recorded in the JSON's preset
    steps = -(-steps // preset.steps_per_epoch) * preset.steps_per_epoch
    voices_dir = args.voices or str(SHARED_VOICES if SHARED_VOICES.is_dir() else BUNDLED_VOICES)
    if os.path.realpath(voices_dir) == os.path.realpath(BUNDLED_VOICES):  # 5 speakers
        sizes = dataclasses.replace(sizes, train_speakers=3, holdout_speakers=2)
    if args.train_speakers >= 0:
        sizes = dataclasses.replace(sizes, train_speakers=args.train_speakers)
    if args.holdout_speakers >= 0:
        sizes = dataclasses.replace(sizes, holdout_speakers=args.holdout_speakers)
    world_cfg = voices.VoicesConfig(
        track_seconds=sizes.track_seconds, num_speakers=sizes.train_speakers,
        holdout_speakers=sizes.holdout_speakers, face_size=preset.face_size, seed=0)
    tag = f"{os.path.basename(os.path.normpath(voices_dir))}_{sizes.train_speakers}+" \
          f"{sizes.holdout_speakers}_t{sizes.track_seconds:g}_px{preset.face_size}"
    t_start = time.time()
    parts = build_world(voices_dir, os.path.join(args.workdir, tag), world_cfg)
    eval_cfg = voices.VoicesConfig(track_seconds=sizes.track_seconds,
                                   face_size=preset.face_size, seed=0)
    eval_parts = build_world(args.eval_voices, os.path.join(args.workdir, "eval_" + tag),
                             eval_cfg)
    heldout = load_voice_windows(parts["holdout"], preset.window_frames)
    evalw = load_voice_windows(eval_parts["train"], preset.window_frames)
    train_glob = os.path.join(parts["train"], shards.SHARD_PATTERN)
    sup_setting = supervised_setting(preset, steps)
    print(f"[data] train {parts['train']} ({sizes.train_speakers or 'all'} speakers)"
          f"; held out: {len(heldout.windows.identities)} speakers, "
            f"{len(heldout.utterances)} tracks; eval: {len(evalw.windows.identities)} "
            f"speakers, {len(evalw.utterances)} tracks", flush=True)

    settings = {
        "mode": "quick" if args.quick else "full", "voices": voices_dir,
        "eval_voices": args.eval_voices, "steps": steps,
        "world": dataclasses.asdict(world_cfg), "preset": dataclasses.asdict(preset),
        "supervised": {k: v for k, v in dataclasses.asdict(sup_setting).items()
                       if k != "world"}}
    done, seconds_before = completed_runs(args.json, settings) if args.resume else ({}, 0.0)
    t_start -= seconds_before  # the wall time reported is that of the whole table
    results: dict[str, list[dict]] = {ROW_KEYS[k]: list(done.get(ROW_KEYS[k], []))
                                      for k in row_keys}
    results.update(baseline_runs(heldout, evalw))
    if done:
        print(f"[resume] {args.json}: kept " + ", ".join(
            f"{name} seeds {[r['seed'] for r in runs]}" for name, runs in results.items()
            if runs and name not in BASELINE_ROWS), flush=True)

    def payload() -> dict:
        return learning._json_safe({**settings, "seeds": args.seeds, "rows": make_rows(results),
                                    "total_seconds": time.time() - t_start})

    for seed in range(args.seeds):
        for key in row_keys:
            name = ROW_KEYS[key]
            if any(r["seed"] == seed for r in results[name]):
                continue  # --resume: this run is already in the results
            keras.utils.set_random_seed(seed)
            info: dict = {"steps": 0, "train_seconds": 0.0}
            if key == "untrained":
                model = DisentangleModel(preset.model, LossConfig(disentangle="none"))
            elif key == "supervised":
                # Every track of every training speaker, with its label.
                model, sinfo = limited_labels.train_supervised(sup_setting, train_glob, seed,
                                                               init_from="", freeze_trunk=False)
                info = {"steps": sinfo["steps"], "train_seconds": sinfo["train_seconds"],
                        "train_loss": sinfo["loss"], "train_accuracy": sinfo["accuracy"],
                        "labelled_speakers": sinfo["labelled_speakers"]}
                print(f"[train] {name}: {sinfo['steps']} steps in {sinfo['train_seconds']:.1f}"
                      f" s; last epoch loss {sinfo['loss']:.3f} accuracy "
                      f"{sinfo['accuracy']:.3f}", flush=True)
            else:
                curve = None
                if args.curve:
                    curve = learning.Curve(heldout.windows, args.curve, os.path.join(
                        args.workdir, "curves", tag, f"seed{seed}", key), preset.offset_steps)
                model, tinfo = learning.train(name, learning.CONFIGS[name], preset,
                                              train_glob, seed, steps, curve)
                # Per-epoch training losses and accuracies (identity_acc: is the face-voice
                # task learned at all?), and the curve when asked for.
                info = {k: v for k, v in tinfo.items() if k in ("steps", "train_seconds",
                                                                "history", "curve")}
                info["train_loss"] = tinfo["history"]["loss"][-1]
            res = {"seed": seed, "data_seed": 0, **info,
                   **evaluate_row(model, heldout, evalw, train_glob, preset, seed)}
            results[name].append(res)
            print(f"[eval] {name} seed {seed}: held-out EER {100 * res['heldout_eer']:.1f}% "
                  f"minDCF {res['heldout_min_dcf']:.3f}; eval cross-utterance EER "
                  f"{100 * res['eval_eer']:.1f}% minDCF {res['eval_min_dcf']:.3f}; "
                  f"held-out EER before precise BN {100 * res['heldout_eer_raw_bn']:.1f}% "
                  f"({res['eval_seconds']:.1f} s)", flush=True)
            if args.json:  # after every run: a long run that dies keeps what it did
                files.write_json_atomic(args.json, payload(), indent=1)

    rows = make_rows(results)
    first = results[LTAS][0]
    total = time.time() - t_start
    print(f"\nreal voices ({voices_dir}): {steps} steps, {args.seeds} seed(s); held out "
          f"{first['heldout_targets']}/{first['heldout_trials']} target/trials, test-other "
          f"{first['eval_targets']}/{first['eval_trials']} (cross-utterance); "
          f"total wall time {total:.0f} s")
    print(format_table(rows))
    for ref_name in (UNTRAINED, JOINT):
        if any("vs " + ref_name in r["differences"] for r in rows):
            print()
            print(format_differences(rows, ref_name))
    print(LEGEND)
    if args.json:
        files.write_json_atomic(args.json, payload(), indent=1)
        print(f"wrote {args.json}")
    return 0


LEGEND = """\
Cells: mean ± std over seeds [95% t-interval half-width]; EER in %, minDCF at p_target 0.05.
Δ: paired difference row - reference with the same seed (EER in points), mean [95% t-interval
half-width]; * = the interval excludes 0. MFCC / LTAS rows: free baselines without learning
(evaluate.py --baseline; z-scored over each trial set's tracks), one deterministic run each."""


if __name__ == "__main__":
    sys.exit(run_cli(main, "real_voices"))
