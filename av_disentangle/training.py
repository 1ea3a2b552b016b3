"""Training settings and the pieces `train.py` assembles: strategy, optimizer, callbacks."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import keras
import tensorflow as tf

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Reference code: SGD, momentum 0.9, lr 1e-3, x0.95 per epoch."""

    epochs: int = 10
    steps_per_epoch: int = 50
    batch_tracks: int = 8
    window_frames: int = 25
    optimizer: str = "sgd"
    learning_rate: float = 1e-3
    lr_decay_per_epoch: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        for name in ("epochs", "steps_per_epoch", "batch_tracks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.window_frames < 10:
            raise ValueError(f"window_frames must be >= 10 (0.4 s), got {self.window_frames}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


def make_strategy(cpu_replicas: int = 1) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG names a cluster, else MirroredStrategy over
    all local GPUs, else over `cpu_replicas` logical CPU devices (1 = plain CPU)."""
    if os.environ.get("TF_CONFIG"):
        cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
        if sum(len(v) for v in cluster.values()) > 1:
            return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy()
    if cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_replicas)])
        devices = [f"/cpu:{i}" for i in range(cpu_replicas)]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.MirroredStrategy(["/cpu:0"])


def worker_index(strategy: tf.distribute.Strategy) -> int:
    """This process's task index in a multi-worker cluster (0 on one machine)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(resolver.task_id or 0) if resolver is not None and resolver.task_type else 0


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the process that writes checkpoints, logs and the export: the `chief` task, or
    worker 0 when the cluster has no chief, or the only process on one machine."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and not has_chief and int(resolver.task_id) == 0


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """SGD(momentum 0.9) or Adam with a staircase x`lr_decay_per_epoch` schedule."""
    schedule = keras.optimizers.schedules.ExponentialDecay(
        config.learning_rate, decay_steps=config.steps_per_epoch,
        decay_rate=config.lr_decay_per_epoch, staircase=True)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(schedule)
    return keras.optimizers.SGD(schedule, momentum=0.9)


class UsageError(Exception):
    """Bad flags or input data: reported as one line, without a traceback."""


class NonFiniteLoss(RuntimeError):
    """Raised when training produced a NaN/Inf loss."""


def completed_epochs(backup_dir: str) -> int:
    """Epochs completed according to a BackupAndRestore directory (0 if none)."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not tf.io.gfile.exists(path):
        return 0
    with tf.io.gfile.GFile(path) as f:
        return int(json.load(f).get("epoch", 0))


class SafeBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that never overwrites the last good backup with non-finite weights.

    Keras still calls `on_epoch_end` after `TerminateOnNaN` stops an epoch; this skips the
    save then, so the run can be resumed from the last finite state.
    """

    def __init__(self, backup_dir: str, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self.saw_non_finite = False

    def _finite(self, logs) -> bool:
        loss = (logs or {}).get("loss")
        return loss is None or math.isfinite(float(loss))

    def on_train_batch_end(self, batch, logs=None):
        if not self._finite(logs):
            self.saw_non_finite = True
        if not self.saw_non_finite:
            super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if not self._finite(logs):
            self.saw_non_finite = True
        if not self.saw_non_finite:
            super().on_epoch_end(epoch, logs)
