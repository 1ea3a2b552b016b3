"""Training settings and the pieces `train.py` assembles: strategy, optimizer, callbacks."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import keras
import tensorflow as tf

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Reference code (github joonson/syncnet_trainer): SGD, momentum
    0.9, weight decay 1e-5 (SyncNetDist.py:33), lr 1e-3 (trainSyncNet.py:37) x0.95
    (trainSyncNet.py:38, applied at :138) after every epoch of 100,000 tracks
    (trainSyncNet.py:24, `nTrainPerEpoch`) in batches of 30 (:23): every 3,333 steps.

    Attributes:
      lr_decay_steps: optimizer steps between two x`lr_decay_rate` decays, independent of
        `steps_per_epoch` (which only sets how often Keras logs, validates and backs up). The
        reference counts tracks (100,000 per decay); the default 3,333 steps is that at its
        batch of 30 tracks. With another `batch_tracks`, pass 100000 // batch_tracks to decay
        after the same number of tracks (e.g. 1,666 at 60).
      weight_decay: PyTorch-style (coupled, L2) weight decay on every trainable variable,
        BatchNorm gammas/betas and similarity scales/biases included, as torch.optim.SGD's
        `weight_decay` on `self.parameters()` in the reference; see `CoupledDecaySGD`.
    """

    epochs: int = 10
    steps_per_epoch: int = 50
    batch_tracks: int = 8
    window_frames: int = 25
    optimizer: str = "sgd"
    learning_rate: float = 1e-3
    lr_decay_rate: float = 0.95
    lr_decay_steps: int = 3333
    weight_decay: float = 1e-5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        for name in ("epochs", "steps_per_epoch", "batch_tracks", "lr_decay_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.window_frames < 10:
            raise ValueError(f"window_frames must be >= 10 (0.4 s), got {self.window_frames}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 < self.lr_decay_rate <= 1:
            raise ValueError(f"lr_decay_rate must be in (0, 1], got {self.lr_decay_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


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


class _CoupledWeightDecay:
    """Mixin for a Keras optimizer: PyTorch-style (coupled, L2) weight decay `l2`.

    torch.optim.SGD(weight_decay=wd), the reference's optimizer (syncnet_trainer
    SyncNetDist.py:33), adds wd * w to the gradient BEFORE the momentum update:
        d = g + wd * w;  buf = 0.9 * buf + d (buf = d on the first step);  w -= lr * buf
    i.e. the gradient of an extra 0.5 * wd * ||w||^2 loss. Keras' own `weight_decay` argument
    is decoupled (w -= lr * wd * w outside the momentum, as SGDW/AdamW), which with momentum
    0.9 shrinks weights ~10x less than the reference in steady state. So Keras' `weight_decay`
    stays None and `update_step` adds l2 * w to each gradient. `update_step` runs after the
    gradients are all-reduced across replicas and unscaled by a LossScaleOptimizer, so the term
    is added once per step whatever the number of replicas or the loss scale, and it reaches
    every trainable variable, as PyTorch's `self.parameters()` does.

    One small difference remains: Keras keeps the velocity as -lr * buf, so when the learning
    rate steps down (x0.95 every 3,333 steps) the momentum tail keeps the previous rate for the
    few tens of steps it lasts, where PyTorch rescales the whole buffer at once.
    """

    def __init__(self, *args, l2: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.l2 = float(l2)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = keras.ops.add(
                keras.ops.cast(gradient, variable.dtype),
                keras.ops.multiply(keras.ops.cast(self.l2, variable.dtype), variable))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


@keras.saving.register_keras_serializable(package="av_disentangle")
class CoupledDecaySGD(_CoupledWeightDecay, keras.optimizers.SGD):
    """keras.optimizers.SGD with torch.optim.SGD's (coupled) `weight_decay`, passed as `l2`."""


@keras.saving.register_keras_serializable(package="av_disentangle")
class CoupledDecayAdam(_CoupledWeightDecay, keras.optimizers.Adam):
    """keras.optimizers.Adam with torch.optim.Adam's (coupled, L2) `weight_decay` as `l2`."""


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """SGD(momentum 0.9) or Adam, with coupled weight decay `config.weight_decay` and a
    staircase schedule: lr * lr_decay_rate ** floor(step / lr_decay_steps), counted in
    optimizer steps (not epochs), as the reference's x0.95 per 100,000 tracks."""
    schedule = keras.optimizers.schedules.ExponentialDecay(
        config.learning_rate, decay_steps=config.lr_decay_steps,
        decay_rate=config.lr_decay_rate, staircase=True)
    if config.optimizer == "adam":
        return CoupledDecayAdam(schedule, l2=config.weight_decay)
    return CoupledDecaySGD(schedule, momentum=0.9, l2=config.weight_decay)


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate of the optimizer's next step: its schedule at `optimizer.iterations`
    (works for a LossScaleOptimizer too, which reports its inner optimizer's rate)."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class UsageError(Exception):
    """Bad flags or input data: reported as one line, without a traceback."""


class NonFiniteLoss(RuntimeError):
    """Raised when training produced a NaN/Inf loss."""
