"""Training-step speed: ours (TF/Keras) vs joonson/syncnet_trainer's own code, same
architecture, same temporal stride, same input; and embedding extraction; in every precision.

    # one row per process, interleaved over rounds; median and range per row:
    python benchmarks/train_step.py --rounds 3 --rows ours:small:float32,ours:small:bfloat16,\\
        torch:reference:float32,torch:reference:bfloat16,embed:small:float32,embed:small:bfloat16 \\
        --torch_python /path/to/torch/env/bin/python --reference /path/to/syncnet_trainer/.git
    # one row in this process (what each round runs):
    python benchmarks/train_step.py --rows ours:reference:bfloat16 --batch 8 --frames 50

Rows `kind:size:precision`:
- `ours`: `DisentangleModel.train_step` (both streams, log-mel in the graph, content + identity
  losses, `--disentangle` mode, our SGD: momentum 0.9, coupled weight decay), compiled with
  tf.function as `model.fit` does: without XLA, as train.py runs it (train.py always trains
  under a tf.distribute strategy, and Keras' jit_compile="auto" turns XLA off under one and on
  CPU-only machines); `--xla` compiles the step with XLA instead (not what train.py does), under
  the Keras policy `float32`, `mixed_bfloat16` or `mixed_float16` (features, embeddings and
  losses stay float32; `train.py --mixed_precision`). Sizes: `ModelConfig` presets.
- `torch`: the reference's OWN training step, `SyncNetDist.SyncNet.train_network` on a
  one-batch loader (its SyncNetModelFBank, nOut 1024; its per-track sync loss with its top-1/5
  accuracy on the CPU; its identity loss over one random face step; its SGD at its lr 1e-4,
  momentum 0.9, weight decay 1e-5), loaded from `--reference` by `benchmarks/reference_code.py`
  (never copied here). Precision `float32`, or its step inside `torch.autocast(device,
  dtype=bfloat16 | float16)` (its code has no GradScaler; timing only). Size is `reference`.
- `embed`: evaluate.py's embedding path: `evaluation.verification.embed_files` (10 crops of
  2 s per file) through the SavedModel exported under that precision policy, on the 50 bundled
  LibriSpeech files; reported as utterances/s (`examples_per_s`).
Input: `--frames` video frames at the size's face size and frames * 640 + 240 audio samples per
track (the reference loader's length; both front ends give 4 * frames log-mel frames), one
audio window (ours also takes the identity term's second window with `--audio_2`). Input
pipelines and host-to-device copies are excluded. Timing: `--warmup` untimed steps, then
`--steps` timed steps, synchronised at the end. The CPU's model name and its bf16 / AMX flags
are printed and recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from av_disentangle import files  # noqa: E402  (TF-free)
from av_disentangle.constants import AUDIO, AUDIO_2, FRAMES  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REFERENCE_PARAMS = 13_840_512  # SyncNetModelFBank(nOut=1024), trainable
PRECISIONS = ("float32", "bfloat16", "float16")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_reference() -> str:
    """$SYNCNET_TRAINER, else `.reference/syncnet_trainer` in the repo (gitignored: its files
    carried to a machine without git, e.g. the lent GPU image), else this workplace's mirror."""
    carried = os.path.join(REPO, ".reference", "syncnet_trainer")
    return os.environ.get("SYNCNET_TRAINER") or (
        carried if os.path.isdir(carried) else "/work/.mirror/joonson+syncnet_trainer/repo/.git")


def cpu_description() -> dict:
    """The CPU model and the matrix-unit flags that decide bf16 speed (from /proc/cpuinfo)."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = sorted(f for f in flags if f.startswith("amx") or f in (
        "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx512f", "avx2"))
    return {"model": model, "cores": os.cpu_count(), "flags": wanted}


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
    cpu = cpu_description()
    return f"CPU ({cpu['model']}, {cpu['cores']} cores, {' '.join(cpu['flags'])})"


def make_inputs(batch: int, frames: int, face_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """frames (B, T, S, S, 3) uint8 and audio (B, T * 640 + 240) float32 in [-1, 1], as the
    reference loader reads them (dataLoader.loadWAV: max_frames * 160 + 240 samples)."""
    rng = np.random.default_rng(seed)
    return {
        FRAMES: rng.integers(0, 256, (batch, frames, face_size, face_size, 3), dtype=np.uint8),
        AUDIO: np.clip(0.1 * rng.normal(size=(batch, frames * 640 + 240)), -1, 1
                       ).astype(np.float32),
        AUDIO_2: np.clip(0.1 * rng.normal(size=(batch, frames * 640 + 240)), -1, 1
                         ).astype(np.float32),
    }


def _policy(precision: str) -> str:
    return "float32" if precision == "float32" else f"mixed_{precision}"


def bench_ours(size: str, precision: str, mode: str, batch: int, frames: int, steps: int,
               warmup: int = 2, stride: int = 2, audio_2: bool = False,
               xla: bool = False) -> dict:
    """Times our train_step under a precision policy; examples_per_s, ms_per_step, ...
    `xla`: jit-compile the step (train.py does not: module docstring)."""
    import keras
    import tensorflow as tf

    from av_disentangle import compat
    from av_disentangle.config import MODEL_SIZES, LossConfig, TrainConfig
    from av_disentangle.model import DisentangleModel
    from av_disentangle.training import make_optimizer

    keras.mixed_precision.set_global_policy(_policy(precision))
    config = dataclasses.replace(MODEL_SIZES[size](), temporal_stride=stride)
    arrays = make_inputs(batch, frames, config.face_size)
    if not audio_2:
        del arrays[AUDIO_2]
    device = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    with tf.device(device):
        data = {k: tf.identity(v) for k, v in arrays.items()}
    keras.utils.set_random_seed(0)
    model = DisentangleModel(config, LossConfig(disentangle=mode))
    model.compile(optimizer=make_optimizer(TrainConfig()))
    compat.build_optimizer(model)
    jit = bool(xla)
    step = tf.function(model.train_step, jit_compile=jit)
    streams = model.face_stream.trainable_weights + model.audio_stream.trainable_weights
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
            "steps_out": int(config.num_steps(frames)), "xla": jit, "loss": loss}


def bench_torch_reference(precision: str, batch: int, frames: int, steps: int, warmup: int,
                          stride: int, reference: str) -> dict:
    """Times the reference's own `SyncNet.train_network` on one batch (module docstring)."""
    import torch

    from benchmarks.reference_code import load_reference, one_batch_loader

    ref = load_reference(reference)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    np.random.seed(0)
    s = ref.SyncNetDist.SyncNet(model="models.SyncNetModelFBank", maxFrames=frames, nOut=1024,
                                temporal_stride=stride)
    arrays = make_inputs(batch, frames, 224)
    # Its loaders give OpenCV's BGR 0..255 frames as float (N, 3, T, H, W) and int16 values.
    video = torch.tensor(arrays[FRAMES][..., ::-1].copy()).permute(0, 4, 1, 2, 3).float()
    audio = torch.tensor(np.round(arrays[AUDIO] * 32767.0))
    video, audio = video.contiguous().to(device), audio.to(device)
    loader = one_batch_loader(video, audio)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision)

    def step():
        with contextlib.redirect_stdout(io.StringIO()):  # its per-batch progress line
            with torch.autocast(device_type=device, dtype=dtype or torch.float32,
                                enabled=dtype is not None):
                return s.train_network(loader, evalmode=False)

    def synchronise():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(max(1, warmup)):
        step()
    synchronise()
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = step()
    synchronise()
    elapsed = time.perf_counter() - start
    params = sum(p.numel() for p in s.__S__.parameters() if p.requires_grad)
    with torch.no_grad():
        steps_out = s.__S__.forward_vid(video[:1])[0].shape[2]
    return {"examples_per_s": batch * steps / elapsed, "ms_per_step": 1000 * elapsed / steps,
            "trainable_params": int(params), "steps_out": int(steps_out),
            "loss": float(loss), "device": device, "reference_commit": ref.commit,
            "torchaudio_stand_in": ref.torchaudio_stand_in, "torch": torch.__version__}


def bench_embed(size: str, precision: str, repeats: int = 2) -> dict:
    """Utterances/s of `embed_files` (10 crops of 2 s) through a SavedModel exported under the
    precision policy, on the 50 bundled LibriSpeech files (decoding included, as evaluate.py)."""
    import glob
    import tempfile

    import keras

    from av_disentangle.config import MODEL_SIZES, LossConfig
    from av_disentangle.evaluation.exported import ExportedModel
    from av_disentangle.evaluation.verification import embed_files
    from av_disentangle.export import export_saved_model
    from av_disentangle.model import DisentangleModel

    keras.mixed_precision.set_global_policy(_policy(precision))
    keras.utils.set_random_seed(0)
    model = DisentangleModel(MODEL_SIZES[size](), LossConfig())
    path = os.path.join(tempfile.mkdtemp(), "m", "1")
    export_saved_model(model.face_stream, model.audio_stream, model.model_config, path,
                       compute_dtype=None)  # served in the row's precision (train.py: float32)
    keras.mixed_precision.set_global_policy("float32")
    root = os.path.join(REPO, "data", "samples", "librispeech_subset")
    names = sorted(os.path.relpath(p, root) for p in glob.glob(f"{root}/*/*.flac"))
    exported = ExportedModel(path)
    embed_files(exported, names[:4], root)  # warm-up: tracing, first calls
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        emb, _ = embed_files(exported, names, root)
        times.append(time.perf_counter() - start)
    elapsed = min(times)
    return {"examples_per_s": len(names) / elapsed, "ms_per_step": 1000 * elapsed / len(names),
            "trainable_params": int(sum(np.prod(w.shape) for w in
                                        model.audio_stream.trainable_weights)),
            "steps_out": int(emb.shape[-1]), "files": len(names)}


def run_row(row: str, args: argparse.Namespace) -> dict:
    kind, size, precision = row.split(":")
    if precision not in PRECISIONS:
        raise SystemExit(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if kind == "ours":
        return bench_ours(size, precision, args.mode, args.batch, args.frames, args.steps,
                          args.warmup, args.stride, args.audio_2, args.xla)
    if kind == "torch":
        if size != "reference":
            raise SystemExit("torch rows run the reference's own model: size 'reference'")
        return bench_torch_reference(precision, args.batch, args.frames, args.steps,
                                     args.warmup, args.stride, args.reference)
    if kind == "embed":
        return bench_embed(size, precision)
    raise SystemExit(f"row kind must be ours, torch or embed, got {kind!r}")


def interleaved(rows: list[str], args: argparse.Namespace) -> dict:
    """Each row in its own process, `rounds` times, the order rotated every round, so the
    machine's load drifts over all rows alike; median, min and max per row."""
    results: dict[str, list[dict]] = {row: [] for row in rows}
    passthrough = ["--mode", args.mode, "--batch", str(args.batch), "--frames",
                   str(args.frames), "--stride", str(args.stride), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--reference", args.reference,
                   *(["--audio_2"] if args.audio_2 else []), *(["--xla"] if args.xla else [])]
    for r in range(args.rounds):
        order = rows[r % len(rows):] + rows[:r % len(rows)]
        for row in order:
            python = args.torch_python if row.startswith("torch") else sys.executable
            cmd = [python, os.path.abspath(__file__), *passthrough, "--rounds", "0", "--rows",
                   row, "--json", "-"]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if out.returncode != 0 or not line:
                print(f"round {r + 1} {row}: failed: {out.stderr.strip()[-400:]}", flush=True)
                continue
            res = json.loads(line[-1])["rows"][0]
            results[row].append(res)
            print(f"round {r + 1} {row:<28} {res['examples_per_s']:9.2f} /s "
                  f"{res['ms_per_step']:9.1f} ms", flush=True)
    summary = []
    for row, runs in results.items():
        if not runs:
            summary.append({"name": row, "runs": 0})
            continue
        rates = [x["examples_per_s"] for x in runs]
        summary.append({"name": row, "runs": len(runs), "median": statistics.median(rates),
                        "min": min(rates), "max": max(rates),
                        "ms_median": statistics.median(x["ms_per_step"] for x in runs),
                        "trainable_params": runs[0]["trainable_params"], "all": runs})
    return {"summary": summary}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rows", default="ours:reference:float32,ours:small:float32",
                   help="comma-separated kind:size:precision (module docstring)")
    p.add_argument("--rounds", type=int, default=0,
                   help="run every row in its own process this many times, interleaved "
                        "(0: the rows once, in this process)")
    p.add_argument("--mode", default="none", help="our --disentangle mode")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--stride", type=int, default=2, help="temporal stride of both models")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--audio_2", action="store_true",
                   help="ours also embeds a second audio window (our training input)")
    p.add_argument("--xla", action="store_true",
                   help="ours rows: compile the step with XLA (train.py does not; docstring)")
    p.add_argument("--reference", default=default_reference(),
                   help="joonson/syncnet_trainer: a git dir or a folder of its files")
    p.add_argument("--torch_python", default=sys.executable,
                   help="the interpreter of the torch rows (an environment with torch)")
    p.add_argument("--mixed_precision", nargs="?", const="float16", default=None,
                   choices=PRECISIONS, help="(older flag) the precision of every row")
    p.add_argument("--no_torch", action="store_true", help="(older flag) drop torch rows")
    p.add_argument("--no_ours", action="store_true", help="(older flag) only the torch row")
    p.add_argument("--json", help="also write the results to this JSON file ('-': stdout)")
    args = p.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    if args.no_ours:
        rows = ["torch:reference:float32"]
    if args.no_torch:
        rows = [r for r in rows if not r.startswith("torch")]
    if args.mixed_precision:
        rows = [":".join(r.split(":")[:2] + [args.mixed_precision]) for r in rows]
    result = {"device": device_name(), "cpu": cpu_description(), "batch": args.batch,
              "frames": args.frames, "stride": args.stride, "steps": args.steps,
              "warmup": args.warmup, "audio_2": args.audio_2, "mode": args.mode,
              "rounds": args.rounds}
    quiet = args.json == "-"
    if not quiet:
        print(f"device: {result['device']}  batch {args.batch} tracks x {args.frames} frames, "
              f"temporal stride {args.stride}, {args.warmup} warm-up + {args.steps} timed steps")
    if args.rounds:
        result.update(interleaved(rows, args))
        print(f"\n{'row':<30}{'runs':>5}{'median/s':>10}{'min':>9}{'max':>9}{'ms/step':>10}"
              f"{'params':>12}")
        for r in result["summary"]:
            if r["runs"]:
                print(f"{r['name']:<30}{r['runs']:>5}{r['median']:>10.2f}{r['min']:>9.2f}"
                      f"{r['max']:>9.2f}{r['ms_median']:>10.1f}{r['trainable_params']:>12,}")
            else:
                print(f"{r['name']:<30}{0:>5}  (every run failed)")
    else:
        result["rows"] = []
        for row in rows:
            res = {"name": row, **run_row(row, args)}
            result["rows"].append(res)
            if not quiet:
                print(f"{row:<30}{res['examples_per_s']:>10.2f} /s{res['ms_per_step']:>10.1f} ms"
                      f"{res['trainable_params']:>12,}{res['steps_out']:>6}", flush=True)
    if args.json == "-":
        print(json.dumps(result, default=str))
    elif args.json:
        files.write_json_atomic(args.json, result, indent=1)


if __name__ == "__main__":
    main()
