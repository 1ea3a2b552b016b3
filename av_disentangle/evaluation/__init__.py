"""Evaluation of an exported SavedModel (the library behind `evaluate.py`).

Needs only the SavedModel contract (`av_disentangle.export`), not the training code. One
module per concept:

- `exported`: `ExportedModel`, the four serving signatures as numpy functions.
- `trials`: VoxCeleb-format trial lists (`Trial`, `read_trials`, `make_trials`).
- `scoring`: pair scoring with the Keras pair-scoring model and its streaming EER/minDCF.
- `verification`: speaker verification (audio decoding, crops, embedding, `verify`).
- `baselines`: free label-free verification baselines (MFCC mean+std, long-term spectrum).
- `windows`: a Keras model evaluated in memory on track windows and crops with the same
  crops, pooling and scorer as the export (the benchmarks' path); `probes`: linear / MLP probes.
- `video`: face clips read exactly as `pipelines.prepare` reads them (`load_face_clip`).
- `sync`, `crossmodal`: the audio-visual sync and face-voice identity protocols; `lse`:
  LSE-D / LSE-C with syncnet_python's converted SyncNet (its `SyncNetInstance.evaluate`).
- `plots`: DET curve and figure writing; `reports`: TensorBoard, projector, score files.
- `paths`: input/output checks before any work, atomic writes; `cli`: the `evaluate.py` flags.
"""

from __future__ import annotations

from av_disentangle.errors import UserError


class EvaluationError(UserError):
    """Bad evaluation input (a file, folder or flag), reported as one line naming it; exit 2."""


# The free verification baselines (`baselines`); here, without TensorFlow, for the CLI's flags.
BASELINES: tuple[str, ...] = ("mfcc", "mfcc_z", "ltas", "ltas_z")
