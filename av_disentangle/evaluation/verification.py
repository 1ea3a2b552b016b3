"""Speaker verification of an exported model on a VoxCeleb-format trial list.

Every distinct file is decoded once (`pipelines.media.decode_audio_file`), cut into
`num_crops` evenly spaced crops of `crop_seconds`, and embedded crop by crop; the crops of
consecutive files are batched together, `batch_size` crops per model call. A trial's score is
the mean cosine over all crop pairs of its two files (`scoring.score_pairs`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from av_disentangle.constants import SAMPLE_RATE
from av_disentangle.evaluation import EvaluationError, baselines
from av_disentangle.evaluation import score_norm as score_norm_lib
from av_disentangle.evaluation.exported import ExportedModel, model_step
from av_disentangle.evaluation.plots import plot_det
from av_disentangle.evaluation.reports import write_projector, write_scores, write_tensorboard
from av_disentangle.evaluation.scoring import (P_TARGETS, check_both_classes, format_summary,
                                               score_pairs)
from av_disentangle.evaluation.trials import Trial, read_trials
from av_disentangle.export import MIN_SAMPLES
from av_disentangle.verification_metrics import compute_eer, compute_min_dcf, l2_normalise
from pipelines.media import MediaError, decode_audio_file

logger = logging.getLogger(__name__)


class AudioConditions:
    """Counts what evaluation did to files silently before: resampled to 16 kHz, downmixed to
    mono, repeated to fill a crop, or all zeros (scored as they are); `summary_lines` gives
    one line per condition that occurred, with the count and examples."""

    def __init__(self) -> None:
        self.files: dict[str, list[str]] = {"resampled": [], "downmixed": [], "repeated": [],
                                            "silent": []}
        self.rates: set[int] = set()
        self.total = 0

    def note(self, path: str, source, wav: np.ndarray, crop_samples: int) -> None:
        self.total += 1
        if source is not None and source.sample_rate not in (0, SAMPLE_RATE):
            self.files["resampled"].append(path)
            self.rates.add(source.sample_rate)
        if source is not None and source.channels > 1:
            self.files["downmixed"].append(path)
        if wav.shape[0] < crop_samples:
            self.files["repeated"].append(path)
        if not np.any(wav):
            self.files["silent"].append(path)

    def summary_lines(self, crop_samples: int) -> list[str]:
        what = {"resampled": f"resampled to 16 kHz from "
                             f"{'/'.join(str(r) for r in sorted(self.rates))} Hz",
                "downmixed": "downmixed to mono",
                "repeated": f"shorter than a crop ({crop_samples / SAMPLE_RATE:.3f} s): "
                            "repeated to fill it",
                "silent": "all zeros: embedded and scored as they are (their scores mean "
                          "nothing)"}
        lines = []
        for key, paths in self.files.items():
            if paths:
                examples = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
                lines.append(f"{len(paths)} of {self.total} audio files {what[key]} "
                             f"(e.g. {examples})")
        return lines


def load_audio(path: str | os.PathLike, source: list | None = None) -> np.ndarray:
    """Decodes any FFmpeg-readable audio (or a video's audio) to mono float32 at 16 kHz with
    `pipelines.media.decode_audio_file` (float samples, so that NaN/Inf in a float file are
    seen and reported instead of being turned into full-scale clicks).

    Args:
        source: a list to append the file's `pipelines.media.SourceAudio` to.

    Returns:
        (S,) float32 waveform in [-1, 1].

    Raises:
        EvaluationError: naming the file, if it cannot be decoded, has no audio or decodes to
            NaN/Inf samples.
    """
    try:
        wav = decode_audio_file(str(path), sample_format="flt", source=source)
    except MediaError as err:
        raise EvaluationError(f"cannot decode audio file {err}") from err
    bad = np.flatnonzero(~np.isfinite(wav))
    if bad.size:  # a float file or a broken decoder; the model would embed garbage
        raise EvaluationError(
            f"{path}: audio decodes to {bad.size} non-finite sample{'s' * (bad.size > 1)} "
            f"(NaN or Inf) of {wav.size}, first at {bad[0] / SAMPLE_RATE:.2f} s")
    return np.clip(wav, -1.0, 1.0)


def crop_waveform(wav: np.ndarray, num_crops: int, crop_samples: int) -> np.ndarray:
    """Evenly spaced crops of a waveform.

    Args:
        wav: (S,) waveform.
        num_crops: N.
        crop_samples: L; shorter waveforms are first padded by repeating themselves.

    Returns:
        (N, L) float32 crops (first crop at the start, last one ending at the end).
    """
    if wav.shape[0] == 0:
        raise ValueError("empty waveform")
    if wav.shape[0] < crop_samples:
        wav = np.tile(wav, int(np.ceil(crop_samples / wav.shape[0])))[:crop_samples]
    starts = crop_starts(wav.shape[0], num_crops, crop_samples)
    return np.stack([wav[s:s + crop_samples] for s in starts]).astype(np.float32)


def crop_starts(length: int, num_crops: int, crop: int) -> np.ndarray:
    """(num_crops,) int64 starts of evenly spaced crops of `crop` items in `length` >= `crop`
    (first at 0, last ending at the end; repeats when the crops outnumber the positions)."""
    return np.linspace(0, length - crop, num_crops).astype(np.int64)


def embed_in_batches(model: ExportedModel, crops: Iterable[np.ndarray], batch_size: int
                     ) -> np.ndarray:
    """Embeds a stream of crop arrays with exactly `batch_size` crops per model call (the last
    call takes the rest), however the crops are split among the arrays.

    Args:
        crops: arrays (n_i, L) float32, e.g. the crops of consecutive files.

    Returns:
        (sum n_i, D) float32 embeddings in input order.
    """
    out: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    held = 0
    for block in crops:
        pending.append(block)
        held += block.shape[0]
        while held >= batch_size:
            joined = np.concatenate(pending)
            out.append(model.embed_waveforms(joined[:batch_size]))
            rest = joined[batch_size:]
            pending, held = ([rest] if rest.shape[0] else []), rest.shape[0]
    if held:
        out.append(model.embed_waveforms(np.concatenate(pending)))
    if not out:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(out).astype(np.float32)


def decoded_files(paths: Sequence[str], audio_root: str | os.PathLike, bad: dict[str, str],
                  conditions: AudioConditions, crop_samples: int, skip_bad: bool,
                  desc: str = "embedding") -> Iterator[tuple[str, np.ndarray]]:
    """Yields `(path, (S,) float32 waveform)` for each usable file of `paths` in order, with a
    progress bar; a file that cannot be used raises EvaluationError naming it, or with
    `skip_bad` goes into `bad` ({path: reason}). `conditions` counts what was done to files."""
    for p in tqdm(paths, desc=desc, unit="file", mininterval=1.0):
        source: list = []
        try:
            wav = load_audio(os.path.join(audio_root, p), source)
        except EvaluationError as err:
            if not skip_bad:
                raise EvaluationError(f"{err} (--skip_missing drops the trials of files "
                                      "that cannot be used)") from err
            bad[p] = str(err)
            continue
        conditions.note(p, source[0] if source else None, wav, crop_samples)
        yield p, wav


def embed_files(model: ExportedModel, paths: Sequence[str], audio_root: str | os.PathLike,
                num_crops: int = 10, crop_seconds: float = 2.0, batch_size: int = 64,
                skip_bad: bool = False) -> tuple[np.ndarray, dict[str, str]]:
    """Embeds each file once as `num_crops` crops, `batch_size` crops per model call (crops of
    several files share a call).

    Args:
        paths: F distinct paths relative to `audio_root` (or absolute).
        crop_seconds: at least `export.MIN_SAMPLES` / 16000 = 0.5 s, the shortest input the
            exported model accepts.
        batch_size: crops per model call.
        skip_bad: leave out a file that cannot be decoded or decodes to NaN/Inf (instead of
            raising EvaluationError naming it).

    Returns:
        `(embeddings, bad)`: (F', N, D) float32 crop embeddings of the F' usable files in
        the order of `paths`, and {path: reason} for the files left out.
    """
    crop_samples = int(round(crop_seconds * SAMPLE_RATE))
    if crop_samples < MIN_SAMPLES:
        raise EvaluationError(f"--crop_seconds must be at least {MIN_SAMPLES / SAMPLE_RATE} "
                              f"(the exported model needs >= {MIN_SAMPLES} samples)")
    if num_crops < 1 or batch_size < 1:
        raise EvaluationError("--num_crops and --batch_size must be at least 1")
    bad: dict[str, str] = {}
    conditions = AudioConditions()
    files = decoded_files(paths, audio_root, bad, conditions, crop_samples, skip_bad)
    crops = (crop_waveform(wav, num_crops, crop_samples) for _, wav in files)
    emb = embed_in_batches(model, crops, batch_size)
    for line in conditions.summary_lines(crop_samples):
        logger.warning(line)
    if emb.shape[0] == 0:
        raise EvaluationError(f"none of the {len(paths)} audio files could be used, e.g. "
                              f"{next(iter(bad.values()), '')}")
    return emb.reshape(-1, num_crops, emb.shape[-1]), bad


def embed_files_baseline(kind: str, paths: Sequence[str], audio_root: str | os.PathLike,
                         skip_bad: bool = False) -> tuple[np.ndarray, dict[str, str]]:
    """A free baseline's embeddings of whole files (`baselines.BASELINES`), in the shape
    `embed_files` returns: `(embeddings (F', 1, D) float32, bad {path: reason})`; a file
    shorter than one analysis window counts as unusable."""
    baselines.check_kind(kind)  # before any decoding
    bad: dict[str, str] = {}
    conditions = AudioConditions()
    log_mels = []
    for p, wav in decoded_files(paths, audio_root, bad, conditions, 0, skip_bad,
                                desc=f"baseline {kind}"):
        if wav.shape[0] < baselines.MIN_SAMPLES:
            reason = (f"{os.path.join(audio_root, p)}: {wav.shape[0]} samples, shorter than "
                      f"one {baselines.MIN_SAMPLES}-sample analysis window")
            if not skip_bad:
                raise EvaluationError(reason)
            bad[p] = reason
            continue
        log_mels.append(baselines.log_mel_frames(wav))
    for line in conditions.summary_lines(0):
        logger.warning(line)
    if not log_mels:
        raise EvaluationError(f"none of the {len(paths)} audio files could be used, e.g. "
                              f"{next(iter(bad.values()), '')}")
    return baselines.baseline_table(kind, log_mels)[:, None, :], bad


@dataclasses.dataclass(frozen=True)
class VerificationResult:
    """What `verify` measured.

    Attributes:
      logs: {"eer", "min_dcf_0.01", "min_dcf_0.05", ...} (`scoring.score_pairs`).
      trials: the trials scored (after any dropped by `skip_missing`), T of them.
      scores: (T,) float32 trial scores; labels: (T,) float32, 1 = target.
      files: the F distinct files embedded; embeddings: (F, N, D) float32 crop embeddings.
      trials_name: the trial list's file name; run_name: the TensorBoard run's tag
        (`verification` or `verification_<baseline>`); step: the model's training step
        (0 for a baseline).
    """

    logs: dict[str, float]
    trials: list[Trial]
    scores: np.ndarray
    labels: np.ndarray
    files: list[str]
    embeddings: np.ndarray
    trials_name: str
    run_name: str
    step: int

    @property
    def summary(self) -> str:
        """The summary line (EER, minDCF, trial counts)."""
        return format_summary(self.logs)


def verify(trials_path: str | os.PathLike, audio_root: str | os.PathLike, *,
           model: str | os.PathLike | None = None, baseline: str | None = None,
           num_crops: int = 10, crop_seconds: float | None = None, batch_size: int = 64,
           score_batch_size: int = 4096, skip_missing: bool = False,
           score_norm: str = "none", cohort: str | os.PathLike | None = None,
           top_k: int = 300, cohort_cache: str | os.PathLike | None = None
           ) -> VerificationResult:
    """Speaker verification of the SavedModel `model` (or the free `baseline` of
    `baselines.BASELINES`) on the trial list `trials_path`, paths relative to `audio_root`.

    Each file gives `num_crops` crops of `crop_seconds` (default: the model's own,
    `ExportedModel.default_crop_seconds`), `batch_size` crops per model call; a trial's score
    is the mean cosine over its crop pairs, `score_batch_size` pairs per scoring step.
    `skip_missing` drops the trials of files that are missing or cannot be used (logged with
    their names) instead of raising. Nothing is printed or written (`write_verification_outputs`).
    `score_norm="asnorm"`: the scores are AS-normalised (`score_norm`) against the speakers of
    the `cohort` folder (`<speaker>/<utt>`, embedded the same way, cached in `cohort_cache`
    if given), keeping each file's `top_k` cohort scores; the metrics are of the normalised
    scores, and `logs` also holds the raw ones (`raw_eer`, `raw_min_dcf_0.01`, ...).

    Raises:
        EvaluationError: naming the file or the problem.
    """
    if (model is None) == (baseline is None):
        raise EvaluationError("verify needs exactly one of model and baseline")
    if score_norm not in score_norm_lib.METHODS:
        raise EvaluationError(f"--score_norm must be one of {score_norm_lib.METHODS}")
    if score_norm == "asnorm":
        if not cohort:
            raise EvaluationError("--score_norm asnorm needs --cohort (a <speaker>/<utt> folder "
                                  "of speakers not in the trials)")
        if baseline and baseline.endswith("_z"):
            raise EvaluationError(f"--score_norm asnorm with --baseline {baseline}: its z-scoring "
                                  "uses the trial files' statistics, which a cohort does not "
                                  f"share; use --baseline {baseline[:-2]}")
        cohort_paths, cohort_speakers = score_norm_lib.cohort_files(cohort)
    trials = read_trials(trials_path)
    distinct = sorted({p for t in trials for p in (t.path1, t.path2)})
    missing = [p for p in distinct if not os.path.isfile(os.path.join(audio_root, p))]
    if missing:
        if not skip_missing:
            raise EvaluationError(
                f"{len(missing)} of {len(distinct)} audio files are missing under "
                f"{audio_root}, e.g. {', '.join(missing[:5])} "
                "(use --skip_missing to drop their trials)")
        gone = set(missing)
        before = len(trials)
        trials = [t for t in trials if t.path1 not in gone and t.path2 not in gone]
        logger.warning("--skip_missing: %d missing files, dropped %d of %d trials",
                       len(missing), before - len(trials), before)
        if not trials:
            raise EvaluationError("no trials left after dropping missing files")
        distinct = sorted({p for t in trials for p in (t.path1, t.path2)})
    logger.info("%d trials over %d distinct files", len(trials), len(distinct))

    if baseline:
        logger.info("free baseline %s of each whole file (evaluation.baselines)", baseline)

        def embed(paths, root, skip_bad):
            return embed_files_baseline(baseline, paths, root, skip_bad=skip_bad)
        made_by = {"baseline": baseline}
    else:
        exported_model = ExportedModel(model)
        exported_model.require("serving_default")
        crop_seconds = crop_seconds or exported_model.default_crop_seconds()
        logger.info("%d crops of %.3f s per file", num_crops, crop_seconds)

        def embed(paths, root, skip_bad):
            return embed_files(exported_model, paths, root, num_crops, crop_seconds,
                               batch_size, skip_bad=skip_bad)
        pb = Path(model) / "saved_model.pb"
        made_by = {"model": os.path.abspath(model), "num_crops": num_crops,
                   "crop_seconds": crop_seconds,
                   "saved_model": [pb.stat().st_size, pb.stat().st_mtime_ns]}
    emb, bad = embed(distinct, audio_root, skip_missing)
    if bad:
        before = len(trials)
        trials = [t for t in trials if t.path1 not in bad and t.path2 not in bad]
        logger.warning("--skip_missing: %d of %d audio files could not be used, dropped %d of "
                       "%d trials: %s%s", len(bad), len(distinct), before - len(trials), before,
                       "; ".join(list(bad.values())[:5]),
                       f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        if not trials:
            raise EvaluationError("no trials left after dropping the files that cannot be used")
        distinct = [p for p in distinct if p not in bad]
    index = {p: i for i, p in enumerate(distinct)}
    idx1 = np.array([index[t.path1] for t in trials])
    idx2 = np.array([index[t.path2] for t in trials])
    labels = np.array([t.label for t in trials], dtype=np.float32)
    check_both_classes(labels, "trial list")
    scores, logs = score_pairs(emb, emb, idx1, idx2, labels, score_batch_size)
    if score_norm == "asnorm":
        what = {**made_by, "cohort": os.path.abspath(cohort), "files": cohort_paths}
        scores, logs = _as_normalised(scores, logs, labels, emb, idx1, idx2, embed, what,
                                      cohort, cohort_paths, cohort_speakers, top_k,
                                      cohort_cache)
    return VerificationResult(
        logs=logs, trials=trials, scores=scores, labels=labels, files=distinct,
        embeddings=emb, trials_name=Path(trials_path).name,
        run_name=f"verification_{baseline}" if baseline else "verification",
        step=0 if baseline else model_step(model))


def _as_normalised(scores, logs, labels, emb, idx1, idx2, embed, what, cohort, cohort_paths,
                   cohort_speakers, top_k, cohort_cache):
    """(AS-normalised scores, their metrics + the raw ones as raw_*)."""
    key = score_norm_lib.fingerprint(what)
    made = score_norm_lib.load_cached(cohort_cache, key) if cohort_cache else None
    if made is None:
        cohort_emb, bad = embed(cohort_paths, cohort, True)
        if bad:
            logger.warning("cohort: %d of %d files could not be used and were left out: %s",
                           len(bad), len(cohort_paths), "; ".join(list(bad.values())[:3]))
        kept = [s for p, s in zip(cohort_paths, cohort_speakers) if p not in bad]
        vectors, names = score_norm_lib.cohort_vectors(cohort_emb, kept)
        made = score_norm_lib.Cohort(vectors, names, key)
        if cohort_cache:
            score_norm_lib.save_cache(cohort_cache, made)
    mean, std = score_norm_lib.top_k_stats(score_norm_lib.file_vectors(emb), made.vectors,
                                           top_k)
    normed = score_norm_lib.as_norm(scores, idx1, idx2, mean, std)
    new_logs = {k: v for k, v in logs.items() if k not in ("eer", "min_dcf_0.01",
                                                           "min_dcf_0.05")}
    for prefix, values in (("raw_", scores), ("", normed)):  # both by the same numpy metrics
        new_logs[f"{prefix}eer"] = compute_eer(values, labels)[0]
        for p in P_TARGETS:
            new_logs[f"{prefix}min_dcf_{p}"] = compute_min_dcf(values, labels, p_target=p)[0]
    new_logs["cohort_speakers"] = float(len(made.speakers))
    new_logs["top_k"] = float(min(top_k, len(made.speakers)))
    logger.info("AS-norm: %d cohort speakers, top %d; EER %.2f%% -> %.2f%%",
                len(made.speakers), int(new_logs["top_k"]), 100 * new_logs["raw_eer"],
                100 * new_logs["eer"])
    return normed, new_logs


def write_verification_outputs(result: VerificationResult, *,
                               scores_out: str | os.PathLike | None = None,
                               plot_out: str | os.PathLike | None = None,
                               logdir: str | os.PathLike | None = None,
                               projector_out: str | os.PathLike | None = None) -> None:
    """Writes what was asked, each file atomically: the per-trial scores, the DET curve (PNG),
    a TensorBoard run (metrics and the curve) and the embedding projector (speaker labels)."""
    if scores_out:
        write_scores(scores_out, result.scores, result.trials)
    if plot_out or logdir:
        png = plot_det(plot_out, result.scores, result.labels,
                       title=f"Speaker verification ({result.trials_name}, "
                             f"{len(result.trials)} trials): {result.summary}")
        if logdir:
            write_tensorboard(logdir, result.run_name, result.step, result.logs,
                              {"det_curve": png})
    if projector_out:
        write_projector(projector_out, l2_normalise(result.embeddings.mean(axis=1)),
                        ("speaker", "file"), [(Path(p).parts[0], p) for p in result.files],
                        "speaker_embeddings")
