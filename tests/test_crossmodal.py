"""Cross-modal identity protocol: trial construction (model-free) and the run through a tiny
exported model.

A target is the face of one clip and the voice of ANOTHER clip of the same identity; a
non-target pairs different identities; a face and a voice of the same clip are never paired
(that would measure clip matching, not identity). The forced-choice test (Nagrani, Albanie,
Zisserman, "Seeing Voices and Hearing Faces", CVPR 2018) gives a face and two voices, one of
its identity (another clip) and one of another identity.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from av_disentangle.errors import UserError
from av_disentangle.evaluation import crossmodal

# 4 identities; "dan" has a single clip (so no target for his faces); 2 segments per clip.
CLIPS = ["ann/v1/c1", "ann/v1/c2", "ann/v2/c3", "bob/v1/c1", "bob/v2/c2", "cat/v1/c1",
         "cat/v1/c2", "cat/v3/c3", "cat/v4/c4", "dan/v1/c1"]


def _segments(clips=CLIPS, per_clip=2):
    clip = [c for c in clips for _ in range(per_clip)]
    identity = [c.split("/")[0] for c in clip]
    return clip, identity


def _brute_force(clip, identity):
    """Every (face, voice) ordered pair of different clips, labelled by identity."""
    return {(a, b): int(identity[a] == identity[b])
            for a, b in itertools.product(range(len(clip)), repeat=2) if clip[a] != clip[b]}


def test_identity_pairs_targets_are_other_clips_of_the_same_identity():
    clip, identity = _segments()
    trials = crossmodal.identity_pairs(clip, identity)
    face, voice, labels = trials.face, trials.voice, trials.labels
    assert face.shape == voice.shape == labels.shape and labels.dtype == np.float32
    # no pair of a face and a voice of the same clip at all, target or not
    assert not any(clip[a] == clip[b] for a, b in zip(face, voice))
    for a, b, y in zip(face, voice, labels):
        assert (identity[a] == identity[b]) == bool(y)
    # exactly the exhaustive set, each pair once
    got = {(int(a), int(b)): int(y) for a, b, y in zip(face, voice, labels)}
    assert len(got) == len(labels)
    assert got == _brute_force(clip, identity)
    assert trials.num_targets == sum(_brute_force(clip, identity).values())
    assert trials.num_targets + trials.num_nontargets == len(labels)


def test_identity_pairs_cap_is_seeded_and_keeps_both_classes():
    clip, identity = _segments(per_clip=3)
    full = crossmodal.identity_pairs(clip, identity)
    a = crossmodal.identity_pairs(clip, identity, max_pairs_per_class=20, seed=3)
    b = crossmodal.identity_pairs(clip, identity, max_pairs_per_class=20, seed=3)
    c = crossmodal.identity_pairs(clip, identity, max_pairs_per_class=20, seed=4)
    assert full.num_targets > 20 and full.num_nontargets > 20
    np.testing.assert_array_equal(a.face, b.face)
    np.testing.assert_array_equal(a.voice, b.voice)
    assert not (np.array_equal(a.face, c.face) and np.array_equal(a.voice, c.voice))
    assert a.num_targets == 20 and a.num_nontargets == 20
    allowed = _brute_force(clip, identity)
    pairs = list(zip(a.face.tolist(), a.voice.tolist()))
    assert len(set(pairs)) == len(pairs)
    assert all(allowed[p] == y for p, y in zip(pairs, a.labels.astype(int).tolist()))


def test_identity_pairs_needs_a_target_and_a_nontarget():
    # one clip per identity: no target can be formed without pairing a clip with itself
    with pytest.raises(UserError, match="no target"):
        crossmodal.identity_pairs(*_segments(["a/v/1", "b/v/1", "c/v/1"]))
    with pytest.raises(UserError, match="no non-target"):
        crossmodal.identity_pairs(*_segments(["a/v/1", "a/v/2"]))


def test_forced_choice_triplets_are_valid_and_seeded():
    clip, identity = _segments()
    t = crossmodal.forced_choice_triplets(clip, identity, per_face=3, seed=0)
    faces_with_target = [a for a in range(len(clip))
                         if any(identity[b] == identity[a] and clip[b] != clip[a]
                                for b in range(len(clip)))]
    assert len(t.face) == 3 * len(faces_with_target)
    assert sorted(set(t.face.tolist())) == faces_with_target  # dan's faces have no target
    for a, p, n in zip(t.face, t.positive, t.negative):
        assert identity[p] == identity[a] and clip[p] != clip[a]
        assert identity[n] != identity[a]
    again = crossmodal.forced_choice_triplets(clip, identity, per_face=3, seed=0)
    other = crossmodal.forced_choice_triplets(clip, identity, per_face=3, seed=1)
    np.testing.assert_array_equal(t.positive, again.positive)
    np.testing.assert_array_equal(t.negative, again.negative)
    assert not (np.array_equal(t.positive, other.positive)
                and np.array_equal(t.negative, other.negative))
    with pytest.raises(UserError, match="forced-choice"):
        crossmodal.forced_choice_triplets(*_segments(["a/v/1", "b/v/1"]), per_face=1)


def test_forced_choice_accuracy_and_standard_error():
    pos = np.array([0.9, 0.2, 0.5, 0.7])
    neg = np.array([0.1, 0.3, 0.5, 0.6])  # right, wrong, tie (half), right
    acc, se = crossmodal.forced_choice_accuracy(pos, neg)
    assert acc == pytest.approx(2.5 / 4)
    assert se == pytest.approx(math.sqrt(acc * (1 - acc) / 4))
    acc, se = crossmodal.forced_choice_accuracy(np.ones(5), np.zeros(5))
    assert acc == 1.0 and se == 0.0


def test_identity_of_layout_csv_and_manifest(tmp_path):
    root = tmp_path / "videos"
    vox = root / "id10001" / "1zcIwhmdeo4" / "00001.mp4"
    flat = root / "Input" / "00002.mp4"
    for p in (vox, flat):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    # VoxCeleb layout <id>/<video>/<clip>: the identity folder
    assert crossmodal.identity_of(vox, root, None) == "id10001"
    with pytest.raises(UserError, match="00002.mp4.*--identities"):
        crossmodal.identity_of(flat, root, None)
    # CSV path,identity (paths relative to --videos)
    csv_file = tmp_path / "ids.csv"
    csv_file.write_text("path,identity\nInput/00002.mp4,alice\n")
    ids = crossmodal.read_identities(csv_file)
    assert crossmodal.identity_of(flat, root, ids) == "alice"
    with pytest.raises(UserError, match="00001.mp4.*no identity"):
        crossmodal.identity_of(vox, root, ids)
    # A TSV manifest (as data/samples/MANIFEST.tsv): paths relative to the manifest's folder
    manifest = tmp_path / "MANIFEST.tsv"
    manifest.write_text("path\tbytes\tspeaker_label\nvideos/Input/00002.mp4\t0\tGRID_s1\n")
    assert crossmodal.identity_of(flat, root, crossmodal.read_identities(manifest)) == "GRID_s1"
    bad = tmp_path / "bad.csv"
    bad.write_text("just-one-column\n")
    with pytest.raises(UserError, match=r"bad.csv:1"):
        crossmodal.read_identities(bad)


def test_bundled_manifest_gives_grid_identities():
    """The bundled samples' MANIFEST.tsv labels GRID s1 (several clips) and other speakers."""
    from pathlib import Path

    samples = Path(__file__).resolve().parents[1] / "data" / "samples"
    ids = crossmodal.read_identities(samples / "MANIFEST.tsv")
    root = samples / "grid"
    videos = sorted(root.rglob("*.mpg"))
    owners = [crossmodal.identity_of(v, root, ids) for v in videos]
    assert owners.count("GRID_s1") >= 2 and len(set(owners)) >= 2
    trials = crossmodal.identity_pairs([v.as_posix() for v in videos], owners)
    assert trials.num_targets > 0 and trials.num_nontargets > 0


# === Through a tiny exported model (the stand-in of tests/test_evaluate.py) ===

from test_evaluate import make_sync_clip  # noqa: E402


def _args(**kw):
    from av_disentangle.evaluation import cli

    ns = cli.build_parser().parse_args([])
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def _spy_on_score_pairs(monkeypatch) -> list:
    from av_disentangle.evaluation import scoring

    calls = []
    real = scoring.score_pairs

    def spy(table1, table2, idx1, idx2, labels, batch_size=1024):
        scores, logs = real(table1, table2, idx1, idx2, labels, batch_size)
        calls.append((scores, labels, idx1, idx2))
        return scores, logs

    monkeypatch.setattr(scoring, "score_pairs", spy)
    return calls


def test_run_crossmodal_pairs_other_clips_by_identity(standin_model, tmp_path, capsys,
                                                      monkeypatch):
    """3 clips, 2 segments each (clip order); c0, c1 = alice, c2 = bob. Targets: alice's faces
    of one clip with alice's voices of the other clip (2 x 2 x 2 = 8), never the same clip
    (the old protocol labelled 12 same-clip pairs as targets here); non-targets: 4 x 2 x 2 =
    16. The EER is the EER of exactly those pairs."""
    from av_disentangle.evaluation.cli import run_crossmodal
    from av_disentangle.metrics import compute_eer

    calls = _spy_on_score_pairs(monkeypatch)
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        make_sync_clip(videos / f"c{i}.mp4", n_frames=60, seed=10 + i)
    ids = tmp_path / "ids.csv"
    ids.write_text("path,identity\nc0.mp4,alice\nc1.mp4,alice\nc2.mp4,bob\n")
    logs = run_crossmodal(_args(task="crossmodal", model=standin_model, videos=str(videos),
                                identities=str(ids), segment_seconds=1.0, forced_choice=4))
    out = capsys.readouterr().out
    assert "8 target + 16 non-target trials" in out and "3 clips of 2 identities" in out
    assert "1 face 2 voices: accuracy" in out and "(16 trials, chance 50%)" in out  # alice x 4
    scores, labels, face, voice = calls[-1]
    clip = np.repeat(np.arange(3), 2)
    owner = np.array(["alice"] * 4 + ["bob"] * 2)
    assert len(labels) == 24 and not np.any(clip[face] == clip[voice])
    np.testing.assert_array_equal(labels, (owner[face] == owner[voice]).astype(np.float32))
    assert logs["eer"] == pytest.approx(compute_eer(scores, labels)[0], abs=1e-6)
    assert logs["targets"] == 8 and logs["forced_choice_trials"] == 16  # bob: 1 clip
    assert 0.0 <= logs["forced_choice_accuracy"] <= 1.0


def test_run_crossmodal_identity_from_layout_or_error(standin_model, tmp_path, capsys):
    from av_disentangle.evaluation.cli import run_crossmodal

    flat = tmp_path / "flat"
    flat.mkdir()
    make_sync_clip(flat / "c0.mp4", n_frames=30, seed=1)
    with pytest.raises(UserError, match="c0.mp4: no identity.*--identities"):
        run_crossmodal(_args(task="crossmodal", model=standin_model, videos=str(flat)))
    vox = tmp_path / "vox"
    for i, rel in enumerate(("id1/vA/00001.mp4", "id1/vB/00001.mp4", "id2/vA/00001.mp4")):
        (vox / rel).parent.mkdir(parents=True)
        make_sync_clip(vox / rel, n_frames=30, seed=20 + i)
    run_crossmodal(_args(task="crossmodal", model=standin_model, videos=str(vox),
                         segments_per_clip=1, forced_choice=0))
    out = capsys.readouterr().out
    assert "identities from the folder layout" in out
    assert "3 segments of 3 clips of 2 identities; 2 target + 4 non-target" in out
    assert "1 face 2 voices" not in out
