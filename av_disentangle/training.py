"""Training settings and the pieces `train.py` assembles: strategy, optimizer, callbacks."""

from __future__ import annotations

import json
import logging
import os

import keras
import tensorflow as tf

from av_disentangle.config import TrainConfig  # noqa: F401 (defined TF-free there)
from av_disentangle.errors import UserError

log = logging.getLogger(__name__)


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


UsageError = UserError
"""The older name of `av_disentangle.errors.UserError` (bad flags or input data: one line, exit
2): one class, so `except UsageError` also catches `MediaError`, `LabelledDataError`, ..."""


class NonFiniteLoss(RuntimeError):
    """Raised when training produced a NaN/Inf loss."""
