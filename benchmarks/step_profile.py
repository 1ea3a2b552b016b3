"""Where a training step's time goes: a TensorFlow profiler trace of our `train_step`,
aggregated into a per-op table (op type; forward or gradient; layer).

    python -m benchmarks.step_profile --size small --precisions float32,bfloat16 \\
        [--batch 8] [--frames 50] [--steps 3] [--logdir runs/profile] [--json OUT]

The trace (`tf.profiler.experimental`, viewable with `tensorboard --logdir LOGDIR` and the
profile plugin) is read back here from its `.xplane.pb` (XSpace protobuf, shipped with
TensorFlow): every TensorFlow op the executor ran on the host's inter-op threads
(`tf_Compute/...` lines; the op's own time, its intra-op Eigen/oneDNN work included), summed
per op type, per direction (ops under `gradient_tape` / `*Grad*` are the backward pass, the
optimizer's under its name) and per layer (the `face_conv1`-style name in the op's scope).
Times are milliseconds per step, summed over threads (on 2 cores up to 2x the wall time).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import tempfile

from benchmarks.train_step import _policy, cpu_description, make_inputs

LAYER = re.compile(r"(face|audio)_(conv\d|fc\d|pool\d|fold|rescale|bgr|trunk|content_fc\d|"
                   r"identity_fc\d)|log_mel|content_similarity|identity_similarity")


def trace_steps(size: str, precision: str, batch: int, frames: int, steps: int,
                logdir: str) -> str:
    """Runs warm-up + `steps` traced steps of our train_step; returns the .xplane.pb path."""
    import keras
    import tensorflow as tf

    from av_disentangle import compat
    from av_disentangle.config import MODEL_SIZES, LossConfig, TrainConfig
    from av_disentangle.model import DisentangleModel
    from av_disentangle.training import make_optimizer

    keras.mixed_precision.set_global_policy(_policy(precision))
    config = MODEL_SIZES[size]()
    data = {k: tf.constant(v) for k, v in make_inputs(batch, frames, config.face_size).items()}
    keras.utils.set_random_seed(0)
    model = DisentangleModel(config, LossConfig())
    model.compile(optimizer=make_optimizer(TrainConfig()))
    compat.build_optimizer(model)
    step = tf.function(model.train_step)
    for _ in range(2):
        float(step(data)["loss"])
    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        float(step(data)["loss"])
    tf.profiler.experimental.stop()
    keras.mixed_precision.set_global_policy("float32")
    found = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True),
                   key=os.path.getmtime)
    return found[-1]


def op_table(xplane: str, steps: int) -> dict:
    """{by_type, by_direction, by_layer, total}: ms per step of the executor's ops."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with open(xplane, "rb") as f:
        space = xplane_pb2.XSpace.FromString(f.read())
    host = next(p for p in space.planes if p.name == "/host:CPU")
    by_type, by_direction, by_layer = (collections.Counter() for _ in range(3))
    for line in host.lines:
        if not line.name.startswith("tf_Compute"):
            continue
        for event in line.events:
            meta = host.event_metadata[event.metadata_id]
            if ":" not in meta.name or "::" in meta.name:
                continue  # executor bookkeeping (e.g. ExecutorState::Process), not an op
            name, op_type = meta.name.rsplit(":", 1)
            ms = event.duration_ps / 1e9 / steps
            by_type[op_type] += ms
            lowered = name.lower()
            direction = ("optimizer" if "sgd" in lowered or "adam" in lowered else
                         "backward" if "gradient" in lowered or "grad" in op_type.lower()
                         else "forward")
            by_direction[direction] += ms
            layer = LAYER.search(name)
            by_layer[layer.group(0) if layer else "(other)"] += ms
    return {"by_type": dict(by_type.most_common()),
            "by_direction": dict(by_direction.most_common()),
            "by_layer": dict(by_layer.most_common()), "total": sum(by_type.values())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="small")
    p.add_argument("--precisions", default="float32,bfloat16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--logdir", default=None, help="keep the traces here (default: a temp dir)")
    p.add_argument("--json", help="also write the tables to this JSON file")
    args = p.parse_args()
    logdir = args.logdir or tempfile.mkdtemp(prefix="step_profile_")
    tables = {}
    for precision in args.precisions.split(","):
        path = trace_steps(args.size, precision, args.batch, args.frames, args.steps,
                           os.path.join(logdir, precision))
        tables[precision] = op_table(path, args.steps)
    names = list(tables)
    print(f"{args.size}, batch {args.batch} x {args.frames} frames, ms per step (summed over "
          f"threads); CPU {cpu_description()}")
    for key in ("by_direction", "by_layer", "by_type"):
        rows = sorted({k for t in tables.values() for k in t[key]},
                      key=lambda k: -tables[names[0]][key].get(k, 0.0))[:args.top]
        print(f"\n{key[3:]:<36}" + "".join(f"{n:>12}" for n in names)
              + ("       ratio" if len(names) == 2 else ""))
        for k in rows:
            values = [tables[n][key].get(k, 0.0) for n in names]
            ratio = (f"{values[0] / values[1]:>12.2f}" if len(names) == 2 and values[1] > 0
                     else "")
            print(f"{k[:36]:<36}" + "".join(f"{v:>12.1f}" for v in values) + ratio)
    print(f"\n{'total':<36}" + "".join(f"{tables[n]['total']:>12.1f}" for n in names))
    print(f"traces: {logdir}")
    if args.json:
        from av_disentangle.files import write_json_atomic

        write_json_atomic(args.json, {"size": args.size, "batch": args.batch,
                                      "frames": args.frames, "steps": args.steps,
                                      "cpu": cpu_description(), "tables": tables}, indent=1)


if __name__ == "__main__":
    main()
