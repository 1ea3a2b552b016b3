"""An exported SavedModel's serving signatures as numpy functions (the contract is
`av_disentangle.export`).

Signatures (`tf.saved_model.load(path).signatures[...]`):
  * `serving_default`: `waveform` float32 (B, S) 16 kHz mono, S >= `export.MIN_SAMPLES` (8,000
    samples, 0.5 s) -> `embedding` (B, D) (a scalar int32 `sample_rate` input, if the signature
    has one, is fed 16000)
  * `embed_face`: `frames` uint8 (B, T, H, W, 3) RGB 25 fps -> `embedding` (B, D)
  * `content`: `waveform` (B, S) -> `content` (B, T', D)
  * `face_content`: `frames` (B, T, H, W, 3) -> `content` (B, T', D); T frames and T * 640
    samples give the same T'.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from av_disentangle.constants import SAMPLE_RATE
from av_disentangle.evaluation import EvaluationError
from av_disentangle.files import read_json


def version_hint(folder: Path) -> str:
    """What to pass instead of a model's base folder (TF Serving layout `<name>/<version>`)."""
    versions = sorted((d.name for d in folder.iterdir()
                       if d.is_dir() and d.name.isdigit() and (d / "saved_model.pb").is_file()),
                      key=int)
    if versions:
        return (f"it holds version folders {', '.join(versions)}: pass one of them, e.g. "
                f"--model {folder / versions[-1]}")
    entries = sorted(d.name for d in folder.iterdir())
    return ("and it has no version folders (<name>/<integer>/saved_model.pb)"
            + (f"; it holds {', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}"
               if entries else "; it is empty"))


def model_step(model_path: str | os.PathLike) -> int:
    """The model's version folder (`saved_models/<name>/<version>`) as the TensorBoard step, so
    evaluations of successive exports line up; 0 when it is not an integer."""
    name = Path(model_path).name
    return int(name) if name.isdigit() else 0


class ExportedModel:
    """Thin wrapper over the four serving signatures of an exported SavedModel."""

    def __init__(self, path: str | os.PathLike) -> None:
        folder = Path(path)
        if not folder.is_dir():
            raise EvaluationError(f"{path}: --model SavedModel folder not found")
        if not any((folder / f).is_file() for f in ("saved_model.pb", "saved_model.pbtxt")):
            raise EvaluationError(f"{path}: --model is not a SavedModel (no saved_model.pb); "
                                  + version_hint(folder))
        self.path = str(path)
        try:
            self._loaded = tf.saved_model.load(self.path)
        except (OSError, ValueError, tf.errors.OpError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise EvaluationError(f"{path}: cannot load the SavedModel: {first[:300]}") from err
        self.signatures = self._loaded.signatures
        self.model_config()  # an edited or unreadable model_config.json: one line, now

    def model_config(self) -> dict:
        """The `model_config.json` `export.export_saved_model` writes beside the SavedModel;
        {} when there is none (a SavedModel exported by other code).

        Raises:
          EvaluationError: it exists but is not a JSON object, or its face size disagrees with
            the face signature's (an edited file: it no longer describes the model)."""
        path = os.path.join(self.path, "model_config.json")
        try:
            config = read_json(path, missing_ok=True)
        except ValueError as err:
            raise EvaluationError(f"{err}: unreadable, expected a JSON object of model settings; "
                                  "it is written by the export beside saved_model.pb: restore "
                                  "it or remove it") from err
        if config is None:
            return {}
        size = config.get("face_size")
        declared = self.face_size(default=0)[0] if "face_content" in self.signatures else 0
        if declared and size != declared:
            raise EvaluationError(f"{path}: face_size {size!r} disagrees with the SavedModel's "
                                  f"face signatures ({declared}): the file was edited or "
                                  "belongs to another export")
        return config

    def default_crop_seconds(self) -> float:
        """The verification crop of this model's protocol: 2.015 s (32,240 samples, the
        reference's `loadWAV(max_frames=200)`: 200 mel frames after its first and last are
        dropped) for the reference's front end, else 2 s."""
        return 2.015 if self.model_config().get("front_end") == "syncnet_trainer" else 2.0

    # What each signature of an export takes and returns (`av_disentangle.export`).
    CONTRACT = {"serving_default": ({"waveform"}, "embedding"),
                "embed_audio": ({"waveform"}, "embedding"),
                "content": ({"waveform"}, "content"),
                "embed_face": ({"frames"}, "embedding"),
                "face_content": ({"frames"}, "content")}

    def require(self, *names: str) -> None:
        """Raises EvaluationError now, before any decoding, if a signature is missing or does
        not take and return what this project's exports do (a foreign SavedModel)."""
        for name in names:
            fn = self._signature(name)
            inputs = set(fn.structured_input_signature[1])
            outputs = set(fn.structured_outputs)
            wanted_in, wanted_out = self.CONTRACT.get(name, (set(), None))
            if not wanted_in <= inputs or (wanted_out and wanted_out not in outputs) or (
                    inputs - wanted_in - {"sample_rate"}):
                raise EvaluationError(
                    f"{self.path}: not an av-disentangle export: its '{name}' signature takes "
                    f"{sorted(inputs)} and returns {sorted(outputs)}; expected "
                    f"{sorted(wanted_in)} (+ optional sample_rate) -> '{wanted_out}' "
                    "(av_disentangle/export.py)")

    def _signature(self, name: str):
        if name not in self.signatures:
            raise EvaluationError(
                f"{self.path}: SavedModel has no '{name}' signature "
                f"(has: {sorted(self.signatures.keys())})")
        return self.signatures[name]

    def _audio_call(self, name: str, waveforms: np.ndarray) -> dict:
        """Calls an audio signature, adding `sample_rate` (int32 16000) if it takes one."""
        fn = self._signature(name)
        kwargs = {"waveform": tf.constant(waveforms, tf.float32)}
        if "sample_rate" in fn.structured_input_signature[1]:
            kwargs["sample_rate"] = tf.constant(SAMPLE_RATE, tf.int32)
        return fn(**kwargs)

    def face_size(self, default: int) -> tuple[int, int]:
        """(H, W) from the static `face_content` input shape, else (default, default)."""
        try:
            spec = self._signature("face_content").structured_input_signature[1]["frames"]
            h, w = spec.shape[2], spec.shape[3]
        except (EvaluationError, KeyError, IndexError, TypeError):
            h = w = None
        if h is None or w is None:
            return default, default
        return int(h), int(w)

    def embed_waveforms(self, waveforms: np.ndarray) -> np.ndarray:
        """(B, S) float32 -> (B, D) speaker embeddings."""
        return self._audio_call("serving_default", waveforms)["embedding"].numpy()

    def embed_faces(self, frames: np.ndarray) -> np.ndarray:
        """(B, T, H, W, 3) uint8 -> (B, D) face identity embeddings."""
        out = self._signature("embed_face")(frames=tf.constant(frames, tf.uint8))
        return out["embedding"].numpy()

    def audio_content(self, waveforms: np.ndarray) -> np.ndarray:
        """(B, S) float32 -> (B, T', D) audio content sequences."""
        return self._audio_call("content", waveforms)["content"].numpy()

    def face_content(self, frames: np.ndarray) -> np.ndarray:
        """(B, T, H, W, 3) uint8 -> (B, T', D) face content sequences."""
        out = self._signature("face_content")(frames=tf.constant(frames, tf.uint8))
        return out["content"].numpy()
