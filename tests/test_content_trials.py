"""Content-controlled trials on real speech (`trials.make_content_trials`, issue 27) and the
corpus file names they read (`av_disentangle.corpora`), on the 8 bundled Speech Commands
speakers (data/samples/speech_commands_subset)."""

from __future__ import annotations

import csv
import itertools
import shutil
from pathlib import Path

import pytest

from av_disentangle import corpora
from av_disentangle.evaluation import EvaluationError, cli
from av_disentangle.evaluation.trials import hard_trials_path, make_content_trials, read_trials

REPO = Path(__file__).resolve().parents[1]
SPEECH_COMMANDS = REPO / "data" / "samples" / "speech_commands_subset"


def manifest() -> dict[str, tuple[str, str]]:
    """path -> (speaker, word), from the bundled MANIFEST.tsv (not from the file names)."""
    with open(SPEECH_COMMANDS / "MANIFEST.tsv", encoding="utf-8") as f:
        return {r["path"]: (r["speaker"], r["word"]) for r in csv.DictReader(f, delimiter="\t")}


def test_corpus_names():
    sc = corpora.parse_clip_name("x/012c8314/happy_012c8314_nohash_1.flac")
    assert sc == corpora.ClipName(corpora.SPEECH_COMMANDS, "012c8314",
                                  "happy_012c8314_nohash_1", "happy")
    ls = corpora.parse_clip_name("voices/19-198-0001.flac")
    assert ls == corpora.ClipName(corpora.LIBRISPEECH, "19", "19-198-0001")
    assert corpora.parse_clip_name("LibriSpeech/19/198/0001.flac").utterance_id == "19-198-0001"
    # A clip in another speaker's folder, a name of neither corpus:
    assert corpora.parse_clip_name("01648c51/happy_012c8314_nohash_1.flac") is None
    assert corpora.parse_clip_name("a/b/hello.wav") is None


def test_content_trials_are_what_they_claim(tmp_path):
    labels = manifest()
    out = tmp_path / "sc.txt"
    counts = make_content_trials(SPEECH_COMMANDS, out)
    everything, hard = read_trials(out), read_trials(hard_trials_path(out))
    assert hard_trials_path(out) == tmp_path / "sc_hard.txt"

    # Expected counts straight from the manifest's pairs.
    pairs = list(itertools.combinations(sorted(labels), 2))
    same_spk = [(a, b) for a, b in pairs if labels[a][0] == labels[b][0]]
    target = [(a, b) for a, b in same_spk if labels[a][1] != labels[b][1]]
    non_same_word = [(a, b) for a, b in pairs
                     if labels[a][0] != labels[b][0] and labels[a][1] == labels[b][1]]
    assert counts["files"] == len(labels) == 36 and counts["speakers"] == 8
    assert counts["target"] == len(target) > 0
    assert counts["skipped_same_word_targets"] == len(same_spk) - len(target) > 0
    assert counts["nontarget_same_word"] == len(non_same_word) > 0
    assert counts["all"] == len(everything) == len(pairs) - counts["skipped_same_word_targets"]
    assert counts["hard"] == len(hard) == len(target) + len(non_same_word)

    for t in everything:
        (s1, w1), (s2, w2) = labels[t.path1], labels[t.path2]
        assert t.path1 != t.path2  # no same-clip trial
        assert t.label == int(s1 == s2)
        if t.label:
            assert w1 != w2  # a target never has matching content
    for t in hard:
        (s1, w1), (s2, w2) = labels[t.path1], labels[t.path2]
        assert (t.label == 1 and s1 == s2 and w1 != w2) or (t.label == 0 and s1 != s2 and w1 == w2)
    assert set(hard) <= set(everything)
    assert len({frozenset((t.path1, t.path2)) for t in everything}) == len(everything)


def test_content_trials_refuse_a_clip_in_the_wrong_speaker_folder(tmp_path):
    root = tmp_path / "sc"
    shutil.copytree(SPEECH_COMMANDS / "012c8314", root / "012c8314")
    shutil.copytree(SPEECH_COMMANDS / "01648c51", root / "01648c51")
    moved = next((root / "01648c51").glob("*.flac"))
    shutil.move(moved, root / "012c8314" / moved.name)
    with pytest.raises(EvaluationError, match=rf"012c8314/{moved.name}: not a Speech Commands"):
        make_content_trials(root, tmp_path / "t.txt")
    assert not (tmp_path / "t.txt").exists()


def test_content_trials_need_a_same_word_non_target(tmp_path):
    root = tmp_path / "sc"
    for spk, word in (("012c8314", "bed"), ("01648c51", "cat")):
        for clip in (SPEECH_COMMANDS / spk).glob("*.flac"):
            if not clip.name.startswith(word):
                (root / spk).mkdir(parents=True, exist_ok=True)
                shutil.copy(clip, root / spk / clip.name)
    # Keep one word per speaker, the two speakers' words disjoint: no same-word non-target.
    for spk, keep in (("012c8314", "cat"), ("01648c51", "bed")):
        for clip in (root / spk).glob("*.flac"):
            if not clip.name.startswith(keep):
                clip.unlink()
    with pytest.raises(EvaluationError, match="same-word non-target"):
        make_content_trials(root, tmp_path / "t.txt")


def test_evaluate_make_trials_content_controlled(tmp_path, capsys):
    out = tmp_path / "trials.txt"
    args = cli.build_parser().parse_args(
        ["--make_trials", str(SPEECH_COMMANDS), "--trials_out", str(out),
         "--content_controlled"])
    assert cli.run(args) == {}
    printed = capsys.readouterr().out
    assert f"to {tmp_path / 'trials_hard.txt'}" in printed
    # The line README.md's evaluation section shows for this command.
    assert printed.startswith("wrote 617 trials (52 target: same speaker, different word; 197 "
                              "same-word and 368 different-word non-target)")
    assert "and 249 hard ones" in printed
    assert len(read_trials(out)) > len(read_trials(tmp_path / "trials_hard.txt")) > 0
    with pytest.raises(EvaluationError, match="option of --make_trials"):
        cli.run(cli.build_parser().parse_args(["--baseline", "mfcc", "--content_controlled"]))
