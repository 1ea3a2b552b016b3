#!/usr/bin/env bash
# One-call GPU check for BENCHMARKS.md's GPU rows (issue 9 item 6). Run from anywhere:
#
#     bash benchmarks/gpu_check.sh                      # on a machine with a GPU, < 10 min
#     GPU_CHECK_QUICK=1 bash benchmarks/gpu_check.sh    # tiny settings: checks the script on CPU
#
# Parts, each under its own timeout (the whole script stays under ~9.5 min):
#   env          GPUs, Python, TensorFlow and torch versions
#   step_fp32    ours, reference size, batch 30 x 50 frames at 224x224, stride 2, float32
#   step_fp16    the same, mixed float16 (loss scaling), without XLA as train.py runs it
#   step_fp16_xla  the same step compiled with XLA (train.py does not: what XLA would buy)
#   torch_fp32   the reference's own code (SyncNetDist.train_network), same input and stride
#   torch_fp16   the same under torch.autocast float16 (its code has no GradScaler)
#   input        benchmarks/input_pipeline.py on all cores (--threads 0), bundled clips stored at
#                224 and 112 in 4 s chunks: clips/s, CPU-ms and MB read per clip
#   mirrored     train.py under MirroredStrategy (all GPUs), reference model, batch 30,
#                1 epoch x 10 steps on the bundled data, --no_export
# Writes one JSON ($OUT/gpu_check.json when OUT is set, else benchmarks/gpu_check.json) and
# prints a table. Installs nothing: it uses the first of $PYTHON, .venv/bin/python, python3
# that imports tensorflow (for ours) and the first that imports torch (for the reference); a
# part whose framework is missing is recorded as skipped, with the reason.
set -u
cd "$(dirname "$0")/.."
# The repo root on the path: the parts run as scripts (sys.path[0] = benchmarks/) on machines
# where the project is not pip-installed (the lent GPU image).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
QUICK=${GPU_CHECK_QUICK:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-560}  # seconds for all parts together
if [ -n "${OUT:-}" ]; then JSON="$OUT/gpu_check.json"; else JSON="benchmarks/gpu_check.json"; fi
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

if [ "$QUICK" = 1 ]; then
  STEP_ARGS=(--batch 2 --frames 13 --steps 1 --warmup 1)
  STEP_SIZE=tiny
  TORCH_ARGS=(--batch 2 --frames 13 --steps 1 --warmup 1)  # its top-2 identity accuracy: >= 2
  INPUT_ARGS=(--seconds 2 --sizes 64 --chunk_seconds 0 --window_frames 15 --rounds 1)
  TRAIN_ARGS=(--model_size tiny --batch_tracks 2 --window_frames 15 --steps_per_epoch 2)
  T_STEP=240; T_TORCH=120; T_INPUT=240; T_TRAIN=240; BUDGET=${GPU_CHECK_BUDGET_S:-1200}
else
  STEP_ARGS=(--batch 30 --frames 50 --steps 10 --warmup 3)
  STEP_SIZE=reference
  TORCH_ARGS=(--batch 30 --frames 50 --steps 10 --warmup 3)
  INPUT_ARGS=(--seconds 20 --sizes 224,112 --chunk_seconds 4 --window_frames 50 --rounds 2)
  TRAIN_ARGS=(--model_size reference --batch_tracks 30 --window_frames 50 --steps_per_epoch 10)
  T_STEP=100; T_TORCH=50; T_INPUT=80; T_TRAIN=110
fi

first_python_with() {  # first interpreter that imports module $1
  local p
  for p in "${PYTHON:-}" .venv/bin/python python3; do
    if [ -n "$p" ] && "$p" -c "import $1" >/dev/null 2>&1; then echo "$p"; return; fi
  done
}
TF_PY=$(first_python_with tensorflow)
TORCH_PY=$(first_python_with torch)

# run_part NAME TIMEOUT_S PYTHON ARGS...: runs under the timeout (shortened to what the budget
# leaves), log in $WORK/NAME.log, "rc seconds" in $WORK/NAME.status; "skip" when no PYTHON.
run_part() {
  local name=$1 limit=$2 py=$3; shift 3
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ -z "$py" ]; then echo "skip" > "$WORK/$name.status"; return; fi
  if [ "$left" -lt 15 ]; then echo "nobudget" > "$WORK/$name.status"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (timeout ${limit}s): $py $*" >&2
  local t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$py" "$@" > "$WORK/$name.log" 2>&1
  echo "$? $(( $(date +%s) - t0 ))" > "$WORK/$name.status"
  tail -n 4 "$WORK/$name.log" >&2
}

if command -v nvidia-smi >/dev/null; then nvidia-smi -L > "$WORK/nvidia.txt" 2>&1
else echo "no nvidia-smi" > "$WORK/nvidia.txt"; fi
run_part env 60 "${TF_PY:-${TORCH_PY:-python3}}" -c '
import os, platform, sys
print("python", platform.python_version(), sys.executable, "cores", os.cpu_count())
try:
    import tensorflow as tf
    print("tensorflow", tf.__version__, "gpus", len(tf.config.list_physical_devices("GPU")))
except ImportError as e:
    print("tensorflow missing:", e)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available())
except ImportError as e:
    print("torch missing:", e)
'
run_part step_fp32 "$T_STEP" "$TF_PY" benchmarks/train_step.py "${STEP_ARGS[@]}" \
  --rows "ours:$STEP_SIZE:float32" --json "$WORK/step_fp32.json"
run_part step_fp16 "$T_STEP" "$TF_PY" benchmarks/train_step.py "${STEP_ARGS[@]}" \
  --rows "ours:$STEP_SIZE:float16" --json "$WORK/step_fp16.json"
# train.py runs without XLA (Keras turns it off under tf.distribute); this part says what XLA
# would buy on this GPU.
run_part step_fp16_xla "$T_STEP" "$TF_PY" benchmarks/train_step.py "${STEP_ARGS[@]}" --xla \
  --rows "ours:$STEP_SIZE:float16" --json "$WORK/step_fp16_xla.json"
# The reference's own code (benchmarks/reference_code.py): carry its files as
# .reference/syncnet_trainer (gitignored) or point SYNCNET_TRAINER at a checkout.
run_part torch_fp32 "$T_TORCH" "$TORCH_PY" benchmarks/train_step.py "${TORCH_ARGS[@]}" \
  --rows torch:reference:float32 --json "$WORK/torch_fp32.json"
run_part torch_fp16 "$T_TORCH" "$TORCH_PY" benchmarks/train_step.py "${TORCH_ARGS[@]}" \
  --rows torch:reference:float16 --json "$WORK/torch_fp16.json"
run_part input "$T_INPUT" "$TF_PY" benchmarks/input_pipeline.py "${INPUT_ARGS[@]}" --threads 0 \
  --json "$WORK/input.json"
run_part mirrored "$T_TRAIN" "$TF_PY" train.py "${TRAIN_ARGS[@]}" --epochs 1 --no_export \
  --model_dir "$WORK/run" --verbose 2

python3 - "$WORK" "$JSON" "$QUICK" "$(( $(date +%s) - START ))" "$TF_PY" "$TORCH_PY" <<'EOF'
import json, os, re, sys

work, out, quick, total, tf_py, torch_py = sys.argv[1:7]
parts = ["env", "step_fp32", "step_fp16", "step_fp16_xla", "torch_fp32", "torch_fp16", "input",
         "mirrored"]
result = {"quick": quick == "1", "total_s": int(total), "tensorflow_python": tf_py or None,
          "torch_python": torch_py or None,
          "nvidia_smi": open(os.path.join(work, "nvidia.txt")).read().strip(), "parts": {}}
for name in parts:
    status = open(os.path.join(work, f"{name}.status")).read().split()
    log_path = os.path.join(work, f"{name}.log")
    log = open(log_path, errors="replace").read() if os.path.exists(log_path) else ""
    part = {"status": status[0]}
    if status[0] == "skip":
        part["reason"] = ("no python here imports " +
                          ("torch" if name.startswith("torch") else "tensorflow"))
    elif status[0] == "nobudget":
        part["reason"] = "time budget used up"
    else:
        rc, secs = int(status[0]), int(status[1])
        part.update(status="ok" if rc == 0 else ("timeout" if rc in (124, 137) else "failed"),
                    rc=rc, seconds=secs, log_tail=log[-1500:])
    path = os.path.join(work, f"{name}.json")
    if os.path.exists(path):
        part["result"] = json.load(open(path))
    if name == "mirrored":
        m = re.search(r"strategy (\w+) with (\d+) replica", log)
        if m:
            part["strategy"], part["replicas"] = m.group(1), int(m.group(2))
        m = re.findall(r"(\d+)/\d+ - (\d+)s - ([\d.]+)(m?s)/step", log)
        if m:
            steps, secs, per, unit = m[-1]
            part["epoch_s"] = int(secs)
            part["s_per_step"] = float(per) / (1000 if unit == "ms" else 1)
    result["parts"][name] = part


def row(name):
    rows = result["parts"][name].get("result", {}).get("rows", [])
    return rows[0] if rows else None


for precision in ("fp32", "fp16"):
    ours, ref = row(f"step_{precision}"), row(f"torch_{precision}")
    if ours and ref and quick != "1":  # quick: ours is `tiny`, not the same architecture
        result[f"ratio_ours_vs_torch_{precision}"] = ours["examples_per_s"] / ref["examples_per_s"]
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump(result, f, indent=1)
os.replace(tmp, out)

print(f"\nGPU check ({'QUICK' if quick == '1' else 'full'}), {total} s; "
      f"{result['nvidia_smi'].splitlines()[0] if result['nvidia_smi'] else ''}")
print(f"{'part':<14}{'status':<10}{'secs':>6}  result")
for name in parts:
    part = result["parts"][name]
    text = part.get("reason", "")
    r = row(name) if name.startswith(("step", "torch")) else None
    if r:
        text = (f"{r['name']}: {r['examples_per_s']:.2f} examples/s, {r['ms_per_step']:.1f} "
                f"ms/step, batch {part['result']['batch']}, {r['trainable_params']:,} params, "
                f"device {part['result']['device']}")
    elif name == "input" and part.get("result", {}).get("rows"):
        text = "; ".join(f"{r['size']}px: {r['clips_per_s']:.0f} clips/s, "
                         f"{r['cpu_ms_per_clip']:.0f} CPU-ms, {r['mb_per_clip']:.2f} MB/clip"
                         for r in part["result"]["rows"])
    elif name == "mirrored" and "s_per_step" in part:
        text = (f"{part.get('strategy')} x {part.get('replicas')}: {part['s_per_step']:.3f} "
                f"s/step (epoch {part['epoch_s']} s incl. first-step tracing)")
    elif name == "env" and part["status"] == "ok":
        text = " | ".join(line for line in part["log_tail"].splitlines()
                          if line.split(" ")[0] in ("python", "tensorflow", "torch"))
    elif not text and part.get("log_tail"):  # no result: say why (the log's last line)
        text = part["log_tail"].strip().splitlines()[-1][:110]
    print(f"{name:<14}{part['status']:<10}{part.get('seconds', ''):>6}  {text}")
for precision in ("fp32", "fp16"):
    if f"ratio_ours_vs_torch_{precision}" in result:
        print(f"ratio ours / torch reference ({precision}): "
              f"{result[f'ratio_ours_vs_torch_{precision}']:.2f}x")
print(f"JSON: {out}")
EOF
rm -rf "$WORK"
