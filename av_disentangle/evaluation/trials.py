"""Verification trial lists in the VoxCeleb format: one `label path1 path2` line per trial."""

from __future__ import annotations

import itertools
import logging
import os
from collections import Counter
from pathlib import Path
from typing import NamedTuple, Sequence

from av_disentangle import corpora, files
from av_disentangle.constants import AUDIO_EXTENSIONS
from av_disentangle.evaluation import EvaluationError
from av_disentangle.evaluation.paths import write_file

logger = logging.getLogger(__name__)


class Trial(NamedTuple):
    """One verification trial: `label` 1 = same speaker, 0 = different.

    An immutable tuple rather than a frozen dataclass: `read_trials` of VoxCeleb1-O (37,720
    lines) took 260 ms with a frozen dataclass and 120 ms with this (2 shared cores)."""

    label: int
    path1: str
    path2: str


def read_trials(path: str | os.PathLike) -> list[Trial]:
    """Reads a VoxCeleb-format trial list (`label path1 path2` per line).

    Blank lines and lines starting with `#` are ignored.

    Raises:
        EvaluationError: naming the file and 1-based line number of a malformed line.
    """
    trials: list[Trial] = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError as err:
        raise EvaluationError(f"{path}: --trials file not found") from err
    except (OSError, UnicodeDecodeError) as err:
        raise EvaluationError(f"{path}: cannot read the trial list ({err})") from err
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise EvaluationError(
                f"{path}:{lineno}: expected 'label path1 path2' with label 0 or 1, "
                f"got {text[:200]!r}")
        trials.append(Trial(int(parts[0]), parts[1], parts[2]))
    if not trials:
        raise EvaluationError(f"{path}: no trials found")
    return trials


def make_trials(root: str | os.PathLike, out_path: str | os.PathLike,
                extensions: Sequence[str] = AUDIO_EXTENSIONS) -> int:
    """Writes all same/different-speaker pairs of `root/<speaker>/<utt>.<ext>`.

    Paths in the list are relative to `root` (use it as `--audio_root`). Files are found
    recursively below each speaker folder. Returns the number of trials written.
    """
    root = Path(root)
    found: list[tuple[str, str]] = []  # (speaker, relative path)
    for speaker_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        found += [(speaker_dir.name, f.relative_to(root).as_posix())
                  for f in files.list_files(speaker_dir, extensions)]
    speakers = {s for s, _ in found}
    if len(found) < 2 or len(speakers) < 2:
        raise EvaluationError(
            f"{root}: need audio files of at least 2 speakers in <root>/<speaker>/, found "
            f"{len(found)} file(s) of {len(speakers)} speaker(s)")
    lines = [f"{int(s1 == s2)} {p1} {p2}\n"
             for (s1, p1), (s2, p2) in itertools.combinations(found, 2)]
    write_file(out_path, "".join(lines))
    n = len(lines)
    n_target = sum(c * (c - 1) // 2 for c in Counter(s for s, _ in found).values())
    logger.info("wrote %d trials (%d target, %d non-target) over %d files of %d speakers "
                "to %s", n, n_target, n - n_target, len(found), len(speakers), out_path)
    return n


HARD_SUFFIX = "_hard"
"""`make_content_trials` writes the hard subset beside `out_path`: `<stem>_hard<suffix>`."""


def hard_trials_path(out_path: str | os.PathLike) -> Path:
    """Where `make_content_trials(root, out_path)` writes its hard subset."""
    out = Path(out_path)
    return out.with_name(f"{out.stem}{HARD_SUFFIX}{out.suffix}")


def make_content_trials(root: str | os.PathLike, out_path: str | os.PathLike,
                        extensions: Sequence[str] = AUDIO_EXTENSIONS) -> dict[str, int]:
    """Content-controlled trials of a Speech Commands folder (`root/<speaker>/<word>_<speaker>
    _nohash_<n>.<ext>`): every speaker says the same few words, so content can be held fixed.

    Writes two VoxCeleb-format lists (paths relative to `root`, use it as `--audio_root`):
      out_path             all trials: target = same speaker, DIFFERENT word (a speaker's two
                           takes of one word are left out: the content would match); non-target
                           = different speakers, same or different word.
      <stem>_hard<suffix>  the hard subset: the same targets against the SAME-word non-targets
                           only. An embedding that carries the word rather than the voice scores
                           these non-targets high and the targets low, so it fails here.
    Returns the counts: `target`, `nontarget_same_word`, `nontarget_different_word`, `all`,
    `hard`, `files`, `speakers`, `skipped_same_word_targets`.

    Raises:
        EvaluationError: a file whose name is not Speech Commands' (named), or no target or no
            same-word non-target trial at all (too few speakers or words).
    """
    root = Path(root)
    clips: list[tuple[str, str, str]] = []  # (speaker, word, relative path)
    for path in files.list_files(root, extensions):
        name = corpora.parse_speech_commands(path)
        if name is None:
            raise EvaluationError(
                f"{path}: not a Speech Commands name (expected <speaker>/<word>_<speaker>"
                f"_nohash_<n>{path.suffix} with the same 8-hex-digit speaker)")
        clips.append((name.speaker, name.word, path.relative_to(root).as_posix()))
    everything: list[str] = []
    hard: list[str] = []
    counts = Counter()
    for (s1, w1, p1), (s2, w2, p2) in itertools.combinations(clips, 2):
        if s1 == s2 and w1 == w2:
            counts["skipped_same_word_targets"] += 1
            continue
        kind = ("target" if s1 == s2 else
                "nontarget_same_word" if w1 == w2 else "nontarget_different_word")
        counts[kind] += 1
        line = f"{int(s1 == s2)} {p1} {p2}\n"
        everything.append(line)
        if kind != "nontarget_different_word":
            hard.append(line)
    if not counts["target"] or not counts["nontarget_same_word"]:
        raise EvaluationError(
            f"{root}: content-controlled trials need a speaker with two different words and "
            f"two speakers with the same word; found {len(clips)} clip(s) of "
            f"{len({c[0] for c in clips})} speaker(s), {counts['target']} target and "
            f"{counts['nontarget_same_word']} same-word non-target pair(s)")
    hard_path = hard_trials_path(out_path)
    write_file(out_path, "".join(everything))
    write_file(hard_path, "".join(hard))
    result = {k: int(counts[k]) for k in ("target", "nontarget_same_word",
                                          "nontarget_different_word",
                                          "skipped_same_word_targets")}
    result.update(all=len(everything), hard=len(hard), files=len(clips),
                  speakers=len({c[0] for c in clips}))
    logger.info("wrote %d content-controlled trials (%d target, different words; %d same-word "
                "and %d different-word non-target) over %d clips of %d speakers to %s, and the "
                "%d hard ones (targets + same-word non-targets) to %s", result["all"],
                result["target"], result["nontarget_same_word"],
                result["nontarget_different_word"], result["files"], result["speakers"],
                out_path, result["hard"], hard_path)
    return result
