"""Reference checkpoints into TensorFlow: joonson/syncnet_trainer's `.model` files.

    python -m av_disentangle.convert syncnet_trainer CHECKPOINT.model --export_dir DIR
    python train.py --init_from CHECKPOINT.model --model_size syncnet_trainer ...

A syncnet_trainer checkpoint is `SyncNet.state_dict()` as `SyncNetDist.saveParameters` writes
it (`torch.save`): `__S__.<SyncNetModelFBank keys>` - the trunks `netcnnaud`, `netcnnlip`, the
heads `netfcaud` (audio content), `netfcspk` (audio identity), `netfclip` (face content),
`netfcface` (face identity), the front end's buffers `torchfb.spectrogram.window` and
`torchfb.mel_scale.fb` - and `__L__.wI/bI/wC/bC` (the identity and content similarity scale
and bias), possibly with a `module.` prefix, which its `loadParameters` strips too. BatchNorm
running statistics come along; `num_batches_tracked` is not used.

The converted model is `ModelConfig.syncnet_trainer()` (reference sizes with the reference's
conventions: its front end, BGR 0..255 faces, raw head outputs), so it computes what the
reference's `forward_aud` / `forward_vid` compute, number for number (`tests/test_parity.py`
checks it against outputs of the reference's own code). Widths and the embedding size are
read from the checkpoint's shapes; the temporal stride is not in a checkpoint (the weights fit
any), so it is a flag (default 2, the reference README's command).

Reading a `.model` file needs PyTorch, an optional extra (`pip install -e '.[convert]'`),
never a dependency of training or serving. A state dict saved as `.npz` (numpy arrays under
the same keys) converts without it.

Weight layouts (PyTorch -> Keras, channels-last; the layer table is in `streams.py`):
  audio Conv2d (out, in, mel, time)          -> Conv2D (time, mel, in, out)
  face Conv3d (out, in, 5, kh, kw), conv1    -> Conv2D (kh, kw, 5 * in, out), frame-major
                                                channels (`streams.FoldTime`)
  face Conv3d (out, in, 1, kh, kw)           -> Conv2D (kh, kw, in, out)
  head Conv1d (out, in, 1)                   -> Conv1D (1, in, out)
  BatchNorm weight, bias, running_mean, running_var -> gamma, beta, moving_mean,
                                                       moving_variance (eps 1e-5 both)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import sys
from typing import Mapping, Sequence

import numpy as np

from av_disentangle.config import ModelConfig
from av_disentangle.errors import UserError, run_cli

log = logging.getLogger(__name__)

KINDS = ("syncnet_trainer", "syncnet_python")
CHECKPOINT_ENDINGS = (".model", ".pt", ".pth", ".npz")
"""File endings `--init_from` reads as a reference checkpoint."""

# Sequential indices of the convs in both trunks (each conv's BatchNorm is the next index).
_TRUNK_CONVS = ((0, "conv1"), (4, "conv2"), (8, "conv3"), (11, "conv4"), (14, "conv5"),
                (18, "fc6"))
_HEADS = {"netfcaud": "audio_content", "netfcspk": "audio_identity",
          "netfclip": "face_content", "netfcface": "face_identity"}
_SIMILARITIES = {"content_similarity": ("__L__.wC", "__L__.bC"),
                 "identity_similarity": ("__L__.wI", "__L__.bI")}
_FRONT_END_BUFFERS = ("__S__.torchfb.spectrogram.window", "__S__.torchfb.mel_scale.fb")


class ConvertError(UserError):
    """A checkpoint that cannot be read or does not fit: one line naming the file and what."""


# === Reading ===
def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The checkpoint's state dict as float32/int numpy arrays, `module.` prefixes stripped.

    `.npz`: numpy's own format. Anything else: `torch.load(map_location="cpu",
    weights_only=True)`, which needs PyTorch. Raises ConvertError naming the file."""
    path = str(path)
    if not os.path.isfile(path):
        raise ConvertError(f"{path}: checkpoint not found")
    if path.endswith(".npz"):
        try:
            with np.load(path) as data:
                state = {k: data[k] for k in data.files}
        except (OSError, ValueError) as e:
            raise ConvertError(f"{path}: cannot read the .npz state dict: {e}") from e
    else:
        try:
            import torch
        except ImportError as e:
            raise ConvertError(
                f"{path}: reading a PyTorch checkpoint needs torch, an optional extra: "
                "pip install -e '.[convert]' (CPU build: pip install torch==2.13.0+cpu), or "
                "save the state dict as .npz") from e
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and torch's own errors alike
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConvertError(f"{path}: not a readable PyTorch checkpoint: {first[:200]}") from e
        if not isinstance(loaded, Mapping):
            raise ConvertError(f"{path}: holds a {type(loaded).__name__}, not a state dict "
                               "(SyncNetDist.saveParameters saves `state_dict()`)")
        state = {k: v.detach().cpu().numpy() for k, v in loaded.items()
                 if hasattr(v, "detach")}
    return strip_module_prefix(state)


def strip_module_prefix(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keys without DataParallel's `module.` (as syncnet_trainer's `loadParameters`)."""
    return {k.replace("module.", ""): v for k, v in state.items()}


# === Checking ===
def config_from_state(state: Mapping[str, np.ndarray], temporal_stride: int = 2,
                      path: str = "checkpoint") -> ModelConfig:
    """The syncnet_trainer ModelConfig whose widths are the checkpoint's (any nOut)."""
    def out_channels(key: str) -> int:
        if key not in state:
            raise ConvertError(f"{path}: not a syncnet_trainer checkpoint: no key {key} "
                               f"(keys start with {_key_summary(state)})")
        return int(state[key].shape[0])

    face = tuple(out_channels(f"__S__.netcnnlip.{i}.weight") for i, _ in _TRUNK_CONVS[:5])
    audio = tuple(out_channels(f"__S__.netcnnaud.{i}.weight") for i, _ in _TRUNK_CONVS[:5])
    fb = state.get("__S__.torchfb.mel_scale.fb")
    base = ModelConfig.syncnet_trainer(embedding_dim=out_channels("__S__.netfcaud.3.weight"),
                                       temporal_stride=temporal_stride)
    return dataclasses.replace(base, face_channels=face, audio_channels=audio,
                               trunk_dim=out_channels("__S__.netcnnaud.18.weight"),
                               head_hidden=out_channels("__S__.netfcaud.0.weight"),
                               num_mels=int(fb.shape[1]) if fb is not None else 40)


def _key_summary(state: Mapping[str, np.ndarray]) -> str:
    prefixes = sorted({".".join(k.split(".")[:2]) for k in state})
    return ", ".join(prefixes[:8]) + (", ..." if len(prefixes) > 8 else "")


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every key a syncnet_trainer checkpoint of `config`'s sizes holds (front-end buffers and
    `num_batches_tracked` aside), with its PyTorch shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    last = {"aud": 1, "lip": 3}
    widths = {"aud": config.audio_channels + (config.trunk_dim,),
              "lip": config.face_channels + (config.trunk_dim,)}
    audio_kernels = ((5, 7), (5, 5), (3, 3), (3, 3), (3, 3), (4, 1))
    face_kernels = ((5, 7, 7), (1, 5, 5), (1, 3, 3), (1, 3, 3), (1, 3, 3), (1, 6, 6))
    for stream, kernels in (("aud", audio_kernels), ("lip", face_kernels)):
        inputs = last[stream]
        for (index, _), width, kernel in zip(_TRUNK_CONVS, widths[stream], kernels):
            prefix = f"__S__.netcnn{stream}"
            shapes[f"{prefix}.{index}.weight"] = (width, inputs, *kernel)
            shapes[f"{prefix}.{index}.bias"] = (width,)
            for name in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{prefix}.{index + 1}.{name}"] = (width,)
            inputs = width
    for head in _HEADS:
        prefix = f"__S__.{head}"
        shapes[f"{prefix}.0.weight"] = (config.head_hidden, config.trunk_dim, 1)
        shapes[f"{prefix}.0.bias"] = (config.head_hidden,)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.1.{name}"] = (config.head_hidden,)
        shapes[f"{prefix}.3.weight"] = (config.embedding_dim, config.head_hidden, 1)
        shapes[f"{prefix}.3.bias"] = (config.embedding_dim,)
    for keys in _SIMILARITIES.values():
        for key in keys:
            shapes[key] = ()
    return shapes


def check_state(state: Mapping[str, np.ndarray], config: ModelConfig,
                path: str = "checkpoint") -> None:
    """ConvertError (one line) naming every missing, unexpected or mis-shaped key, and a front
    end that is not the reference's (`melscale.mel_filterbank`, `melscale.hann_window`)."""
    from av_disentangle.melscale import hann_window, mel_filterbank

    want = expected_shapes(config)
    ignored = set(_FRONT_END_BUFFERS) | {k for k in state if k.endswith("num_batches_tracked")}
    missing = [k for k in want if k not in state]
    unexpected = sorted(set(state) - set(want) - ignored)
    wrong = [f"{k} {tuple(state[k].shape)} (expected {want[k]})" for k in want
             if k in state and tuple(state[k].shape) != want[k]]
    problems = []
    for label, items in (("missing", missing), ("mis-shaped", wrong),
                         ("unexpected", unexpected)):
        if items:
            problems.append(f"{len(items)} {label}: {', '.join(items[:6])}"
                            + (f", ... ({len(items) - 6} more)" if len(items) > 6 else ""))
    if problems:
        raise ConvertError(f"{path}: not a syncnet_trainer SyncNetModelFBank checkpoint of "
                           f"the sizes its shapes give: {'; '.join(problems)}")
    for key, ours in zip(_FRONT_END_BUFFERS, (hann_window(), mel_filterbank(config.num_mels))):
        if key not in state:
            log.warning("%s: no %s buffer; using the reference front end's", path, key)
            continue
        theirs = np.asarray(state[key], np.float32)
        if theirs.shape != ours.shape or not np.allclose(theirs, ours, atol=1e-5):
            diff = (f"max difference {np.max(np.abs(theirs - ours)):.3g}"
                    if theirs.shape == ours.shape else f"shape {theirs.shape} vs {ours.shape}")
            raise ConvertError(f"{path}: {key} is not torchaudio's MelSpectrogram(n_fft=512, "
                               f"win_length=400, f_min=0, f_max=8000) ({diff}); this converter "
                               "computes that front end only")


# === Mapping ===
def _face_kernel(weight: np.ndarray) -> np.ndarray:
    """Conv3d (out, in, kt, kh, kw) -> folded Conv2D (kh, kw, kt * in, out), frame-major."""
    out, inputs, kt, kh, kw = weight.shape
    return weight.transpose(3, 4, 2, 1, 0).reshape(kh, kw, kt * inputs, out)


def keras_weights(state: Mapping[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Layer name -> its Keras weights in `layer.get_weights()` order, for the streams of
    `ModelConfig.syncnet_trainer()` (`streams.py` names)."""
    def f32(key):
        return np.asarray(state[key], np.float32)

    def batchnorm(prefix):
        return [f32(f"{prefix}.{n}") for n in ("weight", "bias", "running_mean", "running_var")]

    layers: dict[str, list[np.ndarray]] = {}
    for index, name in _TRUNK_CONVS:
        audio, face = "__S__.netcnnaud", "__S__.netcnnlip"
        # PyTorch's audio is (N, 1, mel, time); ours (B, time, mel, 1).
        layers[f"audio_{name}"] = [f32(f"{audio}.{index}.weight").transpose(3, 2, 1, 0),
                                   f32(f"{audio}.{index}.bias")]
        layers[f"audio_{name}_bn"] = batchnorm(f"{audio}.{index + 1}")
        layers[f"face_{name}"] = [_face_kernel(f32(f"{face}.{index}.weight")),
                                  f32(f"{face}.{index}.bias")]
        layers[f"face_{name}_bn"] = batchnorm(f"{face}.{index + 1}")
    for head, name in _HEADS.items():
        prefix = f"__S__.{head}"
        layers[f"{name}_fc7"] = [f32(f"{prefix}.0.weight").transpose(2, 1, 0),
                                 f32(f"{prefix}.0.bias")]
        layers[f"{name}_fc7_bn"] = batchnorm(f"{prefix}.1")
        layers[f"{name}_fc8"] = [f32(f"{prefix}.3.weight").transpose(2, 1, 0),
                                 f32(f"{prefix}.3.bias")]
    return layers


def _face_kernel_back(kernel: np.ndarray, frames: int) -> np.ndarray:
    """Inverse of `_face_kernel`: (kh, kw, kt * in, out) -> (out, in, kt, kh, kw)."""
    kh, kw, folded, out = kernel.shape
    return kernel.reshape(kh, kw, frames, folded // frames, out).transpose(4, 3, 2, 0, 1)


def state_from_streams(face_stream, audio_stream, model=None) -> dict[str, np.ndarray]:
    """The syncnet_trainer state dict (PyTorch layouts, `__S__.` keys; with a
    `DisentangleModel` `model` also `__L__.*`) of streams of `ModelConfig.syncnet_trainer()`
    sizes: the inverse of `keras_weights`, for checking a conversion round trip and for
    comparing our weights with the reference's."""
    layers = {layer.name: layer.get_weights() for stream in (face_stream, audio_stream)
              for layer in stream.layers if layer.weights}
    state: dict[str, np.ndarray] = {}

    def batchnorm(prefix, name):
        for key, value in zip(("weight", "bias", "running_mean", "running_var"), layers[name]):
            state[f"{prefix}.{key}"] = value

    for index, name in _TRUNK_CONVS:
        kernel, bias = layers[f"audio_{name}"]
        state[f"__S__.netcnnaud.{index}.weight"] = kernel.transpose(3, 2, 1, 0)
        state[f"__S__.netcnnaud.{index}.bias"] = bias
        batchnorm(f"__S__.netcnnaud.{index + 1}", f"audio_{name}_bn")
        kernel, bias = layers[f"face_{name}"]
        state[f"__S__.netcnnlip.{index}.weight"] = _face_kernel_back(kernel, 5 if index == 0
                                                                     else 1)
        state[f"__S__.netcnnlip.{index}.bias"] = bias
        batchnorm(f"__S__.netcnnlip.{index + 1}", f"face_{name}_bn")
    for head, name in _HEADS.items():
        for index, suffix in ((0, "fc7"), (3, "fc8")):
            kernel, bias = layers[f"{name}_{suffix}"]
            state[f"__S__.{head}.{index}.weight"] = kernel.transpose(2, 1, 0)
            state[f"__S__.{head}.{index}.bias"] = bias
        batchnorm(f"__S__.{head}.1", f"{name}_fc7_bn")
    if model is not None:
        for attribute, (scale, bias) in _SIMILARITIES.items():
            layer = getattr(model, attribute)
            state[scale] = np.asarray(layer.scale.numpy(), np.float32)
            state[bias] = np.asarray(layer.bias.numpy(), np.float32)
    return state


def assign_streams(face_stream, audio_stream, state: Mapping[str, np.ndarray]) -> None:
    """Sets every weight of the two streams (Keras models of `ModelConfig.syncnet_trainer()`
    sizes) from a checked state dict; a stream layer with weights left unset is an error."""
    weights = keras_weights(state)
    for stream in (face_stream, audio_stream):
        for layer in stream.layers:
            if not layer.weights:
                continue
            if layer.name not in weights:
                raise ConvertError(f"the checkpoint has no weights for layer {layer.name}")
            layer.set_weights(weights.pop(layer.name))
    if weights:
        raise ConvertError(f"layers missing from the streams: {sorted(weights)}")


def assign_similarities(model, state: Mapping[str, np.ndarray]) -> None:
    """The scaled-cosine scale and bias of a `DisentangleModel` from `__L__.wC/bC/wI/bI`."""
    for attribute, (scale, bias) in _SIMILARITIES.items():
        layer = getattr(model, attribute)
        layer.scale.assign(float(state[scale]))
        layer.bias.assign(float(state[bias]))


def load_checkpoint(path: str | os.PathLike, temporal_stride: int = 2
                    ) -> tuple[dict[str, np.ndarray], ModelConfig]:
    """Reads and checks a syncnet_trainer checkpoint: (state dict, its ModelConfig)."""
    state = read_state_dict(path)
    config = config_from_state(state, temporal_stride, str(path))
    check_state(state, config, str(path))
    return state, config


def convert_syncnet_trainer(path: str | os.PathLike, temporal_stride: int = 2):
    """A `DisentangleModel` (LossConfig defaults) holding the checkpoint's weights."""
    from av_disentangle.config import LossConfig
    from av_disentangle.model import DisentangleModel

    state, config = load_checkpoint(path, temporal_stride)
    model = DisentangleModel(config, LossConfig())
    assign_streams(model.face_stream, model.audio_stream, state)
    assign_similarities(model, state)
    return model


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# === Command line ===
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m av_disentangle.convert",
        description="Convert a reference checkpoint into a SavedModel with this project's "
                    "serving signatures (evaluate.py, TF Serving, train.py --init_from).")
    p.add_argument("kind", choices=KINDS,
                   help="whose checkpoint: joonson/syncnet_trainer (a model of this project's "
                        "architecture), or joonson/syncnet_python (its published "
                        "syncnet_v2.model, for LSE-D / LSE-C: evaluate.py --task sync "
                        "--syncnet DIR)")
    p.add_argument("checkpoint", help="its .model file (SyncNet.state_dict(); needs torch), "
                                      "or the same state dict as .npz")
    p.add_argument("--export_dir", required=True,
                   help="SavedModel directory to write (e.g. saved_models/syncnet_trainer/1); "
                        "must not exist")
    p.add_argument("--temporal_stride", type=int, default=2,
                   help="the stride the checkpoint was trained with (its README: 2)")
    return p


def _main(argv: Sequence[str] | None = None) -> int:
    from av_disentangle.logs import native_stderr_silenced, setup_logging

    args = build_parser().parse_args(argv)
    setup_logging()
    if os.path.exists(args.export_dir):
        raise ConvertError(f"--export_dir {args.export_dir} already exists; TF Serving "
                           "versions are immutable, pick a new version")
    parent = os.path.dirname(os.path.abspath(args.export_dir))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise ConvertError(f"cannot create the folder of --export_dir {args.export_dir}: "
                           f"{e.strerror}") from e
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConvertError(f"cannot write into {parent} (--export_dir): permission denied")
    if args.temporal_stride < 1:
        raise ConvertError(f"--temporal_stride must be >= 1, got {args.temporal_stride}")
    if args.kind == "syncnet_python":
        return _convert_syncnet_python(args)
    with native_stderr_silenced():
        from av_disentangle.export import export_saved_model

    model = convert_syncnet_trainer(args.checkpoint, args.temporal_stride)
    provenance = {"converted_from": "joonson/syncnet_trainer", "checkpoint":
                  os.path.abspath(args.checkpoint), "sha256": sha256_file(args.checkpoint),
                  "temporal_stride": args.temporal_stride}
    export_saved_model(model.face_stream, model.audio_stream, model.model_config,
                       args.export_dir, extra_json={"converted_from.json": provenance})
    print(f"wrote {args.export_dir} ({model.model_config.embedding_dim}-d embeddings, "
          f"temporal stride {args.temporal_stride}) from {args.checkpoint}", flush=True)
    return 0


def _convert_syncnet_python(args: argparse.Namespace) -> int:
    """syncnet_python's `SyncNetModel.S` state dict -> a SavedModel with `lip_embedding` and
    `audio_embedding` (`av_disentangle.syncnet_v2`)."""
    from av_disentangle.logs import native_stderr_silenced

    with native_stderr_silenced():
        from av_disentangle import syncnet_v2

    state = read_state_dict(args.checkpoint)
    lip, audio = syncnet_v2.build_models(state, str(args.checkpoint))
    digest = sha256_file(args.checkpoint)
    provenance = {"converted_from": "joonson/syncnet_python",
                  "checkpoint": os.path.abspath(args.checkpoint), "sha256": digest,
                  "published_syncnet_v2": digest == syncnet_v2.PUBLISHED_SHA256}
    syncnet_v2.export_syncnet(lip, audio, args.export_dir, provenance)
    note = ("the published syncnet_v2.model" if provenance["published_syncnet_v2"] else
            "NOT the published syncnet_v2.model (its SHA-256 differs): LSE numbers from it "
            "are not comparable with papers")
    print(f"wrote {args.export_dir} (SyncNet lip_embedding / audio_embedding, "
          f"{lip.output_shape[-1]}-d) from {args.checkpoint}: {note}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; a `UserError` becomes one line on stderr and exit status 2."""
    return run_cli(_main, "convert", argv)


if __name__ == "__main__":
    sys.exit(main())
