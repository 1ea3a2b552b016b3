#!/usr/bin/env python
"""Real voices, drawn faces: does audio-visual self-supervision learn real speaker identity?

Usage (from the repository root: it imports `benchmarks.learning`):
    python -m benchmarks.real_voices --quick [--voices DIR] [--eval_voices DIR]
        [--seeds 1] [--steps N] [--workdir /tmp/av_real_voices] [--json OUT]

1. The world (`pipelines.voices`, issue 14): every speaker of `--voices` (default: the 251
   train-clean-100 speakers of ../shared/data/librispeech_train_clean_100_sel when present,
   else the 5 bundled test-other speakers) gets a drawn face; its utterances are cut into
   tracks whose mouth follows the real audio. A seeded split holds `holdout` speakers out;
   the rest are the self-supervised training set (speaker labels never read in training).
   `--eval_voices` (default: the bundled data/samples/librispeech_subset, 5 test-other
   speakers x 10 utterances) is written as a second, fully held-out world.
2. Per seed and row, a `DisentangleModel` is trained with `benchmarks.learning.train` on the
   training speakers' shards (rows: untrained initialisation, content only, identity only,
   joint (`learning.CONFIGS`' names); the full benchmark adds the disentanglement modes (the
   supervised reference row is not built yet).
3. Speaker verification of the audio identity embedding (`learning.embed`, 1 s windows,
   time-pooled, L2-normalised, averaged per track; cosine scores) on
   (a) the held-out speakers: all track pairs (a target pair is two tracks of one speaker;
       with one utterance per speaker these are different parts of one utterance);
   (b) the eval world: cross-utterance pairs only (tracks of one utterance are not compared).
   EER and minDCF (p_target 0.05) from `av_disentangle.verification_metrics`, after the
   precise-BN re-estimation on training batches that `benchmarks/learning.py` applies
   (`reestimate_batchnorm`, `preset.recalibration_batches`); the held-out EER with the moving
   statistics training left is reported too. Reference row without learning: the long-term
   average log spectrum of each track (`ltas_embeddings`).

`--quick` is a few-minute smoke run (small world, one seed, ~100 steps, 3 rows) that shows the
path works end to end; its numbers are not a result. The hour-long measurement is item 2 of
issue 14 and is not done by this script's defaults yet.
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
from av_disentangle.model import DisentangleModel  # noqa: E402
from av_disentangle.verification_metrics import compute_eer, compute_min_dcf  # noqa: E402
from benchmarks import learning  # noqa: E402
from pipelines import records, shards, voices  # noqa: E402
from pipelines.input import InputConfig, fixed_windows, make_dataset  # noqa: E402

SHARED_VOICES = learning.REPO.parent / "shared" / "data" / "librispeech_train_clean_100_sel"
BUNDLED_VOICES = learning.REPO / "data" / "samples" / "librispeech_subset"
P_TARGET = 0.05

# The learning benchmark's loss configurations, under its row names (one definition).
ROWS_FULL: dict[str, LossConfig | None] = {learning.UNTRAINED: None, **learning.CONFIGS}
ROWS_QUICK: dict[str, LossConfig | None] = {
    name: ROWS_FULL[name] for name in (learning.UNTRAINED, "identity only", learning.REFERENCE)}


@dataclasses.dataclass(frozen=True)
class Sizes:
    train_speakers: int  # 0: all not held out
    holdout_speakers: int
    track_seconds: float
    preset: learning.Preset


QUICK = Sizes(train_speakers=24, holdout_speakers=12, track_seconds=2.0,
              preset=dataclasses.replace(learning.QUICK, steps=100, steps_per_epoch=50))
FULL = Sizes(train_speakers=0, holdout_speakers=51, track_seconds=3.0,
             preset=dataclasses.replace(learning.FULL, steps=600, steps_per_epoch=50))


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

    windows: learning.Windows
    utterances: list[str]  # per track


def load_voice_windows(directory: str, window: int) -> VoiceWindows:
    """Non-overlapping windows from frame 0 of every track (`fixed_windows`), sorted by id."""
    manifest = voices.load_manifest(directory)
    by_id = {t["track_id"]: t for t in manifest["tracks"]}
    tracks = [t for name in manifest["shards"]
              for t in records.read_tracks(os.path.join(directory, name))]
    tracks.sort(key=lambda t: t["track_id"].decode())
    identities = sorted({t["identity"].decode() for t in tracks})
    cols = {k: [] for k in ("frames", "audio", "track", "identity", "track_index", "start",
                            "units")}
    track_ids, utterances = [], []
    for i, t in enumerate(tracks):
        tid = t["track_id"].decode()
        track_ids.append(tid)
        utterances.append(by_id[tid]["utterance"])
        for start, frames, audio in fixed_windows(t["frames"], t["audio"], window):
            cols["frames"].append(frames)
            cols["audio"].append(audio)
            cols["track"].append(i)
            cols["identity"].append(identities.index(t["identity"].decode()))
            cols["track_index"].append(0)
            cols["start"].append(start)
            cols["units"].append(np.full(window, -1))
    arrays = {k: np.stack(v) if k in ("frames", "audio", "units") else np.asarray(v)
              for k, v in cols.items()}
    return VoiceWindows(learning.Windows(track_ids=track_ids, identities=identities, **arrays),
                        utterances)


# === Metrics ===

def speaker_verification(emb: dict[str, np.ndarray], data: VoiceWindows,
                         cross_utterance: bool) -> dict[str, float]:
    """EER and minDCF of the audio identity embedding over track pairs (cosine)."""
    win = data.windows
    voice = learning.track_embeddings(emb["audio_identity"], win)
    speaker = learning.track_identity(win)
    utt = np.asarray(data.utterances)
    i, j = np.triu_indices(len(speaker), k=1)
    if cross_utterance:
        keep = utt[i] != utt[j]
        i, j = i[keep], j[keep]
    scores = np.einsum("pd,pd->p", voice[i], voice[j])
    labels = (speaker[i] == speaker[j]).astype(np.int64)
    if labels.sum() == 0 or labels.sum() == len(labels):
        raise ValueError("verification needs target and non-target pairs")
    return {"eer": float(compute_eer(scores, labels)[0]),
            "min_dcf": float(compute_min_dcf(scores, labels, P_TARGET)[0]),
            "trials": int(len(labels)), "targets": int(labels.sum())}


def ltas_embeddings(data: VoiceWindows) -> dict[str, np.ndarray]:
    """A no-learning reference: the long-term average log spectrum of each window's louder
    half (512-sample frames, 0-5 kHz), centred over the split, as (N, 1, D) "audio_identity"
    sequences for `speaker_verification`."""
    x = data.windows.audio.astype(np.float64)
    n = x.shape[1] // 256 - 1
    frames = np.stack([x[:, 256 * k:256 * k + 512] for k in range(n)], axis=1)
    power = np.abs(np.fft.rfft(frames * np.hanning(512), axis=-1))[..., :160] ** 2
    logp = np.log(power + 1e-8)  # (N, n, 160)
    level = logp.mean(axis=-1, keepdims=True)
    loud = level >= np.median(level, axis=1, keepdims=True)
    ltas = (logp * loud).sum(axis=1) / np.maximum(loud.sum(axis=1), 1)
    ltas = ltas - ltas.mean(axis=0, keepdims=True)
    return {"audio_identity": ltas[:, None, :]}


# === Main ===

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few-minute smoke run")
    parser.add_argument("--voices", default="", help="LibriSpeech-layout training speech")
    parser.add_argument("--eval_voices", default=str(BUNDLED_VOICES),
                        help="a second labelled folder, scored with cross-utterance trials")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=0, help="0: the mode's default")
    parser.add_argument("--workdir", default="/tmp/av_real_voices")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    rows = ROWS_QUICK if args.quick else ROWS_FULL
    preset = sizes.preset
    steps = args.steps or preset.steps
    voices_dir = args.voices or str(SHARED_VOICES if SHARED_VOICES.is_dir() else BUNDLED_VOICES)
    if voices_dir == str(BUNDLED_VOICES) and args.quick:
        sizes = dataclasses.replace(sizes, train_speakers=3, holdout_speakers=2)
    world_cfg = voices.VoicesConfig(
        track_seconds=sizes.track_seconds, num_speakers=sizes.train_speakers,
        holdout_speakers=sizes.holdout_speakers, face_size=preset.face_size, seed=0)
    tag = f"{os.path.basename(os.path.normpath(voices_dir))}_{sizes.train_speakers}+" \
          f"{sizes.holdout_speakers}_t{sizes.track_seconds:g}_px{preset.face_size}"
    parts = build_world(voices_dir, os.path.join(args.workdir, tag), world_cfg)
    eval_cfg = voices.VoicesConfig(track_seconds=sizes.track_seconds,
                                   face_size=preset.face_size, seed=0)
    eval_parts = build_world(args.eval_voices, os.path.join(args.workdir, "eval_" + tag),
                             eval_cfg)
    heldout = load_voice_windows(parts["holdout"], preset.window_frames)
    evalw = load_voice_windows(eval_parts["train"], preset.window_frames)
    train_glob = os.path.join(parts["train"], shards.SHARD_PATTERN)
    print(f"[data] train {parts['train']}; held out: {len(heldout.windows.identities)} "
          f"speakers, {len(heldout.utterances)} tracks; eval: "
          f"{len(evalw.windows.identities)} speakers, {len(evalw.utterances)} tracks", flush=True)

    results: dict[str, list[dict]] = {name: [] for name in rows}
    for seed in range(args.seeds):
        for name, loss_config in rows.items():
            keras.utils.set_random_seed(seed)
            info = {"steps": 0, "train_seconds": 0.0}
            if loss_config is None:
                model = DisentangleModel(preset.model, LossConfig(disentangle="none"))
            else:
                model, info = learning.train(name, loss_config, preset, train_glob, seed,
                                             steps, None)
            fns = learning.stream_functions(model)
            raw = speaker_verification(learning.embed(model, heldout.windows, functions=fns),
                                       heldout, cross_utterance=False)
            if preset.recalibration_batches:  # precise BN, as benchmarks/learning.py evaluates
                reestimate_batchnorm(model, make_dataset(InputConfig(
                    train_glob, batch_tracks=preset.batch_tracks,
                    window_frames=preset.window_frames, face_size=preset.face_size,
                    seed=seed + 1000)), preset.recalibration_batches)
            res = {"seed": seed, "steps": info["steps"],
                   "train_seconds": round(info["train_seconds"], 1),
                   "heldout_raw_bn": raw,
                   "heldout": speaker_verification(learning.embed(model, heldout.windows,
                                                                  functions=fns),
                                                   heldout, cross_utterance=False),
                   "eval": speaker_verification(learning.embed(model, evalw.windows,
                                                               functions=fns),
                                                evalw, cross_utterance=True)}
            results[name].append(res)
            print(f"[eval] {name} seed {seed}: held-out EER {100 * res['heldout']['eer']:.1f}% "
                  f"minDCF {res['heldout']['min_dcf']:.3f}; eval cross-utterance EER "
                  f"{100 * res['eval']['eer']:.1f}% minDCF {res['eval']['min_dcf']:.3f}; "
                  f"held-out EER before precise BN {100 * raw['eer']:.1f}%",
                  flush=True)

    reference = "LTAS (no learning)"
    results[reference] = [{"seed": 0, "steps": 0, "train_seconds": 0.0,
                           "heldout": speaker_verification(ltas_embeddings(heldout), heldout,
                                                           cross_utterance=False),
                           "eval": speaker_verification(ltas_embeddings(evalw), evalw,
                                                        cross_utterance=True)}]
    first = next(iter(results.values()))[0]
    print(f"\nreal voices ({voices_dir}): {steps} steps, {args.seeds} seed(s); held out "
          f"{first['heldout']['targets']}/{first['heldout']['trials']} target/trials, eval "
          f"{first['eval']['targets']}/{first['eval']['trials']} (cross-utterance)")
    print(f"{'row':<22}{'held-out EER %':>16}{'minDCF':>9}{'eval EER %':>13}{'minDCF':>9}"
          f"{'train s':>9}")
    for name, runs in results.items():
        def stat(part: str, key: str, scale: float) -> str:
            v = scale * np.array([r[part][key] for r in runs])
            return f"{v.mean():.1f}" + (f"+-{v.std(ddof=1):.1f}" if len(v) > 1 else "")
        print(f"{name:<22}{stat('heldout', 'eer', 100):>16}{stat('heldout', 'min_dcf', 1):>9}"
              f"{stat('eval', 'eer', 100):>13}{stat('eval', 'min_dcf', 1):>9}"
              f"{np.mean([r['train_seconds'] for r in runs]):>9.1f}")
    if args.json:
        files.write_json_atomic(args.json, {"voices": voices_dir, "steps": steps,
                                            "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
