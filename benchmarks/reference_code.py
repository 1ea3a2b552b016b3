"""joonson/syncnet_trainer's own code, loaded to be RUN (never copied into this repository).

    from benchmarks.reference_code import load_reference
    ref = load_reference("/work/.mirror/joonson+syncnet_trainer/repo/.git")  # or a checkout
    s = ref.SyncNetDist.SyncNet(model="models.SyncNetModelFBank", nOut=1024, temporal_stride=2)

A git directory is extracted with `git archive HEAD` into a temporary folder; a plain folder
(a checkout, or files carried to a machine without git) is used as it is. Its modules are
imported from there: `SyncNetDist`, `dataLoader`, `models.SyncNetModelFBank`. Used by
`tests/fixtures/make_syncnet_trainer_fixture.py` (the parity fixture) and
`benchmarks/train_step.py` (the reference's training step), in an environment with PyTorch
(not this project's).

What is changed, in memory only, so that it runs here:
- without CUDA, `.cuda()` (which it calls on every module and tensor) returns the object
  itself, so the code runs on the CPU; it has no other device code;
- its `accuracy.py` (top-k for the progress line; no loss reads it) calls `.view(-1)` on a
  transposed tensor, which current PyTorch refuses ("view size is not compatible"): the same
  computation with `.reshape` replaces its name in `SyncNetDist`;
- without torchaudio (the lent GPU image has none), `torchaudio.transforms.MelSpectrogram`
  is provided by a stand-in of the same computation (torch.stft, periodic Hann window,
  power 2, torchaudio's HTK filterbank from `av_disentangle.melscale.mel_filterbank`), and
  `Reference.torchaudio_stand_in` says so. With torchaudio installed, torchaudio's own is used;
- without OpenCV, an empty `cv2` module lets its `dataLoader` import (only `get_frames` uses it).
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import types


@dataclasses.dataclass
class Reference:
    """The imported modules and where they came from."""

    folder: str
    commit: str
    SyncNetDist: types.ModuleType
    dataLoader: types.ModuleType
    torchaudio_stand_in: bool


def _extract(git_dir: str) -> tuple[str, str]:
    data = subprocess.run(["git", "--git-dir", git_dir, "archive", "HEAD"], check=True,
                          capture_output=True).stdout
    folder = tempfile.mkdtemp(prefix="syncnet_trainer_")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(folder)
    commit = subprocess.run(["git", "--git-dir", git_dir, "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    return folder, commit


def _accuracy(output, target, topk=(1,)):
    """Its accuracy.py with `.reshape` for `.view` (see the module docstring)."""
    _, pred = output.topk(max(topk), 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True) * (100.0 / target.size(0))
            for k in topk]


def _torchaudio_stand_in():
    """A module `torchaudio` with `transforms.MelSpectrogram` computing what torchaudio's does
    for the reference's arguments (centred reflect-padded frames, power 2, HTK triangles)."""
    import numpy as np
    import torch

    from av_disentangle.melscale import mel_filterbank  # numpy only

    class MelSpectrogram(torch.nn.Module):
        def __init__(self, sample_rate=16000, n_fft=400, win_length=None, hop_length=None,
                     f_min=0.0, f_max=None, pad=0, n_mels=128, **kwargs):
            super().__init__()
            self.n_fft, self.hop_length = n_fft, hop_length or (win_length or n_fft) // 2
            self.win_length = win_length or n_fft
            self.register_buffer("window", torch.hann_window(self.win_length))
            fb = mel_filterbank(n_mels, f_min, f_max or sample_rate / 2, n_fft, sample_rate)
            self.register_buffer("fb", torch.from_numpy(np.ascontiguousarray(fb)))

        def forward(self, x):
            spec = torch.stft(x, self.n_fft, hop_length=self.hop_length,
                              win_length=self.win_length, window=self.window, center=True,
                              pad_mode="reflect", return_complex=True).abs() ** 2
            return torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)

    module = types.ModuleType("torchaudio")
    module.transforms = types.SimpleNamespace(MelSpectrogram=MelSpectrogram)
    return module


def load_reference(source: str) -> Reference:
    """Imports the reference's modules from `source` (a git dir or a folder of its files)."""
    import torch

    if os.path.isdir(os.path.join(source, "objects")) or source.endswith(".git"):
        folder, commit = _extract(source)
    else:
        folder, commit = source, "(a folder: commit unknown)"
    stand_in = False
    try:
        import torchaudio  # noqa: F401
    except ImportError:
        sys.modules["torchaudio"] = _torchaudio_stand_in()
        stand_in = True
    try:
        import cv2  # noqa: F401  (its dataLoader reads videos with it; timing never does)
    except ImportError:
        sys.modules["cv2"] = types.ModuleType("cv2")
    if not torch.cuda.is_available():
        torch.nn.Module.cuda = lambda self, *a, **k: self
        torch.Tensor.cuda = lambda self, *a, **k: self
    sys.path.insert(0, folder)
    cwd = os.getcwd()
    os.chdir(folder)  # SyncNet imports "models.SyncNetModelFBank" by name
    try:
        syncnet_dist = importlib.import_module("SyncNetDist")
        importlib.import_module("models.SyncNetModelFBank")
        data_loader = importlib.import_module("dataLoader")
    finally:
        os.chdir(cwd)
    syncnet_dist.accuracy = _accuracy
    return Reference(folder, commit, syncnet_dist, data_loader, stand_in)


def one_batch_loader(video, audio):
    """The loader interface `SyncNet.train_network` reads (batch_size, nFiles, qsize(),
    maxQueueSize, iteration), holding one batch."""

    class OneBatch:
        batch_size = nFiles = video.shape[0]
        maxQueueSize = 1

        def __iter__(self):
            return iter([[video, audio]])

        def qsize(self):
            return 0

    return OneBatch()
