"""The test harness: a tiny model per mode, an export round-trip check, and `train.py` run
in-process (the session fixture `tiny_export`, in conftest, is the tiny model exported once).

    from harness import assert_export_matches_keras, run_train, tiny_model

`tiny_model(**loss)` is `DisentangleModel(ModelConfig.tiny(), LossConfig(**loss))`, the model
every model-level test builds. `run_train(argv, capsys)` runs `train.py`'s `main` in this
process exactly as the command does (`errors.run_cli`: a user error is one line on stderr and
exit status 2), without the seconds a fresh interpreter spends importing TensorFlow; tests whose
point is a kill, a real exit code or stderr free of TensorFlow's start-up lines keep
`conftest.run_script`.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import train  # noqa: E402  (train.py at the repo root)
from av_disentangle.config import LossConfig, ModelConfig  # noqa: E402
from av_disentangle.errors import run_cli  # noqa: E402
from av_disentangle.model import DisentangleModel  # noqa: E402


def tiny_model(**loss) -> DisentangleModel:
    """The tiny two-stream model (`ModelConfig.tiny()`) with `LossConfig(**loss)`."""
    return DisentangleModel(ModelConfig.tiny(), LossConfig(**loss))


def assert_export_matches_keras(model: DisentangleModel, export_dir: str, seed: int = 0,
                                atol: float = 1e-5) -> None:
    """The SavedModel at `export_dir` computes what `model`'s streams compute: the speaker
    embedding (`serving_default`: time-mean identity, L2-normalised), `content`, `embed_face`
    and `face_content`, on seeded random audio (2 x 1 s) and frames (2 x 25)."""
    import numpy as np
    import tensorflow as tf

    from av_disentangle.export import SIGNATURES

    loaded = tf.saved_model.load(export_dir)
    assert set(SIGNATURES) <= set(loaded.signatures)
    rng = np.random.default_rng(seed)
    wave = (0.1 * rng.normal(size=(2, 25 * 640))).astype(np.float32)
    size = model.model_config.face_size
    frames = rng.integers(0, 256, (2, 25, size, size, 3), dtype=np.uint8)
    sr = tf.constant(16000)
    keras_audio = model.audio_stream(wave, training=False)
    keras_face = model.face_stream(frames, training=False)
    emb = loaded.signatures["serving_default"](waveform=wave, sample_rate=sr)["embedding"]
    expected = tf.math.l2_normalize(tf.reduce_mean(keras_audio["identity"], 1), -1)
    np.testing.assert_allclose(emb, expected, atol=atol)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    content = loaded.signatures["content"](waveform=wave, sample_rate=sr)["content"]
    np.testing.assert_allclose(content, keras_audio["content"], atol=atol)
    face_emb = loaded.signatures["embed_face"](frames=frames)["embedding"]
    np.testing.assert_allclose(
        face_emb, tf.math.l2_normalize(tf.reduce_mean(keras_face["identity"], 1), -1),
        atol=atol)
    face_content = loaded.signatures["face_content"](frames=frames)["content"]
    assert face_content.shape == content.shape


def run_train(argv: Sequence[str], capsys) -> tuple[int, str, str]:
    """`python train.py ARGV` in-process: (exit status, stdout, stderr). An argparse error
    (`SystemExit`) gives its status, as the command would."""
    capsys.readouterr()
    try:
        code = run_cli(train.main, "train.py", list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
