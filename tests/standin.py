"""A tiny stand-in SavedModel with the export contract (test helper, TF only).

Its content streams make sync offsets recoverable: a synthetic clip shows, in frame t, a 4x4
grid of grey levels v[t, k]; its audio holds the same 16 values as 40-sample constant runs
(640 samples per frame). Face content = centred 4x4 grid means, audio content = centred
40-sample run means, so the cosine is ~1 only when aligned. Used through the session fixture
`standin_model` in conftest.py.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

FACE = 32  # static face size of the stand-in's face_content signature
D_ID = 8


def _centre_normalise(x):
    x = x - tf.reduce_mean(x, axis=-1, keepdims=True)
    return tf.math.l2_normalize(x, axis=-1, epsilon=1e-9)


class StandInModel(tf.Module):
    """Fixed random projections of simple features, exposing the four serving signatures."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(0)
        self.w_voice = tf.constant(rng.normal(size=(257, D_ID)).astype(np.float32))
        self.w_face = tf.constant(rng.normal(size=(19, D_ID)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform")])
    def embed(self, waveform):
        spec = tf.abs(tf.signal.stft(waveform, 400, 160, 512))  # (B, F, 257)
        logspec = tf.reduce_mean(tf.math.log(spec + 1e-3), axis=1)
        feat = logspec - tf.reduce_mean(logspec, axis=-1, keepdims=True)
        return {"embedding": tf.math.l2_normalize(feat @ self.w_voice, axis=-1)}

    @staticmethod
    def _grid(frames):
        g = tf.reduce_mean(tf.cast(frames, tf.float32), axis=-1)  # (B, T, H, W)
        s = tf.shape(g)
        g = tf.reshape(g, [s[0], s[1], 4, FACE // 4, 4, FACE // 4])
        return tf.reshape(tf.reduce_mean(g, axis=[3, 5]), [s[0], s[1], 16])

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, FACE, FACE, 3], tf.uint8, name="frames")])
    def embed_face(self, frames):
        colour = tf.reduce_mean(tf.cast(frames, tf.float32), axis=[1, 2, 3]) / 255.0
        grid = tf.reduce_mean(self._grid(frames), axis=1) / 255.0
        feat = tf.concat([grid, colour], axis=-1)
        return {"embedding": tf.math.l2_normalize(feat @ self.w_face, axis=-1)}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform")])
    def content(self, waveform):
        s = tf.shape(waveform)
        steps = s[1] // 640
        x = tf.reshape(waveform[:, :steps * 640], [s[0], steps, 16, 40])
        return {"content": _centre_normalise(tf.reduce_mean(x, axis=-1))}

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, FACE, FACE, 3], tf.uint8, name="frames")])
    def face_content(self, frames):
        return {"content": _centre_normalise(self._grid(frames))}


def export_standin(path: str) -> str:
    """Saves the stand-in at `path` (serving_default, embed_face, content, face_content)."""
    module = StandInModel()
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.embed,
        "embed_face": module.embed_face,
        "content": module.content,
        "face_content": module.face_content,
    })
    return str(path)
