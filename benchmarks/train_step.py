"""Training-step speed: ours (TF/Keras) vs the public PyTorch reference, same architecture,
same temporal stride, same input.

    python benchmarks/train_step.py [--sizes reference,small] [--modes none,confusion]
        [--batch 8] [--frames 50] [--stride 2] [--steps 5] [--warmup 2] [--mixed_precision]
        [--audio_2] [--no_torch] [--no_ours] [--json PATH]

"ours" is `DisentangleModel.train_step` (both streams, log-mel in the graph, content +
identity (+ confusion) losses, SGD momentum 0.9 update), compiled with tf.function exactly as
`model.fit` would (XLA where Keras' jit_compile="auto" picks it: GPUs, no strategy).
"torch reference" re-implements, in this benchmark only, joonson/syncnet_trainer's
models/SyncNetModelFBank.py (layer for layer, nOut 1024) and its training step
(SyncNetDist.train_network: per-track sync loss with its per-track top-1 accuracy on the CPU,
identity loss over one random face step vs the time-mean voice, SGD momentum 0.9, weight decay
1e-5). It runs only if torch is installed (not a dependency of this project); torchaudio's
MelSpectrogram is used when present, else an equal torch.stft + HTK mel matrix.

Fairness: both run the same architecture (our `reference` size is SyncNetModelFBank, 13,840,512
trainable parameters; both counts are printed) at the same temporal stride (default 2, the
reference README's `--temporal_stride 2`) on the same input: `frames` video frames at
224x224 and frames * 640 + 240 audio samples per track (the reference loader's length;
both front ends give 4 * frames log-mel frames), one audio window (ours also takes a second
identity window with `--audio_2`, ~8% more compute at the reference size). Input pipelines
and host-to-device copies are excluded: each side's batch sits on its device before timing.
Timing: `warmup` (>= 1) untimed steps (tracing, autotuning), then `steps` timed steps, synchronised
at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np

from av_disentangle import files
from av_disentangle.constants import AUDIO, AUDIO_2, FRAMES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REFERENCE_PARAMS = 13_840_512  # SyncNetModelFBank(nOut=1024), trainable


def device_name() -> str:
    """The accelerator the benchmark runs on, in words."""
    try:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"{len(gpus)} x {details.get('device_name', 'GPU')}"
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)} (torch)"
    except ImportError:
        pass
    return f"CPU ({os.cpu_count()} cores)"


def make_inputs(batch: int, frames: int, face_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """frames (B, T, S, S, 3) uint8 and audio (B, T * 640 + 240) float32, as the reference
    loader reads them (dataLoader.loadWAV: max_frames * 160 + 240 samples)."""
    rng = np.random.default_rng(seed)
    return {
        FRAMES: rng.integers(0, 256, (batch, frames, face_size, face_size, 3), dtype=np.uint8),
        AUDIO: (0.1 * rng.normal(size=(batch, frames * 640 + 240))).astype(np.float32),
        AUDIO_2: (0.1 * rng.normal(size=(batch, frames * 640 + 240))).astype(np.float32),
    }


def bench_ours(size: str, mode: str, batch: int, frames: int, steps: int, warmup: int = 2,
               stride: int = 2, mixed: bool = False, audio_2: bool = False) -> dict:
    """Times our train_step; returns examples_per_s, ms_per_step, trainable_params, steps_out."""
    import keras
    import tensorflow as tf

    from av_disentangle.config import MODEL_SIZES, LossConfig
    from av_disentangle.model import DisentangleModel

    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    config = dataclasses.replace(MODEL_SIZES[size](), temporal_stride=stride)
    arrays = make_inputs(batch, frames, config.face_size)
    if not audio_2:
        del arrays[AUDIO_2]
    device = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    with tf.device(device):
        data = {k: tf.identity(v) for k, v in arrays.items()}
    keras.utils.set_random_seed(0)
    model = DisentangleModel(config, LossConfig(disentangle=mode))
    model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9))
    model.optimizer.build(model.trainable_variables)
    jit = bool(model.jit_compile)
    step = tf.function(model.train_step, jit_compile=jit)
    streams = model.face_stream.trainable_weights + model.audio_stream.trainable_weights
    steps_out = config.num_steps(frames)  # = the streams' output length (tests/test_streams.py)
    for _ in range(max(1, warmup)):
        logs = step(data)
    float(logs["loss"])
    start = time.perf_counter()
    for _ in range(steps):
        logs = step(data)
    loss = float(logs["loss"])  # waits for the last step
    elapsed = time.perf_counter() - start
    keras.mixed_precision.set_global_policy("float32")
    return {"examples_per_s": batch * steps / elapsed, "ms_per_step": 1000 * elapsed / steps,
            "trainable_params": int(sum(np.prod(w.shape) for w in streams)),
            "steps_out": int(steps_out), "xla": jit, "loss": loss}


def _mel_matrix(n_freqs: int = 257, n_mels: int = 40, sample_rate: int = 16000,
                f_min: float = 0.0, f_max: float = 8000.0) -> np.ndarray:
    """(n_mels, n_freqs) triangular HTK mel filters without normalisation: numpy copy of
    torchaudio.functional.melscale_fbanks (MelSpectrogram's defaults)."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    freqs = np.linspace(0, sample_rate // 2, n_freqs)
    m_pts = np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2)
    f_pts = 700.0 * (10 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(0.0, np.minimum(down, up)).T.astype(np.float32)


def bench_torch_reference(batch: int, frames: int, steps: int, warmup: int = 2,
                          stride: int = 2, mixed: bool = False, face_size: int = 224):
    """Times the reference PyTorch step; None when torch is not installed."""
    try:
        import torch
        from torch import nn
        from torch.nn import functional as F
    except ImportError:
        return None
    try:
        import torchaudio
    except ImportError:
        torchaudio = None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if mixed and device != "cuda":
        return None

    def bn_relu3(c):
        return [nn.BatchNorm3d(c), nn.ReLU(inplace=True)]

    def bn_relu2(c):
        return [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]

    def head():
        return nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(),
                             nn.Conv1d(512, 1024, 1))

    # The face map left before fc6: 6 at 224 (the reference's kernel), as ours elsewhere.
    side = (face_size - 7) // 2 + 1
    side = (side - 3) // 2 + 1
    side = (side + 2 - 5) // 2 + 1
    side = (side + 2 - 3) // 2 + 1
    side = (side - 3) // 2 + 1

    class SyncNetReference(nn.Module):
        """Layer for layer as models/SyncNetModelFBank.py (nOut 1024, `stride`)."""

        def __init__(self):
            super().__init__()
            self.netcnnaud = nn.Sequential(
                nn.Conv2d(1, 96, (5, 7), padding=(2, 2)), *bn_relu2(96),
                nn.MaxPool2d((1, 3), stride=(1, 2)),
                nn.Conv2d(96, 256, (5, 5), stride=(2, 1), padding=(1, 1)), *bn_relu2(256),
                nn.MaxPool2d((3, 3), stride=(2, 1)),
                nn.Conv2d(256, 384, 3, padding=1), *bn_relu2(384),
                nn.Conv2d(384, 256, 3, padding=1), *bn_relu2(256),
                nn.Conv2d(256, 256, 3, padding=1), *bn_relu2(256),
                nn.MaxPool2d(3, stride=2),
                nn.Conv2d(256, 512, (4, 1), stride=(1, stride)), *bn_relu2(512))
            self.netcnnlip = nn.Sequential(
                nn.Conv3d(3, 96, (5, 7, 7), stride=(stride, 2, 2)), *bn_relu3(96),
                nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
                nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
                *bn_relu3(256), nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
                nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), *bn_relu3(256),
                nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), *bn_relu3(256),
                nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), *bn_relu3(256),
                nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
                nn.Conv3d(256, 512, (1, side, side)), *bn_relu3(512))
            self.netfcaud, self.netfcspk, self.netfclip, self.netfcface = (
                head(), head(), head(), head())
            self.instancenorm = nn.InstanceNorm1d(40)
            if torchaudio is not None:
                self.torchfb = torchaudio.transforms.MelSpectrogram(
                    sample_rate=16000, n_fft=512, win_length=400, hop_length=160, f_min=0.0,
                    f_max=8000, pad=0, n_mels=40)
            else:
                self.torchfb = None
                self.register_buffer("mel", torch.tensor(_mel_matrix()))
                self.register_buffer("window", torch.hann_window(400))

        def features(self, x):
            if self.torchfb is not None:
                return self.torchfb(x)
            spec = torch.stft(x, 512, hop_length=160, win_length=400, window=self.window,
                              center=True, pad_mode="reflect", return_complex=True)
            return torch.matmul(self.mel, spec.abs() ** 2)

        def forward_aud(self, x):
            with torch.autocast(device_type=device, enabled=False):  # features in float32
                x = self.features(x.float()) + 1e-6
                x = self.instancenorm(x.log())[:, :, 1:-1].detach()
            mid = self.netcnnaud(x.unsqueeze(1))
            mid = mid.view(mid.size(0), mid.size(1), -1)
            return self.netfcaud(mid), self.netfcspk(mid)

        def forward_vid(self, x):
            mid = self.netcnnlip(x)
            mid = mid.view(mid.size(0), mid.size(1), -1)
            return self.netfclip(mid), self.netfcface(mid)

    torch.manual_seed(0)
    model = SyncNetReference().to(device)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    scale = nn.ParameterDict({k: nn.Parameter(torch.tensor(v)) for k, v in
                              (("wI", 10.0), ("bI", -5.0), ("wC", 10.0), ("bC", -5.0))}).to(device)
    optimizer = torch.optim.SGD(list(model.parameters()) + list(scale.parameters()), lr=1e-3,
                                momentum=0.9, weight_decay=1e-5)
    grad_scaler = torch.amp.GradScaler("cuda", enabled=mixed)
    arrays = make_inputs(batch, frames, face_size)
    # The reference feeds cv2's 0..255 values as float32, (N, 3, T, H, W).
    video = torch.tensor(arrays[FRAMES]).permute(0, 4, 1, 2, 3).float().contiguous().to(device)
    audio = torch.tensor(arrays[AUDIO]).to(device)
    label_id = torch.arange(batch, device=device)

    def step():
        """SyncNetDist.train_network, one iteration (without its printing)."""
        optimizer.zero_grad()
        with torch.autocast(device_type=device, dtype=torch.float16, enabled=mixed):
            out_a, out_A = model.forward_aud(audio)
            out_v, out_V = model.forward_vid(video)
            t = out_V.size(2)
            label = torch.arange(t, device=device)
            sync, prec1 = 0, 0.0
            for i in range(batch):  # SyncNetDist.sync_loss loops over tracks
                ft_v = out_v[[i]].transpose(2, 0)
                ft_a = out_a[[i]].transpose(2, 0)
                output = F.cosine_similarity(ft_v.expand(-1, -1, t),
                                             ft_a.expand(-1, -1, t).transpose(0, 2)) \
                    * scale["wC"] + scale["bC"]
                prec1 += float((output.detach().cpu().argmax(1) == label.cpu()).float().mean())
                sync = sync + F.cross_entropy(output, label)
            ri = int(np.random.randint(0, t))
            idoutput = F.cosine_similarity(out_V[:, :, [ri]].expand(-1, -1, batch),
                                           out_A.mean(2, keepdim=True).expand(-1, -1, batch)
                                           .transpose(0, 2)) * scale["wI"] + scale["bI"]
            float((idoutput.detach().cpu().argmax(1) == label_id.cpu()).float().mean())
            loss = sync / batch + F.cross_entropy(idoutput, label_id)
        grad_scaler.scale(loss).backward()
        grad_scaler.step(optimizer)
        grad_scaler.update()
        return loss, t

    def sync_device():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(max(1, warmup)):
        _, steps_out = step()
    sync_device()
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = step()
    sync_device()
    elapsed = time.perf_counter() - start
    return {"examples_per_s": batch * steps / elapsed, "ms_per_step": 1000 * elapsed / steps,
            "trainable_params": int(params), "steps_out": int(steps_out),
            "loss": float(loss.detach()), "device": device}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="reference,small")
    p.add_argument("--modes", default="none,confusion")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--stride", type=int, default=2, help="temporal stride of both models")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--mixed_precision", action="store_true", help="GPUs: float16 compute")
    p.add_argument("--audio_2", action="store_true",
                   help="ours also embeds a second audio window (our training input)")
    p.add_argument("--no_torch", action="store_true")
    p.add_argument("--no_ours", action="store_true")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args()
    result = {"device": device_name(), "batch": args.batch, "frames": args.frames,
              "stride": args.stride, "steps": args.steps, "warmup": args.warmup,
              "mixed_precision": args.mixed_precision, "audio_2": args.audio_2, "rows": []}
    print(f"device: {result['device']}  batch {args.batch} tracks x {args.frames} frames, "
          f"temporal stride {args.stride}, {args.warmup} warm-up + {args.steps} timed steps"
          f"{', mixed float16' if args.mixed_precision else ''}")
    print(f"{'model':<44}{'examples/s':>11}{'ms/step':>10}{'params':>12}{'T_out':>6}")

    def show(name: str, row: dict) -> None:
        result["rows"].append({"name": name, **row})
        print(f"{name:<44}{row['examples_per_s']:>11.2f}{row['ms_per_step']:>10.1f}"
              f"{row['trainable_params']:>12,}{row['steps_out']:>6}", flush=True)

    ours = {}
    if not args.no_ours:
        for size in args.sizes.split(","):
            for mode in args.modes.split(","):
                row = bench_ours(size, mode, args.batch, args.frames, args.steps, args.warmup,
                                 args.stride, args.mixed_precision, args.audio_2)
                ours[(size, mode)] = row
                show(f"ours {size} --disentangle {mode}", row)
    if not args.no_torch:
        row = bench_torch_reference(args.batch, args.frames, args.steps, args.warmup,
                                    args.stride, args.mixed_precision)
        if row is None:
            print("torch reference: skipped (torch not installed, or mixed precision on CPU)")
        else:
            show("torch reference (SyncNetModelFBank)", row)
            if ("reference", "none") in ours:
                ratio = ours[("reference", "none")]["examples_per_s"] / row["examples_per_s"]
                result["ratio_ours_reference_none_vs_torch"] = ratio
                print(f"ratio ours reference/none vs torch reference: {ratio:.2f}x")
    if args.json:
        files.write_json_atomic(args.json, result, indent=1)


if __name__ == "__main__":
    main()
