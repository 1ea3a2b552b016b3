"""Few labels on real speech: fine-tune the speaker embedding on the bundled LibriSpeech
speakers, from scratch and from a self-supervised run on the bundled real clips.

    python benchmarks/real_finetune.py [--quick] [--seeds 3] [--ssl_steps 150] [--steps 100]
        [--labels_per_speaker 5] [--workdir runs/bench/real_finetune] [--json OUT]

Everything goes through the user-facing commands (`train.py`, `evaluate.py`), so this is also
an end-to-end check of the README's fine-tuning and evaluation commands:

1. `train.py` (self-supervised) on the 36 bundled clips (`small` model, Adam) -> export.
2. For each seed s: `train.py --objective supervised --labelled_audio
   data/samples/librispeech_subset --labels_per_speaker N --label_seed s`, once from scratch
   and once `--init_from` the self-supervised run (same labels, same seed) -> exports.
3. Trials: every pair of the utterances NOT drawn as labels in seed s (5 speakers x (10 - N)
   utterances), so no scored utterance was trained on. The speakers themselves were seen in
   fine-tuning (there are only 5), so this is closed-set verification of new utterances, not
   verification of new people. `evaluate.py` scores every model on the same trials.

What such a small set can show: whether the pipeline runs end to end on real speech and the
rough size of the effect of labels and of initialisation. What it cannot: a VoxCeleb1 EER -
with 5 speakers and 50 target trials one target trial is 2 points of miss rate.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
AUDIO = REPO / "data" / "samples" / "librispeech_subset"
EER_LINE = re.compile(r"EER ([0-9.]+)%\s+minDCF\(0\.01\) ([0-9.]+)")


def run(cmd: list[str], log: Path) -> str:
    """Runs one command from the repo root, appends its output to `log`, returns stdout.

    Raises:
      SystemExit: naming the command and the log file, if it fails.
    """
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n"
                f"[rc {proc.returncode}, {time.time() - start:.0f} s]\n")
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    return proc.stdout + proc.stderr


def train(args: list[str], log: Path) -> float:
    start = time.time()
    run([sys.executable, "train.py", *args], log)
    return time.time() - start


def evaluate(export: Path, trials: Path, log: Path) -> tuple[float, float]:
    """(EER %, minDCF(0.01)) of `export` on `trials` through evaluate.py."""
    out = run([sys.executable, "evaluate.py", "--model", str(export), "--trials", str(trials),
               "--audio_root", str(AUDIO)], log)
    found = EER_LINE.findall(out)
    if not found:
        sys.exit(f"no EER line in evaluate.py's output for {export}; see {log}")
    eer, dcf = found[-1]
    return float(eer), float(dcf)


def heldout_trials(config_json: Path, out: Path) -> tuple[int, int]:
    """Writes every pair of the utterances not drawn as labels in a fine-tuning run.

    Returns:
      (target trials, non-target trials).
    """
    labels = json.loads(config_json.read_text())["labels"]
    used = {u for _, u in labels["utterances"]}
    utts = sorted(str(p.relative_to(AUDIO)) for p in AUDIO.rglob("*.flac")
                  if str(p.relative_to(AUDIO)) not in used)
    lines, n_target = [], 0
    for a, b in combinations(utts, 2):
        same = a.split(os.sep)[0] == b.split(os.sep)[0]
        n_target += same
        lines.append(f"{int(same)} {a} {b}")
    out.write_text("\n".join(lines) + "\n")
    return n_target, len(lines) - n_target


def mean_std(values: list[float]) -> str:
    v = np.asarray(values, float)
    return f"{v.mean():.1f} +- {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed, 25 + 25 steps")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--ssl_steps", type=int, default=150, help="self-supervised steps (x25)")
    p.add_argument("--steps", type=int, default=100, help="supervised steps (x25)")
    p.add_argument("--labels_per_speaker", type=int, default=5)
    p.add_argument("--workdir", default="runs/bench/real_finetune")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.quick:
        args.seeds, args.ssl_steps, args.steps = 1, 25, 25
    work = (REPO / args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    start = time.time()

    ssl_dir = work / "ssl"
    ssl_export = ssl_dir / "export" / "1"
    ssl_s = 0.0
    if not ssl_export.exists():
        ssl_s = train(["--model_dir", str(ssl_dir), "--model_size", "small", "--optimizer", "adam",
                       "--learning_rate", "3e-3", "--epochs", str(max(1, args.ssl_steps // 25)),
                       "--steps_per_epoch", "25", "--seed", "0",
                       "--export_dir", str(ssl_export)], log)
    rows: dict[str, list[float]] = {"self-supervised only": [], "scratch": [], "pretrained": []}
    times: dict[str, list[float]] = {"scratch": [], "pretrained": []}
    counts = (0, 0)
    for seed in range(args.seeds):
        runs = {}
        for init in ("scratch", "pretrained"):
            model_dir = work / f"{init}_seed{seed}"
            export = model_dir / "export" / "1"
            if not export.exists():
                flags = ["--objective", "supervised", "--labelled_audio", str(AUDIO),
                         "--labels_per_speaker", str(args.labels_per_speaker),
                         "--label_seed", str(seed), "--seed", str(seed), "--model_size", "small",
                         "--optimizer", "adam", "--learning_rate", "1e-3", "--batch_tracks", "16",
                         "--epochs", str(max(1, args.steps // 25)), "--steps_per_epoch", "25",
                         "--model_dir", str(model_dir), "--export_dir", str(export)]
                if init == "pretrained":
                    flags += ["--init_from", str(ssl_dir)]
                times[init].append(train(flags, log))
            runs[init] = (model_dir, export)
        trials = work / f"heldout_trials_seed{seed}.txt"
        counts = heldout_trials(runs["scratch"][0] / "config.json", trials)
        rows["self-supervised only"].append(evaluate(ssl_export, trials, log)[0])
        for init, (_, export) in runs.items():
            rows[init].append(evaluate(export, trials, log)[0])
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.1f}%" for k, v in rows.items()),
              flush=True)

    delta = np.subtract(rows["pretrained"], rows["scratch"]).tolist()
    print(f"\nLibriSpeech test-other, 5 speakers, {args.labels_per_speaker} labelled utterances "
          f"each; trials between the other utterances ({counts[0]} target / {counts[1]} "
          f"non-target per seed); {args.seeds} seed(s); self-supervised: {args.ssl_steps} steps "
          f"on the 36 bundled clips ({ssl_s:.0f} s); supervised: {args.steps} steps "
          f"(scratch {np.mean(times['scratch'] or [0]):.0f} s, pretrained "
          f"{np.mean(times['pretrained'] or [0]):.0f} s per run)")
    print("| model | SV EER % (mean +- std over seeds) |\n|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {mean_std(values)} |")
    print(f"| pretrained - scratch (paired) | {mean_std(delta)} |")
    print(f"total {time.time() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "delta": delta, "trials": counts,
                                               "args": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
