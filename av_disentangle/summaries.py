"""TensorBoard scalars on the optimizer-step axis, continuing across resumed runs.

Keras' `TensorBoard(update_freq=N)` callback counts batches from 0 in every `fit` call (a
resumed run draws over the first run's curves) and only wrote epoch scalars in some cases.
`ScalarLogger` writes every value of the training logs (losses, accuracies) plus the learning
rate with `step = optimizer.iterations`:
  <logdir>/train       batch_<name> every `every_steps` steps and at each epoch end
                       (Keras' running mean over the epoch so far), epoch_<name> at each epoch end
  <logdir>/validation  epoch_<name> of the validation logs (`val_` prefix removed)
`profile_steps=(a, b)` also records a profiler trace of steps a..b (global step numbers).
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from av_disentangle.training import current_learning_rate


class ScalarLogger(keras.callbacks.Callback):
    """See the module docstring."""

    def __init__(self, logdir: str, every_steps: int = 10,
                 profile_steps: tuple[int, int] | None = None):
        super().__init__()
        self.logdir = logdir
        self.every_steps = every_steps
        self.profile_steps = profile_steps
        self._writers: dict[str, tf.summary.SummaryWriter] = {}
        self._step = 0
        self._last_batch_written = -1
        self._profiling = False

    def _writer(self, name: str) -> tf.summary.SummaryWriter:
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.logdir, name))
        return self._writers[name]

    def _write(self, writer: str, prefix: str, values: dict[str, float]) -> None:
        with self._writer(writer).as_default(step=self._step):
            for name, value in values.items():
                tf.summary.scalar(prefix + name, float(value))

    def _train_values(self, logs) -> dict[str, float]:
        values = {k: v for k, v in (logs or {}).items() if not k.startswith("val_")}
        values["learning_rate"] = current_learning_rate(self.model.optimizer)
        return values

    def on_train_begin(self, logs=None):
        self._step = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_begin(self, batch, logs=None):
        if self.profile_steps and self._step + 1 == self.profile_steps[0]:
            tf.profiler.experimental.start(self.logdir)
            self._profiling = True

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._profiling and self._step >= self.profile_steps[1]:
            tf.profiler.experimental.stop()
            self._profiling = False
        if self.every_steps and self._step % self.every_steps == 0:
            self._write("train", "batch_", self._train_values(logs))
            self._last_batch_written = self._step

    def on_epoch_end(self, epoch, logs=None):
        train = self._train_values(logs)
        if self._last_batch_written != self._step:
            self._write("train", "batch_", train)
            self._last_batch_written = self._step
        self._write("train", "epoch_", train)
        val = {k[len("val_"):]: v for k, v in (logs or {}).items() if k.startswith("val_")}
        if val:
            self._write("validation", "epoch_", val)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        if self._profiling:
            tf.profiler.experimental.stop()
            self._profiling = False
        for writer in self._writers.values():
            writer.flush()
