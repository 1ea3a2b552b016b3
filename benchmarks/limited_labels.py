#!/usr/bin/env python
"""Few labels: does self-supervised pretraining help a speaker embedding trained with labels?

Usage (from the repository root: it imports `benchmarks.learning`):
    python -m benchmarks.limited_labels [--quick] [--seeds 3] [--steps N] [--pretrain_steps N]
        [--budgets 1,2,4,0] [--learning_rate LR] [--workdir /tmp/av_learning] [--json OUT]

The paper's limited-label comparison on the synthetic talking-heads world
(`pipelines.synthetic`, built and cached by `benchmarks.learning.make_world`):

1. The world has two splits of DIFFERENT identities. `train`: the unlabelled identities,
   used only for self-supervised pretraining. `test`: identities never seen in pretraining;
   per seed, `load_labelled_audio(..., num_speakers=L, seed=seed)` draws L of them as the
   labelled identities, the others are the held-out identities of the evaluation.
2. Per seed: a `DisentangleModel` (full loss, `LossConfig()`) is pretrained with
   `benchmarks.learning.train` on the unlabelled split, and saved as a run directory
   (config.json + checkpoints/epoch-001.weights.h5) that `--init_from` accepts.
3. Per label budget (1, 2, 4 tracks per labelled identity, 0 = all) and per arm, a
   `SpeakerClassifier` (AAM softmax, 2 s crops) is trained with train.py's trainer
   (`run.train` with `--objective supervised --labelled_audio <test split>
   --labels_per_speaker B --num_speakers L --label_seed SEED`) for the same number of Adam
   steps from the same seed:
     scratch            random init;
     pretrained         `init_from` the pretrained run, everything but the content head trained;
     pretrained+frozen  the same with `freeze_trunk` (identity head + classifier trained).
   The budgets of one seed are nested (the tracks of budget 1 are among those of budget 2...)
   and all arms of one seed and budget see the same labelled tracks.
4. Speaker verification EER on the held-out identities exactly as `benchmarks/learning.py`
   scores it (`learning.crop_tables` + `learning.verification_eers`: the streams in float32 as
   exported, 10 evenly spaced 1 s crops per track of the audio identity embedding, time-pooled,
   the mean cosine over crop pairs through evaluate.py's `score_pairs`); all track pairs; the
   moving BatchNorm statistics the training left (what the export uses). Reference rows,
   scored the same way: the scratch arm's initial (untrained) weights, and the
   self-supervised model alone (no labels).

Prints a markdown table (EER mean +- std over seeds, the paired difference to scratch, the
final training loss/accuracy and the training wall time per run) and writes JSON with --json.
Timings are wall-clock on whatever machine runs this; on a small shared CPU they are noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from av_disentangle import checkpoints, files  # noqa: E402
from av_disentangle.config import LossConfig, to_dict  # noqa: E402
from av_disentangle.evaluation.windows import Windows, WindowEmbedder  # noqa: E402
from av_disentangle.flags import parse_flags, resolve_settings  # noqa: E402
from av_disentangle.supervised import SpeakerClassifier, build_supervised_model  # noqa: E402
from av_disentangle.supervised_config import SupervisedConfig  # noqa: E402
from benchmarks import learning  # noqa: E402  (world, pretraining, SV EER)
from pipelines.labelled import load_labelled_audio  # noqa: E402


# === Settings ===

@dataclasses.dataclass(frozen=True)
class Setting:
    """Sizes of one benchmark mode.

    Attributes:
      world: the synthetic world and the pretraining (`learning.Preset`): `train_identities`
        unlabelled identities; `test_identities` = labelled + held-out identities.
      labelled_identities: L, drawn per seed from the `test` split; the rest are held out.
      budgets: labelled tracks per identity (0: all `world.tracks_per_identity`).
      pretrain_steps: self-supervised steps (Adam, `world.learning_rate`).
      steps, steps_per_epoch, batch_size, learning_rate: the supervised training (Adam).
      crop_seconds: supervised training crops.
    """

    world: learning.Preset
    labelled_identities: int
    pretrain_steps: int
    steps: int
    steps_per_epoch: int
    batch_size: int
    learning_rate: float = 1e-3
    crop_seconds: float = 2.0
    budgets: tuple[int, ...] = (1, 2, 4, 0)


QUICK = Setting(world=dataclasses.replace(learning.QUICK, train_identities=12, test_identities=12,
                                          tracks_per_identity=6, recalibration_batches=0),
                labelled_identities=6, pretrain_steps=100, steps=50, steps_per_epoch=25,
                batch_size=12)
FULL = Setting(world=dataclasses.replace(learning.FULL, train_identities=30, test_identities=20,
                                         tracks_per_identity=8, recalibration_batches=0),
               labelled_identities=10, pretrain_steps=300, steps=150, steps_per_epoch=25,
               batch_size=16)

SCRATCH, PRETRAINED, FROZEN = "scratch", "pretrained", "pretrained+frozen"
ARMS = (SCRATCH, PRETRAINED, FROZEN)
SELF_SUPERVISED = "self-supervised only (0 labels)"
UNTRAINED = "untrained (random init, 0 labels)"


# === Pieces ===

def sv_eer(model, win: Windows) -> float:
    """Held-out SV EER of the audio identity embedding (`learning.verification_eers`).
    `model` is a DisentangleModel or a SpeakerClassifier: both have the two streams."""
    return learning.verification_eers(learning.crop_tables(WindowEmbedder(model), win),
                                      win)["sv_eer"]


def pretrain(setting: Setting, train_glob: str, seed: int, run_dir: str):
    """Self-supervised run on the unlabelled split, saved where `init_from` finds it.
    Returns (model, info)."""
    loss_config = LossConfig()
    model, info = learning.train("self-supervised pretraining", loss_config, setting.world,
                                 train_glob, seed, setting.pretrain_steps)
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    files.write_json_atomic(os.path.join(run_dir, "config.json"),
                            {"model": to_dict(setting.world.model),
                             "loss": to_dict(loss_config)})
    checkpoints.save_weights_atomic(
        model, os.path.join(run_dir, "checkpoints", "epoch-001.weights.h5"))
    return model, info


def train_supervised(setting: Setting, labelled_glob: str, seed: int, init_from: str,
                     freeze_trunk: bool, *, labels_per_speaker: int = 0, num_speakers: int = 0,
                     label_seed: int = 0) -> tuple[SpeakerClassifier, dict]:
    """One supervised run with `train.py --objective supervised`'s trainer (`run.train`: the
    labelled audio of `labelled_glob` read and its label budget drawn by
    `pipelines.labelled.load_labelled_audio(labels_per_speaker, num_speakers, label_seed)`,
    the AAM classifier, `--init_from`, `--freeze_trunk`, the optimizer factory: Adam
    `setting.learning_rate`, no weight decay), `setting.steps` rounded up to whole epochs;
    the model is `setting.world.model`. Returns (the model, its training info)."""
    spe = setting.steps_per_epoch
    model_dir = tempfile.mkdtemp(prefix=f"supervised_{seed}_")
    argv = ["--objective", "supervised", "--labelled_audio", labelled_glob,
            "--labels_per_speaker", str(labels_per_speaker), "--num_speakers",
            str(num_speakers), "--label_seed", str(label_seed),
            "--crop_seconds", str(setting.crop_seconds),
            *learning.trainer_flags(model_dir, batch=setting.batch_size, steps_per_epoch=spe,
                                    epochs=-(-setting.steps // spe), optimizer="adam",
                                    learning_rate=setting.learning_rate, weight_decay=0.0,
                                    seed=seed)]
    if init_from:
        argv += ["--init_from", init_from]
    if freeze_trunk:
        argv.append("--freeze_trunk")
    settings = dataclasses.replace(resolve_settings(parse_flags(argv)),
                                   model=setting.world.model)
    model, history, wall = learning.run_trainer(settings, "supervised")
    return model, {"steps": len(history["loss"]) * spe, "train_seconds": wall,
                   "loss": float(history["loss"][-1]),
                   "accuracy": float(history["accuracy"][-1]),
                   "labelled_speakers": int(model.num_classes)}


# === Report ===

def mean_std(values: list[float]) -> str:
    """'12.3 ± 1.4' in percent (population std over seeds; no spread for one seed)."""
    v = 100 * np.asarray(values, np.float64)
    return f"{v.mean():.1f} ± {v.std():.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def format_table(rows: list[dict], tracks_per_identity: int) -> str:
    head = ("| labels / identity | init | SV EER % (held-out) | Δ vs scratch (paired) | "
            "final train loss | final train acc % | train s / run |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        budget = r["budget"]
        label = "0" if budget is None else (f"all ({tracks_per_identity})" if budget == 0
                                            else str(budget))
        delta = mean_std(r["delta_vs_scratch"]) if r.get("delta_vs_scratch") else "-"
        loss = f"{np.mean(r['loss']):.2f}" if r.get("loss") else "-"
        acc = f"{100 * np.mean(r['accuracy']):.0f}" if r.get("accuracy") else "-"
        lines.append(f"| {label} | {r['arm']} | {mean_std(r['eer'])} | {delta} | {loss} | "
                     f"{acc} | {np.mean(r['train_seconds']):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small world, few steps, 1 seed")
    p.add_argument("--seeds", type=int, default=None,
                   help="number of seeds 0..N-1 (default 3; 1 with --quick)")
    p.add_argument("--steps", type=int, default=None,
                   help="supervised steps per run (rounded up to whole epochs of 25)")
    p.add_argument("--pretrain_steps", type=int, default=None,
                   help="self-supervised steps (rounded up to whole epochs of the world's "
                        "steps_per_epoch: 50 quick, 25 full)")
    p.add_argument("--budgets", default="",
                   help="comma-separated labelled tracks per identity, 0 = all (default 1,2,4,0)")
    p.add_argument("--learning_rate", type=float, default=None,
                   help="supervised Adam learning rate (default 1e-3)")
    p.add_argument("--workdir", default=os.path.join("/tmp", "av_learning"),
                   help="cache of the synthetic world (pretrained runs: a temp dir in it)")
    p.add_argument("--data_seed", type=int, default=0, help="seed of the synthetic world")
    p.add_argument("--json", default="", help="write results JSON here")
    args = p.parse_args(argv)

    setting = QUICK if args.quick else FULL
    overrides = {}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.pretrain_steps is not None:
        overrides["pretrain_steps"] = args.pretrain_steps
    if args.learning_rate is not None:
        overrides["learning_rate"] = args.learning_rate
    if args.budgets:
        try:
            overrides["budgets"] = tuple(int(b) for b in args.budgets.split(","))
        except ValueError:
            p.error(f"--budgets {args.budgets!r}: expected comma-separated integers")
    setting = dataclasses.replace(setting, **overrides)
    world = setting.world
    # Both trainings run whole epochs (learning.train rounds up the same way).
    setting = dataclasses.replace(
        setting, steps=-(-setting.steps // setting.steps_per_epoch) * setting.steps_per_epoch,
        pretrain_steps=(-(-setting.pretrain_steps // world.steps_per_epoch)
                        * world.steps_per_epoch))
    if any(b < 0 or b > world.tracks_per_identity for b in setting.budgets):
        p.error(f"--budgets must be in 0..{world.tracks_per_identity} (0: all)")
    if setting.steps < 1 or setting.pretrain_steps < 1:
        p.error("--steps and --pretrain_steps must be >= 1")
    seeds = list(range(args.seeds if args.seeds is not None else (1 if args.quick else 3)))
    if not seeds:
        p.error("--seeds must be >= 1")

    t_start = time.time()
    dirs = learning.make_world(args.workdir, world, args.data_seed)
    train_glob = os.path.join(dirs["train"], "*.tfrecord")
    test_glob = os.path.join(dirs["test"], "*.tfrecord")
    win_test = learning.load_windows(dirs["test"], world.window_frames)

    results: dict[tuple, dict] = {}  # (budget, arm) -> lists over seeds

    def record(budget, arm, eer, info=None):
        r = results.setdefault((budget, arm), {"budget": budget, "arm": arm, "eer": [],
                                               "loss": [], "accuracy": [], "train_seconds": [],
                                               "per_seed": []})
        r["eer"].append(eer)
        info = info or {}
        for key in ("loss", "accuracy"):
            if key in info:
                r[key].append(info[key])
        r["train_seconds"].append(info.get("train_seconds", 0.0))
        r["per_seed"].append({"eer": eer, **info})

    # Pretrained runs are not cached: a fresh temp dir per invocation (removed at exit).
    runs = tempfile.TemporaryDirectory(prefix="limited_labels_", dir=args.workdir)
    for seed in seeds:
        run_dir = os.path.join(runs.name, f"pretrain_seed{seed}")
        model, info = pretrain(setting, train_glob, seed, run_dir)
        speakers = None
        for budget in setting.budgets:
            data = load_labelled_audio(test_glob, labels_per_speaker=budget,
                                       num_speakers=setting.labelled_identities, seed=seed)
            if speakers is None:
                speakers = data.selection.speakers
                heldout = win_test.subset(set(win_test.identities) - set(speakers))
                eer0 = sv_eer(model, heldout)
                record(None, SELF_SUPERVISED, eer0, {"train_seconds": info["train_seconds"],
                                                     "steps": info["steps"]})
                keras.utils.set_random_seed(seed)  # the scratch arm's initial weights
                untrained = build_supervised_model(world.model, SupervisedConfig(),
                                                   data.num_classes)
                record(None, UNTRAINED, sv_eer(untrained, heldout))
                base = learning.baseline_sv_eers(heldout)  # the same held-out trials
                for name, kind in learning.BASELINE_ROWS.items():
                    record(None, name, base[kind])
                print(f"[seed {seed}] labelled identities {list(speakers)}; held-out "
                      f"{heldout.identities} ({len(heldout.track_ids)} tracks); "
                      f"self-supervised SV EER {100 * eer0:.1f}%", flush=True)
            # The speaker draw does not depend on the budget (pipelines/labelled.py).
            assert data.selection.speakers == speakers, "label draws are not nested"
            for arm in ARMS:
                init_from = "" if arm == SCRATCH else run_dir
                sup, sinfo = train_supervised(setting, test_glob, seed, init_from, arm == FROZEN,
                                              labels_per_speaker=budget,
                                              num_speakers=setting.labelled_identities,
                                              label_seed=seed)
                eer = sv_eer(sup, heldout)
                sinfo["utterances"] = len(data.selection.utterances)
                record(budget, arm, eer, sinfo)
                print(f"[seed {seed}] budget {budget or 'all'} {arm}: SV EER {100 * eer:.1f}% "
                      f"(train loss {sinfo['loss']:.2f} acc {100 * sinfo['accuracy']:.0f}%, "
                      f"{sinfo['steps']} steps, {sinfo['train_seconds']:.1f} s)", flush=True)

    runs.cleanup()
    rows = [results[(None, UNTRAINED)], *(results[(None, name)] for name in
                                          learning.BASELINE_ROWS),
            results[(None, SELF_SUPERVISED)]]
    for budget in setting.budgets:
        scratch = results[(budget, SCRATCH)]["eer"]
        for arm in ARMS:
            r = results[(budget, arm)]
            if arm != SCRATCH:
                r["delta_vs_scratch"] = [a - b for a, b in zip(r["eer"], scratch)]
            rows.append(r)
    total = time.time() - t_start
    print()
    print(f"mode {'quick' if args.quick else 'full'}; seeds {seeds}; world (data seed "
          f"{args.data_seed}): {world.train_identities} unlabelled identities for pretraining; "
          f"{world.test_identities} other identities, {setting.labelled_identities} labelled "
          f"and {world.test_identities - setting.labelled_identities} held out (drawn per "
          f"seed); {world.tracks_per_identity} tracks x {world.num_frames} frames each. "
          f"Pretraining: LossConfig() (content + identity + confusion), "
          f"{setting.pretrain_steps} steps, batch {world.batch_tracks} tracks, Adam "
          f"{world.learning_rate}. Supervised: AAM (m 0.2, s 30), {setting.steps} steps, batch "
          f"{setting.batch_size} x {setting.crop_seconds} s crops, Adam {setting.learning_rate}. "
          f"Model {world.model}.")
    print(format_table(rows, world.tracks_per_identity))
    print(f"EER: held-out identities, all track pairs, audio identity embedding; mean ± std "
          f"over {len(seeds)} seed(s); Δ = EER(arm) - EER(scratch) per seed (negative: "
          f"pretraining helped). Total wall time {total:.0f} s (shared CPU: timings are noisy).")
    if args.json:
        payload = {"mode": "quick" if args.quick else "full", "seeds": seeds,
                   "data_seed": args.data_seed,
                   "setting": json.loads(json.dumps(dataclasses.asdict(setting))),
                   "rows": rows, "total_seconds": total}
        files.write_json_atomic(args.json, payload, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
