"""Train the two-stream disentangling model and export a SavedModel.

    python train.py --model_dir runs/sample --epochs 1 --steps_per_epoch 5

With no `--train_data`, the bundled sample videos (data/samples) are prepared into TFRecords
on first use (data/prepared/) and used. Rerunning the same command after an interruption
resumes from the last checkpoint in `--model_dir`. Flags override values from `--config`
(a JSON file with flag names as keys).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
log = logging.getLogger("train")


OBJECTIVES = ("self_supervised", "supervised")


def build_parser() -> argparse.ArgumentParser:
    from av_disentangle.config import DISENTANGLE_MODES, MODEL_SIZES
    from av_disentangle.supervised_config import add_supervised_flags

    p = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="JSON file of flag values; command-line flags override it")
    p.add_argument("--objective", choices=OBJECTIVES, default="self_supervised",
                   help="self_supervised: the paper's face-voice training on --train_data; "
                   "supervised: speaker-label training of the audio stream on "
                   "--labelled_audio (optionally --init_from a self-supervised run)")
    p.add_argument("--train_data", help="TFRecord glob(s), comma-separated; default: the "
                   "bundled sample data, prepared on first use")
    p.add_argument("--val_data", help="TFRecord glob(s) for validation losses (optional)")
    p.add_argument("--model_dir", default="runs/sample",
                   help="checkpoints, TensorBoard logs and the resolved config")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps_per_epoch", type=int, default=50)
    p.add_argument("--validation_steps", type=int, default=10)
    p.add_argument("--batch_tracks", type=int, default=8,
                   help="global batch of distinct tracks; negatives are per replica")
    p.add_argument("--window_frames", type=int, default=25,
                   help="video frames per window at 25 fps (reference: 50)")
    p.add_argument("--model_size", choices=sorted(MODEL_SIZES), default="small")
    p.add_argument("--face_size", type=int, help="override the model size's face crop size")
    p.add_argument("--disentangle", choices=DISENTANGLE_MODES, default="confusion")
    p.add_argument("--content_weight", type=float, default=1.0)
    p.add_argument("--identity_weight", type=float, default=1.0)
    p.add_argument("--disentangle_weight", type=float, default=0.5)
    p.add_argument("--grl_scale", type=float, default=1.0)
    p.add_argument("--symmetric_identity", action="store_true")
    p.add_argument("--face_identity_pooling", choices=("random_step", "mean"),
                   default="random_step")
    p.add_argument("--gather_negatives", action="store_true",
                   help="all-gather identity embeddings across replicas: negatives from the "
                   "whole global batch instead of each replica's slice")
    p.add_argument("--mixed_precision", choices=("none", "float16", "bfloat16"), default="none",
                   help="mixed-precision compute (GPUs: float16 with loss scaling; TPUs/new "
                   "GPUs: bfloat16); losses and features stay float32")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--lr_decay_rate", type=float, default=0.95,
                   help="multiply the learning rate by this every --lr_decay_steps steps")
    p.add_argument("--lr_decay_steps", type=int, default=3333,
                   help="steps between learning-rate decays, whatever --steps_per_epoch is; "
                   "the reference decays every 100,000 tracks (3,333 steps of 30): for the "
                   "same per-track schedule pass 100000 // --batch_tracks")
    p.add_argument("--weight_decay", type=float, default=1e-5,
                   help="PyTorch-style (L2, through momentum) weight decay on all trainable "
                   "variables, as the reference's SGD")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint_every_steps", type=int, default=0,
                   help="also back up every N steps (0: at each epoch end only); a resume "
                   "continues from the exact step")
    p.add_argument("--log_every_steps", type=int, default=10,
                   help="TensorBoard batch_* scalars every N steps (and at each epoch end)")
    p.add_argument("--skip_bad_shards", action="store_true",
                   help="train on the good shards when some are truncated or corrupt "
                   "(default: stop and name them)")
    p.add_argument("--full_shard_check", action="store_true",
                   help="verify every record's checksum at start (reads all the data; the "
                   "default check reads only the record headers and the sidecar counts)")
    p.add_argument("--cpu_replicas", type=int, default=1,
                   help="without GPUs, split the CPU into N logical devices (testing)")
    p.add_argument("--profile_steps", default="",
                   help="'a,b': write a TensorBoard profiler trace of steps a..b")
    p.add_argument("--export_dir", help="SavedModel directory; default "
                   "<export_root>/<export_name>/<next version>")
    p.add_argument("--export_root", default=os.path.join(REPO_ROOT, "saved_models"),
                   help="folder of the versioned exports")
    p.add_argument("--export_name", default="av_disentangle")
    p.add_argument("--no_export", action="store_true")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2),
                   default=1 if sys.stdout.isatty() else 2)
    supervised = p.add_argument_group("supervised objective (--objective supervised)")
    add_supervised_flags(supervised)
    return p


class _ConfigValueError(Exception):
    pass


def _config_file_values(path: str, parser: argparse.ArgumentParser) -> dict:
    """The values of a `--config` JSON file, checked exactly as the same flags on the command
    line (argparse's own `type` and `choices`). ValueError naming the file and the key."""
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read --config {path}: {e}")
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a JSON object of flag names and values")
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    unknown = sorted(set(values) - set(actions) | ({"config", "help"} & set(values)))
    if unknown:
        raise ValueError(f"--config {path}: unknown keys {unknown}")
    argv = []
    for key, value in values.items():
        action, flag = actions[key], actions[key].option_strings[-1]
        if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
            if not isinstance(value, bool):
                raise ValueError(f"--config {path}: {key} must be true or false, got "
                                 f"{json.dumps(value)}")
            if isinstance(action, argparse.BooleanOptionalAction):  # --x / --no-x
                argv += [action.option_strings[0 if value else 1]]
            else:
                argv += [flag] if value else []
        elif value is None or isinstance(value, (bool, list, dict)):
            raise ValueError(f"--config {path}: {key} must be a single "
                             f"{getattr(action.type, '__name__', 'str')} value, got "
                             f"{json.dumps(value)}")
        else:
            argv += [flag, str(value)]
    checker = build_parser()

    def error(message):
        raise _ConfigValueError(message)

    checker.error = error
    try:
        checked = checker.parse_args(argv)
    except _ConfigValueError as e:
        raise ValueError(f"--config {path}: {e}")
    return {key: getattr(checked, key) for key in values}


def parse_flags(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses flags; values in `--config` become defaults, explicit flags win."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        try:
            parser.set_defaults(**_config_file_values(args.config, parser))
        except ValueError as e:
            parser.error(str(e))
        args = parser.parse_args(argv)
    return args


def resolve_configs(args: argparse.Namespace):
    """Flags -> (ModelConfig, LossConfig, TrainConfig); ValueError on inconsistent values."""
    from av_disentangle.config import MODEL_SIZES, LossConfig
    from av_disentangle.training import TrainConfig

    model_config = MODEL_SIZES[args.model_size]()
    if args.face_size:
        model_config = dataclasses.replace(model_config, face_size=args.face_size)
    loss_config = LossConfig(
        content_weight=args.content_weight, identity_weight=args.identity_weight,
        disentangle_weight=args.disentangle_weight, disentangle=args.disentangle,
        grl_scale=args.grl_scale, symmetric_identity=args.symmetric_identity,
        face_identity_pooling=args.face_identity_pooling,
        gather_negatives=args.gather_negatives)
    train_config = TrainConfig(
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        batch_tracks=args.batch_tracks, window_frames=args.window_frames,
        optimizer=args.optimizer, learning_rate=args.learning_rate,
        lr_decay_rate=args.lr_decay_rate, lr_decay_steps=args.lr_decay_steps,
        weight_decay=args.weight_decay, seed=args.seed)
    return model_config, loss_config, train_config


def default_train_data(face_size: int) -> str:
    """Prepares the bundled sample videos on first use; returns their TFRecord glob."""
    from pipelines.prepare import prepare_bundled_samples

    out = os.path.join(REPO_ROOT, "data", "prepared", f"samples_{face_size}")
    log.info("preparing the bundled sample videos into %s (first use only)", out)
    shards = prepare_bundled_samples(out, face_size=face_size, workers=os.cpu_count() or 1)
    if not shards:
        raise FileNotFoundError(f"preparing the bundled samples into {out} produced no shards")
    return os.path.join(out, "*.tfrecord")


def parse_profile_steps(value: str):
    if not value:
        return 0
    try:
        start, stop = (int(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"--profile_steps must be 'a,b' with integers, got {value!r}")
    return (start, stop)


# Keys of config.json that must match to resume a run: everything that changes the model's
# variables or the loss (a mismatch would not load, or would silently train something else).
# The rest (epochs, steps, learning rate, data, verbosity, ...) may change between runs.
RESUME_KEYS = {"model": None, "loss": None, "train": ("optimizer", "window_frames", "batch_tracks"),
               "flags": ("mixed_precision", "objective"),
               "supervised": ("labelled_audio", "labels_per_speaker", "num_speakers",
                              "label_seed", "head", "aam_margin", "aam_scale", "freeze_trunk",
                              "init_from")}


def config_differences(stored: dict, new: dict) -> list[str]:
    """`section.key: old -> new` for every RESUME_KEYS value that differs."""
    diffs = []
    for section, keys in RESUME_KEYS.items():
        old_values, new_values = stored.get(section) or {}, new.get(section) or {}
        names = sorted(set(old_values) | set(new_values)) if keys is None else keys
        for name in names:
            if keys is not None and name not in old_values:
                continue  # written by an older version without this key
            old, value = old_values.get(name, "(absent)"), new_values.get(name, "(absent)")
            if old != value:
                diffs.append(f"{section}.{name}: {json.dumps(old)} -> {json.dumps(value)}")
    return diffs


def check_model_dir(model_dir: str, resolved: dict) -> None:
    """Before anything is written: `model_dir` can be created, and a run already in it has the
    same model and loss configuration. Raises ValueError with a one-line message."""
    config_path = os.path.join(model_dir, "config.json")
    if os.path.isfile(config_path):
        try:
            with open(config_path) as f:
                stored = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read {config_path} ({e}); fix or remove it, or pass "
                             "another --model_dir")
        diffs = config_differences(stored, resolved)
        if diffs:
            raise ValueError(
                f"--model_dir {model_dir} holds a run with another configuration "
                f"({config_path}): {'; '.join(diffs)}. Rerun with the stored values to resume "
                "it, or pass a new --model_dir to start a new run")
    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create --model_dir {model_dir}: {e.strerror or e}")
    if not os.access(model_dir, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write into --model_dir {model_dir}: permission denied")


def resolve_supervised(args: argparse.Namespace, model_config):
    """`--objective supervised`: (SupervisedConfig, LabelledAudio) with the label budget drawn
    and the audio decoded, and `--init_from` checked against this model size. Raises
    ValueError / UsageError with a one-line message; writes nothing."""
    from av_disentangle.supervised import check_init_from
    from av_disentangle.supervised_config import supervised_config_from_flags
    from pipelines.labelled import load_labelled_audio

    config = supervised_config_from_flags(args)
    if not config.labelled_audio:
        raise ValueError("--objective supervised needs --labelled_audio (a folder "
                         "<speaker>/.../<utt>.{wav,flac,m4a} or a TFRecord glob)")
    if config.init_from:
        check_init_from(config.init_from, model_config)
    labelled = load_labelled_audio(config.labelled_audio,
                                   labels_per_speaker=config.labels_per_speaker,
                                   num_speakers=config.num_speakers, seed=config.label_seed)
    log.info("supervised: %d speakers, %d labelled utterances from %s (label seed %d)",
             labelled.num_classes, len(labelled.selection.utterances), config.labelled_audio,
             config.label_seed)
    return config, labelled


def checked_shards(pattern: str, flag: str, skip_bad: bool, full: bool) -> str:
    """Validates the shards of `pattern`; returns the pattern to train on (comma-separated
    good files when bad ones are skipped). ValueError naming a bad file."""
    from av_disentangle.shard_check import check_shards
    from pipelines.input import list_shards

    files = list_shards(pattern)
    bad = check_shards(files, full=full)
    if not bad:
        return pattern
    if not skip_bad:
        path, problem = bad[0]
        more = f" (and {len(bad) - 1} more bad shard(s))" if len(bad) > 1 else ""
        raise ValueError(f"{flag} shard {path} is {problem}{more}; re-prepare it, or rerun "
                         "with --skip_bad_shards to train on the other shards")
    good = [f for f in files if f not in {p for p, _ in bad}]
    for path, problem in bad:
        log.warning("skipping bad shard %s: %s", path, problem)
    if not good:
        raise ValueError(f"all {len(files)} {flag} shards matching {pattern!r} are bad "
                         f"(e.g. {bad[0][0]}: {bad[0][1]})")
    log.warning("--skip_bad_shards: training on %d of %d %s shards (%d bad skipped)",
                len(good), len(files), flag, len(bad))
    return ",".join(good)


def train(args: argparse.Namespace) -> tuple[str | None, bool]:
    """Builds everything from flags, trains (resuming if possible), exports. Returns the
    SavedModel directory (None with --no_export) and whether it was written by this call."""
    import keras
    import tensorflow as tf

    from av_disentangle import checkpoints
    from av_disentangle.config import to_dict
    from av_disentangle.export import export_saved_model, next_version_dir
    from av_disentangle.model import DisentangleModel
    from av_disentangle.shard_check import check_shards
    from av_disentangle.summaries import ScalarLogger
    from av_disentangle.training import (NonFiniteLoss, UsageError, is_chief, make_optimizer,
                                         make_strategy, worker_index)
    from pipelines.input import InputConfig, list_shards, make_dataset
    from pipelines.labelled import make_labelled_dataset
    from av_disentangle.supervised import build_supervised_model

    try:
        model_config, loss_config, train_config = resolve_configs(args)
        profile_steps = parse_profile_steps(args.profile_steps)
        resolved = {"flags": vars(args), "model": to_dict(model_config),
                    "loss": to_dict(loss_config), "train": to_dict(train_config)}
        supervised = args.objective == "supervised"
        if supervised:  # labels read and init_from checked before anything is written
            sup_config, labelled = resolve_supervised(args, model_config)
            resolved.update(supervised=to_dict(sup_config),
                            labels=labelled.selection.to_dict())
        check_model_dir(args.model_dir, resolved)
        if supervised:
            train_data = sup_config.labelled_audio
            train_files = val_files = None
        else:
            train_data = args.train_data or default_train_data(model_config.face_size)
            train_files = checked_shards(train_data, "--train_data", args.skip_bad_shards,
                                         args.full_shard_check)
            val_files = args.val_data and checked_shards(
                args.val_data, "--val_data", args.skip_bad_shards, args.full_shard_check)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e
    keras.utils.set_random_seed(train_config.seed)  # same on every worker (DATA sharding)
    if args.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(f"mixed_{args.mixed_precision}")
    strategy = make_strategy(args.cpu_replicas)
    chief = is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    if train_config.batch_tracks % replicas:
        raise UsageError(f"--batch_tracks {train_config.batch_tracks} must be divisible by the "
                         f"{replicas} replicas")
    log.info("strategy %s with %d replica(s); %d tracks per replica (negatives %s)",
             type(strategy).__name__, replicas, train_config.batch_tracks // replicas,
             "gathered across replicas" if loss_config.gather_negatives else "per replica")

    if chief:  # (the chief alone cleans up temp files: the workers share model_dir)
        checkpoints.prepare_run_dir(args.model_dir)
        checkpoints.write_json_atomic(
            os.path.join(args.model_dir, "config.json"),
            {**resolved, "train_data": train_data, "replicas": replicas}, fault="config")

    def dataset(pattern: str | None, step: int):
        # A resumed run draws a new deterministic sequence of windows (seed + start step)
        # instead of replaying the windows the first steps already trained on.
        if supervised:
            ds = make_labelled_dataset(labelled, batch_size=train_config.batch_tracks,
                                       crop_seconds=sup_config.crop_seconds,
                                       seed=train_config.seed + step)
        else:
            ds = make_dataset(InputConfig(pattern, batch_tracks=train_config.batch_tracks,
                                          window_frames=train_config.window_frames,
                                          face_size=model_config.face_size,
                                          seed=train_config.seed + step))
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Every worker builds the same seeded pipeline and keeps its 1/N of the batches.
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = (
                tf.data.experimental.AutoShardPolicy.DATA)
            ds = ds.with_options(options)
        return ds

    with strategy.scope():
        if supervised:
            model = build_supervised_model(model_config, sup_config, labelled.num_classes)
        else:
            model = DisentangleModel(model_config, loss_config)
        model.compile(optimizer=make_optimizer(train_config))
        model.optimizer.build(model.trainable_variables)

    # Every worker keeps its own backup (weights are identical across workers, so any one can
    # resume); only the chief writes per-epoch checkpoints, TensorBoard logs and the export.
    backup_dir = os.path.join(
        args.model_dir, "backup" if chief else f"backup_worker_{worker_index(strategy)}")
    backup = checkpoints.CrashSafeBackup(backup_dir, train_config.steps_per_epoch,
                                         every_steps=args.checkpoint_every_steps)
    backup.set_model(model)
    try:
        with strategy.scope():
            start = backup.restore()
    except checkpoints.BackupError as e:
        raise UsageError(str(e)) from e
    spe, target = train_config.steps_per_epoch, train_config.epochs * train_config.steps_per_epoch
    if start >= target:
        log.info("the run in %s is complete: step %d of %d (%d epochs of %d steps); nothing to "
                 "train (raise --epochs to train longer)", args.model_dir, start, target,
                 train_config.epochs, spe)
    elif start:
        epoch, done = divmod(start, spe)
        log.info("resuming at step %d (epoch %d%s) from %s", start, epoch + 1 if done else epoch,
                 f", step {done} of {spe}" if done else " done", backup.restored_from)

    # The backup goes last: an epoch's checkpoint and logs are written before its backup.
    callbacks = [keras.callbacks.TerminateOnNaN()]
    if chief:
        callbacks += [
            checkpoints.EpochCheckpoint(os.path.join(args.model_dir, "checkpoints")),
            ScalarLogger(os.path.join(args.model_dir, "logs"), args.log_every_steps,
                         profile_steps or None),
        ]
    callbacks.append(backup)
    val_ds = dataset(val_files, 0) if val_files else None
    try:
        step = checkpoints.resumable_fit(
            model, lambda s: dataset(train_files, s), start_step=start,
            epochs=train_config.epochs, steps_per_epoch=spe, callbacks=callbacks,
            verbose=args.verbose, validation_data=val_ds,
            validation_steps=args.validation_steps if val_ds else None)
    except tf.errors.DataLossError as e:
        files = list_shards(train_files) + (list_shards(val_files) if val_files else [])
        log.info("a record failed its checksum; checking all %d shards to name it", len(files))
        bad = check_shards(files, full=True)
        named = "; ".join(f"{p} is {problem}" for p, problem in bad) or str(e.message)[:200]
        raise UsageError(f"corrupt training data: {named}. The last good state is kept in "
                         f"{backup_dir}; rerun with --full_shard_check --skip_bad_shards to "
                         "train on the other shards") from e
    if backup.saw_non_finite:
        raise NonFiniteLoss(
            f"training stopped: the loss became NaN/Inf at step {step}. The last good state "
            f"is kept in {backup_dir}; lower --learning_rate and rerun to resume from it")
    log.info("trained to step %d", step)

    if args.no_export or not chief:
        return None, False
    weights_sha = backup.generations[0].sha256 if backup.generations else None
    record = checkpoints.read_export_record(args.model_dir)
    wanted = os.path.abspath(args.export_dir) if args.export_dir else None
    export_dir = None
    if (record and weights_sha and record.get("weights_sha256") == weights_sha
            and wanted in (None, record.get("export_dir"))):
        if tf.io.gfile.exists(os.path.join(record["export_dir"], "saved_model.pb")):
            log.info("the weights of step %d are already exported to %s; not exporting a "
                     "duplicate", step, record["export_dir"])
            return record["export_dir"], False
        if not tf.io.gfile.exists(record["export_dir"]):  # a kill stopped that export
            export_dir = record["export_dir"]
    export_dir = export_dir or wanted or next_version_dir(
        os.path.join(args.export_root, args.export_name))
    if tf.io.gfile.exists(export_dir):
        raise UsageError(f"export directory {export_dir} already exists; TF Serving versions "
                         "are immutable, pick a new version")
    if weights_sha:  # written first: a rerun after a kill finishes this export, not a new one
        checkpoints.write_export_record(args.model_dir, export_dir, step, weights_sha)
    return export_saved_model(model.face_stream, model.audio_stream, model_config,
                              export_dir), True


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_flags(argv)
    from av_disentangle.training import NonFiniteLoss, UsageError

    try:
        export_dir, exported = train(args)
    except UsageError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 3
    if export_dir:
        print(f"{'exported SavedModel' if exported else 'SavedModel (already exported)'}: "
              f"{export_dir}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
