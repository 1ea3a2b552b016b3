#!/usr/bin/env python
"""Evaluate an exported av-disentangle SavedModel: speaker verification, audio-visual sync,
face-voice identity. The library is `av_disentangle.evaluation`; flags are in its `cli` module
(`python evaluate.py --help`).

Examples:
  python evaluate.py --make_trials data/samples/librispeech_subset --trials_out runs/eval/ls.txt
  python evaluate.py --model saved_models/av_disentangle/1 --trials runs/eval/ls.txt \\
      --audio_root data/samples/librispeech_subset --plot_out runs/eval/det.png
  python evaluate.py --task sync --model saved_models/av_disentangle/1 \\
      --videos data/samples/pcavs_vox2
  python evaluate.py --task sync --syncnet saved_models/syncnet_v2/1 \\
      --videos data/samples/pcavs_vox2 --sync_csv runs/eval/lse.csv   # LSE-D / LSE-C
"""

import sys

from av_disentangle.logs import quiet_tensorflow

quiet_tensorflow(verbose=any(a in ("-v", "--verbose") for a in sys.argv[1:]))  # before TF

from av_disentangle.evaluation.cli import main  # noqa: E402  (TensorFlow loads lazily, per task)

if __name__ == "__main__":
    sys.exit(main())
