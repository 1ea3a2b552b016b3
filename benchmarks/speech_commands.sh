#!/usr/bin/env bash
# Issue 27: self-supervised training on real voices at scale (LibriSpeech + Speech Commands),
# scored on content-controlled trials of held-out Speech Commands speakers. Only the user's
# commands: the world written by `python -m pipelines.synthetic --voices A,B`, `train.py` with
# its default recipe (plus a step budget, a seed and its folders), `evaluate.py` on the trials
# `evaluate.py --make_trials --content_controlled` writes for the held-out speakers' own clips
# (all trials and the hard subset), and the free baselines on the same trials.
#
#   bash benchmarks/speech_commands.sh                     # 1 seed x 1000 steps
#   SEEDS="0 1 2" STEPS=4000 bash benchmarks/speech_commands.sh
#   EXTRA="--disentangle none" TAG=none bash benchmarks/speech_commands.sh
#   EXTRA="--learning_rate 1e-9" TAG=untrained bash benchmarks/speech_commands.sh   # weights
#       held at their initialisation, BatchNorm statistics calibrated (as default_recipe.sh)
#   OBJECTIVE=supervised TAG=supervised STEPS=20000 bash benchmarks/speech_commands.sh
#       # the supervised (AAM) row: the same training speakers' labels, the world's shards
#   BASELINES=0 ...   # skip the free baselines (for runs in parallel with one that scores them)
#
# Needs ../shared/data (or LIBRI= and SC= pointing at the two folders; data/README.md says how
# to rebuild the Speech Commands selection). Prints one line per run and trial list.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
LIBRI="${LIBRI:-../shared/data/librispeech_train_clean_100_sel}"
SC="${SC:-../shared/data/speech_commands_v001_3words}"
STEPS="${STEPS:-1000}"
SEEDS="${SEEDS:-0}"
HOLDOUT="${HOLDOUT:-200}"
TAG="${TAG:-default}"
EXTRA="${EXTRA:-}"
BASELINES="${BASELINES:-1}"
OBJECTIVE="${OBJECTIVE:-self_supervised}"
PER_EPOCH="${PER_EPOCH:-50}"
work="${WORK:-/tmp/speech_commands}"
mkdir -p "$work"
world="$work/world"
if [ ! -f "$world/train/done" ]; then
  python -m pipelines.synthetic --voices "$LIBRI,$SC" --holdout_speakers "$HOLDOUT" \
    --track_seconds 3 --face_size 64 --seed 0 --output "$world" > "$work/world.log" 2>&1
  touch "$world/train/done"
fi
# The held-out Speech Commands speakers' own clips (not the world's tracks), linked into a
# folder for the trial maker.
heldout="$work/heldout_sc"
if [ ! -d "$heldout" ]; then
  python - "$world/holdout/manifest.json" "$SC" "$heldout" <<'EOF'
import json, os, sys
manifest, sc, out = sys.argv[1:]
speakers = json.load(open(manifest))["split"]["holdout"]
os.makedirs(out + ".tmp", exist_ok=True)
for s in speakers:
    if os.path.isdir(os.path.join(sc, s)):
        os.symlink(os.path.abspath(os.path.join(sc, s)), os.path.join(out + ".tmp", s))
os.rename(out + ".tmp", out)
EOF
  python evaluate.py --make_trials "$heldout" --trials_out "$work/sc_trials.txt" \
    --content_controlled > "$work/trials.log" 2>&1
fi
tail -1 "$work/trials.log"
eer() { grep -E "EER" "$1" | tail -1 | cut -c1-160; }
score() {  # name, then evaluate.py's model or baseline flags
  local name="$1"; shift
  for list in sc_trials sc_trials_hard; do
    python evaluate.py "$@" --trials "$work/$list.txt" --audio_root "$heldout" \
      --crop_seconds 1.0 --num_crops 3 > "$work/$name.$list.log" 2>&1
    printf '%-28s %-15s %s\n' "$name" "$list" "$(eer "$work/$name.$list.log")"
  done
}
epochs=$(( (STEPS + PER_EPOCH - 1) / PER_EPOCH ))
if [ "$OBJECTIVE" = supervised ]; then
  input=(--objective supervised --labelled_audio "$world/train/*.tfrecord")
else
  input=(--train_data "$world/train/*.tfrecord")
fi
for seed in $SEEDS; do
  name="$TAG-seed$seed-$STEPS"
  if [ ! -f "$work/exports/$name/saved_model.pb" ]; then
    rm -rf "$work/runs/$name" "$work/exports/$name"
    # shellcheck disable=SC2086  # EXTRA is a list of flags
    python train.py "${input[@]}" --epochs "$epochs" \
      --steps_per_epoch "$PER_EPOCH" --seed "$seed" --model_dir "$work/runs/$name" \
      --export_dir "$work/exports/$name" --verbose 0 $EXTRA > "$work/$name.train.log" 2>&1
  fi
  score "$name" --model "$work/exports/$name"
done
if [ "$BASELINES" = 1 ]; then
  for b in mfcc mfcc_z ltas ltas_z; do
    score "baseline-$b" --baseline "$b"
  done
fi
echo "logs: $work"
