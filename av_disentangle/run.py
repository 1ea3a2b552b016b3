"""One training run, as library functions: checks, datasets, model, callbacks, fit, export.

`train.py` parses flags into `flags.Settings` and calls `train(settings)`, which is these steps:

    plan = prepare(settings)                  # every check; nothing written yet
    strategy, model = build(settings, plan)   # distribution strategy, model, optimizer
    start_run_dir(...)                        # config.json (chief)
    backup, start = restore(...)              # resume from <model_dir>/backup
    step = fit(...)                           # resumable, crash-safe
    export(...)                               # versioned SavedModel, never a duplicate

Paths may be remote (`gs://...`; tests use TensorFlow's in-memory `ram://`): the run directory,
the export directory, the config file and the training data are read and written through
`tf.io.gfile` only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from av_disentangle import checkpoints, compat, errors, files
from av_disentangle.config import LEGACY_MODEL_VALUES, SGD_RECIPE, ModelConfig
from av_disentangle.errors import UserError
from av_disentangle.export import export_saved_model, next_version_dir
from av_disentangle.flags import REPO_ROOT, Settings, parse_profile_steps, settings_record
from av_disentangle.model import DisentangleModel
from av_disentangle.pretrained import check_init_from, load_streams
from av_disentangle.summaries import ScalarLogger
from av_disentangle.supervised import build_supervised_model
from av_disentangle.training import (NonFiniteLoss, choose_mixed_precision, cpu_flags,
                                     is_chief, make_optimizer, make_strategy,
                                     worker_index)
from pipelines.data_service import check_dispatcher, dataset_key, distribute
from pipelines.input import (InputConfig, check_one_copy_of_each_track, check_stored_face_size,
                             list_shards, make_dataset, shard_by_data)
from pipelines.labelled import load_labelled_audio, make_labelled_dataset
from pipelines.prepare import prepare_bundled_samples
from pipelines.shard_check import check_shards

log = logging.getLogger("train")

# Keys of config.json that must match to resume a run: everything that changes the model's
# variables or the loss (a mismatch would not load, or would silently train something else).
# The rest (epochs, steps, learning rate, data, verbosity, ...) may change between runs.
RESUME_KEYS = {"model": None, "loss": None, "train": ("optimizer", "window_frames", "batch_tracks"),
               "flags": ("mixed_precision", "objective", "init_from"),
               "supervised": ("labelled_audio", "labels_per_speaker", "num_speakers",
                              "label_seed", "head", "aam_margin", "aam_scale", "freeze_trunk",
                              "init_from")}


def absolute(path: str) -> str:
    """`path` made absolute when local; a remote path (`gs://...`) as it is."""
    return path if files.is_remote(path) else os.path.abspath(path)


# === Checks before anything is written ===
def config_differences(stored: dict, new: dict) -> list[str]:
    """`section.key: old -> new` for every RESUME_KEYS value that differs."""
    diffs = []
    for section, keys in RESUME_KEYS.items():
        old_values, new_values = stored.get(section) or {}, new.get(section) or {}
        if section == "model":  # fields a record predates: the value it was built with
            old_values = {**LEGACY_MODEL_VALUES, **old_values} if old_values else old_values
            new_values = {**LEGACY_MODEL_VALUES, **new_values} if new_values else new_values
        names = sorted(set(old_values) | set(new_values)) if keys is None else keys
        for name in names:
            if keys is not None and name not in old_values:
                continue  # written by an older version without this key
            old, value = old_values.get(name, "(absent)"), new_values.get(name, "(absent)")
            if old != value:
                diffs.append(f"{section}.{name}: {json.dumps(old)} -> {json.dumps(value)}")
    return diffs


def trained_anything(model_dir: str) -> bool:
    """Whether a run in `model_dir` saved any trained state: a backup or an epoch checkpoint
    (a start that failed before its first step leaves neither)."""
    for folder, pattern in (("backup", "*.weights.h5"), ("checkpoints", "epoch-*.weights.h5")):
        if tf.io.gfile.glob(os.path.join(model_dir, folder, pattern)):
            return True
    return False


def _earlier_default_hint(stored: dict, resolved: dict) -> str:
    """' (--recipe sgd: ...)' when `stored` is a run of the SGD default train.py had before
    December 2026 and `resolved` asks for another optimizer; else ''."""
    old, new = stored.get("train") or {}, resolved.get("train") or {}
    if old.get("optimizer") == new.get("optimizer") or any(
            old.get(k) != v for k, v in SGD_RECIPE.items()):
        return ""
    return (" (it was started with train.py's earlier default, SGD 1e-3: `--recipe sgd` "
            "resumes it; the default is now Adam 3e-3, README \"Recipes\")")


def check_model_dir(model_dir: str, resolved: dict) -> None:
    """Before anything else is written: `model_dir` (local or remote) can be created, and a run
    already in it has the same model and loss configuration, unless it never trained a step
    (then the new configuration replaces it). ValueError, one line."""
    config_path = os.path.join(model_dir, "config.json")
    if tf.io.gfile.exists(config_path) and not tf.io.gfile.isdir(config_path):
        try:
            stored = files.read_json(config_path)
        except ValueError as e:
            raise ValueError(f"cannot read {e}; fix or remove it, or pass another --model_dir")
        diffs = config_differences(stored, resolved)
        if diffs and not trained_anything(model_dir):
            log.info("%s holds a run that never completed a step; starting it again with the "
                     "new configuration (%s)", model_dir, "; ".join(diffs))
        elif diffs:
            raise ValueError(
                f"--model_dir {model_dir} holds a run with another configuration "
                f"({config_path}): {'; '.join(diffs)}. Rerun with the stored values to resume "
                f"it{_earlier_default_hint(stored, resolved)}, or pass a new --model_dir to "
                "start a new run")
    try:
        tf.io.gfile.makedirs(model_dir)
    except tf.errors.OpError as e:
        reason = e.message.rsplit(": ", 1)[-1] if e.message else type(e).__name__
        raise ValueError(f"cannot create --model_dir {model_dir}: {reason}")
    if not files.is_remote(model_dir) and not os.access(model_dir, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write into --model_dir {model_dir}: permission denied")


def check_export_target(run: Any, model_dir: str) -> None:
    """Before training: the export location can be written (ValueError, one line, if not).

    `--export_dir` must not exist unless this run exported there (a rerun); its nearest
    existing parent, or that of `<export_root>/<export_name>`, must be a writable folder.
    Remote locations are left to the export (no portable permission check)."""
    if run.no_export:
        return
    target = run.export_dir or os.path.join(run.export_root, run.export_name)
    flag = "--export_dir" if run.export_dir else "--export_root"
    if files.is_remote(target):
        return
    target = os.path.abspath(target)
    if run.export_dir and os.path.exists(target):
        record = checkpoints.read_export_record(model_dir) or {}
        if record.get("export_dir") != target:
            raise ValueError(f"--export_dir {run.export_dir} already exists; TF Serving "
                             "versions are immutable, pick a new version")
        return
    parent = target
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"cannot export to {target} ({flag}): {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot export to {target} ({flag}): {parent} is not writable "
                         "(permission denied); pick another location or --no_export")


def default_train_data(face_size: int) -> str:
    """Prepares the bundled sample videos on first use; returns their TFRecord glob."""
    out = os.path.join(REPO_ROOT, "data", "prepared", f"samples_{face_size}")
    log.info("preparing the bundled sample videos into %s (first use only)", out)
    shards = prepare_bundled_samples(out, face_size=face_size, workers=os.cpu_count() or 1)
    if not shards:
        raise FileNotFoundError(f"preparing the bundled samples into {out} produced no shards")
    return os.path.join(out, "*.tfrecord")


def checked_shards(pattern: str, flag: str, skip_bad: bool, full: bool) -> str:
    """Validates the shards of `pattern`; returns the pattern to train on (comma-separated
    good files when bad ones are skipped). ValueError naming a bad file."""
    found = list_shards(pattern)
    check_one_copy_of_each_track(found)
    bad = check_shards(found, full=full)
    if not bad:
        return pattern
    if not skip_bad:
        path, problem = bad[0]
        more = f" (and {len(bad) - 1} more bad shard(s))" if len(bad) > 1 else ""
        raise ValueError(f"{flag} shard {path} is {problem}{more}; re-prepare it, or rerun "
                         "with --skip_bad_shards to train on the other shards")
    good = [f for f in found if f not in {p for p, _ in bad}]
    for path, problem in bad:
        log.warning("skipping bad shard %s: %s", path, problem)
    if not good:
        raise ValueError(f"all {len(found)} {flag} shards matching {pattern!r} are bad "
                         f"(e.g. {bad[0][0]}: {bad[0][1]})")
    log.warning("--skip_bad_shards: training on %d of %d %s shards (%d bad skipped)",
                len(good), len(found), flag, len(bad))
    return ",".join(good)


def load_supervised(settings: Settings):
    """`--objective supervised`: (the LabelledAudio with the label budget drawn and the audio
    decoded, the `--init_from` source checked against this model config or None). Raises
    ValueError / UserError with a one-line message; writes nothing."""
    config = settings.supervised
    if not config.labelled_audio:
        raise ValueError("--objective supervised needs --labelled_audio (a folder "
                         "<speaker>/.../<utt>.{wav,flac,m4a,mp3,ogg,opus,aac} or a TFRecord glob)")
    source = check_init_from(config.init_from, settings.model) if config.init_from else None
    labelled = load_labelled_audio(config.labelled_audio,
                                   labels_per_speaker=config.labels_per_speaker,
                                   num_speakers=config.num_speakers, seed=config.label_seed)
    log.info("supervised: %d speakers, %d labelled utterances from %s (label seed %d)",
             labelled.num_classes, len(labelled.selection.utterances), config.labelled_audio,
             config.label_seed)
    return labelled, source


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `prepare` checked: the record for config.json and the data to train on.

    Attributes:
      train_files, val_files: shard patterns (self-supervised; None for supervised).
      labelled: the decoded LabelledAudio (supervised; None otherwise).
      init_source: the checked `--init_from` (`pretrained.PretrainedSource`), or None.
    """

    resolved: dict[str, Any]
    train_data: str
    train_files: str | None
    val_files: str | None
    labelled: Any = None
    init_source: Any = None


def resolve_mixed_precision(settings: Settings) -> tuple[Settings, str]:
    """`--mixed_precision auto` made concrete (`training.choose_mixed_precision`: a resumed
    run's own precision, else bfloat16 on a CPU-only machine with bf16 units, else none), in
    the settings and in the flags config.json records; returns them and the reason."""
    requested, stored = settings.run.mixed_precision, None
    model_dir = settings.run.model_dir
    if requested == "auto" and trained_anything(model_dir):
        try:
            record = files.read_json(os.path.join(model_dir, "config.json"), missing_ok=True) or {}
        except ValueError:
            record = {}  # check_model_dir names the damaged file
        stored = (record.get("flags") or {}).get("mixed_precision", "none") if record else None
    value, why = choose_mixed_precision(requested, stored,
                                        bool(tf.config.list_physical_devices("GPU")),
                                        cpu_flags())
    return dataclasses.replace(settings, run=dataclasses.replace(settings.run,
                                                                 mixed_precision=value),
                               flags={**settings.flags, "mixed_precision": value}), why


def prepare(settings: Settings) -> Plan:
    """Every check that can fail on the user's input, before anything is written: the labelled
    data and `--init_from` (supervised), `--model_dir` against a run already in it, and the
    shards. Raises UserError (one line)."""
    try:
        resolved = settings_record(settings)
        if settings.supervised is not None:  # labels read, init_from checked, nothing written
            labelled, init_source = load_supervised(settings)
            resolved["labels"] = labelled.selection.to_dict()
            check_model_dir(settings.run.model_dir, resolved)
            check_export_target(settings.run, settings.run.model_dir)
            return Plan(resolved, settings.supervised.labelled_audio, None, None, labelled,
                        init_source)
        if settings.run.data_service:  # a wrong address: one line now, not a hang in fit
            check_data_service(settings.run.data_service)
        check_model_dir(settings.run.model_dir, resolved)
        check_export_target(settings.run, settings.run.model_dir)
        run = settings.run
        init_source = None
        if run.init_from:
            init_source = check_init_from(run.init_from, settings.model)
        train_data = run.train_data or default_train_data(settings.model.face_size)
        train_files = checked_shards(train_data, "--train_data", run.skip_bad_shards,
                                     run.full_shard_check)
        val_files = run.val_data and checked_shards(run.val_data, "--val_data",
                                                    run.skip_bad_shards, run.full_shard_check)
        if not run.allow_upsampling:
            for pattern in (train_files, val_files or None):
                if pattern:
                    check_stored_face_size(list_shards(pattern), settings.model.face_size)
        return Plan(resolved, train_data, train_files, val_files, init_source=init_source)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from e


def check_data_service(address: str) -> None:
    """A tf.data service dispatcher answers at `address` (DataServiceError, one line, if
    not); logs its workers, and warns when none has registered yet (training would wait)."""
    workers = check_dispatcher(address)
    if workers:
        log.info("tf.data service at %s: %d worker(s) (%s)", address, len(workers),
                 ", ".join(workers))
    else:
        log.warning("tf.data service at %s: no worker has registered yet; training waits for "
                    "one (python -m pipelines.data_service --worker --dispatcher_address ...)",
                    address)


# === Model, datasets, callbacks ===
def build(settings: Settings, plan: Plan) -> tuple[tf.distribute.Strategy, keras.Model]:
    """Seeds, mixed precision, the strategy, and the compiled model with a built optimizer."""
    keras.utils.set_random_seed(settings.train.seed)  # same on every worker (DATA sharding)
    precision = settings.run.mixed_precision
    keras.mixed_precision.set_global_policy("float32" if precision == "none"
                                            else f"mixed_{precision}")
    strategy = make_strategy(settings.run.cpu_replicas)
    replicas = strategy.num_replicas_in_sync
    if settings.train.batch_tracks % replicas:
        raise UserError(f"--batch_tracks {settings.train.batch_tracks} must be divisible by "
                         f"the {replicas} replicas")
    log.info("strategy %s with %d replica(s); %d tracks per replica (negatives %s)",
             type(strategy).__name__, replicas, settings.train.batch_tracks // replicas,
             "gathered across replicas" if settings.loss.gather_negatives else "per replica")
    with strategy.scope():
        if plan.labelled is not None:
            model = build_supervised_model(settings.model, settings.supervised,
                                           plan.labelled.num_classes, plan.init_source)
        else:
            model = DisentangleModel(settings.model, settings.loss)
            if plan.init_source is not None:
                load_streams(model.face_stream, model.audio_stream, plan.init_source, model)
        model.compile(optimizer=make_optimizer(settings.train))
        compat.build_optimizer(model)  # before a backup restore: see compat.build_optimizer
    return strategy, model


def dataset_maker(settings: Settings, plan: Plan, pattern: str | None,
                  data_service: str | None = None) -> Callable[[int], tf.data.Dataset]:
    """`step -> dataset` of the training input for a `fit` starting at `step`: a resumed run
    draws a new deterministic sequence of windows (seed + start step) instead of replaying the
    windows the first steps already trained on. With `data_service` (a dispatcher address) the
    same pipeline runs on the tf.data service's workers (`pipelines.data_service`)."""
    train = settings.train

    def dataset(step: int) -> tf.data.Dataset:
        if plan.labelled is not None:
            return shard_by_data(make_labelled_dataset(
                plan.labelled, batch_size=train.batch_tracks,
                crop_seconds=settings.supervised.crop_seconds, seed=train.seed + step))
        config = InputConfig(pattern, batch_tracks=train.batch_tracks,
                             window_frames=train.window_frames,
                             face_size=settings.model.face_size, seed=train.seed + step,
                             all_chunks_per_pass=settings.run.all_chunks_per_pass,
                             allow_upsampling=settings.run.allow_upsampling)
        if data_service:
            return distribute(make_dataset(config), data_service,
                              dataset_key(config, absolute(settings.run.model_dir)))
        return make_dataset(config)
    return dataset


def start_run_dir(model_dir: str, plan: Plan, replicas: int) -> None:
    """The chief's first writes: temp files of a killed run removed, config.json (atomic)."""
    checkpoints.prepare_run_dir(model_dir)
    files.write_json_atomic(
        os.path.join(model_dir, "config.json"),
        {**plan.resolved, "train_data": plan.train_data, "replicas": replicas}, fault="config")


def restore(model: keras.Model, strategy: tf.distribute.Strategy, settings: Settings,
            chief: bool) -> tuple[checkpoints.CrashSafeBackup, int]:
    """The crash-safe backup of this process and the step it resumed from (0: a new run).

    Every worker keeps its own backup (weights are identical across workers, so any one can
    resume); only the chief writes per-epoch checkpoints, TensorBoard logs and the export."""
    model_dir, train = settings.run.model_dir, settings.train
    backup_dir = os.path.join(
        model_dir, "backup" if chief else f"backup_worker_{worker_index(strategy)}")
    backup = checkpoints.CrashSafeBackup(backup_dir, train.steps_per_epoch,
                                         every_steps=settings.run.checkpoint_every_steps)
    backup.set_model(model)
    with strategy.scope():  # a BackupError is a UserError: one line, exit 2
        start = backup.restore()
    spe, target = train.steps_per_epoch, train.epochs * train.steps_per_epoch
    if start >= target:
        log.info("the run in %s is complete: step %d of %d (%d epochs of %d steps); nothing to "
                 "train (raise --epochs to train longer)", model_dir, start, target,
                 train.epochs, spe)
    elif start:
        epoch, done = divmod(start, spe)
        log.info("resuming at step %d (epoch %d%s) from %s", start, epoch + 1 if done else epoch,
                 f", step {done} of {spe}" if done else " done", backup.restored_from)
    return backup, start


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training at the first NaN/Inf loss, as keras.callbacks.TerminateOnNaN, without
    its "Invalid loss, terminating training" print: `fit` says it once, naming what is kept."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.model.stop_training = True


def make_callbacks(model_dir: str, backup: checkpoints.CrashSafeBackup, *, chief: bool,
                   log_every_steps: int,
                   profile_steps: tuple[int, int] | None) -> list[keras.callbacks.Callback]:
    """NaN stop, per-epoch checkpoints and TensorBoard scalars (chief), and the backup, last:
    an epoch's checkpoint and logs are written before its backup."""
    callbacks = [StopOnNonFinite()]
    if chief:
        callbacks += [checkpoints.EpochCheckpoint(os.path.join(model_dir, "checkpoints")),
                      ScalarLogger(os.path.join(model_dir, "logs"), log_every_steps,
                                   profile_steps)]
    return callbacks + [backup]


def fit(model: keras.Model, make_train_dataset: Callable[[int], tf.data.Dataset], *,
        start: int, epochs: int, steps_per_epoch: int, callbacks: list, verbose: int,
        backup: checkpoints.CrashSafeBackup, val_dataset: tf.data.Dataset | None = None,
        validation_steps: int | None = None, shard_patterns: tuple[str, ...] = (),
        train_pattern: str = "") -> int:
    """`checkpoints.resumable_fit` with the user's errors made one line: a corrupt record
    (UserError naming the shard, found by checking `shard_patterns`), a NaN/Inf loss
    (NonFiniteLoss), and training input (`train_pattern`) that runs out (UserError).
    Returns the step reached."""
    try:
        with warnings.catch_warnings():
            # Keras only warns when the input runs out; the check below says it as an error.
            warnings.filterwarnings("ignore", message=".*ran out of data.*")
            step = checkpoints.resumable_fit(
                model, make_train_dataset, start_step=start, epochs=epochs,
                steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=verbose,
                validation_data=val_dataset,
                validation_steps=validation_steps if val_dataset else None)
    except tf.errors.DataLossError as e:
        found = [f for pattern in shard_patterns for f in list_shards(pattern)]
        log.info("a record failed its checksum; checking all %d shards to name it", len(found))
        bad = check_shards(found, full=True)
        named = "; ".join(f"{p} is {problem}" for p, problem in bad) or str(e.message)[:200]
        raise UserError(f"corrupt training data: {named}. {backup.kept().capitalize()}; "
                         "rerun with --full_shard_check --skip_bad_shards to train on the "
                         "other shards") from e
    if backup.saw_non_finite:
        resume = ("lower --learning_rate and rerun to resume from it" if backup.generations
                  else "lower --learning_rate and rerun")
        raise NonFiniteLoss(f"training stopped: the loss became NaN/Inf at step {step}. "
                            f"{backup.kept().capitalize()}; {resume}")
    if step < epochs * steps_per_epoch:  # no callback of ours stops early but the NaN one
        # Keras only warns when the input runs out ("Your input ran out of data"), and the
        # half-trained model would be exported. A repeated input runs out only when one pass
        # makes no batch at all (pipelines.input.make_dataset).
        raise UserError(
            f"the training data ran out after {start + backup.batches_trained} of "
            f"{epochs * steps_per_epoch} steps: "
            f"{train_pattern or 'the training input'} makes no full batch of --batch_tracks "
            "tracks of distinct videos, each at least --window_frames frames long; lower "
            "--batch_tracks or add videos")
    log.info("trained to step %d", step)
    return step


# === Export ===
def export(model: keras.Model, model_config: ModelConfig, *, model_dir: str, step: int,
           weights_sha256: str | None, export_dir: str | None, export_root: str,
           export_name: str) -> tuple[str, bool]:
    """Exports the streams as a versioned SavedModel, once per trained state.

    Returns (SavedModel directory, whether this call wrote it): the weights of this step
    already exported are not exported again, and an export a kill interrupted is finished in
    the folder it was given. `export_dir` None: `<export_root>/<export_name>/<next version>`.
    """
    record = checkpoints.read_export_record(model_dir)
    wanted = absolute(export_dir) if export_dir else None
    target = None
    if (record and weights_sha256 and record.get("weights_sha256") == weights_sha256
            and wanted in (None, record.get("export_dir"))):
        if tf.io.gfile.exists(os.path.join(record["export_dir"], "saved_model.pb")):
            log.info("the weights of step %d are already exported to %s; not exporting a "
                     "duplicate", step, record["export_dir"])
            return record["export_dir"], False
        if not tf.io.gfile.exists(record["export_dir"]):  # a kill stopped that export
            target = record["export_dir"]
    target = target or wanted or next_version_dir(os.path.join(export_root, export_name))
    if tf.io.gfile.exists(target):
        raise UserError(f"export directory {target} already exists; TF Serving versions "
                         "are immutable, pick a new version")
    if weights_sha256:  # written first: a rerun after a kill finishes this export, not a new one
        checkpoints.write_export_record(model_dir, target, step, weights_sha256)
    try:
        return export_saved_model(model.face_stream, model.audio_stream, model_config,
                                  target), True
    except BaseException:
        # A failed export (not a kill) must not be remembered: a plain rerun would export to
        # the failed location instead of choosing one.
        if weights_sha256:
            if record:
                checkpoints.write_export_record(model_dir, record["export_dir"],
                                                record.get("step", 0),
                                                record.get("weights_sha256", ""))
            elif tf.io.gfile.exists(os.path.join(model_dir, "export.json")):
                tf.io.gfile.remove(os.path.join(model_dir, "export.json"))
        raise


# === The whole run ===
class InterruptionHint(keras.callbacks.Callback):
    """Keeps what a Ctrl-C should say current (`errors.run_cli`): the step reached and the
    backup a rerun resumes from."""

    def __init__(self, backup: checkpoints.CrashSafeBackup):
        super().__init__()
        self.backup = backup
        errors.INTERRUPTION_HINT[:] = [" before the first step; rerun the same command"]

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        newest = self.backup.generations[0].step if self.backup.generations else None
        resume = (f"resumes from the backup of step {newest}" if newest is not None
                  else "starts again: no step was backed up yet")
        errors.INTERRUPTION_HINT[:] = [f" at step {step}; rerun the same command: it {resume}"]


def train(settings: Settings, callbacks: Sequence[keras.callbacks.Callback] = ()
          ) -> tuple[str | None, bool]:
    """Checks, trains (resuming if `--model_dir` holds a backup) and exports; the Keras
    precision policy `build` sets is undone when it returns (a caller's models keep theirs).
    `callbacks` run after the run's own (a library caller's: e.g. the benchmarks keep the
    trained model and its logs with one).

    Returns:
      (SavedModel directory or None with `no_export` / on a non-chief worker, whether this call
      wrote it).
    Raises:
      UserError: the user's input is wrong (one line; nothing written when found up front).
      NonFiniteLoss: the loss became NaN/Inf (the last good state is kept).
    """
    policy = keras.mixed_precision.global_policy()
    try:
        return _train(*resolve_mixed_precision(settings), extra_callbacks=callbacks)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _train(settings: Settings, precision_reason: str,
           extra_callbacks: Sequence[keras.callbacks.Callback] = ()) -> tuple[str | None, bool]:
    run, train_config = settings.run, settings.train
    plan = prepare(settings)  # (a user error is one line: nothing logged before it)
    log.info("mixed precision: %s (%s)", run.mixed_precision, precision_reason)
    strategy, model = build(settings, plan)
    chief = is_chief(strategy)
    # One writer per run directory (and worker): a second training into it raced the first at
    # export and duplicated its TensorBoard points. Held until this process ends.
    lock = files.lock_folder(run.model_dir, ".lock" if chief else
                             f".lock-worker-{worker_index(strategy)}", what="--model_dir")
    if chief:  # (the chief alone cleans up temp files: the workers share model_dir)
        start_run_dir(run.model_dir, plan, strategy.num_replicas_in_sync)
    backup, start = restore(model, strategy, settings, chief)
    callbacks = make_callbacks(run.model_dir, backup, chief=chief,
                               log_every_steps=run.log_every_steps,
                               profile_steps=parse_profile_steps(run.profile_steps))
    callbacks.insert(0, InterruptionHint(backup))
    callbacks.extend(extra_callbacks)
    val_dataset = dataset_maker(settings, plan, plan.val_files)(0) if plan.val_files else None
    step = fit(model, dataset_maker(settings, plan, plan.train_files, run.data_service),
               start=start,
               epochs=train_config.epochs, steps_per_epoch=train_config.steps_per_epoch,
               callbacks=callbacks, verbose=run.keras_verbose, backup=backup,
               val_dataset=val_dataset, validation_steps=run.validation_steps,
               shard_patterns=tuple(p for p in (plan.train_files, plan.val_files) if p),
               train_pattern=plan.train_files or "")
    if run.no_export or not chief:
        return None, False
    weights_sha = backup.generations[0].sha256 if backup.generations else None
    result = export(model, settings.model, model_dir=run.model_dir, step=step,
                    weights_sha256=weights_sha, export_dir=run.export_dir,
                    export_root=run.export_root, export_name=run.export_name)
    del lock  # (held to here)
    return result
