#!/usr/bin/env bash
# Does `python train.py` with its DEFAULT recipe learn speaker identity from real voices?
# Only the user's commands: the real-voices world written by `python -m pipelines.synthetic
# --voices` (30 LibriSpeech train-clean-100 speakers), `train.py` given only --train_data and a
# step budget (plus a seed and its run/export folders), and `evaluate.py` on the bundled
# LibriSpeech test-other subset (5 speakers never seen in training, 10 utterances each, all
# 1,225 cross-utterance pairs). Against the same with the weights held still (--learning_rate
# 1e-9: the untrained network, its BatchNorm statistics calibrated on the same steps) and the
# free baselines of `evaluate.py --baseline` on the same trials.
#
#   bash benchmarks/default_recipe.sh                 # 3 seeds x 250 steps, ~12 min on 2 cores
#   SEEDS="0" STEPS=100 bash benchmarks/default_recipe.sh
#   VOICES=/path/to/LibriSpeech-layout/folder bash benchmarks/default_recipe.sh
#
# Prints one line per run (the EER line of evaluate.py) and a summary.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
VOICES="${VOICES:-../shared/data/librispeech_train_clean_100_sel}"
STEPS="${STEPS:-250}"
SEEDS="${SEEDS:-0 1 2}"
work="${WORK:-/tmp/default_recipe}"
audio=data/samples/librispeech_subset
mkdir -p "$work"
if [ ! -f "$work/world/train/done" ]; then
  python -m pipelines.synthetic --voices "$VOICES" --speakers 30 --holdout_speakers 51 \
    --track_seconds 3 --face_size 64 --seed 0 --output "$work/world" > "$work/world.log" 2>&1
  touch "$work/world/train/done"
fi
python evaluate.py --make_trials "$audio" --trials_out "$work/ls_trials.txt" > /dev/null 2>&1
eer() { grep -E "EER" "$1" | tail -1 | cut -c1-160; }
epochs=$(( (STEPS + 49) / 50 ))
for seed in $SEEDS; do
  for arm in default untrained; do
    extra=()
    [ "$arm" = untrained ] && extra=(--learning_rate 1e-9)
    name="$arm-seed$seed"
    rm -rf "$work/runs/$name" "$work/exports/$name"
    python train.py --train_data "$work/world/train/*.tfrecord" --epochs "$epochs" \
      --steps_per_epoch 50 --seed "$seed" --model_dir "$work/runs/$name" \
      --export_dir "$work/exports/$name" --verbose 0 "${extra[@]}" > "$work/$name.train.log" 2>&1
    python evaluate.py --model "$work/exports/$name" --trials "$work/ls_trials.txt" \
      --audio_root "$audio" > "$work/$name.eval.log" 2>&1
    printf '%-20s %s\n' "$name" "$(eer "$work/$name.eval.log")"
  done
done
for b in mfcc mfcc_z ltas ltas_z; do
  python evaluate.py --baseline "$b" --trials "$work/ls_trials.txt" --audio_root "$audio" \
    > "$work/baseline-$b.log" 2>&1
  printf '%-20s %s\n' "baseline $b" "$(eer "$work/baseline-$b.log")"
done
echo "logs: $work"
