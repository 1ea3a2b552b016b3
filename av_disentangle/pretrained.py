"""Where `--init_from` weights come from, and how they get into a model's streams.

Three kinds of source (`resolve_init_from`):
- `weights`: a self-supervised run directory (its latest `checkpoints/epoch-NNN.weights.h5`) or
  one such file; the run's `config.json` gives its model config;
- `saved_model`: a SavedModel exported by this project (saved_model.pb + model_config.json),
  variables copied by name;
- `syncnet_trainer`: a joonson/syncnet_trainer checkpoint (`.model` / `.pt` / `.pth`, or its
  state dict as `.npz`; `convert.py`), converted into `ModelConfig.syncnet_trainer()` streams
  (and the similarity scales/biases of a self-supervised model).
The source's model config must equal the run's (`check_model_config`: a mismatch is one line
naming the differing fields); for a reference checkpoint that is `--model_size
syncnet_trainer`. Both objectives use it: `train.py --init_from` starts a self-supervised run
(`run.build`) or a supervised one (`supervised.build_supervised_model`) from it; a resumed run
restores its backup over it.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from av_disentangle import convert
from av_disentangle.config import LossConfig, ModelConfig, from_dict, to_dict
from av_disentangle.convert import CHECKPOINT_ENDINGS, ConvertError
from av_disentangle.model import DisentangleModel
from av_disentangle.errors import UserError
from av_disentangle.files import read_json

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PretrainedSource:
    """Where pretrained streams come from.

    Attributes:
      kind: `weights` (a run's per-epoch .weights.h5), `saved_model` or `syncnet_trainer`.
      path: the weights file, SavedModel directory or reference checkpoint.
      model_config: the source's model config as a dict (`to_dict`).
      loss_config: the run's loss config (dict; `weights` only, to rebuild its model).
      model_size: the run's --model_size flag, if recorded.
      state: the reference checkpoint's state dict (`syncnet_trainer` only).
    """

    kind: str
    path: str
    model_config: dict[str, Any]
    loss_config: dict[str, Any] | None = None
    model_size: str | None = None
    state: dict[str, np.ndarray] | None = dataclasses.field(default=None, repr=False)


def _read_json(path: str) -> dict[str, Any]:
    """`files.read_json`, its error worded for the flag."""
    try:
        return read_json(path)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"--init_from: cannot read {e}") from e


def _epoch_number(path: str) -> int:
    """`.../epoch-012.weights.h5` -> 12 (numeric order also past epoch 999)."""
    digits = os.path.basename(path)[len("epoch-"):-len(".weights.h5")]
    return int(digits) if digits.isdigit() else -1


def resolve_init_from(init_from: str, temporal_stride: int = 2) -> PretrainedSource:
    """Finds the weights and the model config of `init_from` (kinds: module docstring).
    `temporal_stride` is the run's: a reference checkpoint does not record its own.

    Raises:
      UserError: none of these, or files missing, naming what was expected.
    """
    path = init_from.rstrip("/")
    if path.endswith(CHECKPOINT_ENDINGS) and not tf.io.gfile.isdir(path):
        try:
            state, config = convert.load_checkpoint(path, temporal_stride)
        except ConvertError as e:
            raise UserError(f"--init_from {e}") from e
        return PretrainedSource("syncnet_trainer", path, to_dict(config),
                                model_size="syncnet_trainer", state=state)
    if tf.io.gfile.isdir(path) and tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        config_path = os.path.join(path, "model_config.json")
        if not tf.io.gfile.exists(config_path):
            raise UserError(f"--init_from {init_from}: SavedModel without model_config.json "
                             "(not exported by this project's train.py)")
        return PretrainedSource("saved_model", path, _read_json(config_path))
    if path.endswith(".weights.h5") and tf.io.gfile.exists(path):
        weights, run_dir = path, os.path.dirname(os.path.dirname(os.path.abspath(path)))
    elif tf.io.gfile.isdir(path):
        run_dir = path
        found = sorted(glob.glob(os.path.join(path, "checkpoints", "epoch-*.weights.h5")),
                       key=_epoch_number)
        if not found:
            raise UserError(
                f"--init_from {init_from}: no per-epoch weights "
                f"({os.path.join(path, 'checkpoints', 'epoch-NNN.weights.h5')}) and no "
                "saved_model.pb: give a self-supervised run directory that finished at least "
                "one epoch, one of its weights files, or an exported SavedModel directory")
        weights = found[-1]
    else:
        raise UserError(f"--init_from {init_from} does not exist (give a run directory, a "
                         "checkpoints/epoch-NNN.weights.h5 file, a SavedModel directory or a "
                         f"syncnet_trainer checkpoint ({'/'.join(CHECKPOINT_ENDINGS)}))")
    config_path = os.path.join(run_dir, "config.json")
    if not tf.io.gfile.exists(config_path):
        raise UserError(f"--init_from {init_from}: {config_path} is missing (the run's "
                         "resolved config, written by train.py)")
    run = _read_json(config_path)
    if "model" not in run:
        raise UserError(f"--init_from {init_from}: {config_path} has no `model` config")
    if run.get("supervised"):
        raise UserError(f"--init_from {init_from} is a supervised run; give a self-supervised "
                         "run, or the SavedModel a supervised run exported")
    return PretrainedSource("weights", weights, run["model"], run.get("loss") or {},
                            (run.get("flags") or {}).get("model_size"))


def check_model_config(source: PretrainedSource, model_config: ModelConfig) -> None:
    """UserError naming every field where the pretrained model's config differs from this
    run's (fields its file predates count as the value such models were built with)."""
    ours = to_dict(model_config)
    try:
        theirs = to_dict(ModelConfig.from_saved(source.model_config))
    except (TypeError, ValueError) as e:
        raise UserError(f"--init_from {source.path}: unreadable model config: {e}") from e
    diffs = [f"{k}: pretrained {theirs.get(k, '(absent)')} vs this run {ours.get(k, '(absent)')}"
             for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    if diffs:
        size = f" (its --model_size was {source.model_size})" if source.model_size else ""
        raise UserError(
            f"--init_from {source.path}: the pretrained model has another configuration than "
            f"this run{size}: {'; '.join(diffs)}. Use the same --model_size / size flags as "
            "the pretrained model")


def check_init_from(init_from: str, model_config: ModelConfig) -> PretrainedSource:
    """Resolves `init_from` and checks its model config against `model_config`, before the
    run writes any state. Raises UserError."""
    source = resolve_init_from(init_from, model_config.temporal_stride)
    check_model_config(source, model_config)
    return source


def _copy_weights(target: keras.Model, source: keras.Model) -> None:
    for t, s in zip(target.weights, source.weights, strict=True):
        t.assign(s)


def _load_from_saved_model(streams: tuple[keras.Model, ...], path: str) -> None:
    """Copies variables by name (`audio_conv1/kernel`, ...) from an exported SavedModel."""
    loaded = tf.saved_model.load(path)
    by_name: dict[str, tf.Variable] = {}
    for v in loaded.variables:
        by_name.setdefault(v.name.split(":")[0], v)
    for stream in streams:
        for target in stream.weights:
            v = by_name.get(target.path)
            if v is None or tuple(v.shape) != tuple(target.shape):
                found = "missing" if v is None else f"shape {tuple(v.shape)}"
                raise UserError(
                    f"--init_from {path}: variable {target.path} {tuple(target.shape)} is "
                    f"{found} in the SavedModel (exported by another version of the model?)")
            target.assign(v)


def load_streams(face_stream: keras.Model, audio_stream: keras.Model,
                 source: PretrainedSource, model: keras.Model | None = None) -> None:
    """Copies the pretrained face and audio streams into these (checked with
    `check_init_from`); with a reference checkpoint and a `DisentangleModel` `model`, also its
    similarity scales and biases (`__L__.*`).

    Raises:
      UserError: weights that do not fit this code's stream architecture.
    """
    if source.kind == "syncnet_trainer":
        convert.assign_streams(face_stream, audio_stream, source.state)
        if model is not None and hasattr(model, "content_similarity"):
            convert.assign_similarities(model, source.state)
    elif source.kind == "saved_model":
        _load_from_saved_model((audio_stream, face_stream), source.path)
    else:
        config = ModelConfig.from_saved(source.model_config)
        try:
            pretrained = DisentangleModel(config, from_dict(LossConfig, source.loss_config or {}))
            pretrained.load_weights(source.path)
        except ValueError as e:
            raise UserError(f"--init_from {source.path}: cannot load the weights into this "
                             f"code's model (was it trained with another version?): {e}") from e
        _copy_weights(audio_stream, pretrained.audio_stream)
        _copy_weights(face_stream, pretrained.face_stream)
    log.info("initialised the streams from %s (%s)", source.path, source.kind)
