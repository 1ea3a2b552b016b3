"""The `evaluate.py` command line: flags, then one library call per task.

    python evaluate.py --model saved_models/<name>/<version> --trials LIST --audio_root DIR
    python evaluate.py --task sync --model ... --videos DIR [--sync_csv FILE]
    python evaluate.py --task sync --syncnet DIR --videos DIR --sync_csv FILE   # LSE-D / LSE-C
    python evaluate.py --task crossmodal --model ... --videos DIR [--identities CSV]
    python evaluate.py --baseline mfcc --trials LIST --audio_root DIR   # a free baseline
    python evaluate.py --make_trials ROOT --trials_out FILE [--content_controlled]

A shell over keyword-argument library calls: each task checks its paths
(`paths.check_paths`), calls its library function (`verification.verify`,
`sync.sync_videos`, `crossmodal.crossmodal_videos`), prints the summary line, then writes the
outputs asked for (`write_*_outputs`), and returns the metrics. A user error is one
line on stderr (`evaluate: error: ...`, exit 2) without a traceback; `--verbose` adds the
traceback and TensorFlow's own messages.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable, Sequence

from av_disentangle.errors import run_cli
from av_disentangle.evaluation import BASELINES, EvaluationError, paths, trials
from av_disentangle.logs import native_stderr_silenced, setup_logging

DESCRIPTION = "Evaluate an exported av-disentangle SavedModel."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate", description=DESCRIPTION,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", choices=("verification", "sync", "crossmodal"),
                   default="verification")
    p.add_argument("--model", help="SavedModel directory (saved_models/<name>/<version>)")
    p.add_argument("--baseline", choices=BASELINES,
                   help="verification: score a free, label-free baseline instead of a model "
                        "(MFCC 1-19 mean+std or the long-term average log-mel of each whole "
                        "file, cosine; *_z: z-scored over the trial set's files)")
    g = p.add_argument_group("verification")
    g.add_argument("--trials", help="trial list: 'label path1 path2' per line")
    g.add_argument("--audio_root", help="directory the trial paths are relative to")
    g.add_argument("--num_crops", type=int, default=10)
    g.add_argument("--crop_seconds", type=float, default=None,
                   help="crop length (at least 0.5 s, the export's shortest input); default 2 s, "
                        "or 2.015 s (32,240 samples, the reference's evaluation crop) for a "
                        "model converted from joonson/syncnet_trainer")
    g.add_argument("--batch_size", type=int, default=64,
                   help="crops per model call (crops of several files share a call)")
    g.add_argument("--score_batch_size", type=int, default=4096, help="pairs per scoring step")
    g.add_argument("--skip_missing", action="store_true",
                   help="drop the trials of audio files that are missing, cannot be decoded "
                        "or decode to NaN/Inf samples (reported by name) instead of failing")
    g.add_argument("--score_norm", choices=("none", "asnorm"), default="none",
                   help="asnorm: adaptive symmetric score normalisation against --cohort "
                        "(wespeaker's AS-norm; the raw metrics are printed beside)")
    g.add_argument("--cohort", help="--score_norm: folder <speaker>/.../<utt>.<ext> of cohort "
                                    "speakers, not in the trials (e.g. training speakers)")
    g.add_argument("--top_k", type=int, default=300,
                   help="--score_norm asnorm: cohort scores kept per file (wespeaker's top_n)")
    g.add_argument("--cohort_cache", help="--score_norm: .npz caching the cohort's speaker "
                                          "vectors; reused when model, crops and files match")
    g.add_argument("--scores_out", help="write 'score label path1 path2' per trial")
    g.add_argument("--plot_out", help="PNG: DET curve and score histograms (verification, "
                                      "crossmodal) or the offset curve (sync)")
    g = p.add_argument_group("sync / crossmodal")
    g.add_argument("--videos", help="directory of videos (mp4/mpg, searched recursively)")
    g.add_argument("--face_size", type=int, default=112,
                   help="face crop size if the SavedModel's face input shape is not static")
    g.add_argument("--detect_faces", action="store_true",
                   help="detect, track and crop the face as 'python -m pipelines.prepare "
                        "--source videos' does (videos that are not face crops, such as GRID); "
                        "default: whole frames, centre-cropped to a square and resized, as "
                        "prepare does for VoxCeleb2 / --no_detect")
    g.add_argument("--max_offset", type=int, default=15,
                   help="sync: offsets searched, +-frames (SyncNet's vshift)")
    g.add_argument("--shifts", default=None,
                   help="sync: AV offsets (frames) applied on purpose to each video, SyncNet's "
                        "sign (+ = audio leads); 0 = the video as it is (default 0,5,-7; not "
                        "with --syncnet, which measures the videos as they are)")
    g.add_argument("--syncnet", metavar="DIR",
                   help="sync: LSE-D / LSE-C with syncnet_python's published SyncNet converted "
                        "to DIR (python -m av_disentangle.convert syncnet_python "
                        "syncnet_v2.model --export_dir DIR), instead of --model; videos are "
                        "face crops as its pycrop/ output, or --detect_faces cuts them with its "
                        "crop geometry")
    g.add_argument("--crop_scale", type=float, default=0.4,
                   help="sync --syncnet --detect_faces: syncnet_python's crop_scale")
    g.add_argument("--batch_windows", type=int, default=20,
                   help="sync --syncnet: windows per model call (its --batch_size)")
    g.add_argument("--sync_csv", help="sync: write the per-video table (CSV: video, "
                                      "applied_offset, av_offset, error, min_dist, confidence)")
    g.add_argument("--max_seconds", type=float, default=None,
                   help="use at most this much of each video (default 10 s; with --syncnet, "
                        "all of it, as syncnet_python)")
    g.add_argument("--identities", help="crossmodal: CSV 'path,identity' or a manifest TSV "
                                        "(default: the folder layout)")
    g.add_argument("--segments_per_clip", type=int, default=2)
    g.add_argument("--segment_seconds", type=float, default=2.0)
    g.add_argument("--forced_choice", type=int, default=10,
                   help="crossmodal: '1 face, 2 voices' trials per face (0: off)")
    g.add_argument("--max_pairs", type=int, default=0,
                   help="crossmodal: at most this many target and non-target pairs (0: all)")
    g.add_argument("--seed", type=int, default=0, help="crossmodal: seed of the trial sampling")
    g.add_argument("--strict", action="store_true",
                   help="stop at the first video that cannot be read (default: skip it and "
                        "report the count and names)")
    g = p.add_argument_group("TensorBoard")
    g.add_argument("--logdir", help="write the DET / offset curve image and the metrics to "
                                    "the TensorBoard run <logdir>/evaluate (e.g. the training "
                                    "run's <model_dir>/logs)")
    g.add_argument("--projector_out", help="folder for TensorBoard's embedding projector: "
                                           "speaker (or face and voice) embeddings with their "
                                           "labels; view with tensorboard --logdir FOLDER")
    g = p.add_argument_group("trial list builder")
    g.add_argument("--make_trials", metavar="ROOT",
                   help="write all pairs of ROOT/<speaker>/<utt>.<ext> to --trials_out")
    g.add_argument("--trials_out")
    g.add_argument("--content_controlled", action="store_true",
                   help="ROOT is a Speech Commands folder (<speaker>/<word>_<speaker>_nohash_"
                        "<n>.<ext>): targets are the same speaker saying DIFFERENT words; also "
                        "writes the hard subset (targets + same-word non-targets) to "
                        "<trials_out stem>_hard<suffix>")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, tracebacks and TensorFlow's own messages")
    return p


def make_trials(args: argparse.Namespace) -> None:
    """`--make_trials ROOT --trials_out FILE [--content_controlled]`: writes the trial list
    (and the hard subset); prints the counts of a content-controlled list."""
    if not args.trials_out:
        raise EvaluationError("--make_trials needs --trials_out")
    if not os.path.isdir(args.make_trials):
        raise EvaluationError(f"{args.make_trials}: --make_trials folder not found")
    paths.check_output_file(args.trials_out, "--trials_out")
    if not args.content_controlled:
        trials.make_trials(args.make_trials, args.trials_out)
        return
    hard = trials.hard_trials_path(args.trials_out)
    paths.check_output_file(str(hard), "--trials_out (hard subset)")
    counts = trials.make_content_trials(args.make_trials, args.trials_out)
    print(f"wrote {counts['all']} trials ({counts['target']} target: same speaker, "
          f"different word; {counts['nontarget_same_word']} same-word and "
          f"{counts['nontarget_different_word']} different-word non-target) to "
          f"{args.trials_out}, and {counts['hard']} hard ones (targets + same-word "
          f"non-targets) to {hard}")


def check_paths(args: argparse.Namespace) -> None:
    """`paths.check_paths` on the flags: every input exists, every output can be written."""
    paths.check_paths(task=args.task, trials=args.trials, identities=args.identities,
                      audio_root=args.audio_root, videos=args.videos,
                      scores_out=args.scores_out, plot_out=args.plot_out,
                      sync_csv=args.sync_csv if args.task == "sync" else None,
                      logdir=args.logdir, projector_out=args.projector_out)


def check_video_task(args: argparse.Namespace) -> None:
    """A video task (`sync`, `crossmodal`) has its --videos and its paths are usable."""
    if not args.videos:
        raise EvaluationError(f"--task {args.task} needs --videos")
    check_paths(args)


def run_verification(args: argparse.Namespace) -> dict[str, float]:
    if not args.trials or not args.audio_root:
        raise EvaluationError("--task verification needs --trials and --audio_root")
    check_paths(args)
    if args.score_norm == "none" and (args.cohort or args.cohort_cache):
        raise EvaluationError("--cohort / --cohort_cache are for --score_norm asnorm")
    if args.cohort_cache:
        paths.check_output_file(args.cohort_cache, "--cohort_cache")
    from av_disentangle.evaluation import verification  # loads TensorFlow: after the checks

    result = verification.verify(
        args.trials, args.audio_root, model=args.model, baseline=args.baseline,
        num_crops=args.num_crops, crop_seconds=args.crop_seconds, batch_size=args.batch_size,
        score_batch_size=args.score_batch_size, skip_missing=args.skip_missing,
        score_norm=args.score_norm, cohort=args.cohort, top_k=args.top_k,
        cohort_cache=args.cohort_cache)
    print(result.summary, flush=True)  # before any output file: never lost
    verification.write_verification_outputs(result, scores_out=args.scores_out,
                                            plot_out=args.plot_out, logdir=args.logdir,
                                            projector_out=args.projector_out)
    return result.logs


def run_lse(args: argparse.Namespace) -> dict[str, float]:
    """`--task sync --syncnet DIR`: syncnet_python's LSE-D / LSE-C per video and their means."""
    if args.model:
        raise EvaluationError("--syncnet replaces --model (give one of them)")
    if args.shifts is not None:
        raise EvaluationError("--shifts is not used with --syncnet: LSE-D / LSE-C measure the "
                              "videos as they are")
    check_video_task(args)
    from av_disentangle.evaluation import lse

    result = lse.lse_videos(args.syncnet, args.videos, vshift=args.max_offset,
                            batch_size=args.batch_windows, detect_faces=args.detect_faces,
                            crop_scale=args.crop_scale, max_seconds=args.max_seconds,
                            strict=args.strict)
    print(lse.format_table(result), flush=True)
    print(result.summary_line, flush=True)
    lse.write_lse_outputs(result, sync_csv=args.sync_csv)
    return result.means


def run_sync(args: argparse.Namespace) -> dict[str, float]:
    if args.syncnet:
        return run_lse(args)
    check_video_task(args)
    from av_disentangle.evaluation import sync

    result = sync.sync_videos(args.model, args.videos,
                              shifts=sync.parse_offsets(args.shifts or "0,5,-7"),
                              max_offset=args.max_offset, face_size=args.face_size,
                              detect_faces=args.detect_faces,
                              max_seconds=10.0 if args.max_seconds is None else args.max_seconds,
                              strict=args.strict)
    print(sync.format_table(result.rows), flush=True)
    print(result.summary_line, flush=True)
    sync.write_sync_outputs(result, sync_csv=args.sync_csv, plot_out=args.plot_out,
                            logdir=args.logdir)
    return result.summary


def run_crossmodal(args: argparse.Namespace) -> dict[str, float]:
    check_video_task(args)
    from av_disentangle.evaluation import crossmodal

    result = crossmodal.crossmodal_videos(
        args.model, args.videos, identities=args.identities, face_size=args.face_size,
        detect_faces=args.detect_faces,
        max_seconds=10.0 if args.max_seconds is None else args.max_seconds, strict=args.strict,
        segments_per_clip=args.segments_per_clip, segment_seconds=args.segment_seconds,
        forced_choice=args.forced_choice, max_pairs=args.max_pairs, seed=args.seed,
        score_batch_size=args.score_batch_size)
    print(result.protocol, flush=True)
    print(result.summary_line, flush=True)
    crossmodal.write_crossmodal_outputs(result, plot_out=args.plot_out, logdir=args.logdir,
                                        projector_out=args.projector_out)
    return result.logs


TASKS: dict[str, Callable[[argparse.Namespace], dict[str, float]]] = {
    "verification": run_verification, "sync": run_sync, "crossmodal": run_crossmodal}


def run(args: argparse.Namespace) -> dict[str, float]:
    """Runs what the flags ask for; returns the task's metrics ({} for --make_trials).

    Raises:
        EvaluationError: bad flags or input (one line naming the file and the problem).
    """
    if args.make_trials:
        make_trials(args)
        return {}
    if args.baseline:
        if args.model or args.task != "verification":
            raise EvaluationError("--baseline replaces --model, for --task verification only")
    elif args.syncnet:
        if args.task != "sync":
            raise EvaluationError("--syncnet is for --task sync (LSE-D / LSE-C)")
    elif not args.model:
        raise EvaluationError("--model is required (or --baseline for verification, or "
                              "--syncnet for LSE-D / LSE-C)")
    if args.content_controlled:
        raise EvaluationError("--content_controlled is an option of --make_trials")
    return TASKS[args.task](args)


def main(argv: Sequence[str] | None = None) -> int:
    """`evaluate.py`: 0, or 2 after a user error (one line on stderr)."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)  # before TensorFlow loads: its C++ log level
    with native_stderr_silenced(not args.verbose):  # start-up lines no log level hides
        import tensorflow as tf

        tf.config.list_physical_devices()  # the GPU platform start (cuInit) happens here

    def evaluate(_: object) -> int:
        run(args)
        return 0

    return run_cli(evaluate, "evaluate")
