#!/usr/bin/env bash
# The numbers README.md states for the quick start, measured the way a user gets them: a fresh
# clone of this repository's HEAD, the README's quick-start command, then the README's
# evaluation commands on the export it wrote.
#
#   bash benchmarks/readme_numbers.sh            # reuses the active virtualenv (the README's
#                                                # install is `pip install -e .`: the clone is
#                                                # put first on PYTHONPATH instead)
#   INSTALL=1 bash benchmarks/readme_numbers.sh  # the README's own venv + pip install too
#
# Prints each command's summary line and wall time. Run it twice to see the spread.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/readme_numbers.XXXXXX)"
git clone -q "$repo" "$work/clone"
cd "$work/clone"
if [ "${INSTALL:-0}" = 1 ]; then
  python3 -m venv .venv && . .venv/bin/activate && pip install -q -e .
else
  export PYTHONPATH="$work/clone"
fi
timed() {  # timed LABEL CMD...: the command's last line that matters, and its seconds
  local label="$1"; shift
  local start end
  start=$(date +%s.%N)
  "$@" > "$work/$label.log" 2>&1
  end=$(date +%s.%N)
  printf '%-12s %6.1f s  %s\n' "$label" "$(echo "$end - $start" | bc)" \
    "$(grep -E 'EER|offset|loss:|exported' "$work/$label.log" | tail -1 | cut -c1-220)"
}
timed train python train.py --model_dir runs/sample --epochs 1 --steps_per_epoch 5
mkdir -p runs/eval
python evaluate.py --make_trials data/samples/librispeech_subset \
  --trials_out runs/eval/ls_trials.txt > /dev/null 2>&1
timed verification python evaluate.py --model saved_models/av_disentangle/1 \
  --trials runs/eval/ls_trials.txt --audio_root data/samples/librispeech_subset \
  --plot_out runs/eval/ls_det.png
timed sync python evaluate.py --task sync --model saved_models/av_disentangle/1 \
  --videos data/samples/pcavs_vox2 --sync_csv runs/eval/sync.csv --plot_out runs/eval/sync.png
timed crossmodal python evaluate.py --task crossmodal --model saved_models/av_disentangle/1 \
  --videos data/samples/grid --identities data/samples/MANIFEST.tsv --detect_faces
grep -E "loss:" "$work/train.log" | tail -1 | tr -s ' ' | cut -c1-400
echo "logs: $work"
