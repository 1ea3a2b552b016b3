#!/usr/bin/env python
"""Does the model learn? The paper's ablation on the synthetic talking-heads world.

Usage:
    python benchmarks/learning.py [--quick] [--seeds N] [--data_seeds M]
        [--correlations 0,0.5,0.9] [--steps N] [--optimizer sgd --learning_rate 1e-4]
        [--curve_every N --curve_png curve.png] [--workdir /tmp/av_learning] [--json out.json]
    python benchmarks/learning.py --merge a.json b.json [--curve_png curve.png] [--json all.json]

1. Generates (once, cached in --workdir) a synthetic world (`pipelines.synthetic`) with
   ground-truth identity and per-frame content units: a `train` split of identities and a
   `test` split of DIFFERENT identities.
2. For each configuration of the paper's ablation (content only, identity only, and both
   losses on a shared trunk with each disentanglement mode: none, confusion, adversarial,
   GRL) trains a `DisentangleModel` with train.py's trainer (`run.train`; the preset's recipe,
   Adam 3e-3 by default, `--optimizer/--learning_rate/--weight_decay` to change it) for the
   same number of steps from the same seed on the train split. An untrained model (same seed)
   is evaluated as a reference row. Repeated over `--seeds` training seeds x `--data_seeds`
   synthetic worlds; with `--correlations` the TRAINING world's content is correlated with
   identity (`SyntheticConfig.content_identity_correlation`: each identity speaks mostly its
   own subset of units) while the held-out world stays uncorrelated ("novel combinations").
3. Evaluates through `av_disentangle.evaluation.windows` (the streams rebuilt in float32 as
   the export serves them, training=False) on deterministic windows and crops:
   * sync top-1: within a held-out window, face content step t must pick audio content step t
     among the window's T' steps (chance 1/T'); and an offset search: the diagonal shift
     d in [-D, D] steps (2 frames each) of the mean face/audio content cosine must be 0
     (chance 1/(2D+1));
   * SV EER: per track `EVAL_CROPS` (10) evenly spaced crops of one window (evaluate.py's
     `crop_waveform`), the audio identity head time-pooled per crop as the export pools it;
     score = mean cosine over crop pairs (evaluate.py's `score_pairs`), all pairs of held-out
     tracks, target = same identity;
   * cross-modal EER: face identity embedding (the same crops of the frames) of track a vs
     voice identity embedding of track b != a (so different videos), all ordered pairs,
     target = same identity;
   * trial-sampling error of SV EER, F-V EER and sync@1: standard error over 200 bootstrap
     resamples of the held-out IDENTITIES (all their tracks and trials come along), plus the
     binomial standard error at the SV EER from the numbers of target / non-target trials;
   * disentanglement probes (lower = better disentangled), multinomial logistic regression
     and a one-hidden-layer MLP (64 ReLU units, same held-out splits):
     (a) content unit of the step's centre frame from the per-step AUDIO IDENTITY embedding
     (trained on train-identity tracks, tested on held-out identities), reference: the same
     probe on audio CONTENT embeddings; (b) identity from the window-pooled AUDIO CONTENT
     embedding (train/test split by track WITHIN the train identities), reference: the same
     probe on audio IDENTITY embeddings.
4. Prints per correlation a table of mean +- 95% interval (t, over seeds x worlds) per row,
   the paired differences of each mode against `both (shared trunk)` (marked `*` where the
   paired 95% interval excludes 0 AND the difference exceeds 2 trial-sampling standard errors),
   and writes JSON with --json. `--curve_every N` evaluates sync@1 and SV EER on the held-out
   world every N steps (raw BN statistics), as TensorBoard scalars under
   WORKDIR/curves/... and as a PNG (`--curve_png`).

Timings are wall-clock on whatever machine runs this; on a small shared CPU they are noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from av_disentangle import files, run  # noqa: E402
from av_disentangle.batchnorm import reestimate_batchnorm  # noqa: E402
from av_disentangle.config import LossConfig, ModelConfig  # noqa: E402
from av_disentangle.evaluation import windows  # noqa: E402
from av_disentangle.evaluation.probes import (linear_probe_accuracy,  # noqa: E402
                                              mlp_probe_accuracy, single_thread_blas)
from av_disentangle.evaluation.windows import (Windows, WindowEmbedder,  # noqa: E402
                                               baseline_track_tables, sync_scores,
                                               track_trials, track_windows, verify_tables)
from av_disentangle.flags import Settings, parse_flags, resolve_settings  # noqa: E402
from av_disentangle.model import DisentangleModel  # noqa: E402
from av_disentangle.training import choose_mixed_precision, cpu_flags  # noqa: E402
from av_disentangle.verification_metrics import compute_eer, cosine_pair_scores  # noqa: E402
from pipelines import drawn_faces, records, synthetic  # noqa: E402
from pipelines.input import InputConfig, make_dataset  # noqa: E402


# === Settings ===

@dataclasses.dataclass(frozen=True)
class Preset:
    """Sizes of one benchmark mode."""

    train_identities: int
    test_identities: int
    tracks_per_identity: int
    num_frames: int
    face_size: int
    model: ModelConfig
    steps: int
    steps_per_epoch: int
    batch_tracks: int = 16
    window_frames: int = 25
    # The recipe (train.py --optimizer / --learning_rate / --weight_decay): Adam 3e-3 without
    # weight decay, what every table here was measured with.
    learning_rate: float = 3e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    probe_test_tracks: int = 2  # tracks per train identity held out for the identity probe
    offset_steps: int = 3  # offset search over [-D, D] steps (2 frames each)
    recalibration_batches: int = 25  # precise-BN batches before evaluation (0: none)


QUICK = Preset(train_identities=12, test_identities=6, tracks_per_identity=4, num_frames=50,
               face_size=64, steps=100, steps_per_epoch=50, batch_tracks=12,
               recalibration_batches=10,
               model=ModelConfig(face_size=64, face_channels=(8, 16, 16, 16, 16),
                                 audio_channels=(8, 16, 16, 16, 16), trunk_dim=32,
                                 head_hidden=32, embedding_dim=32))
# 20 held-out identities (560 target / 12,720 SV trials per world; trial-sampling SE of a row's
# SV EER 1.7-1.8 points over 4-6 runs): the issue-12 table was measured with these sizes.
FULL = Preset(train_identities=30, test_identities=20, tracks_per_identity=8, num_frames=75,
              face_size=64, steps=150, steps_per_epoch=25, model=ModelConfig.small())

CONFIGS: dict[str, LossConfig] = {
    "content only": LossConfig(identity_weight=0.0, disentangle="none"),
    "identity only": LossConfig(content_weight=0.0, disentangle="none"),
    "both (shared trunk)": LossConfig(disentangle="none"),
    "both + confusion": LossConfig(disentangle="confusion"),
    "both + adversarial": LossConfig(disentangle="adversarial"),
    "both + GRL": LossConfig(disentangle="grl"),
}
REFERENCE = "both (shared trunk)"  # disentangle="none": the row the modes are compared with
UNTRAINED = "untrained (init)"


# === Data ===

def make_world(workdir: str, preset: Preset, seed: int = 0,
               correlation: float = 0.0, jpeg_quality: int = 90) -> dict[str, str]:
    """Writes train/test splits (distinct identities) once; returns {split: directory}.

    `correlation` is the TRAIN split's `content_identity_correlation`; the held-out test
    split is always uncorrelated (the same directory for every correlation). `jpeg_quality`
    of the stored frames (both splits; a folder of its own unless 90, the default)."""
    common = dict(tracks_per_identity=preset.tracks_per_identity, num_frames=preset.num_frames,
                  face_size=preset.face_size, seed=seed, jpeg_quality=jpeg_quality)
    splits = {
        "train": synthetic.SyntheticConfig(num_identities=preset.train_identities,
                                           first_identity=0,
                                           content_identity_correlation=correlation, **common),
        "test": synthetic.SyntheticConfig(num_identities=preset.test_identities,
                                          first_identity=preset.train_identities, **common),
    }
    tag = (f"syn_s{seed}_id{preset.train_identities}+{preset.test_identities}"
           f"_tr{preset.tracks_per_identity}_f{preset.num_frames}_px{preset.face_size}"
           + (f"_q{jpeg_quality}" if jpeg_quality != 90 else ""))
    out = {}
    for name, cfg in splits.items():
        suffix = f"_corr{correlation:g}" if name == "train" and correlation > 0 else ""
        directory = os.path.join(workdir, tag, name + suffix)
        manifest = os.path.join(directory, "manifest.json")
        cached = False
        if os.path.exists(manifest):
            with open(manifest) as fh:
                stored = json.load(fh)
            cached = (stored.get("config") == dataclasses.asdict(cfg) and
                      stored.get("generator_version") == drawn_faces.GENERATOR_VERSION)
        if not cached:
            t0 = time.time()
            synthetic.write_dataset(cfg, directory)
            print(f"[data] wrote {name}: {cfg.num_identities} identities x "
                  f"{cfg.tracks_per_identity} tracks x {cfg.num_frames} frames -> {directory} "
                  f"({time.time() - t0:.1f} s)", flush=True)
        else:
            print(f"[data] cached {name}: {directory}", flush=True)
        out[name] = directory
    return out


def load_windows(directory: str, window: int) -> Windows:
    """Cuts every track of a split into non-overlapping windows starting at frame 0
    (`evaluation.windows.track_windows`), with the world's per-frame content units."""
    manifest = synthetic.load_manifest(directory)
    by_id = {t["track_id"]: t for t in manifest["tracks"]}
    tracks = []
    for shard in manifest["shards"]:
        tracks.extend(records.read_tracks(os.path.join(directory, shard)))
    tracks.sort(key=lambda t: t["track_id"].decode())
    ids = [t["track_id"].decode() for t in tracks]
    return track_windows(tracks, window, ids, [t["identity"].decode() for t in tracks],
                         track_index=[by_id[i]["track_index"] for i in ids],
                         units=[by_id[i]["units"] for i in ids])


# === Metrics ===

def eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate as a fraction (`av_disentangle.verification_metrics.compute_eer`)."""
    return float(compute_eer(np.asarray(scores, np.float64), np.asarray(labels, np.int64))[0])


EVAL_CROPS = 10  # crops per track for verification: evaluate.py's --num_crops default


def crop_tables(embedder: WindowEmbedder, win: Windows) -> dict[str, np.ndarray]:
    """Per track, `EVAL_CROPS` crops of one window's length (`WindowEmbedder.crop_tables`)."""
    return embedder.crop_tables(win, EVAL_CROPS)


def verification_eers(tables: dict[str, np.ndarray], win: Windows) -> dict[str, float]:
    """From `crop_tables`: voice-voice SV EER over all track pairs, face->voice cross-modal EER
    over all ordered pairs of different tracks, and the SV EER of the pooled audio CONTENT
    embedding (how much identity it still carries); scored by `evaluation.windows.verify_tables`
    (evaluate.py's `score_pairs`)."""
    ident = win.track_identity()
    voice = tables["audio_identity"]
    sv_trials = track_trials(ident)
    sv = verify_tables(voice, voice, sv_trials, "held-out SV trials")
    xm = verify_tables(tables["face_identity"], voice, track_trials(ident, ordered=True),
                       "held-out face-voice trials")
    content = tables["audio_content"]
    cv = verify_tables(content, content, sv_trials, "held-out SV trials")
    return {"sv_eer": sv["eer"], "sv_min_dcf": sv["min_dcf_0.05"], "xmodal_eer": xm["eer"],
            "sv_eer_content_emb": cv["eer"], "sv_trials": sv["trials"],
            "sv_targets": sv["targets"], "xmodal_trials": xm["trials"]}


# Free label-free baselines (`evaluate.py --baseline`) as table rows: row name -> kind; each
# is one deterministic run.
BASELINE_ROWS: dict[str, str] = {"MFCC mean+std (no learning)": "mfcc",
                                 "MFCC mean+std, z-scored": "mfcc_z",
                                 "LTAS (no learning)": "ltas", "LTAS, z-scored": "ltas_z"}


def baseline_sv_eers(win: Windows) -> dict[str, float]:
    """The free baselines' (`evaluation.windows.baseline_track_tables`) SV EER on the same
    trials as `verification_eers` (all pairs of tracks)."""
    trials = track_trials(win.track_identity())
    return {kind: verify_tables(table, table, trials, "held-out SV trials")["eer"]
            for kind, table in baseline_track_tables(win).items()}


BOOTSTRAP_RESAMPLES = 200


def binomial_se(rate: float, num_targets: int, num_nontargets: int) -> float:
    """Binomial standard error of an EER: the mean of the miss rate (over `num_targets`
    trials) and false-alarm rate (over `num_nontargets`) at the EER, treating trials as
    independent (they are not - trials share tracks - so this is a lower bound; the identity
    bootstrap is the honest one)."""
    var = rate * (1.0 - rate)
    return float(0.5 * np.sqrt(var / max(num_targets, 1) + var / max(num_nontargets, 1)))


def _pair_eer(scores: np.ndarray, ident: np.ndarray, tracks: np.ndarray,
              ordered: bool) -> float:
    """EER of the trials among `tracks` (indices into the (n, n) `scores` matrix, may repeat):
    pairs (i < j, or all i != j if `ordered`) of different ORIGINAL tracks; target = same
    identity."""
    sub = scores[np.ix_(tracks, tracks)]
    same_track = tracks[:, None] == tracks[None, :]
    mask = ~same_track if ordered else np.triu(~same_track, k=1)
    labels = (ident[tracks][:, None] == ident[tracks][None, :])[mask]
    return eer(sub[mask], labels.astype(np.int64))


def score_matrix(table1: np.ndarray, table2: np.ndarray) -> np.ndarray:
    """(n, n) scores of every pair of rows of two (n, N, D) crop tables
    (`verification_metrics.cosine_pair_scores`: the mean cosine over crop pairs)."""
    n = table1.shape[0]
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return cosine_pair_scores(table1, table2, i.ravel(), j.ravel()).reshape(n, n)


def trial_errors(tables: dict[str, np.ndarray], emb: dict[str, np.ndarray], win: Windows,
                 seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, float]:
    """Trial-sampling standard errors of the held-out SV EER, F-V EER and sync@1: std over
    `resamples` bootstrap draws of the held-out identities with replacement (each drawn
    identity brings all its tracks; pairs of a track with itself are dropped), and the
    binomial SE of the SV EER."""
    ident = win.track_identity()
    sv_scores = score_matrix(tables["audio_identity"], tables["audio_identity"])
    xm_scores = score_matrix(tables["face_identity"], tables["audio_identity"])
    # Per-window sync correctness: face step t picks audio step t (the dot product of
    # `sync_scores`).
    sim = np.einsum("ntd,nsd->nts", emb["face_content"], emb["audio_content"])
    correct = (np.argmax(sim, axis=2) == np.arange(sim.shape[1])).mean(axis=1)  # (N,)
    ids = np.unique(ident)
    tracks_of = {i: np.flatnonzero(ident == i) for i in ids}
    windows_of = {i: np.flatnonzero(win.identity == i) for i in ids}
    rng = np.random.default_rng(seed)
    boot = {"sv_eer": [], "xmodal_eer": [], "sync_top1": []}
    for _ in range(resamples):
        draw = rng.choice(ids, size=len(ids), replace=True)
        if len(np.unique(draw)) < 2:
            continue
        tracks = np.concatenate([tracks_of[i] for i in draw])
        boot["sv_eer"].append(_pair_eer(sv_scores, ident, tracks, ordered=False))
        boot["xmodal_eer"].append(_pair_eer(xm_scores, ident, tracks, ordered=True))
        boot["sync_top1"].append(float(np.mean(correct[np.concatenate(
            [windows_of[i] for i in draw])])))
    i, j = np.triu_indices(len(ident), k=1)
    labels = ident[i] == ident[j]
    sv = eer(sv_scores[i, j], labels.astype(np.int64))
    out = {f"{k}_se": float(np.std(v, ddof=1)) for k, v in boot.items()}
    out["sv_eer_binomial_se"] = binomial_se(sv, int(labels.sum()), int((~labels).sum()))
    return out


def step_units(win: Windows, num_steps: int, stride: int) -> np.ndarray:
    """(N, T') content unit of each step's centre frame: step j covers frames
    [stride*j, stride*j + 4] of the window, centre stride*j + 2."""
    centres = stride * np.arange(num_steps) + 2
    return win.units[:, centres]


def probe_metrics(emb_tr: dict, win_tr: Windows, emb_te: dict, win_te: Windows,
                  stride: int, probe_test_tracks: int) -> dict[str, float]:
    """Content probes (train ids -> held-out ids) and identity probes (within train ids)."""
    num_units = synthetic.NUM_UNITS
    n_steps = emb_tr["audio_identity"].shape[1]
    y_tr = step_units(win_tr, n_steps, stride).ravel()
    y_te = step_units(win_te, n_steps, stride).ravel()
    out = {}
    for key in ("audio_identity", "audio_content", "face_identity", "face_content"):
        d = emb_tr[key].shape[-1]
        out[f"content_probe_{key}"] = linear_probe_accuracy(
            emb_tr[key].reshape(-1, d), y_tr, emb_te[key].reshape(-1, d), y_te, num_units)
    # MLP probes on the two leakage directions and their references (same held-out splits).
    for key in ("audio_identity", "audio_content"):
        d = emb_tr[key].shape[-1]
        out[f"content_probe_mlp_{key}"] = mlp_probe_accuracy(
            emb_tr[key].reshape(-1, d), y_tr, emb_te[key].reshape(-1, d), y_te, num_units)
    majority = np.bincount(y_tr, minlength=num_units).argmax()
    out["content_probe_chance"] = float(np.mean(y_te == majority))

    # Identity probe: windows of the last `probe_test_tracks` tracks of each train identity
    # are the test set (unseen videos of seen people).
    tracks_per_identity = int(win_tr.track_index.max()) + 1
    test_mask = win_tr.track_index >= tracks_per_identity - probe_test_tracks
    num_ids = len(win_tr.identities)
    for key in ("audio_content", "audio_identity", "face_content", "face_identity"):
        pooled = windows.pooled(emb_tr[key])
        out[f"identity_probe_{key}"] = linear_probe_accuracy(
            pooled[~test_mask], win_tr.identity[~test_mask], pooled[test_mask],
            win_tr.identity[test_mask], num_ids)
        if key in ("audio_content", "audio_identity"):
            out[f"identity_probe_mlp_{key}"] = mlp_probe_accuracy(
                pooled[~test_mask], win_tr.identity[~test_mask], pooled[test_mask],
                win_tr.identity[test_mask], num_ids)
    out["identity_probe_chance"] = 1.0 / num_ids
    return out


def evaluate(model: DisentangleModel, win_tr: Windows, win_te: Windows, preset: Preset,
             recalibration: tf.data.Dataset | None) -> dict[str, float]:
    """All metrics; with `recalibration`, first with the trained moving BN statistics (raw)
    for sync and SV EER, then after `av_disentangle.batchnorm.reestimate_batchnorm` (precise
    BN) for everything."""
    raw = {}
    embedder = WindowEmbedder(model)  # traced once; copies the weights at every embed
    if recalibration is not None:
        emb_te = embedder.embed(win_te)
        raw = {"sync_top1_raw_bn": sync_scores(emb_te, preset.offset_steps)["sync_top1"],
               "sv_eer_raw_bn": verification_eers(crop_tables(embedder, win_te),
                                                  win_te)["sv_eer"]}
        reestimate_batchnorm(model, recalibration, preset.recalibration_batches)
    emb_te = embedder.embed(win_te)
    emb_tr = embedder.embed(win_tr)
    out = sync_scores(emb_te, preset.offset_steps)
    out.update(raw)
    out["sync_top1_train_ids"] = sync_scores(emb_tr, preset.offset_steps)["sync_top1"]
    tables = crop_tables(embedder, win_te)
    out.update(verification_eers(tables, win_te))
    with single_thread_blas():
        out.update(trial_errors(tables, emb_te, win_te))
        out.update(probe_metrics(emb_tr, win_tr, emb_te, win_te, preset.model.temporal_stride,
                                 preset.probe_test_tracks))
    return out


# === Training ===

class Curve(keras.callbacks.Callback):
    """Every `every` optimizer steps (and at step 0) evaluates sync@1 and the SV EER on the
    held-out windows (inference mode, the moving BN statistics as they are: no precise-BN
    re-estimation, which would change the training state) and writes them as TensorBoard
    scalars `curve/sync_top1`, `curve/sv_eer` to `logdir`. `points` holds
    [(step, sync_top1, sv_eer), ...]."""

    def __init__(self, win: Windows, every: int, logdir: str, max_shift: int):
        super().__init__()
        self.win, self.every, self.logdir, self.max_shift = win, every, logdir, max_shift
        self.points: list[tuple[int, float, float]] = []
        self.step = 0

    def on_train_begin(self, logs=None):
        self.embedder = WindowEmbedder(self.model)
        self.writer = tf.summary.create_file_writer(self.logdir)
        self._evaluate()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            self._evaluate()

    def on_train_end(self, logs=None):
        self.writer.close()

    def _evaluate(self) -> None:
        emb = self.embedder.embed(self.win)
        sync = sync_scores(emb, self.max_shift)["sync_top1"]
        sv = verification_eers(crop_tables(self.embedder, self.win), self.win)["sv_eer"]
        self.points.append((self.step, sync, sv))
        with self.writer.as_default():
            tf.summary.scalar("curve/sync_top1", sync, step=self.step)
            tf.summary.scalar("curve/sv_eer", sv, step=self.step)
        self.writer.flush()


def plot_curves(path: str, curves: dict[str, list[list]], title: str) -> None:
    """PNG (written atomically) of SV EER and sync@1 against training steps: one line per
    label, the mean over its runs (shaded: min..max), from `Curve.points` lists."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, runs in curves.items():
        length = min(len(r) for r in runs)
        arr = np.array([r[:length] for r in runs], np.float64)  # (runs, points, 3)
        steps = arr[0, :, 0]
        for ax, col in ((axes[0], 2), (axes[1], 1)):
            mean = 100 * arr[:, :, col].mean(0)
            line, = ax.plot(steps, mean, label=f"{label} (n={len(runs)})")
            if len(runs) > 1:
                ax.fill_between(steps, 100 * arr[:, :, col].min(0), 100 * arr[:, :, col].max(0),
                                color=line.get_color(), alpha=0.15)
    axes[0].set_ylabel("held-out SV EER (%)")
    axes[1].set_ylabel("held-out sync@1 (%)")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    files.write_atomic(path, buf.getvalue())
    print(f"wrote {path}")


class _KeepModel(keras.callbacks.Callback):
    """Keeps the model `run.train` trained (its reference at the end of training) and the
    Keras logs of every epoch, for the evaluation that follows."""

    def __init__(self):
        super().__init__()
        self.trained: DisentangleModel | None = None
        self.history: dict[str, list[float]] = {}

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(round(float(value), 4))

    def on_train_end(self, logs=None):
        self.trained = self.model


def trainer_settings(loss_config: LossConfig, preset: Preset, train_glob: str, seed: int,
                     epochs: int, model_dir: str) -> Settings:
    """`train.py`'s settings for one benchmark run: its flags (the preset's batch, window,
    epochs and recipe: optimizer, learning rate, weight decay; the current Keras policy as
    `--mixed_precision`; no export), then the preset's model and the row's losses (configs
    `train.py` has no named size or flag set for)."""
    argv = ["--train_data", train_glob, "--window_frames", str(preset.window_frames),
            *trainer_flags(model_dir, batch=preset.batch_tracks,
                           steps_per_epoch=preset.steps_per_epoch, epochs=epochs,
                           optimizer=preset.optimizer, learning_rate=preset.learning_rate,
                           weight_decay=preset.weight_decay, seed=seed)]
    settings = resolve_settings(parse_flags(argv))
    return dataclasses.replace(settings, model=preset.model, loss=loss_config)


def trainer_flags(model_dir: str, *, batch: int, steps_per_epoch: int, epochs: int,
                  optimizer: str, learning_rate: float, weight_decay: float, seed: int
                  ) -> list[str]:
    """The `train.py` flags every benchmark run shares: its run directory, batch, epochs,
    recipe and seed, the current Keras policy as `--mixed_precision`, no export, silent."""
    policy = keras.mixed_precision.global_policy().name
    precision = "none" if policy == "float32" else policy.replace("mixed_", "")
    return ["--model_dir", model_dir, "--batch_tracks", str(batch),
            "--steps_per_epoch", str(steps_per_epoch), "--epochs", str(epochs),
            "--optimizer", optimizer, "--learning_rate", str(learning_rate),
            "--weight_decay", str(weight_decay), "--seed", str(seed),
            "--mixed_precision", precision, "--no_export", "--verbose", "0"]


def run_trainer(settings: Settings, name: str, curve: "Curve | None" = None
                ) -> tuple[keras.Model, dict[str, list[float]], float]:
    """`run.train(settings)` in a fresh run directory (`settings.run.model_dir`, removed
    afterwards). Returns (the trained model, the Keras logs of every epoch, wall seconds)."""
    keep = _KeepModel()
    try:
        t0 = time.time()
        run.train(settings, callbacks=[keep] + ([curve] if curve is not None else []))
        wall = time.time() - t0
    finally:
        shutil.rmtree(settings.run.model_dir, ignore_errors=True)
    if keep.trained is None:
        raise RuntimeError(f"{name}: run.train returned without training")
    return keep.trained, keep.history, wall


def train(name: str, loss_config: LossConfig, preset: Preset, train_glob: str, seed: int,
          steps: int, curve: Curve | None = None) -> tuple[DisentangleModel, dict]:
    """Trains one configuration with `train.py`'s trainer (`run.train`: its optimizer
    factory and schedule, resumable fit, BatchNorm, input pipeline, checks), `steps` rounded
    up to whole epochs of `preset.steps_per_epoch`, in a fresh run directory that is removed
    afterwards; one `fit`, so the input pipeline runs on and every step sees new windows."""
    spe = preset.steps_per_epoch
    model_dir = tempfile.mkdtemp(prefix=f"learning_{_slug(name)}_{seed}_")
    settings = trainer_settings(loss_config, preset, train_glob, seed, -(-steps // spe),
                                model_dir)
    model, history, wall = run_trainer(settings, name, curve)
    done = len(history["loss"]) * spe
    info = {"steps": done, "train_seconds": wall, "history": history}
    if curve is not None:
        info["curve"] = [list(p) for p in curve.points]
    print(f"[train] {name}: {done} steps in {wall:.1f} s ({wall / done:.2f} s/step incl. "
          f"tracing); last epoch: content_loss {history['content_loss'][-1]:.3f} "
          f"content_acc {history['content_acc'][-1]:.3f} identity_loss "
          f"{history['identity_loss'][-1]:.3f} identity_acc {history['identity_acc'][-1]:.3f}",
          flush=True)
    return model, info


# === Real sample data (smoke test of real input) ===

SAMPLES = REPO / "data" / "samples"


def sample_speaker_labels() -> dict[str, str]:
    """source path relative to data/samples -> speaker label, from data/samples/MANIFEST.tsv
    (GRID: s1 for the 12 s1 clips, by-eye labels for the others; VoxCeleb2-style crops: by eye).
    Labels are only used to score verification, never for training."""
    labels = {}
    with open(SAMPLES / "MANIFEST.tsv") as fh:
        next(fh)
        for line in fh:
            cols = line.rstrip("\n").split("\t")
            labels[cols[0]] = cols[-1]
    return labels


def load_real_windows(shards: list[str], window: int, labels: dict[str, str],
                      keep=lambda rel: True) -> Windows:
    """Non-overlapping windows of the prepared bundled clips whose relative source path
    passes `keep`; identity = the MANIFEST speaker label; no content labels (units = -1)."""
    tracks = [t for shard in shards for t in records.read_tracks(shard)]
    rel = {id(t): os.path.relpath(t["source_path"].decode(), SAMPLES) for t in tracks}
    tracks = sorted((t for t in tracks if keep(rel[id(t)])), key=lambda t: rel[id(t)])
    names = [rel[id(t)] for t in tracks]
    return track_windows(tracks, window, names, [labels.get(n, n) for n in names])


def run_real(configs: dict[str, LossConfig], steps: int, seed: int) -> int:
    """Trains on the 36 bundled real clips (self-supervised, transductive: the evaluation
    clips are among the training clips, their labels are not) and reports sync on all clips
    and speaker verification among the 22 GRID clips (s1 x 12 vs 9 other people)."""
    from pipelines.prepare import prepare_bundled_samples

    preset = FULL
    shards = prepare_bundled_samples(REPO / "data" / "prepared" / f"samples_{preset.face_size}",
                                     face_size=preset.face_size, workers=os.cpu_count() or 1)
    labels = sample_speaker_labels()
    win_all = load_real_windows(shards, preset.window_frames, labels)
    win_grid = load_real_windows(shards, preset.window_frames, labels,
                                 keep=lambda rel: rel.startswith("grid/"))
    glob = ",".join(shards)
    print(f"[data] real: {len(win_all.track_ids)} clips -> {len(win_all.track)} windows; "
          f"GRID: {len(win_grid.track_ids)} clips of {len(win_grid.identities)} people", flush=True)
    rows = []
    todo = [(UNTRAINED, None)] + list(configs.items())
    for name, loss_config in todo:
        keras.utils.set_random_seed(seed)
        info = {"steps": 0, "train_seconds": 0.0}
        if loss_config is None:
            model = DisentangleModel(preset.model, LossConfig(disentangle="none"))
        else:
            model, info = train(name, loss_config, preset, glob, seed, steps)
        embedder = WindowEmbedder(model)
        metrics = sync_scores(embedder.embed(win_all), preset.offset_steps)
        metrics.update(verification_eers(crop_tables(embedder, win_grid), win_grid))
        rows.append((name, metrics, info))
    print(f"\nreal bundled data: {len(win_all.track_ids)} clips, window {preset.window_frames} "
          f"frames (T'={rows[0][1]['num_steps']}), {steps} steps, seed {seed}; SV/F-V EER over "
          f"GRID clip pairs ({rows[0][1]['sv_targets']} target / {rows[0][1]['sv_trials']} trials)")
    print(f"{'configuration':<22}{'sync@1':>9}{'sync-off':>10}{'SV EER':>9}{'F-V EER':>9}"
          f"{'steps':>7}{'train s':>9}")
    for name, m, info in rows:
        print(f"{name:<22}{100 * m['sync_top1']:>9.1f}{100 * m['sync_offset_acc']:>10.1f}"
              f"{100 * m['sv_eer']:>9.1f}{100 * m['xmodal_eer']:>9.1f}{info['steps']:>7}"
              f"{info['train_seconds']:>9.1f}")
    chance_sync = 100.0 / rows[0][1]["num_steps"]
    print(f"{'chance':<22}{chance_sync:>9.1f}{100 / (2 * preset.offset_steps + 1):>10.1f}"
          f"{50.0:>9.1f}{50.0:>9.1f}")
    return 0


# === Report ===

COLUMNS = (  # key, header (all percent)
    ("sync_top1_raw_bn", "sync@1 rawBN"),
    ("sv_eer_raw_bn", "SVEER rawBN"),
    ("sync_top1", "sync@1"),
    ("sync_offset_acc", "sync-off"),
    ("sv_eer", "SV EER"),
    ("xmodal_eer", "F-V EER"),
    ("sv_eer_content_emb", "SV EER(c)"),
    ("content_probe_audio_identity", "unit|a-id"),
    ("content_probe_mlp_audio_identity", "unit|a-id MLP"),
    ("content_probe_audio_content", "unit|a-c"),
    ("content_probe_mlp_audio_content", "unit|a-c MLP"),
    ("identity_probe_audio_content", "id|a-c"),
    ("identity_probe_mlp_audio_content", "id|a-c MLP"),
    ("identity_probe_audio_identity", "id|a-id"),
    ("identity_probe_mlp_audio_identity", "id|a-id MLP"),
)
TRIAL_SE_KEYS = ("sv_eer", "xmodal_eer", "sync_top1")  # keys with a bootstrap `{key}_se`
CELL = 15


def t_quantile(n: int) -> float:
    """0.975 quantile of Student's t with n - 1 degrees of freedom (nan for n < 2)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1)) if n >= 2 else float("nan")


def summarise(runs: list[dict]) -> dict:
    """Mean, std (ddof 1), 95% t-interval half-width over runs (seeds x worlds) of every float
    metric, and the trial-sampling SE of the row mean of each `TRIAL_SE_KEYS` key: per world the
    mean over seeds of se^2 (the test trials are the same for every seed of a world), averaged
    over worlds and divided by the number of worlds, square-rooted."""
    keys = [k for k, v in runs[0].items() if isinstance(v, float)]
    n = len(runs)
    out = {"n": n, "mean": {}, "std": {}, "ci95": {}, "trial_se": {}}
    for k in keys:
        vals = np.array([r[k] for r in runs], np.float64)
        out["mean"][k] = float(vals.mean())
        out["std"][k] = float(vals.std(ddof=1)) if n > 1 else 0.0
        out["ci95"][k] = (t_quantile(n) * out["std"][k] / np.sqrt(n)) if n > 1 else float("nan")
    worlds = sorted({r["data_seed"] for r in runs})
    for k in TRIAL_SE_KEYS:
        if f"{k}_se" in runs[0]:
            per_world = [np.mean([r[f"{k}_se"] ** 2 for r in runs if r["data_seed"] == w])
                         for w in worlds]
            out["trial_se"][k] = float(np.sqrt(np.mean(per_world) / len(worlds)))
    return out


def paired_difference(runs: list[dict], ref_runs: list[dict], key: str,
                      trial_se: float) -> dict:
    """Difference (row - reference) of `key`, paired by (seed, data_seed): mean, 95%
    t-interval half-width, and `significant`: the interval excludes 0 and |mean| > 2 x
    `trial_se` (trial-sampling SE of the difference; 0 where unknown). Needs >= 2 pairs."""
    ref = {(r["seed"], r["data_seed"]): r[key] for r in ref_runs}
    d = np.array([r[key] - ref[(r["seed"], r["data_seed"])] for r in runs
                  if (r["seed"], r["data_seed"]) in ref], np.float64)
    n = len(d)
    if n == 0:
        return {"n": 0, "mean": float("nan"), "ci95": float("nan"), "significant": False}
    mean = float(d.mean())
    ci = t_quantile(n) * float(d.std(ddof=1)) / np.sqrt(n) if n > 1 else float("nan")
    significant = bool(n > 1 and abs(mean) > ci and abs(mean) > 2 * trial_se)
    return {"n": n, "mean": mean, "ci95": float(ci), "trial_se": trial_se,
            "significant": significant}


def make_rows(results: dict[str, list[dict]], timings: dict[str, list[dict]]) -> list[dict]:
    """One summarised row per configuration, with paired differences against REFERENCE."""
    rows = []
    for name, runs in results.items():
        t = timings[name]
        row = {"config": name, "num_runs": len(runs), **summarise(runs), "runs": runs,
               "steps": t[0]["steps"],
               "train_seconds": float(np.mean([x["train_seconds"] for x in t])),
               "eval_seconds": float(np.mean([x["eval_seconds"] for x in t])),
               "training": t, "vs_reference": {}}
        rows.append(row)
    ref = next((r for r in rows if r["config"] == REFERENCE), None)
    for row in rows:
        if ref is None or row is ref or row["config"] == UNTRAINED:
            continue
        for key, _ in COLUMNS:
            if key in row["mean"] and key in ref["mean"]:
                row["vs_reference"][key] = paired_rows(row, ref, key)
    return rows


def paired_rows(row: dict, ref: dict, key: str) -> dict:
    """`paired_difference` of two summarised rows (`make_rows`), row - ref, with the
    trial-sampling SE of the difference: the two rows' SEs of `key` in quadrature."""
    se = float(np.hypot(row["trial_se"].get(key, 0.0), ref["trial_se"].get(key, 0.0)))
    return paired_difference(row["runs"], ref["runs"], key, se)


def format_paired(d: dict | None) -> str:
    """Cell of a paired difference in points: mean, ± its 95% interval (none with one pair),
    `*` where `significant`; "-" without pairs."""
    if d is None or d["n"] == 0:
        return "-"
    return (f"{100 * d['mean']:+.1f}" + (f"±{100 * d['ci95']:.1f}" if np.isfinite(d["ci95"])
                                         else "") + ("*" if d["significant"] else ""))


def _cell(mean: float, ci: float, mark: bool) -> str:
    text = f"{100 * mean:.1f}" + (f"±{100 * ci:.1f}" if np.isfinite(ci) else "")
    return text + ("*" if mark else "")


def format_table(rows: list[dict], chance: dict) -> str:
    """Mean ± 95% interval half-width (over seeds x worlds) per cell, `*` where the paired
    difference to REFERENCE is larger than its spread; then the trial-sampling SEs."""
    name_w = max(len(r["config"]) for r in rows) + 2
    head = f"{'configuration':<{name_w}}" + "".join(f"{h:>{CELL}}" for _, h in COLUMNS)
    head += f"{'SV tSE':>8}{'F-V tSE':>8}{'sync tSE':>9}{'n':>4}{'steps':>7}{'train s':>9}"
    head += f"{'eval s':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['config']:<{name_w}}"
        for key, _ in COLUMNS:
            if key not in r["mean"]:
                line += f"{'-':>{CELL}}"
                continue
            mark = r["vs_reference"].get(key, {}).get("significant", False)
            line += f"{_cell(r['mean'][key], r['ci95'][key], mark):>{CELL}}"
        for key, width in (("sv_eer", 8), ("xmodal_eer", 8), ("sync_top1", 9)):
            se = r["trial_se"].get(key)
            line += f"{100 * se:>{width}.1f}" if se is not None else f"{'-':>{width}}"
        line += (f"{r['num_runs']:>4}{r['steps']:>7}{r['train_seconds']:>9.1f}"
                 f"{r['eval_seconds']:>8.1f}")
        lines.append(line)
    line = f"{'chance':<{name_w}}"
    for key, _ in COLUMNS:
        line += f"{100 * chance[key]:>{CELL}.1f}" if key in chance else f"{'':>{CELL}}"
    lines.append(line)
    return "\n".join(lines)


DIFF_KEYS = ("sync_top1", "sv_eer", "xmodal_eer", "content_probe_audio_identity",
             "content_probe_mlp_audio_identity", "identity_probe_audio_content",
             "identity_probe_mlp_audio_content")


def format_differences(rows: list[dict]) -> str:
    """Paired differences (row - REFERENCE) in points: mean ± 95% interval, `*` significant."""
    name_w = max(len(r["config"]) for r in rows) + 2
    headers = dict(COLUMNS)
    lines = [f"differences to '{REFERENCE}' (points, paired by seed x world; * = 95% interval "
             f"excludes 0 and |diff| > 2 trial-sampling SE)",
             f"{'configuration':<{name_w}}" + "".join(f"{headers[k]:>{CELL}}" for k in DIFF_KEYS)]
    for r in rows:
        if not r["vs_reference"]:
            continue
        line = f"{r['config']:<{name_w}}"
        for k in DIFF_KEYS:
            line += f"{format_paired(r['vs_reference'].get(k)):>{CELL}}"
        lines.append(line)
    return "\n".join(lines)


def format_correlation_summary(by_corr: dict[float, list[dict]]) -> str:
    """Held-out (uncorrelated) SV EER and sync@1 of every configuration per training-world
    correlation: mean ± 95% interval (`*`: differs from REFERENCE beyond its spread), and
    what the highest correlation changes against the lowest for the same configuration
    (Δ, paired by seed x world: the same held-out test world, the same training seed)."""
    corrs = sorted(by_corr)
    names = list(dict.fromkeys(r["config"] for c in corrs for r in by_corr[c]))
    name_w = max(len(n) for n in names) + 2
    delta = f"c={corrs[-1]:g}-{corrs[0]:g}"
    head = f"{'configuration':<{name_w}}" + "".join(
        f"{f'SV EER c={c:g}':>{CELL}}" for c in corrs) + "".join(
        f"{f'sync@1 c={c:g}':>{CELL}}" for c in corrs)
    head += f"{'ΔSV ' + delta:>{CELL + 4}}{'Δsync ' + delta:>{CELL + 4}}"
    lines = ["held-out (uncorrelated content) results by training-world content-identity "
             "correlation c; Δ: paired difference, highest c - lowest c (points)", head]
    for name in names:
        line = f"{name:<{name_w}}"
        rows = {c: next((r for r in by_corr[c] if r["config"] == name), None) for c in corrs}
        for key in ("sv_eer", "sync_top1"):
            for c in corrs:
                row = rows[c]
                if row is None:
                    line += f"{'-':>{CELL}}"
                    continue
                mark = row["vs_reference"].get(key, {}).get("significant", False)
                line += f"{_cell(row['mean'][key], row['ci95'][key], mark):>{CELL}}"
        for key in ("sv_eer", "sync_top1"):
            hi, lo = rows[corrs[-1]], rows[corrs[0]]
            d = None if hi is None or lo is None else paired_rows(hi, lo, key)
            line += f"{format_paired(d):>{CELL + 4}}"
        lines.append(line)
    return "\n".join(lines)


LEGEND = """\
All numbers in %, evaluated on held-out identities unless noted; lower is better for EERs and
for the leakage probes (unit|a-id, id|a-c), higher is better for the rest. Each cell: mean ± 95%
t-interval half-width over seeds x worlds (no interval with one run); * = the paired difference
to 'both (shared trunk)' is larger than its spread (see the differences table).
  ...rawBN   sync@1 / SV EER with the moving BatchNorm statistics left by training; all other
             columns are after re-estimating them with the final weights (precise BN)
  sync@1     face content step t picks audio content step t among the window's T' steps
  sync-off   offset search: diagonal shift of mean content cosine is 0 among +-D steps
  SV EER     speaker verification EER, audio identity embeddings, all held-out track pairs
  F-V EER    face->voice cross-modal EER (face identity of track a vs voice of track b != a)
  SV EER(c)  the same SV EER using audio CONTENT embeddings (identity left in content)
  unit|a-id  probe: content unit of each step from the AUDIO IDENTITY embedding (probe trained
             on train-identity tracks, tested on held-out identities); linear, and MLP (one
             hidden layer of 64 ReLU units) - the MLP sees non-linearly decodable information
  unit|a-c   same probes on AUDIO CONTENT embeddings (reference: content is decodable)
  id|a-c     probe: identity from window-pooled AUDIO CONTENT embedding (train identities,
             probe tested on their held-out tracks); linear and MLP
  id|a-id    same probes on AUDIO IDENTITY embeddings (reference)
  tSE        trial-sampling standard error of the row mean (bootstrap over held-out identities,
             200 resamples; the binomial SE at the SV EER is in the JSON: sv_eer_binomial_se)"""


def _parse_correlations(text: str) -> list[float]:
    """'0,0.5,0.9' -> [0.0, 0.5, 0.9]; ValueError naming the problem."""
    try:
        values = [float(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--correlations {text!r}: expected numbers like 0,0.5,0.9") from None
    if not values or any(not 0.0 <= c <= 1.0 for c in values):
        raise ValueError(f"--correlations {text!r}: values must be in [0, 1]")
    return values


def _json_safe(obj):
    """NaN (e.g. the interval of a single run) -> None, so the JSON is strict."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")


def main(argv: list[str] | None = None) -> int:
    """The command line; the Keras precision policy it sets is undone when it returns."""
    policy = keras.mixed_precision.global_policy()
    try:
        return _main(argv)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small world and few steps (minutes)")
    p.add_argument("--seeds", type=int, default=1, help="number of training seeds")
    p.add_argument("--first_seed", type=int, default=0, help="training seeds start here")
    p.add_argument("--data_seeds", type=int, default=1,
                   help="number of synthetic worlds (data seeds)")
    p.add_argument("--first_data_seed", type=int, default=0, help="data seeds start here")
    p.add_argument("--correlations", default="0",
                   help="comma-separated content-identity correlations of the TRAINING world "
                        "(held-out test world: always 0), e.g. 0,0.5,0.9")
    p.add_argument("--steps", type=int, default=None, help="training steps per configuration")
    p.add_argument("--minutes_per_config", type=float, default=None,
                   help="no longer supported (the runs train with train.py's trainer, a "
                        "fixed number of steps): use --steps")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default=None,
                   help="train.py --optimizer (default: the preset's, adam)")
    p.add_argument("--learning_rate", type=float, default=None,
                   help="train.py --learning_rate (default: the preset's, 3e-3)")
    p.add_argument("--weight_decay", type=float, default=None,
                   help="train.py --weight_decay (default: the preset's, 0)")
    p.add_argument("--test_identities", type=int, default=None,
                   help="held-out identities per world (default: the mode's, 20 full / 6 "
                        "quick); more identities shrink the trial-sampling error")
    p.add_argument("--recalibration_batches", type=int, default=None,
                   help="precise-BN batches before evaluation; 0 evaluates raw moving stats only")
    p.add_argument("--adversarial", action="store_true",
                   help="ignored (kept for old command lines): 'both + adversarial' is a row")
    p.add_argument("--configs", default="",
                   help="comma-separated subset of configuration names (default: all)")
    p.add_argument("--workdir", default=os.path.join("/tmp", "av_learning"),
                   help="cache of the generated synthetic worlds, and TensorBoard curves")
    p.add_argument("--mixed_precision", default="auto",
                   choices=("auto", "none", "bfloat16", "float16"),
                   help="train and evaluate every model under this Keras mixed-precision "
                        "policy, resolved as train.py resolves it (auto: bfloat16 on a "
                        "CPU-only machine with bf16 units, else none; results before "
                        "2026-12-02 ran none)")
    p.add_argument("--jpeg_quality", type=int, default=90,
                   help="JPEG quality of the synthetic worlds' frames (pipelines.prepare "
                        "--jpeg_quality; issue 15)")
    p.add_argument("--curve_every", type=int, default=0,
                   help="evaluate held-out sync@1 and SV EER every N steps (0: off)")
    p.add_argument("--curve_png", default="", help="with --curve_every: write the curve plot")
    p.add_argument("--json", "--out", dest="out", default="", help="write results JSON here")
    p.add_argument("--real", action="store_true",
                   help="smoke test on the bundled real clips (GRID + VoxCeleb2-style crops)")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="train nothing: merge the results JSONs of runs split by correlation, "
                        "seed or world (e.g. parallel processes) and print the tables")
    args = p.parse_args(argv)
    if args.merge:
        payloads = []
        for path in args.merge:
            try:
                with tf.io.gfile.GFile(path) as f:
                    payloads.append(json.load(f))
            except (OSError, tf.errors.OpError, json.JSONDecodeError) as err:
                p.error(f"--merge {path}: cannot read results JSON ({err})")
        try:
            merged = merge_payloads(payloads)
        except ValueError as err:
            p.error(f"--merge: {err}")
        report(merged, args.curve_png, args.out)
        return 0

    t_start = time.time()
    preset = QUICK if args.quick else FULL
    if args.learning_rate:
        preset = dataclasses.replace(preset, learning_rate=args.learning_rate)
    if args.optimizer:
        preset = dataclasses.replace(preset, optimizer=args.optimizer)
    if args.weight_decay is not None:
        preset = dataclasses.replace(preset, weight_decay=args.weight_decay)
    if args.recalibration_batches is not None:
        preset = dataclasses.replace(preset, recalibration_batches=args.recalibration_batches)
    if args.test_identities is not None:
        if args.test_identities < 2:
            p.error("--test_identities must be >= 2")
        preset = dataclasses.replace(preset, test_identities=args.test_identities)
    if args.seeds < 1 or args.data_seeds < 1:
        p.error("--seeds and --data_seeds must be >= 1")
    if args.curve_png and not args.curve_every:
        p.error("--curve_png needs --curve_every N")
    if args.minutes_per_config is not None:
        p.error("--minutes_per_config is no longer supported (the runs train with train.py's "
                "trainer, a fixed number of steps): use --steps")
    steps = args.steps if args.steps is not None else preset.steps
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    data_seeds = list(range(args.first_data_seed, args.first_data_seed + args.data_seeds))
    try:
        correlations = _parse_correlations(args.correlations)
    except ValueError as err:
        p.error(str(err))
    configs = dict(CONFIGS)
    if args.configs:
        wanted = [c.strip() for c in args.configs.split(",")]
        unknown = [c for c in wanted if c not in configs and c != UNTRAINED]
        if unknown:
            p.error(f"unknown configurations {unknown}; known: {list(configs) + [UNTRAINED]}")
        configs = {k: v for k, v in configs.items() if k in wanted}
        run_untrained = UNTRAINED in wanted
    else:
        run_untrained = True

    args.mixed_precision, why = choose_mixed_precision(
        args.mixed_precision, None, bool(tf.config.list_physical_devices("GPU")), cpu_flags())
    print(f"[setup] mixed precision: {args.mixed_precision} ({why})", flush=True)
    if args.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(f"mixed_{args.mixed_precision}")
    if args.real:
        return run_real(configs, steps or preset.steps, seeds[0])

    by_corr: dict[float, list[dict]] = {}
    curves: dict[str, list] = {}
    chance: dict = {}
    any_run: dict = {}
    free_baselines: dict[str, dict[str, dict[str, float]]] = {}  # corr -> world -> kind -> EER
    for corr in correlations:
        results: dict[str, list] = {}
        timings: dict[str, list] = {}
        for data_seed in data_seeds:
            dirs = make_world(args.workdir, preset, data_seed, corr,
                              jpeg_quality=args.jpeg_quality)
            t0 = time.time()
            win_tr = load_windows(dirs["train"], preset.window_frames)
            win_te = load_windows(dirs["test"], preset.window_frames)
            print(f"[data] correlation {corr:g}, world {data_seed}: eval windows "
                  f"{len(win_tr.track)} train-identity, {len(win_te.track)} held-out "
                  f"({len(win_te.identities)} identities, {len(win_te.track_ids)} tracks); "
                  f"loaded in {time.time() - t0:.1f} s", flush=True)
            train_glob = os.path.join(dirs["train"], "*.tfrecord")
            base = baseline_sv_eers(win_te)
            free_baselines.setdefault(f"{corr:g}", {})[str(data_seed)] = base
            print("[baseline] held-out SV EER without learning: " + ", ".join(
                f"{k} {100 * v:.1f}" for k, v in base.items()), flush=True)

            def recal_dataset(seed: int) -> tf.data.Dataset | None:
                if not preset.recalibration_batches:
                    return None
                return make_dataset(InputConfig(train_glob, batch_tracks=preset.batch_tracks,
                                                window_frames=preset.window_frames,
                                                face_size=preset.face_size, seed=seed + 1000))

            for seed in seeds:
                tag = {"seed": seed, "data_seed": data_seed}
                if run_untrained:
                    keras.utils.set_random_seed(seed)
                    model = DisentangleModel(preset.model, LossConfig(disentangle="none"))
                    t0 = time.time()
                    metrics = evaluate(model, win_tr, win_te, preset, recal_dataset(seed))
                    results.setdefault(UNTRAINED, []).append({**metrics, **tag})
                    timings.setdefault(UNTRAINED, []).append(
                        {**tag, "steps": 0, "train_seconds": 0.0,
                         "eval_seconds": time.time() - t0, "history": {}})
                for name, loss_config in configs.items():
                    curve = None
                    if args.curve_every:
                        logdir = os.path.join(args.workdir, "curves", f"corr{corr:g}",
                                              f"world{data_seed}", f"seed{seed}", _slug(name))
                        curve = Curve(win_te, args.curve_every, logdir, preset.offset_steps)
                    model, info = train(name, loss_config, preset, train_glob, seed, steps,
                                        curve)
                    t0 = time.time()
                    metrics = evaluate(model, win_tr, win_te, preset, recal_dataset(seed))
                    info["eval_seconds"] = time.time() - t0
                    info.update(tag)
                    print(f"[eval]  {name} (corr {corr:g}, world {data_seed}, seed {seed}, "
                          f"{info['eval_seconds']:.1f} s): "
                          + ", ".join(f"{k} {100 * metrics[k]:.1f}" for k, _ in COLUMNS),
                          flush=True)
                    results.setdefault(name, []).append({**metrics, **tag})
                    timings.setdefault(name, []).append(info)
                    if curve is not None:
                        label = name if len(correlations) == 1 else f"{name}, c={corr:g}"
                        curves.setdefault(label, []).append(info["curve"])
        by_corr[corr] = make_rows(results, timings)
        any_run = next(iter(results.values()))[0]
        chance = {"sync_top1": 1.0 / any_run["num_steps"],
                  "sync_top1_raw_bn": 1.0 / any_run["num_steps"], "sv_eer_raw_bn": 0.5,
                  "sync_offset_acc": 1.0 / (2 * preset.offset_steps + 1),
                  "sv_eer": 0.5, "xmodal_eer": 0.5, "sv_eer_content_emb": 0.5}
        for key, _ in COLUMNS:
            if key.startswith("content_probe"):
                chance[key] = any_run["content_probe_chance"]
            if key.startswith("identity_probe"):
                chance[key] = any_run["identity_probe_chance"]

    payload = {"mode": "quick" if args.quick else "full", "seeds": seeds,
               "data_seeds": data_seeds, "correlations": correlations,
               "jpeg_quality": args.jpeg_quality, "mixed_precision": args.mixed_precision,
               "preset": json.loads(json.dumps(dataclasses.asdict(preset))),
               "chance": chance, "total_seconds": time.time() - t_start,
               "tables": [{"correlation": c, "rows": by_corr[c]} for c in correlations],
               "curves": curves, "baselines": free_baselines}
    report(payload, args.curve_png, args.out)
    return 0


def _nan_for_none(obj):
    """Inverse of `_json_safe` for the per-run records: None (a NaN when written) -> nan."""
    if obj is None:
        return float("nan")
    if isinstance(obj, dict):
        return {k: _nan_for_none(v) for k, v in obj.items()}
    return obj


# Run settings outside the preset that runs must share to merge, and the value of each in
# results written before it was recorded.
SETTING_KEYS = {"jpeg_quality": 90, "mixed_precision": "none"}


def merge_payloads(payloads: list[dict]) -> dict:
    """Results JSONs of runs split across processes or machines (by correlation, training
    seed or world) -> one payload, re-summarised from the per-run records as if one run had
    made them all. Runs of one (configuration, correlation, seed, world) must not repeat.

    Raises ValueError naming the problem (different presets, a repeated run)."""
    first = payloads[0]
    for other in payloads[1:]:
        if other["preset"] != first["preset"]:
            raise ValueError("cannot merge results of different presets (world, model, steps): "
                             f"{first['preset']} vs {other['preset']}")
        for key, old in SETTING_KEYS.items():
            if other.get(key, old) != first.get(key, old):
                raise ValueError(f"cannot merge results of different {key}: "
                                 f"{first.get(key, old)} vs {other.get(key, old)}")
    results: dict[float, dict[str, list]] = {}
    timings: dict[float, dict[str, list]] = {}
    for payload in payloads:
        for table in payload["tables"]:
            corr = float(table["correlation"])
            for row in table["rows"]:
                runs = results.setdefault(corr, {}).setdefault(row["config"], [])
                seen = {(r["seed"], r["data_seed"]) for r in runs}
                for one in row["runs"]:
                    if (one["seed"], one["data_seed"]) in seen:
                        raise ValueError(f"run of {row['config']!r} at correlation {corr:g}, "
                                         f"seed {one['seed']}, world {one['data_seed']} "
                                         "appears twice")
                    runs.append({k: v for k, v in _nan_for_none(one).items()})
                timings.setdefault(corr, {}).setdefault(row["config"], []).extend(
                    row["training"])
    correlations = sorted(results)
    curves: dict[str, list] = {}
    free_baselines: dict[str, dict] = {}
    for payload in payloads:
        for label, runs in payload.get("curves", {}).items():
            curves.setdefault(label, []).extend(runs)
        for corr, worlds in payload.get("baselines", {}).items():
            free_baselines.setdefault(corr, {}).update(worlds)  # deterministic per world
    return {"mode": first["mode"],
            "seeds": sorted({s for p in payloads for s in p["seeds"]}),
            "data_seeds": sorted({s for p in payloads for s in p["data_seeds"]}),
            "correlations": correlations, "preset": first["preset"], "chance": first["chance"],
            "total_seconds": float(sum(p["total_seconds"] for p in payloads)),
            "tables": [{"correlation": c, "rows": make_rows(results[c], timings[c])}
                       for c in correlations],
            "curves": curves, "baselines": free_baselines, "merged_from": len(payloads),
            **{key: first.get(key, old) for key, old in SETTING_KEYS.items()}}


def format_baselines(worlds: dict[str, dict[str, float]]) -> str:
    """Markdown: the free baselines' held-out SV EER (%) per world and their mean, on the
    same trials as the SV EER column."""
    kinds = list(next(iter(worlds.values())))
    lines = ["free baselines, held-out SV EER % (no learning; evaluate.py --baseline):",
             "| baseline | " + " | ".join(f"world {w}" for w in sorted(worlds)) + " | mean |",
             "|---|" + "---|" * (len(worlds) + 1)]
    for kind in kinds:
        values = [worlds[w][kind] for w in sorted(worlds)]
        lines.append(f"| {kind} | " + " | ".join(f"{100 * v:.1f}" for v in values)
                     + f" | {100 * float(np.mean(values)):.1f} |")
    return "\n".join(lines)


def report(payload: dict, curve_png: str = "", out: str = "") -> None:
    """Prints the tables of a results payload (one run's, or `merge_payloads`'), writes the
    curve plot and the JSON (atomically)."""
    by_corr = {t["correlation"]: t["rows"] for t in payload["tables"]}
    correlations = sorted(by_corr)
    chance, preset = payload["chance"], payload["preset"]
    any_run = by_corr[correlations[0]][0]["runs"][0]
    print()
    print(f"mode {payload['mode']}; training seeds {payload['seeds']} x worlds "
          f"(data seeds) {payload['data_seeds']}; world: {preset['train_identities']} train + "
          f"{preset['test_identities']} held-out identities x {preset['tracks_per_identity']} "
          f"tracks x {preset['num_frames']} frames, {preset['face_size']}px; window "
          f"{preset['window_frames']} frames (T'={any_run['num_steps']}), batch "
          f"{preset['batch_tracks']} tracks, {preset.get('optimizer', 'adam')} lr "
          f"{preset['learning_rate']}; held-out "
          f"trials per world: SV {any_run['sv_targets']} target / {any_run['sv_trials']}; "
          f"model {preset['model']}")
    for corr in correlations:
        print(f"\n== training-world content-identity correlation {corr:g} (held-out test "
              f"world uncorrelated) ==")
        print(format_table(by_corr[corr], chance))
        if any(r["vs_reference"] for r in by_corr[corr]):
            print(format_differences(by_corr[corr]))
        worlds = payload.get("baselines", {}).get(f"{corr:g}", {})
        if worlds:
            print(format_baselines(worlds))
    if len(correlations) > 1:
        print()
        print(format_correlation_summary(by_corr))
    print(LEGEND)
    if curve_png and payload["curves"]:
        plot_curves(curve_png, payload["curves"],
                    f"held-out sync@1 and SV EER during training (raw BN statistics); "
                    f"seeds {payload['seeds']} x worlds {payload['data_seeds']}")
    print(f"total wall time {payload['total_seconds']:.1f} s"
          + (f" (summed over {payload['merged_from']} merged runs)"
             if payload.get("merged_from") else "") + " (shared CPU: timings are noisy)")
    if out:
        files.write_json_atomic(out, _json_safe(payload), indent=1)
        print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
