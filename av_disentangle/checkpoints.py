"""Crash-safe training state: atomic file writes, a two-generation backup, step-exact resume.

Layout of a backup folder (`<model_dir>/backup`):
  step-000000120.weights.h5   one file per saved generation (model + optimizer variables);
                              the newest two generations are kept
  training_metadata.json      names the generations, newest first, with their step, epoch and
                              SHA-256; written only after the file it names is complete
  latest.weights.h5           a hard link to the newest generation (for tools; not used to resume)

Every file is written to a hidden temp name (`.tmp-<pid>-<name>...`), flushed to disk and renamed,
so a file with its final name is always complete. A resume tries the generations newest first
and falls back to the previous one, with a warning naming the file, when the newest is missing,
fails its checksum or does not load.

Resume is exact to the step: `resumable_fit` finishes a partly trained epoch (a backup taken
every N steps) before running the remaining full epochs, so after any interruption the run
ends with `optimizer.iterations == epochs * steps_per_epoch`.

Fault injection (tests only): `AV_DISENTANGLE_FAULT=<point>:<n>` kills the process with SIGKILL
the n-th time it reaches `<point>`; points ending in `.half` first cut the file being written
to half its size (the state a kill in the middle of the write leaves). Implemented in
`av_disentangle.files` (`fault_point`, `write_atomic_with`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
import shutil
import sys
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from av_disentangle import files
from av_disentangle.errors import UserError

log = logging.getLogger(__name__)

METADATA = "training_metadata.json"
LATEST = "latest.weights.h5"
_GENERATION = re.compile(r"^step-(\d{9})\.weights\.h5$")



def weights_bytes(model: keras.Model) -> int:
    """An upper bound of the size of `model.save_weights`' file: the model's and its
    optimizer's variables, plus HDF5's structure (5%, 4 kB per variable, 64 kB; the tiny
    model's 330 kB file is mostly structure)."""
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        variables += list(optimizer.variables)
    data = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)
    return int(data * 1.05) + 4096 * len(variables) + 65536


_previous_unraisablehook = sys.unraisablehook


def _quiet_h5py_disk_full(unraisable) -> None:
    """`sys.unraisablehook`: h5py reports every failed buffer write of a full disk, also while
    its objects are garbage-collected later, as a traceback (226 of them seen); the write's
    own error is raised and reported once (`errors.DiskFullError`). Others pass through."""
    if "errno = 28" in str(unraisable.exc_value):
        return
    _previous_unraisablehook(unraisable)


sys.unraisablehook = _quiet_h5py_disk_full


def save_weights_atomic(model: keras.Model, path: str, fault: str | None = None) -> None:
    """`model.save_weights(path)` (model and optimizer variables), atomically. A disk without
    room for it is a `DiskFullError` before anything is written."""
    files.write_atomic_with(path, model.save_weights, fault=fault, keep_suffix=True,
                            required_bytes=weights_bytes(model))


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_run_dir(model_dir: str) -> None:
    """Creates `model_dir` (local or remote) and removes temp files an interrupted run left in
    it (local folders: a remote write removes its own temp file unless the process is killed)."""
    tf.io.gfile.makedirs(model_dir)
    for folder in (model_dir, os.path.join(model_dir, "checkpoints")):
        if os.path.isdir(folder):
            files.remove_stale_temps(folder)


# === Backup and restore ===
@dataclasses.dataclass(frozen=True)
class Generation:
    """One saved training state: the weights file (in the backup folder) and its position."""

    weights: str
    step: int
    epoch: int
    batch: int
    sha256: str | None = None


class BackupError(UserError):
    """No usable backup although the backup folder holds some (the message names the files;
    the user moves the folder away or picks another --model_dir)."""


class CrashSafeBackup(keras.callbacks.Callback):
    """Backs up model + optimizer state every `every_steps` steps and at each epoch end, as
    described in the module docstring; `restore()` before `fit` resumes from it. Put it last
    in the callback list, so an epoch's checkpoint and logs are written before its backup.

    Keeps Keras `BackupAndRestore`'s resume semantics (the epoch and step counters continue,
    the optimizer state is restored; keras/src/callbacks/backup_and_restore.py) but never
    writes over the only good backup, and resumes mid-epoch states exactly.
    States with a non-finite loss are never saved: the last finite state stays resumable.
    """

    def __init__(self, backup_dir: str, steps_per_epoch: int, every_steps: int = 0,
                 keep: int = 2):
        super().__init__()
        self.backup_dir = backup_dir
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self.keep = keep
        self.generations: list[Generation] = []
        self.saw_non_finite = False
        self._step = 0
        self._last_saved_step = -1
        self.restored_from: str | None = None  # the weights file `restore()` loaded
        self.batches_trained = 0  # batches this process trained (Keras' step counter also
        # counts the call that found the input exhausted)

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.backup_dir, METADATA)

    # --- restore ---
    def _candidates(self) -> list[Generation]:
        """Generations to try, newest first: from the metadata, else from the folder."""
        try:
            meta = files.read_json(self.metadata_path, missing_ok=True)
        except ValueError as e:
            log.warning("%s; looking for backups by file name", e)
            meta = None
            names = sorted((n for n in tf.io.gfile.listdir(self.backup_dir)
                            if _GENERATION.match(n)),
                           reverse=True)
            return [Generation(n, int(_GENERATION.match(n).group(1)), -1, -1) for n in names]
        if meta is None:
            return []
        if "generations" not in meta:  # written by keras.callbacks.BackupAndRestore
            return [Generation(LATEST, -1, int(meta.get("epoch", 0)), 0)]
        return [Generation(**g) for g in meta["generations"]]

    def restore(self) -> int:
        """Loads the newest usable generation into the model (built, with a built optimizer).

        Returns the restored step (0 when there is no backup). Raises BackupError when backups
        exist but none loads."""
        if not tf.io.gfile.isdir(self.backup_dir):
            return 0
        files.remove_stale_temps(self.backup_dir)
        candidates = self._candidates()
        tried = []
        for i, gen in enumerate(candidates):
            path = os.path.join(self.backup_dir, gen.weights)
            problem = self._check(gen, path)
            if problem is None:
                try:
                    self.model.load_weights(path)
                except Exception as e:  # h5py raises OSError, Keras ValueError, ...
                    problem = f"does not load: {type(e).__name__}: {str(e)[:200]}"
            step = int(self.model.optimizer.iterations.numpy())
            if problem is None and gen.step >= 0 and step != gen.step:
                problem = f"holds step {step}, the metadata says {gen.step}"
            if problem is None:
                if tried:
                    log.warning("resuming from the older backup %s (step %d) instead", path, step)
                if gen.weights == LATEST:  # keras.callbacks.BackupAndRestore's file
                    self.generations = []  # (`latest.weights.h5` is replaced at the next save)
                else:
                    self.generations = [dataclasses.replace(
                        gen, step=step, epoch=step // self.steps_per_epoch,
                        batch=step % self.steps_per_epoch)] + candidates[i + 1:][:self.keep - 1]
                self._last_saved_step = step
                self.restored_from = path
                return step
            nxt = candidates[i + 1].weights if i + 1 < len(candidates) else None
            log.warning("backup %s is damaged: %s; %s", path, problem,
                        f"falling back to the previous backup {nxt}" if nxt
                        else "no older backup is left")
            tried.append(f"{gen.weights} ({problem})")
        if tried:
            raise BackupError(
                f"no usable backup in {self.backup_dir}: tried {'; '.join(tried)}. Move the "
                "folder away to start this run from scratch")
        return 0

    @staticmethod
    def _check(gen: Generation, path: str) -> str | None:
        if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
            return "the file is missing"
        if gen.sha256 and sha256_file(path) != gen.sha256:
            return "its SHA-256 does not match the metadata (truncated or modified)"
        return None

    # --- save ---
    def save(self) -> None:
        step = int(self.model.optimizer.iterations.numpy())
        if step == self._last_saved_step:
            return
        tf.io.gfile.makedirs(self.backup_dir)
        name = f"step-{step:09d}.weights.h5"
        path = os.path.join(self.backup_dir, name)
        save_weights_atomic(self.model, path, fault="backup.weights")
        gen = Generation(name, step, step // self.steps_per_epoch, step % self.steps_per_epoch,
                         sha256_file(path))
        generations = [gen] + [g for g in self.generations if g.weights != name][:self.keep - 1]
        files.write_json_atomic(self.metadata_path, {
            "epoch": gen.epoch, "batch": gen.batch, "step": step, "weights": name,
            "generations": [dataclasses.asdict(g) for g in generations]},
            fault="backup.metadata")
        self.generations = generations
        self._last_saved_step = step
        self._link_latest(path)
        keep = {g.weights for g in generations}
        for old in tf.io.gfile.listdir(self.backup_dir):
            if _GENERATION.match(old) and old not in keep:
                tf.io.gfile.remove(os.path.join(self.backup_dir, old))
        files.fault_point("backup.cleaned")

    def _link_latest(self, path: str) -> None:
        latest = os.path.join(self.backup_dir, LATEST)
        tmp = files.temp_path(latest)
        if files.is_remote(latest):  # object stores have no links: a copy
            tf.io.gfile.copy(path, tmp, overwrite=True)
            tf.io.gfile.rename(tmp, latest, overwrite=True)
            return
        if os.path.exists(tmp):
            os.remove(tmp)
        try:
            os.link(path, tmp)
        except OSError:  # no hard links on this file system
            shutil.copyfile(path, tmp)
        os.replace(tmp, latest)

    # --- callback hooks ---
    def _finite(self, logs) -> bool:
        loss = (logs or {}).get("loss")
        finite = loss is None or math.isfinite(float(loss))
        self.saw_non_finite = self.saw_non_finite or not finite
        return not self.saw_non_finite

    def kept(self) -> str:
        """What a rerun resumes from, in words (for error messages)."""
        if not self.generations:
            return (f"no backup was written before that ({self.backup_dir} holds nothing to "
                    "resume)")
        newest = self.generations[0]
        return (f"the last good state is step {newest.step} in "
                f"{os.path.join(self.backup_dir, newest.weights)}")

    def on_train_begin(self, logs=None):
        self._step = int(self.model.optimizer.iterations.numpy())
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        self._batches += 1
        self.batches_trained += 1
        # The last step of an epoch is saved by `on_epoch_end`, after the epoch's other
        # callbacks (put this callback last): a kill before it resumes before that step.
        if (self._finite(logs) and self.every_steps and self._step % self.every_steps == 0
                and self._step % self.steps_per_epoch):
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        # An epoch that ran no batch (input that makes none) trained nothing: no backup, so a
        # run that never trained leaves no state and accepts new settings (`run.prepare`).
        if getattr(self, "_batches", 0) and self._finite(logs):
            self.save()


class EpochCheckpoint(keras.callbacks.Callback):
    """Writes `<folder>/epoch-NNN.weights.h5` (1-based) atomically at the end of each finite
    epoch that ran all its steps (an epoch cut short by input that ran out is not one:
    `--init_from` would load its weights as a trained epoch)."""

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder
        self._batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            return
        if self._batches < (self.params or {}).get("steps", 0) or not self._batches:
            return
        tf.io.gfile.makedirs(self.folder)
        path = os.path.join(self.folder, f"epoch-{epoch + 1:03d}.weights.h5")
        save_weights_atomic(self.model, path, fault="epoch_checkpoint")


class _StopAtEpochEnd(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def fit_segments(start_step: int, epochs: int, steps_per_epoch: int) -> list[tuple[int, int]]:
    """(epoch index, steps) of the `fit` calls that take a run from `start_step` to
    `epochs * steps_per_epoch`: the rest of a partly trained epoch, then whole epochs."""
    segments = []
    epoch, done = divmod(start_step, steps_per_epoch)
    if done and epoch < epochs:
        segments.append((epoch, steps_per_epoch - done))
        epoch += 1
    if epoch < epochs:
        segments.append((epoch, steps_per_epoch))
    return segments


def resumable_fit(model: keras.Model, make_dataset: Callable[[int], tf.data.Dataset], *,
                  start_step: int, epochs: int, steps_per_epoch: int,
                  callbacks: list[keras.callbacks.Callback], verbose: int | str = "auto",
                  validation_data: tf.data.Dataset | None = None,
                  validation_steps: int | None = None) -> int:
    """Trains from `start_step` (restored) to `epochs * steps_per_epoch` and returns the step
    reached (less if a callback stopped training, e.g. on a NaN loss).

    `make_dataset(step)` builds the training input for a `fit` call starting at `step`, so a
    resumed run can draw windows other than those the first run trained on."""
    step = start_step
    for epoch, steps in fit_segments(start_step, epochs, steps_per_epoch):
        partial = steps != steps_per_epoch
        if partial:
            log.info("finishing epoch %d: steps %d..%d", epoch + 1, step + 1, step + steps)
        model.fit(make_dataset(step), initial_epoch=epoch,
                  epochs=epochs, steps_per_epoch=steps,
                  callbacks=callbacks + ([_StopAtEpochEnd()] if partial else []),
                  validation_data=validation_data, validation_steps=validation_steps,
                  verbose=verbose,
                  # a tf.data input shuffles itself; fit's default shuffle=True only warns
                  # (keras/src/trainers/data_adapters/__init__.py:69, Keras 3.15)
                  shuffle=False)
        expected = step + steps * (1 if partial else epochs - epoch)
        step = int(model.optimizer.iterations.numpy())
        if step != expected:
            break
    return step


# === Export record ===
def read_export_record(model_dir: str) -> dict | None:
    """`<model_dir>/export.json`: the last export's folder, step and weights checksum."""
    try:
        return files.read_json(os.path.join(model_dir, "export.json"), missing_ok=True)
    except ValueError as e:
        log.warning("%s; it will be rewritten", e)
        return None


def write_export_record(model_dir: str, export_dir: str, step: int, weights_sha256: str) -> None:
    files.write_json_atomic(os.path.join(model_dir, "export.json"),
                      {"export_dir": export_dir if files.is_remote(export_dir)
                       else os.path.abspath(export_dir), "step": step,
                       "weights_sha256": weights_sha256}, fault="export_record")
