"""Keras-version workarounds, in one place, for the Keras this code was written against.

Each piece below says why it exists and what to check when Keras is upgraded
(setup.cfg pins keras==3.15.1; line numbers are those of keras 3.15.1). Importing this module
warns loudly when another Keras version is installed: the workarounds may then be unneeded or
wrong, and the tests named below are the ones that show it.
"""

from __future__ import annotations

import logging
import warnings

import keras
import tensorflow as tf

log = logging.getLogger(__name__)

KERAS_VERSION = "3.15.1"
"""The Keras version the workarounds were written and tested for (setup.cfg's pin)."""


def check_keras_version(version: str = keras.__version__) -> bool:
    """True when `version` is `KERAS_VERSION`; otherwise warns (RuntimeWarning + log) once."""
    if version == KERAS_VERSION:
        return True
    message = (f"av_disentangle.compat was written for keras=={KERAS_VERSION} but keras=={version} "
               "is installed: re-check the workarounds in av_disentangle/compat.py (see its "
               "docstrings) and run tests/test_distributed.py, tests/test_model.py and "
               "tests/test_train.py")
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    return False


check_keras_version()


# === 1. Building the optimizer before the first step ===
def build_optimizer(model: keras.Model) -> None:
    """Builds `model.optimizer` on `model.trainable_variables` inside the model's strategy scope
    (tf.distribute needs optimizer slots created there), unless already built.

    Why: Keras builds the optimizer lazily at the first `apply`, but
    - restoring a backup before `fit` needs the optimizer's variables to exist: keras 3.15.1
      `BaseOptimizer.load_own_variables` (keras/src/optimizers/base_optimizer.py l.759-766) skips
      loading, with only a warning, when the saved and current variable counts differ, which is
      the case for an unbuilt optimizer; and
    - `OptimizerOnlySymbolicBuild` replaces the Keras hook that would otherwise build it.
    On a Keras upgrade: check that `load_weights` into a model whose optimizer is unbuilt still
    skips the optimizer (if Keras builds it itself, the train.py call can go; the
    `_maybe_symbolic_build` one stays while that override does).
    """
    optimizer = model.optimizer
    if optimizer is not None and not optimizer.built:
        with model.distribute_strategy.scope():
            optimizer.build(model.trainable_variables)


# === 2. The overridden private `_maybe_symbolic_build` ===
class OptimizerOnlySymbolicBuild:
    """Mixin for a keras.Model with custom train/test steps, no compiled losses or metrics, and
    all variables created in `build()`: replaces Keras' private `_maybe_symbolic_build` hook
    by building only the optimizer.

    Why: keras 3.15.1 `TensorFlowTrainer._maybe_symbolic_build` (keras/src/backend/tensorflow/
    trainer.py l.713-739), called at the start of fit/evaluate under a distribution strategy,
    reduces the first distributed batch with `strategy.reduce("MEAN", batch, axis=None)` to
    build compiled losses/metrics; under MultiWorkerMirroredStrategy that fails for a dict of
    tensors. Our models have nothing to build symbolically but the optimizer. Covered by
    tests/test_distributed.py::test_multiworker_two_processes_finish_with_identical_weights.
    On a Keras upgrade: check the hook still exists with this signature (if it is renamed,
    this override silently stops applying and the multi-worker test fails) and whether it
    still reduces the batch.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        build_optimizer(self)


# === 3. The multi-worker log reshape ===
def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True under MultiWorkerMirroredStrategy with a cluster of more than one task."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    resolver = strategy.cluster_resolver
    return bool(resolver and resolver.task_type and
                sum(len(tasks) for tasks in resolver.cluster_spec().as_dict().values()) > 1)


def logs_for_reduction(logs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """The scalar logs of a train/test step, given a batch axis of 1 under multi-worker
    training (unchanged otherwise).

    Why: keras 3.15.1 `reduce_per_replica` (keras/src/backend/tensorflow/trainer.py l.833-841)
    reduces the step's logs across workers with `strategy.reduce("MEAN", v, axis=0)`, which
    fails on scalars; with shape (1,) the reduced result is a scalar again.
    On a Keras upgrade: check whether multi-worker logs are still reduced along axis 0 (covered
    by the multi-worker test in tests/test_distributed.py).
    """
    if not is_multi_worker(tf.distribute.get_strategy()):
        return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}
