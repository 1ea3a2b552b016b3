"""The distribution strategy (MirroredStrategy / MultiWorkerMirroredStrategy, chief and
worker index), the mixed-precision choice (bf16 on CPUs with bf16 units; float16 opt-in), the
optimizer factory (SGD / Adam with coupled weight decay, as the reference's torch optimizers)
and the non-finite-loss error. The callbacks live in `checkpoints.py`, the loop in `run.py`."""

from __future__ import annotations

import json
import logging
import os

import keras
import tensorflow as tf

from av_disentangle.config import TrainConfig  # noqa: F401 (defined TF-free there)

log = logging.getLogger(__name__)

# CPU feature flags (/proc/cpuinfo) of the bf16 matrix / vector units oneDNN uses.
BF16_CPU_FLAGS: tuple[str, ...] = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_mixed_precision(requested: str, stored: str | None, has_gpu: bool,
                           flags: set[str]) -> tuple[str, str]:
    """`--mixed_precision` resolved: `(precision, why)`, precision in none/float16/bfloat16.

    `auto` (the default): a run being resumed keeps the precision it was started with
    (`stored`, from its config.json); a new run trains in bfloat16 on a CPU-only machine whose
    CPU has bf16 units (`BF16_CPU_FLAGS`: 1.3x (`small`) to 1.6x (`reference`) faster steps on
    the 2-core AVX512-BF16 machine, and the same learning in 18 paired runs: BENCHMARKS.md,
    issue 25), else in float32 ("none": on GPUs float16 is opt-in, and a CPU without bf16
    units emulates it slowly). Any other value is taken as given."""
    if requested != "auto":
        return requested, "as requested"
    if stored is not None and stored != "auto":
        return stored, "auto: the precision this run was started with"
    if has_gpu:
        return "none", "auto: float32 on GPUs (--mixed_precision float16 is opt-in)"
    units = sorted(set(BF16_CPU_FLAGS) & flags)
    if units:
        return "bfloat16", f"auto: bfloat16 on this CPU ({', '.join(units)})"
    return "none", "auto: float32 (this CPU has no bf16 units: " \
                   f"{', '.join(BF16_CPU_FLAGS)} not among its flags)"


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




class NonFiniteLoss(RuntimeError):
    """Raised when training produced a NaN/Inf loss."""
