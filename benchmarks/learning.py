#!/usr/bin/env python
"""Does the model learn? The paper's ablation on the synthetic talking-heads world.

Usage:
    python benchmarks/learning.py [--quick] [--seeds 0] [--steps N | --minutes_per_config X]
        [--workdir /tmp/av_learning] [--out results.json] [--adversarial]

1. Generates (once, cached in --workdir) a synthetic world (`pipelines.synthetic`) with
   ground-truth identity and per-frame content units: a `train` split of identities and a
   `test` split of DIFFERENT identities.
2. For each configuration of the paper's ablation (content only, identity only, both on a
   shared trunk, both + confusion, both + GRL; optionally both + adversarial) trains a
   `DisentangleModel` with Adam for the same number of steps from the same seed on the train
   split through `pipelines.input.make_dataset`. An untrained model (same seed) is evaluated
   as a reference row.
3. Evaluates with the streams directly (training=False) on deterministic windows:
   * sync top-1: within a held-out window, face content step t must pick audio content step t
     among the window's T' steps (chance 1/T'); and an offset search: the diagonal shift
     d in [-D, D] steps (2 frames each) of the mean face/audio content cosine must be 0
     (chance 1/(2D+1));
   * SV EER: audio identity embedding per track (time-mean of the audio identity head per
     window, L2-normalised; score = mean cosine over window pairs), all pairs of held-out
     tracks, target = same identity;
   * cross-modal EER: face identity embedding of track a vs voice identity embedding of track
     b != a (so different windows and videos), all ordered pairs, target = same identity;
   * disentanglement probes (lower = better disentangled), multinomial logistic regression:
     (a) content unit of the step's centre frame from the per-step AUDIO IDENTITY embedding
     (trained on train-identity tracks, tested on held-out identities), reference: the same
     probe on audio CONTENT embeddings; (b) identity from the window-pooled AUDIO CONTENT
     embedding (train/test split by track WITHIN the train identities), reference: the same
     probe on audio IDENTITY embeddings.
4. Prints a table (and chance levels) and writes JSON with --out.

Timings are wall-clock on whatever machine runs this; on a small shared CPU they are noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy import optimize  # noqa: E402

from av_disentangle import losses  # noqa: E402
from av_disentangle.config import LossConfig, ModelConfig  # noqa: E402
from av_disentangle.model import DisentangleModel  # noqa: E402
from av_disentangle.streams import CONTENT, IDENTITY  # noqa: E402
from pipelines import records, synthetic  # noqa: E402
from pipelines.input import InputConfig, make_dataset  # noqa: E402

from av_disentangle.metrics import compute_eer  # noqa: E402


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
    learning_rate: float = 3e-3
    probe_test_tracks: int = 2  # tracks per train identity held out for the identity probe
    offset_steps: int = 3  # offset search over [-D, D] steps (2 frames each)
    recalibration_batches: int = 25  # precise-BN batches before evaluation (0: none)


QUICK = Preset(train_identities=12, test_identities=6, tracks_per_identity=4, num_frames=50,
               face_size=64, steps=100, steps_per_epoch=50, batch_tracks=12,
               recalibration_batches=10,
               model=ModelConfig(face_size=64, face_channels=(8, 16, 16, 16, 16),
                                 audio_channels=(8, 16, 16, 16, 16), trunk_dim=32,
                                 head_hidden=32, embedding_dim=32))
FULL = Preset(train_identities=30, test_identities=10, tracks_per_identity=8, num_frames=75,
              face_size=64, steps=150, steps_per_epoch=25, model=ModelConfig.small())

CONFIGS: dict[str, LossConfig] = {
    "content only": LossConfig(identity_weight=0.0, disentangle="none"),
    "identity only": LossConfig(content_weight=0.0, disentangle="none"),
    "both (shared trunk)": LossConfig(disentangle="none"),
    "both + confusion": LossConfig(disentangle="confusion"),
    "both + GRL": LossConfig(disentangle="grl"),
}
ADVERSARIAL = ("both + adversarial", LossConfig(disentangle="adversarial"))
UNTRAINED = "untrained (init)"


# === Data ===

def make_world(workdir: str, preset: Preset, seed: int = 0) -> dict[str, str]:
    """Writes train/test splits (distinct identities) once; returns {split: directory}."""
    common = dict(tracks_per_identity=preset.tracks_per_identity, num_frames=preset.num_frames,
                  face_size=preset.face_size, seed=seed)
    splits = {
        "train": synthetic.SyntheticConfig(num_identities=preset.train_identities,
                                           first_identity=0, **common),
        "test": synthetic.SyntheticConfig(num_identities=preset.test_identities,
                                          first_identity=preset.train_identities, **common),
    }
    tag = (f"syn_s{seed}_id{preset.train_identities}+{preset.test_identities}"
           f"_tr{preset.tracks_per_identity}_f{preset.num_frames}_px{preset.face_size}")
    out = {}
    for name, cfg in splits.items():
        directory = os.path.join(workdir, tag, name)
        manifest = os.path.join(directory, "manifest.json")
        cached = False
        if os.path.exists(manifest):
            with open(manifest) as fh:
                stored = json.load(fh)
            cached = (stored.get("config") == dataclasses.asdict(cfg) and
                      stored.get("generator_version") == synthetic.GENERATOR_VERSION)
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


@dataclasses.dataclass
class Windows:
    """Deterministic evaluation windows of one split, in memory."""

    frames: np.ndarray  # (N, T, S, S, 3) uint8
    audio: np.ndarray  # (N, T * 640) float32
    track: np.ndarray  # (N,) int, index into track_ids
    identity: np.ndarray  # (N,) int, index into identities
    track_index: np.ndarray  # (N,) int, the track's index within its identity
    start: np.ndarray  # (N,) int, start frame
    units: np.ndarray  # (N, T) int, per-frame content unit
    track_ids: list
    identities: list


def load_windows(directory: str, window: int) -> Windows:
    """Cuts every track of a split into non-overlapping windows starting at frame 0."""
    manifest = synthetic.load_manifest(directory)
    by_id = {t["track_id"]: t for t in manifest["tracks"]}
    tracks = []
    for shard in manifest["shards"]:
        tracks.extend(records.read_tracks(os.path.join(directory, shard)))
    tracks.sort(key=lambda t: t["track_id"].decode())
    identities = sorted({t["identity"].decode() for t in tracks})
    cols = {k: [] for k in ("frames", "audio", "track", "identity", "track_index", "start",
                            "units")}
    track_ids = []
    spf = records.SAMPLES_PER_FRAME
    for i, t in enumerate(tracks):
        tid = t["track_id"].decode()
        track_ids.append(tid)
        units = np.asarray(by_id[tid]["units"], np.int64)
        num_frames = t["frames"].shape[0]
        for start in range(0, num_frames - window + 1, window):
            cols["frames"].append(t["frames"][start:start + window])
            cols["audio"].append(t["audio"][start * spf:(start + window) * spf])
            cols["track"].append(i)
            cols["identity"].append(identities.index(t["identity"].decode()))
            cols["track_index"].append(by_id[tid]["track_index"])
            cols["start"].append(start)
            cols["units"].append(units[start:start + window])
    arrays = {k: np.stack(v) if k in ("frames", "audio", "units") else np.asarray(v)
              for k, v in cols.items()}
    return Windows(track_ids=track_ids, identities=identities, **arrays)


# === Metrics ===

def eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate as a fraction (`av_disentangle.metrics.compute_eer`)."""
    return float(compute_eer(np.asarray(scores, np.float64), np.asarray(labels, np.int64))[0])


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def embed(model: DisentangleModel, win: Windows, batch: int = 32) -> dict[str, np.ndarray]:
    """(N, T', D) face/audio content/identity sequences of every window (training=False)."""
    face_fn = tf.function(lambda x: model.face_stream(x, training=False), reduce_retracing=True)
    audio_fn = tf.function(lambda x: model.audio_stream(x, training=False),
                           reduce_retracing=True)
    out = {k: [] for k in ("fc", "fi", "ac", "ai")}
    for s in range(0, len(win.frames), batch):
        f = face_fn(tf.constant(win.frames[s:s + batch]))
        a = audio_fn(tf.constant(win.audio[s:s + batch]))
        out["fc"].append(f[CONTENT].numpy())
        out["fi"].append(f[IDENTITY].numpy())
        out["ac"].append(a[CONTENT].numpy())
        out["ai"].append(a[IDENTITY].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def sync_metrics(emb: dict[str, np.ndarray], max_shift: int) -> dict[str, float]:
    """Top-1 within-window step matching and the diagonal-shift offset search."""
    cosine = lambda a, b: tf.linalg.matmul(a, b, transpose_b=True)  # noqa: E731
    logits = losses.content_logits(tf.constant(emb["fc"]), tf.constant(emb["ac"]), cosine)
    top1 = float(losses.matching_accuracy(logits))
    sim = logits.numpy()  # (N, T', T')
    n_steps = sim.shape[1]
    shifts = np.arange(-max_shift, max_shift + 1)
    # Mean cosine along each diagonal: face step t vs audio step t + d.
    diag = np.stack([np.mean(np.diagonal(sim, offset=int(d), axis1=1, axis2=2), axis=-1)
                     for d in shifts], axis=1)
    offset_acc = float(np.mean(shifts[np.argmax(diag, axis=1)] == 0))
    return {"sync_top1": top1, "sync_offset_acc": offset_acc, "num_steps": n_steps}


def track_embeddings(seq: np.ndarray, win: Windows) -> np.ndarray:
    """(N, T', D) per-window sequences -> (num_tracks, D): mean of unit window means.

    Cosine of two such vectors (unnormalised) is proportional to the mean cosine over window
    pairs, the reference code's multi-crop score; we L2-normalise so scores are cosines.
    """
    per_window = unit(seq.mean(axis=1))
    out = np.zeros((len(win.track_ids), per_window.shape[1]), np.float64)
    np.add.at(out, win.track, per_window)
    return unit(out)


def track_identity(win: Windows) -> np.ndarray:
    ident = np.zeros(len(win.track_ids), np.int64)
    ident[win.track] = win.identity
    return ident


def verification_eers(emb: dict[str, np.ndarray], win: Windows) -> dict[str, float]:
    """Voice-voice SV EER over all track pairs, and face->voice cross-modal EER."""
    ident = track_identity(win)
    voice = track_embeddings(emb["ai"], win)
    face = track_embeddings(emb["fi"], win)
    i, j = np.triu_indices(len(ident), k=1)
    sv_scores = np.einsum("pd,pd->p", voice[i], voice[j])
    sv_labels = (ident[i] == ident[j]).astype(np.int64)
    a, b = np.nonzero(~np.eye(len(ident), dtype=bool))  # ordered pairs, a != b
    xm_scores = np.einsum("pd,pd->p", face[a], voice[b])
    xm_labels = (ident[a] == ident[b]).astype(np.int64)
    # Content embeddings used as speaker embeddings: how much identity they still carry.
    content_voice = track_embeddings(emb["ac"], win)
    cv_scores = np.einsum("pd,pd->p", content_voice[i], content_voice[j])
    return {"sv_eer": eer(sv_scores, sv_labels), "xmodal_eer": eer(xm_scores, xm_labels),
            "sv_eer_content_emb": eer(cv_scores, sv_labels),
            "sv_trials": int(len(sv_labels)), "sv_targets": int(sv_labels.sum()),
            "xmodal_trials": int(len(xm_labels))}


def fit_probe(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float = 1e-3,
              max_iter: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Multinomial logistic regression (L-BFGS) on standardised features.

    Returns (W, b, (mean, std)) so that logits = ((x - mean) / std) @ W + b.
    """
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = (x - mean) / std
    n, d = xs.shape
    onehot = np.eye(num_classes)[y]

    def loss_grad(theta):
        w = theta[:d * num_classes].reshape(d, num_classes)
        b = theta[d * num_classes:]
        z = xs @ w + b
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        loss = -np.mean(np.sum(onehot * np.log(p + 1e-12), 1)) + 0.5 * l2 * np.sum(w * w)
        g = (p - onehot) / n
        return loss, np.concatenate([(xs.T @ g + l2 * w).ravel(), g.sum(0)])

    theta0 = np.zeros(d * num_classes + num_classes)
    res = optimize.minimize(loss_grad, theta0, jac=True, method="L-BFGS-B",
                            options={"maxiter": max_iter})
    w = res.x[:d * num_classes].reshape(d, num_classes)
    return w, res.x[d * num_classes:], np.stack([mean, std])


def probe_accuracy(x_tr, y_tr, x_te, y_te, num_classes: int) -> float:
    w, b, (mean, std) = fit_probe(x_tr, y_tr, num_classes)
    pred = np.argmax(((x_te - mean) / std) @ w + b, axis=1)
    return float(np.mean(pred == y_te))


def step_units(win: Windows, num_steps: int, stride: int) -> np.ndarray:
    """(N, T') content unit of each step's centre frame: step j covers frames
    [stride*j, stride*j + 4] of the window, centre stride*j + 2."""
    centres = stride * np.arange(num_steps) + 2
    return win.units[:, centres]


def probe_metrics(emb_tr: dict, win_tr: Windows, emb_te: dict, win_te: Windows,
                  stride: int, probe_test_tracks: int) -> dict[str, float]:
    """Content probes (train ids -> held-out ids) and identity probes (within train ids)."""
    num_units = synthetic.NUM_UNITS
    n_steps = emb_tr["ai"].shape[1]
    y_tr = step_units(win_tr, n_steps, stride).ravel()
    y_te = step_units(win_te, n_steps, stride).ravel()
    out = {}
    for key, name in (("ai", "audio_identity"), ("ac", "audio_content"),
                      ("fi", "face_identity"), ("fc", "face_content")):
        d = emb_tr[key].shape[-1]
        out[f"content_probe_{name}"] = probe_accuracy(
            emb_tr[key].reshape(-1, d), y_tr, emb_te[key].reshape(-1, d), y_te, num_units)
    majority = np.bincount(y_tr, minlength=num_units).argmax()
    out["content_probe_chance"] = float(np.mean(y_te == majority))

    # Identity probe: windows of the last `probe_test_tracks` tracks of each train identity
    # are the test set (unseen videos of seen people).
    tracks_per_identity = int(win_tr.track_index.max()) + 1
    test_mask = win_tr.track_index >= tracks_per_identity - probe_test_tracks
    num_ids = len(win_tr.identities)
    for key, name in (("ac", "audio_content"), ("ai", "audio_identity"),
                      ("fc", "face_content"), ("fi", "face_identity")):
        pooled = unit(emb_tr[key].mean(axis=1))
        out[f"identity_probe_{name}"] = probe_accuracy(
            pooled[~test_mask], win_tr.identity[~test_mask], pooled[test_mask],
            win_tr.identity[test_mask], num_ids)
    out["identity_probe_chance"] = 1.0 / num_ids
    return out


def recalibrate_batchnorm(model: DisentangleModel, dataset: tf.data.Dataset, batches: int,
                          momentum: float = 0.8) -> None:
    """Re-estimates every BatchNormalization moving mean/variance with the FINAL weights
    ("precise BN"): forward passes in training mode over `batches` training batches, no weight
    update. The streams' BN momentum (0.9) still averages over ~10 steps of changing weights;
    the `raw BN` columns show the numbers without this re-estimation."""
    bns = [layer for stream in (model.face_stream, model.audio_stream)
           for layer in stream.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = momentum
    face_fn = tf.function(lambda x: model.face_stream(x, training=True))
    audio_fn = tf.function(lambda x: model.audio_stream(x, training=True))
    try:
        for batch in dataset.take(batches):
            face_fn(batch["frames"])
            audio_fn(tf.concat([batch["audio"], batch["audio_2"]], axis=0))
    finally:
        for layer, value in zip(bns, saved):
            layer.momentum = value


def evaluate(model: DisentangleModel, win_tr: Windows, win_te: Windows, preset: Preset,
             recalibration: tf.data.Dataset | None) -> dict[str, float]:
    """All metrics; with `recalibration`, first with the trained moving BN statistics (raw)
    for sync and SV EER, then after `recalibrate_batchnorm` for everything."""
    raw = {}
    if recalibration is not None:
        emb_te = embed(model, win_te)
        raw = {"sync_top1_raw_bn": sync_metrics(emb_te, preset.offset_steps)["sync_top1"],
               "sv_eer_raw_bn": verification_eers(emb_te, win_te)["sv_eer"]}
        recalibrate_batchnorm(model, recalibration, preset.recalibration_batches)
    emb_te = embed(model, win_te)
    emb_tr = embed(model, win_tr)
    out = sync_metrics(emb_te, preset.offset_steps)
    out.update(raw)
    out["sync_top1_train_ids"] = sync_metrics(emb_tr, preset.offset_steps)["sync_top1"]
    out.update(verification_eers(emb_te, win_te))
    out.update(probe_metrics(emb_tr, win_tr, emb_te, win_te, preset.model.temporal_stride,
                             preset.probe_test_tracks))
    return out


# === Training ===

class _StopAfterMinutes(keras.callbacks.Callback):
    """Ends training at the first epoch end after `minutes` of wall time."""

    def __init__(self, minutes: float):
        super().__init__()
        self.deadline = time.time() + 60.0 * minutes

    def on_epoch_end(self, epoch, logs=None):
        if time.time() > self.deadline:
            self.model.stop_training = True


def train(name: str, loss_config: LossConfig, preset: Preset, train_glob: str, seed: int,
          steps: int | None, minutes: float | None) -> tuple[DisentangleModel, dict]:
    """Trains one configuration; `steps` fixed (rounded up to whole epochs of
    `preset.steps_per_epoch`), or (if None) as many whole epochs as fit in `minutes` (the
    caller then fixes that count for the other configurations). One `fit` call, so the input
    pipeline runs on and every step sees new windows."""
    keras.utils.set_random_seed(seed)
    model = DisentangleModel(preset.model, loss_config)
    model.compile(optimizer=keras.optimizers.Adam(preset.learning_rate))
    dataset = make_dataset(InputConfig(train_glob, batch_tracks=preset.batch_tracks,
                                       window_frames=preset.window_frames,
                                       face_size=preset.face_size, seed=seed))
    spe = preset.steps_per_epoch
    if steps is not None:
        epochs, callbacks = -(-steps // spe), []
    else:
        epochs, callbacks = 10**6, [_StopAfterMinutes(minutes)]
    t0 = time.time()
    h = model.fit(dataset, steps_per_epoch=spe, epochs=epochs, callbacks=callbacks, verbose=0)
    wall = time.time() - t0
    history = {k: [round(float(v), 4) for v in values] for k, values in h.history.items()}
    done = len(history["loss"]) * spe
    info = {"steps": done, "train_seconds": wall, "history": history}
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
    identities = sorted({labels.get(rel[id(t)], rel[id(t)]) for t in tracks})
    cols = {k: [] for k in ("frames", "audio", "track", "identity", "track_index", "start",
                            "units")}
    spf = records.SAMPLES_PER_FRAME
    for i, t in enumerate(tracks):
        for start in range(0, t["frames"].shape[0] - window + 1, window):
            cols["frames"].append(t["frames"][start:start + window])
            cols["audio"].append(t["audio"][start * spf:(start + window) * spf])
            cols["track"].append(i)
            cols["identity"].append(identities.index(labels.get(rel[id(t)], rel[id(t)])))
            cols["track_index"].append(0)
            cols["start"].append(start)
            cols["units"].append(np.full(window, -1))
    arrays = {k: np.stack(v) if k in ("frames", "audio", "units") else np.asarray(v)
              for k, v in cols.items()}
    return Windows(track_ids=[rel[id(t)] for t in tracks], identities=identities, **arrays)


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
            model, info = train(name, loss_config, preset, glob, seed, steps, None)
        emb_all, emb_grid = embed(model, win_all), embed(model, win_grid)
        metrics = sync_metrics(emb_all, preset.offset_steps)
        metrics.update(verification_eers(emb_grid, win_grid))
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

COLUMNS = (  # key, header, format (percent)
    ("sync_top1_raw_bn", "sync@1 rawBN", "{:5.1f}"),
    ("sv_eer_raw_bn", "SVEER rawBN", "{:5.1f}"),
    ("sync_top1", "sync@1", "{:5.1f}"),
    ("sync_offset_acc", "sync-off", "{:5.1f}"),
    ("sv_eer", "SV EER", "{:5.1f}"),
    ("xmodal_eer", "F-V EER", "{:5.1f}"),
    ("sv_eer_content_emb", "SV EER(c)", "{:5.1f}"),
    ("content_probe_audio_identity", "unit|a-id", "{:5.1f}"),
    ("content_probe_audio_content", "unit|a-c", "{:5.1f}"),
    ("identity_probe_audio_content", "id|a-c", "{:5.1f}"),
    ("identity_probe_audio_identity", "id|a-id", "{:5.1f}"),
)


def format_table(rows: list[dict], chance: dict) -> str:
    name_w = max(len(r["config"]) for r in rows) + 2
    head = f"{'configuration':<{name_w}}" + "".join(f"{h:>13}" for _, h, _ in COLUMNS)
    head += f"{'steps':>7}{'train s':>9}{'eval s':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['config']:<{name_w}}"
        for key, _, fmt in COLUMNS:
            if key not in r["mean"]:
                line += f"{'-':>13}"
                continue
            mean, std = r["mean"][key], r["std"][key]
            cell = fmt.format(100 * mean) + (f"±{100 * std:.1f}" if r["num_seeds"] > 1 else "")
            line += f"{cell:>13}"
        line += f"{r['steps']:>7}{r['train_seconds']:>9.1f}{r['eval_seconds']:>8.1f}"
        lines.append(line)
    line = f"{'chance':<{name_w}}"
    for key, _, fmt in COLUMNS:
        line += f"{fmt.format(100 * chance[key]) if key in chance else '':>13}"
    lines.append(line)
    return "\n".join(lines)


LEGEND = """\
All numbers in %, evaluated on held-out identities unless noted; lower is better for EERs and
for the two leakage probes (unit|a-id, id|a-c), higher is better for the rest.
  ...rawBN   sync@1 / SV EER with the moving BatchNorm statistics left by training; all other
             columns are after re-estimating them with the final weights (precise BN)
  sync@1     face content step t picks audio content step t among the window's T' steps
  sync-off   offset search: diagonal shift of mean content cosine is 0 among +-D steps
  SV EER     speaker verification EER, audio identity embeddings, all held-out track pairs
  F-V EER    face->voice cross-modal EER (face identity of track a vs voice of track b != a)
  SV EER(c)  the same SV EER using audio CONTENT embeddings (identity left in content)
  unit|a-id  linear probe: content unit of each step from the AUDIO IDENTITY embedding
             (probe trained on train-identity tracks, tested on held-out identities)
  unit|a-c   same probe on AUDIO CONTENT embeddings (reference: content is decodable)
  id|a-c     linear probe: identity from window-pooled AUDIO CONTENT embedding (train
             identities, probe tested on their held-out tracks)
  id|a-id    same probe on AUDIO IDENTITY embeddings (reference)"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small world and few steps (< 3 min)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--steps", type=int, default=None, help="training steps per configuration")
    p.add_argument("--minutes_per_config", type=float, default=None,
                   help="instead of --steps: train the first configuration for this long "
                        "(whole epochs) and use its step count for all configurations")
    p.add_argument("--learning_rate", type=float, default=None,
                   help="Adam learning rate (default: the mode's, 3e-3)")
    p.add_argument("--recalibration_batches", type=int, default=None,
                   help="precise-BN batches before evaluation; 0 evaluates raw moving stats only")
    p.add_argument("--adversarial", action="store_true", help="also run 'both + adversarial'")
    p.add_argument("--configs", default="",
                   help="comma-separated subset of configuration names (default: all)")
    p.add_argument("--workdir", default=os.path.join("/tmp", "av_learning"),
                   help="cache of the generated synthetic world")
    p.add_argument("--data_seed", type=int, default=0, help="seed of the synthetic world")
    p.add_argument("--out", default="", help="write results JSON here")
    p.add_argument("--real", action="store_true",
                   help="smoke test on the bundled real clips (GRID + VoxCeleb2-style crops)")
    args = p.parse_args(argv)

    t_start = time.time()
    preset = QUICK if args.quick else FULL
    if args.learning_rate:
        preset = dataclasses.replace(preset, learning_rate=args.learning_rate)
    if args.recalibration_batches is not None:
        preset = dataclasses.replace(preset, recalibration_batches=args.recalibration_batches)
    steps = args.steps if args.steps is not None else (
        None if args.minutes_per_config else preset.steps)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    configs = dict(CONFIGS)
    if args.adversarial:
        configs[ADVERSARIAL[0]] = ADVERSARIAL[1]
    if args.configs:
        wanted = [c.strip() for c in args.configs.split(",")]
        unknown = [c for c in wanted if c not in configs and c != UNTRAINED]
        if unknown:
            p.error(f"unknown configurations {unknown}; known: {list(configs) + [UNTRAINED]}")
        configs = {k: v for k, v in configs.items() if k in wanted}
        run_untrained = UNTRAINED in wanted
    else:
        run_untrained = True

    if args.real:
        return run_real(configs, steps or preset.steps, seeds[0])

    dirs = make_world(args.workdir, preset, args.data_seed)
    t0 = time.time()
    win_tr = load_windows(dirs["train"], preset.window_frames)
    win_te = load_windows(dirs["test"], preset.window_frames)
    print(f"[data] eval windows: {len(win_tr.track)} train-identity, {len(win_te.track)} "
          f"held-out ({len(win_te.identities)} identities, {len(win_te.track_ids)} tracks); "
          f"loaded in {time.time() - t0:.1f} s", flush=True)
    train_glob = os.path.join(dirs["train"], "*.tfrecord")

    def recal_dataset(seed: int) -> tf.data.Dataset | None:
        if not preset.recalibration_batches:
            return None
        return make_dataset(InputConfig(train_glob, batch_tracks=preset.batch_tracks,
                                        window_frames=preset.window_frames,
                                        face_size=preset.face_size, seed=seed + 1000))

    results: dict[str, list] = {}
    timings: dict[str, list] = {}
    for seed in seeds:
        if run_untrained:
            keras.utils.set_random_seed(seed)
            model = DisentangleModel(preset.model, LossConfig(disentangle="none"))
            t0 = time.time()
            metrics = evaluate(model, win_tr, win_te, preset, recal_dataset(seed))
            results.setdefault(UNTRAINED, []).append(metrics)
            timings.setdefault(UNTRAINED, []).append(
                {"seed": seed, "steps": 0, "train_seconds": 0.0,
                 "eval_seconds": time.time() - t0, "history": {}})
        seed_steps = steps
        for name, loss_config in configs.items():
            model, info = train(name, loss_config, preset, train_glob, seed, seed_steps,
                                args.minutes_per_config)
            seed_steps = info["steps"]  # the first configuration fixes it for the others
            t0 = time.time()
            metrics = evaluate(model, win_tr, win_te, preset, recal_dataset(seed))
            info["eval_seconds"] = time.time() - t0
            info["seed"] = seed
            print(f"[eval]  {name} (seed {seed}, {info['eval_seconds']:.1f} s): "
                  + ", ".join(f"{k} {100 * metrics[k]:.1f}" for k, _, _ in COLUMNS), flush=True)
            results.setdefault(name, []).append(metrics)
            timings.setdefault(name, []).append(info)

    rows = []
    for name, runs in results.items():
        keys = [k for k, v in runs[0].items() if isinstance(v, float)]
        t = timings[name]
        rows.append({
            "config": name, "num_seeds": len(runs),
            "mean": {k: float(np.mean([r[k] for r in runs])) for k in keys},
            "std": {k: float(np.std([r[k] for r in runs])) for k in keys},
            "per_seed": runs, "steps": t[0]["steps"],
            "train_seconds": float(np.mean([x["train_seconds"] for x in t])),
            "eval_seconds": float(np.mean([x["eval_seconds"] for x in t])),
            "training": t,
        })
    any_run = next(iter(results.values()))[0]
    chance = {"sync_top1": 1.0 / any_run["num_steps"],
              "sync_top1_raw_bn": 1.0 / any_run["num_steps"], "sv_eer_raw_bn": 0.5,
              "sync_offset_acc": 1.0 / (2 * preset.offset_steps + 1),
              "sv_eer": 0.5, "xmodal_eer": 0.5, "sv_eer_content_emb": 0.5,
              "content_probe_audio_identity": any_run["content_probe_chance"],
              "content_probe_audio_content": any_run["content_probe_chance"],
              "identity_probe_audio_content": any_run["identity_probe_chance"],
              "identity_probe_audio_identity": any_run["identity_probe_chance"]}
    total = time.time() - t_start
    print()
    print(f"mode {'quick' if args.quick else 'full'}; seeds {seeds}; world: "
          f"{preset.train_identities} train + {preset.test_identities} held-out identities x "
          f"{preset.tracks_per_identity} tracks x {preset.num_frames} frames, "
          f"{preset.face_size}px; window {preset.window_frames} frames (T'="
          f"{any_run['num_steps']}), batch {preset.batch_tracks} tracks, Adam lr "
          f"{preset.learning_rate}; model {preset.model}")
    print(format_table(rows, chance))
    print(LEGEND)
    print(f"total wall time {total:.1f} s (shared CPU: timings are noisy)")
    if args.out:
        payload = {"mode": "quick" if args.quick else "full", "seeds": seeds,
                   "preset": json.loads(json.dumps(dataclasses.asdict(preset))),
                   "chance": chance, "rows": rows, "total_seconds": total}
        with open(args.out, "w") as fh:
            json.dump(payload, fh, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
