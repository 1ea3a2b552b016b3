"""Examples/s of the full training step: ours (TF/Keras) vs the public PyTorch reference.

    python benchmarks/train_step.py [--sizes reference,small] [--batch 8] [--frames 50]
                                    [--steps 5] [--modes none,confusion] [--no_torch]

"ours" is `DisentangleModel.train_step` (both streams, log-mel in the graph, content +
identity (+ confusion) losses, SGD update) driven by `model.fit` on device-resident data.
"torch reference" re-implements, in this benchmark only, the architecture of
joonson/syncnet_trainer (models/SyncNetModelFBank.py, layer for layer: VGG-M face and audio
trunks, four 1x1 heads, 1024-d) and its training step (SyncNetDist.train_network: per-track
sync loss + identity loss, SGD momentum 0.9); torchaudio's MelSpectrogram is replaced by an
equivalent torch.stft + mel matrix. It runs only if torch is installed (it is not a
dependency) and is skipped with a message otherwise. Input pipelines are excluded from both.
The input shapes are the reference's: faces `face_size` x `face_size` (224 for `reference`),
`frames` video frames (50 = 2 s) and frames * 640 audio samples.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def device_name() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"{len(gpus)} x {details.get('device_name', 'GPU')}"
    return f"CPU ({os.cpu_count()} cores)"


def bench_ours(size: str, mode: str, batch: int, frames: int, steps: int,
               mixed: bool = False) -> float:
    """examples/s of our train_step for `steps` timed steps after 2 warm-up steps."""
    import keras
    import tensorflow as tf

    from av_disentangle.config import MODEL_SIZES, LossConfig
    from av_disentangle.model import DisentangleModel

    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    config = MODEL_SIZES[size]()
    rng = np.random.default_rng(0)
    data = {
        "frames": rng.integers(0, 256, (batch, frames, config.face_size, config.face_size, 3),
                               dtype=np.uint8),
        "audio": (0.1 * rng.normal(size=(batch, frames * 640))).astype(np.float32),
        "audio_2": (0.1 * rng.normal(size=(batch, frames * 640))).astype(np.float32),
    }
    dataset = tf.data.Dataset.from_tensors(data).repeat().prefetch(2)
    strategy = tf.distribute.get_strategy()
    with strategy.scope():
        model = DisentangleModel(config, LossConfig(disentangle=mode))
        model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9))
    model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)  # trace + warm up
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return batch * steps / (time.perf_counter() - start)


def bench_torch_reference(batch: int, frames: int, steps: int, face_size: int = 224):
    """examples/s of the reference PyTorch step, or None when torch is not installed."""
    try:
        import torch
        from torch import nn
        from torch.nn import functional as F
    except ImportError:
        return None

    def bn_relu3(c):
        return [nn.BatchNorm3d(c), nn.ReLU(inplace=True)]

    def bn_relu2(c):
        return [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]

    def head():
        return nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(),
                             nn.Conv1d(512, 1024, 1))

    class SyncNetReference(nn.Module):
        """Layer for layer as models/SyncNetModelFBank.py (stride 1, nOut 1024)."""

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
                nn.Conv2d(256, 512, (4, 1)), *bn_relu2(512))
            self.netcnnlip = nn.Sequential(
                nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), *bn_relu3(96),
                nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
                nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
                *bn_relu3(256), nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
                nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), *bn_relu3(256),
                nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), *bn_relu3(256),
                nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), *bn_relu3(256),
                nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
                nn.Conv3d(256, 512, (1, 6, 6)), *bn_relu3(512))
            self.netfcaud, self.netfcspk, self.netfclip, self.netfcface = (
                head(), head(), head(), head())
            self.instancenorm = nn.InstanceNorm1d(40)
            # torchaudio.transforms.MelSpectrogram(16000, n_fft=512, win_length=400,
            # hop_length=160, n_mels=40) without torchaudio: stft + a mel matrix.
            import tensorflow as tf
            mel = tf.signal.linear_to_mel_weight_matrix(40, 257, 16000, 0.0, 8000.0).numpy()
            self.register_buffer("mel", torch.tensor(mel.T))
            self.register_buffer("window", torch.hann_window(400))

        def forward_aud(self, x):
            spec = torch.stft(x, 512, hop_length=160, win_length=400, window=self.window,
                              return_complex=True).abs() ** 2
            x = torch.matmul(self.mel, spec) + 1e-6
            x = self.instancenorm(x.log())[:, :, 1:-1].detach()
            mid = self.netcnnaud(x.unsqueeze(1))
            mid = mid.view(mid.size(0), mid.size(1), -1)
            return self.netfcaud(mid), self.netfcspk(mid)

        def forward_vid(self, x):
            mid = self.netcnnlip(x)
            mid = mid.view(mid.size(0), mid.size(1), -1)
            return self.netfclip(mid), self.netfcface(mid)

    torch.manual_seed(0)
    model = SyncNetReference()
    w = nn.Parameter(torch.tensor([10.0, 10.0]))
    b = nn.Parameter(torch.tensor([-5.0, -5.0]))
    optimizer = torch.optim.SGD(list(model.parameters()) + [w, b], lr=1e-3, momentum=0.9,
                                weight_decay=1e-5)
    video = torch.rand(batch, 3, frames, face_size, face_size)
    audio = 0.1 * torch.randn(batch, frames * 640)

    def step():
        optimizer.zero_grad()
        out_a, out_A = model.forward_aud(audio)
        out_v, out_V = model.forward_vid(video)
        t = min(out_a.size(2), out_v.size(2))
        out_a, out_v = out_a[:, :, :t], out_v[:, :, :t]
        label = torch.arange(t)
        sync = 0
        for i in range(batch):  # the reference loops over tracks
            ft_v = out_v[[i]].transpose(2, 0)
            ft_a = out_a[[i]].transpose(2, 0)
            logits = F.cosine_similarity(ft_v.expand(-1, -1, t),
                                         ft_a.expand(-1, -1, t).transpose(0, 2)) * w[0] + b[0]
            sync = sync + F.cross_entropy(logits, label)
        ri = int(torch.randint(0, out_V.size(2), ()))
        face = out_V[:, :, [ri]]
        voice = out_A.mean(2, keepdim=True)
        idlogits = F.cosine_similarity(face.expand(-1, -1, batch),
                                       voice.expand(-1, -1, batch).transpose(0, 2)) * w[1] + b[1]
        loss = sync / batch + F.cross_entropy(idlogits, torch.arange(batch))
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="reference,small")
    p.add_argument("--modes", default="none,confusion")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--mixed_precision", action="store_true", help="GPUs: float16 compute")
    p.add_argument("--no_torch", action="store_true")
    args = p.parse_args()
    print(f"device: {device_name()}  batch {args.batch} tracks x {args.frames} frames, "
          f"{args.steps} timed steps")
    print(f"{'model':<40}{'examples/s':>12}")
    ours = {}
    for size in args.sizes.split(","):
        for mode in args.modes.split(","):
            value = bench_ours(size, mode, args.batch, args.frames, args.steps,
                               args.mixed_precision)
            ours[(size, mode)] = value
            print(f"{f'ours {size} --disentangle {mode}':<40}{value:>12.2f}", flush=True)
    if args.no_torch:
        return
    torch_value = bench_torch_reference(args.batch, args.frames, args.steps)
    if torch_value is None:
        print("torch reference: skipped (torch is not installed; pip install torch to compare)")
        return
    print(f"{'torch reference (SyncNetModelFBank)':<40}{torch_value:>12.2f}")
    if ("reference", "none") in ours:
        print(f"ratio ours reference/none vs torch reference: "
              f"{ours[('reference', 'none')] / torch_value:.2f}x")


if __name__ == "__main__":
    main()
