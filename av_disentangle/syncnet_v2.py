"""The published SyncNet (joonson/syncnet_python, `syncnet_v2.model`) as Keras models.

    python -m av_disentangle.convert syncnet_python syncnet_v2.model --export_dir DIR
    python evaluate.py --task sync --syncnet DIR --videos FOLDER --sync_csv OUT.csv

Talking-face papers (Wav2Lip and its successors) report LSE-D / LSE-C computed by
syncnet_python's `SyncNetInstance.evaluate` with these weights; `evaluation/lse.py` computes
the same measurement with the models here. The network is its `SyncNetModel.S(
num_layers_in_fc_layers=1024)`, layer for layer:

  lip   (B, 5, 224, 224, 3) float32, BGR 0..255 as `cv2.imread` gives (its `imtv` is the
        frames as float, no normalisation) -> `netcnnlip` (Conv3d 5x7x7 stride (1,2,2), then
        2-D convs on the single remaining time step) -> (B, 512) -> `netfclip` -> (B, 1024)
  audio (B, 13, 20) float32: 13 MFCCs (`python_speech_features.mfcc` of the int16 samples at
        16 kHz) x 20 frames of 10 ms = 5 video frames -> `netcnnaud` -> (B, 512) ->
        `netfcaud` -> (B, 1024)

Its padded max-pools (`MaxPool3d(..., padding=(0,1,1))`) pad with -inf; each follows a ReLU,
so zero padding gives the same maxima (every window holds a real, >= 0 value). Its padded
strided conv (5x5, stride 2, padding 1) is an explicit ZeroPadding2D then a valid conv: TF's
"same" padding would put the extra row at the end only. BatchNorm epsilon 1e-5 (PyTorch's).

Weight layouts (PyTorch -> Keras, channels-last):
  Conv3d (out, in, 5, kh, kw), the first lip conv -> Conv3D (5, kh, kw, in, out)
  Conv3d (out, in, 1, kh, kw)                     -> Conv2D (kh, kw, in, out)
  Conv2d (out, in, kh, kw), audio (kh over MFCCs) -> Conv2D (kh, kw, in, out)
  Linear (out, in)                                -> Dense (in, out)
  BatchNorm weight, bias, running_mean, running_var -> gamma, beta, moving_mean,
                                                       moving_variance
"""

from __future__ import annotations

import json
import logging
import os
from typing import Mapping

import keras
import numpy as np
import tensorflow as tf

from av_disentangle.errors import UserError
from av_disentangle.export import move_folder

log = logging.getLogger(__name__)

LIP_FRAMES = 5
"""Video frames per window (its `imtv[:, :, vframe:vframe + 5]`)."""
LIP_SIZE = 224
MFCC_COEFFICIENTS = 13
MFCC_FRAMES = 20
"""MFCC frames per window (`cct[..., vframe * 4:vframe * 4 + 20]`: 4 per video frame)."""
EMBEDDING_DIM = 1024
SIGNATURES = ("lip_embedding", "audio_embedding")
KIND = "syncnet_python"
PUBLISHED_SHA256 = "961e8696f888fce4f3f3a6c3d5b3267cf5b343100b238e79b2659bff2c605442"
"""SHA-256 of syncnet_python's `syncnet_v2.model` (54,573,114 bytes, its download_model.sh)."""
BN_EPSILON = 1e-5

# (Sequential index in netcnnlip, filters, kernel, strides, zero padding before) of its convs
# after the first; a MaxPool follows indices 4 (3x3 s2, padded 1) and 14 (3x3 s2).
_LIP_CONVS = ((4, 256, 5, 2, 1), (8, 256, 3, 1, 1), (11, 256, 3, 1, 1), (14, 256, 3, 1, 1),
              (18, 512, 6, 1, 0))
# (index in netcnnaud, filters, kernel) of its convs (all stride 1, padding 1 but the last).
_AUDIO_CONVS = ((0, 64, (3, 3)), (4, 192, (3, 3)), (8, 384, (3, 3)), (11, 256, (3, 3)),
                (14, 256, (3, 3)), (18, 512, (5, 4)))


class SyncNetWeightsError(UserError):
    """A state dict that is not syncnet_python's `S`: one line naming the file and the keys."""


def _bn(name: str) -> keras.layers.Layer:
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=name)


def _fc(x, prefix: str, dim: int):
    """Its `netfc*`: Linear 512 -> 512, BatchNorm1d, ReLU, Linear 512 -> dim."""
    x = keras.layers.Dense(512, name=f"{prefix}_0")(x)
    x = _bn(f"{prefix}_1")(x)
    x = keras.layers.ReLU()(x)
    return keras.layers.Dense(dim, name=f"{prefix}_3")(x)


def build_lip_model(embedding_dim: int = EMBEDDING_DIM) -> keras.Model:
    """`forward_lip`: (B, 5, 224, 224, 3) float32 BGR 0..255 -> (B, embedding_dim)."""
    frames = keras.Input((LIP_FRAMES, LIP_SIZE, LIP_SIZE, 3), name="frames")
    x = keras.layers.Conv3D(96, (5, 7, 7), strides=(1, 2, 2), name="netcnnlip_0")(frames)
    x = keras.layers.Reshape((109, 109, 96))(x)  # the one time step left
    x = _bn("netcnnlip_1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D(3, strides=2)(x)  # (B, 54, 54, 96)
    for index, filters, kernel, stride, pad in _LIP_CONVS:
        if pad:
            x = keras.layers.ZeroPadding2D(pad)(x)
        x = keras.layers.Conv2D(filters, kernel, strides=stride, name=f"netcnnlip_{index}")(x)
        x = _bn(f"netcnnlip_{index + 1}")(x)
        x = keras.layers.ReLU()(x)
        if index == 4:  # MaxPool3d((1,3,3), (1,2,2), padding (0,1,1)) after a ReLU
            x = keras.layers.MaxPooling2D(3, strides=2)(keras.layers.ZeroPadding2D(1)(x))
        elif index == 14:
            x = keras.layers.MaxPooling2D(3, strides=2)(x)
    x = keras.layers.Flatten()(x)  # (B, 512): a 1 x 1 map
    return keras.Model(frames, _fc(x, "netfclip", embedding_dim), name="syncnet_lip")


def build_audio_model(embedding_dim: int = EMBEDDING_DIM) -> keras.Model:
    """`forward_aud`: (B, 13, 20) MFCCs x frames -> (B, embedding_dim)."""
    mfcc = keras.Input((MFCC_COEFFICIENTS, MFCC_FRAMES), name="mfcc")
    x = keras.layers.Reshape((MFCC_COEFFICIENTS, MFCC_FRAMES, 1))(mfcc)  # its (N, 1, 13, 20)
    for index, filters, kernel in _AUDIO_CONVS:
        padding = "valid" if index == 18 else "same"
        x = keras.layers.Conv2D(filters, kernel, padding=padding, name=f"netcnnaud_{index}")(x)
        x = _bn(f"netcnnaud_{index + 1}")(x)
        x = keras.layers.ReLU()(x)
        if index == 4:
            x = keras.layers.MaxPooling2D((3, 3), strides=(1, 2))(x)  # (B, 11, 9, 192)
        elif index == 14:
            x = keras.layers.MaxPooling2D((3, 3), strides=(2, 2))(x)  # (B, 5, 4, 256)
    x = keras.layers.Flatten()(x)
    return keras.Model(mfcc, _fc(x, "netfcaud", embedding_dim), name="syncnet_audio")


# === Weights ===
def _conv_layers(model: keras.Model, prefix: str) -> list[str]:
    return [layer.name for layer in model.layers if layer.name.startswith(prefix + "_")]


def expected_shapes(embedding_dim: int = EMBEDDING_DIM) -> dict[str, tuple[int, ...]]:
    """Every key of `S(num_layers_in_fc_layers=embedding_dim).state_dict()` but
    `num_batches_tracked`, with its PyTorch shape."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(key, shape):
        shapes[f"{key}.weight"], shapes[f"{key}.bias"] = shape, (shape[0],)

    def bn(key, n):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{key}.{name}"] = (n,)

    conv("netcnnlip.0", (96, 3, 5, 7, 7))
    bn("netcnnlip.1", 96)
    channels = 96
    for index, filters, kernel, _, _ in _LIP_CONVS:
        conv(f"netcnnlip.{index}", (filters, channels, 1, kernel, kernel))
        bn(f"netcnnlip.{index + 1}", filters)
        channels = filters
    channels = 1
    for index, filters, kernel in _AUDIO_CONVS:
        conv(f"netcnnaud.{index}", (filters, channels) + kernel)
        bn(f"netcnnaud.{index + 1}", filters)
        channels = filters
    for head in ("netfcaud", "netfclip"):
        conv(f"{head}.0", (512, 512))
        bn(f"{head}.1", 512)
        conv(f"{head}.3", (embedding_dim, 512))
    return shapes


def check_state(state: Mapping[str, np.ndarray], source: str) -> int:
    """The embedding size of a syncnet_python state dict; raises SyncNetWeightsError naming
    `source` and the first missing / unexpected / misshapen keys."""
    if "netfcaud.3.weight" not in state:
        sample = ", ".join(sorted(state)[:4]) or "no tensors"
        raise SyncNetWeightsError(f"{source}: not a syncnet_python SyncNetModel.S state dict "
                                  f"(no netfcaud.3.weight; keys: {sample}, ...)")
    dim = int(np.shape(state["netfcaud.3.weight"])[0])
    want = expected_shapes(dim)
    have = {k: tuple(np.shape(v)) for k, v in state.items()
            if not k.endswith("num_batches_tracked")}
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
    if wrong:
        problems.append("shapes differ: " + ", ".join(f"{k} {have[k]} (want {want[k]})"
                                                      for k in wrong[:3]))
    if problems:
        raise SyncNetWeightsError(f"{source}: not a syncnet_python SyncNetModel.S state dict: "
                                  + "; ".join(problems))
    return dim


def _keras_kernel(key: str, weight: np.ndarray) -> np.ndarray:
    if weight.ndim == 2:                      # Linear (out, in)
        return weight.T
    if weight.ndim == 4:                      # Conv2d (out, in, kh, kw)
        return weight.transpose(2, 3, 1, 0)
    if key == "netcnnlip.0.weight":           # Conv3d (out, in, kt, kh, kw) -> Conv3D
        return weight.transpose(2, 3, 4, 1, 0)
    return weight[:, :, 0].transpose(2, 3, 1, 0)  # Conv3d with kt = 1 -> Conv2D


def assign_state(lip: keras.Model, audio: keras.Model, state: Mapping[str, np.ndarray]) -> None:
    """Copies a checked syncnet_python state dict into the two models (layers are named
    `<module>_<Sequential index>` after its keys)."""
    for model in (lip, audio):
        for layer in model.layers:
            if "_" not in layer.name or not layer.name.startswith("net"):
                continue
            key = layer.name.replace("_", ".")
            f32 = lambda name: np.asarray(state[f"{key}.{name}"], np.float32)  # noqa: E731
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.set_weights([f32("weight"), f32("bias"), f32("running_mean"),
                                   f32("running_var")])
            else:
                layer.set_weights([_keras_kernel(f"{key}.weight", f32("weight")), f32("bias")])


def state_from_models(lip: keras.Model, audio: keras.Model) -> dict[str, np.ndarray]:
    """The inverse of `assign_state` (syncnet_python's key layout), e.g. to save a model as
    the .npz the converter reads."""
    state = {}
    for model in (lip, audio):
        for layer in model.layers:
            if not layer.name.startswith("net"):
                continue
            key = layer.name.replace("_", ".")
            w = layer.get_weights()
            if isinstance(layer, keras.layers.BatchNormalization):
                for name, value in zip(("weight", "bias", "running_mean", "running_var"), w):
                    state[f"{key}.{name}"] = value
                continue
            kernel = w[0]
            if kernel.ndim == 2:
                kernel = kernel.T
            elif kernel.ndim == 5:
                kernel = kernel.transpose(4, 3, 0, 1, 2)
            else:
                kernel = kernel.transpose(3, 2, 0, 1)
                if key.startswith("netcnnlip"):
                    kernel = kernel[:, :, None]
            state[f"{key}.weight"], state[f"{key}.bias"] = kernel, w[1]
    return state


def build_models(state: Mapping[str, np.ndarray], source: str = "state dict"
                 ) -> tuple[keras.Model, keras.Model]:
    """(lip model, audio model) holding a syncnet_python state dict's weights."""
    dim = check_state(state, source)
    lip, audio = build_lip_model(dim), build_audio_model(dim)
    assign_state(lip, audio, state)
    return lip, audio


# === SavedModel ===
class _SyncNetModule(tf.Module):
    def __init__(self, lip: keras.Model, audio: keras.Model) -> None:
        super().__init__()
        self.lip, self.audio = lip, audio

    @tf.function(input_signature=[tf.TensorSpec((None, LIP_FRAMES, LIP_SIZE, LIP_SIZE, 3),
                                                tf.float32, name="frames")])
    def lip_embedding(self, frames):
        """(B, 5, 224, 224, 3) float32 BGR 0..255 -> {"embedding": (B, D)}."""
        return {"embedding": self.lip(frames, training=False)}

    @tf.function(input_signature=[tf.TensorSpec((None, MFCC_COEFFICIENTS, MFCC_FRAMES),
                                                tf.float32, name="mfcc")])
    def audio_embedding(self, mfcc):
        """(B, 13, 20) MFCCs (python_speech_features) -> {"embedding": (B, D)}."""
        return {"embedding": self.audio(mfcc, training=False)}


def export_syncnet(lip: keras.Model, audio: keras.Model, export_dir: str,
                   provenance: Mapping[str, object]) -> str:
    """Writes a SavedModel with the signatures `lip_embedding` and `audio_embedding` plus
    `syncnet.json` (kind, embedding size, provenance) to `export_dir`: into `<dir>.tmp`
    first, then one rename, so a killed export never looks complete."""
    if tf.io.gfile.exists(export_dir):
        raise FileExistsError(f"export directory {export_dir} already exists")
    tmp_dir = export_dir.rstrip("/") + ".tmp"
    if tf.io.gfile.exists(tmp_dir):
        tf.io.gfile.rmtree(tmp_dir)
    module = _SyncNetModule(lip, audio)
    tf.saved_model.save(module, tmp_dir, signatures={
        "lip_embedding": module.lip_embedding, "audio_embedding": module.audio_embedding})
    meta = {"kind": KIND, "embedding_dim": int(lip.output_shape[-1]),
            "signatures": list(SIGNATURES), **provenance}
    with tf.io.gfile.GFile(os.path.join(tmp_dir, "syncnet.json"), "w") as f:
        json.dump(meta, f, indent=2)
    move_folder(tmp_dir, export_dir)
    log.info("exported syncnet_python SyncNet to %s (signatures: %s)", export_dir,
             ", ".join(SIGNATURES))
    return export_dir
