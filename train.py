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


def build_parser() -> argparse.ArgumentParser:
    from av_disentangle.config import DISENTANGLE_MODES, MODEL_SIZES

    p = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="JSON file of flag values; command-line flags override it")
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
    p.add_argument("--lr_decay_per_epoch", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint_every_steps", type=int, default=0,
                   help="also back up every N steps (0: at each epoch end only)")
    p.add_argument("--cpu_replicas", type=int, default=1,
                   help="without GPUs, split the CPU into N logical devices (testing)")
    p.add_argument("--profile_steps", default="",
                   help="'a,b': write a TensorBoard profiler trace of steps a..b")
    p.add_argument("--export_dir", help="SavedModel directory; default "
                   "saved_models/<export_name>/<next version>")
    p.add_argument("--export_name", default="av_disentangle")
    p.add_argument("--no_export", action="store_true")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2),
                   default=1 if sys.stdout.isatty() else 2)
    return p


def parse_flags(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses flags; values in `--config` become defaults, explicit flags win."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        try:
            with open(args.config) as f:
                values = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            parser.error(f"cannot read --config {args.config}: {e}")
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"--config {args.config}: unknown keys {unknown}")
        parser.set_defaults(**values)
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
        lr_decay_per_epoch=args.lr_decay_per_epoch, seed=args.seed)
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


def train(args: argparse.Namespace) -> str | None:
    """Builds everything from flags, trains (resuming if possible), exports. Returns the
    export directory (None with --no_export)."""
    import keras
    import tensorflow as tf

    from av_disentangle.config import to_dict
    from av_disentangle.export import export_saved_model, next_version_dir
    from av_disentangle.model import DisentangleModel
    from av_disentangle.training import (NonFiniteLoss, SafeBackupAndRestore, UsageError,
                                         completed_epochs, is_chief, make_optimizer,
                                         make_strategy, worker_index)
    from pipelines.input import InputConfig, list_shards, make_dataset

    try:
        model_config, loss_config, train_config = resolve_configs(args)
        profile_batch = parse_profile_steps(args.profile_steps)
        train_data = args.train_data or default_train_data(model_config.face_size)
        list_shards(train_data)  # fail early, with the pattern in the message
        if args.val_data:
            list_shards(args.val_data)
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

    os.makedirs(args.model_dir, exist_ok=True)
    if chief:
        resolved = {"flags": vars(args), "train_data": train_data,
                    "model": to_dict(model_config), "loss": to_dict(loss_config),
                    "train": to_dict(train_config), "replicas": replicas}
        with open(os.path.join(args.model_dir, "config.json"), "w") as f:
            json.dump(resolved, f, indent=2)

    # Every worker keeps its own backup (weights are identical across workers, so any one can
    # resume); only the chief writes per-epoch checkpoints, TensorBoard logs and the export.
    backup_dir = os.path.join(
        args.model_dir, "backup" if chief else f"backup_worker_{worker_index(strategy)}")
    resume_epoch = completed_epochs(backup_dir)
    if resume_epoch:
        log.info("resuming after epoch %d from %s", resume_epoch, backup_dir)
    # A resumed run draws a new deterministic sequence of windows (seed + completed epochs)
    # instead of replaying the windows the first epochs already trained on.
    data_seed = train_config.seed + resume_epoch

    def dataset(pattern: str):
        ds = make_dataset(InputConfig(pattern, batch_tracks=train_config.batch_tracks,
                                      window_frames=train_config.window_frames,
                                      face_size=model_config.face_size, seed=data_seed))
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Every worker builds the same seeded pipeline and keeps its 1/N of the batches.
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = (
                tf.data.experimental.AutoShardPolicy.DATA)
            ds = ds.with_options(options)
        return ds

    train_ds = dataset(train_data)
    val_ds = dataset(args.val_data) if args.val_data else None

    with strategy.scope():
        model = DisentangleModel(model_config, loss_config)
        model.compile(optimizer=make_optimizer(train_config))
        model.optimizer.build(model.trainable_variables)

    backup = SafeBackupAndRestore(
        backup_dir, delete_checkpoint=False,
        save_freq=args.checkpoint_every_steps or "epoch")
    callbacks = [backup, keras.callbacks.TerminateOnNaN()]
    if chief:
        callbacks += [
            keras.callbacks.ModelCheckpoint(
                os.path.join(args.model_dir, "checkpoints", "epoch-{epoch:03d}.weights.h5"),
                save_weights_only=True),
            keras.callbacks.TensorBoard(os.path.join(args.model_dir, "logs"), update_freq=10,
                                        profile_batch=profile_batch),
        ]
    model.fit(train_ds, epochs=train_config.epochs, steps_per_epoch=train_config.steps_per_epoch,
              validation_data=val_ds, validation_steps=args.validation_steps if val_ds else None,
              callbacks=callbacks, verbose=args.verbose)
    if backup.saw_non_finite:
        raise NonFiniteLoss(
            f"training stopped: the loss became NaN/Inf at step "
            f"{int(model.optimizer.iterations.numpy())}. The last good state is kept in "
            f"{backup_dir}; lower --learning_rate and rerun to resume from it")
    log.info("trained to step %d", int(model.optimizer.iterations.numpy()))

    if args.no_export or not chief:
        return None
    export_dir = args.export_dir or next_version_dir(
        os.path.join(REPO_ROOT, "saved_models", args.export_name))
    try:
        return export_saved_model(model.face_stream, model.audio_stream, model_config,
                                  export_dir)
    except FileExistsError as e:
        raise UsageError(str(e)) from e


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_flags(argv)
    from av_disentangle.training import NonFiniteLoss, UsageError

    try:
        export_dir = train(args)
    except UsageError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 3
    if export_dir:
        print(f"exported SavedModel: {export_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
