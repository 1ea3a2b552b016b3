"""Supervised speaker training: AAM head, label budget, labelled input, init_from, freezing."""

from __future__ import annotations

import json
import math
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from av_disentangle.config import LossConfig, ModelConfig, to_dict
from av_disentangle.heads import HEADS, AAMSoftmax, SoftmaxHead
from av_disentangle.model import DisentangleModel
from av_disentangle.pretrained import check_init_from
from av_disentangle.supervised import build_supervised_model, stream_parts
from av_disentangle.supervised_config import (HEAD_NAMES, SupervisedConfig, add_supervised_flags,
                                              supervised_config_from_flags)
from av_disentangle.errors import UserError
from pipelines import labelled, records
from conftest import REPO_ROOT, write_random_shard

LIBRI = os.path.join(REPO_ROOT, "data", "samples", "librispeech_subset")
TINY = ModelConfig.tiny()


def _libri_speakers() -> list[str]:
    return sorted(d for d in os.listdir(LIBRI) if os.path.isdir(os.path.join(LIBRI, d)))


def _copy_speakers(root, counts: dict[str, int]) -> str:
    """A labelled folder with counts[s] bundled utterances of each LibriSpeech speaker s,
    one level deeper (<speaker>/<chapter>/<utt>.flac) as in LibriSpeech / VoxCeleb."""
    for s, n in counts.items():
        os.makedirs(root / s / "ch", exist_ok=True)
        for name in sorted(os.listdir(os.path.join(LIBRI, s)))[:n]:
            shutil.copy(os.path.join(LIBRI, s, name), root / s / "ch" / name)
    return str(root)


# === Heads ===
def _unit_columns_head(margin=0.2, scale=30.0) -> AAMSoftmax:
    """Class 0's weight along 0 deg (length 2), class 1's along 100 deg (length 0.5): the
    head must normalise the columns."""
    head = AAMSoftmax(2, margin=margin, scale=scale)
    head.build((None, 2))
    w1 = math.radians(100)
    head.kernel.assign(np.array([[2.0, 0.5 * math.cos(w1)], [0.0, 0.5 * math.sin(w1)]],
                                np.float32))
    return head


def test_aam_logits_at_known_angle():
    """Embedding at 60 deg to class 0 and 40 deg to class 1: with label 0 the target logit is
    s * cos(60 deg + m), the other s * cos(40 deg); without labels no margin."""
    head = _unit_columns_head()
    a0, a1 = math.radians(60), math.radians(40)
    x = 3.0 * np.array([[math.cos(a0), math.sin(a0)]], np.float32)  # not unit: normalised
    got = head(tf.constant(x), tf.constant([0])).numpy()
    np.testing.assert_allclose(got, [[30 * math.cos(a0 + 0.2), 30 * math.cos(a1)]], rtol=1e-5)
    got = head(tf.constant(x), tf.constant([1])).numpy()
    np.testing.assert_allclose(got, [[30 * math.cos(a0), 30 * math.cos(a1 + 0.2)]], rtol=1e-5)
    got = head(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, [[30 * math.cos(a0), 30 * math.cos(a1)]], rtol=1e-5)


def test_aam_target_logit_past_pi_is_linear_tail():
    """theta + m > pi: voxceleb_trainer's easy_margin=False uses cos(theta) - sin(pi - m) * m."""
    head = _unit_columns_head()
    angle = math.radians(170)
    x = np.array([[math.cos(angle), math.sin(angle)]], np.float32)
    got = head(tf.constant(x), tf.constant([0])).numpy()[0, 0]
    expected = 30 * (math.cos(angle) - math.sin(math.pi - 0.2) * 0.2)
    assert got == pytest.approx(expected, rel=1e-5)
    assert got < 30 * math.cos(angle)  # still a penalty


def test_aam_logits_float32_under_mixed_precision():
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        head = AAMSoftmax(3)
        logits = head(tf.ones([2, 4], tf.float16), tf.constant([0, 1]))
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert logits.dtype == tf.float32 and head.kernel.dtype == "float32"


def test_softmax_head_is_affine():
    head = SoftmaxHead(3)
    head.build((None, 2))
    x = np.array([[1.0, 2.0]], np.float32)
    w, b = (v.numpy() for v in head.dense.weights)
    np.testing.assert_allclose(head(tf.constant(x), tf.constant([0])).numpy(), x @ w + b,
                               rtol=1e-6)


def test_flags_map_to_config():
    import argparse

    from av_disentangle.flags import build_parser

    assert HEAD_NAMES == tuple(HEADS)
    parser = argparse.ArgumentParser()
    add_supervised_flags(parser)
    args = parser.parse_args(["--labelled_audio", "x", "--labels_per_speaker", "2",
                              "--num_speakers", "3", "--head", "softmax", "--freeze_trunk"])
    assert supervised_config_from_flags(args) == SupervisedConfig(
        labelled_audio="x", labels_per_speaker=2, num_speakers=3, head="softmax",
        freeze_trunk=True)
    assert supervised_config_from_flags(parser.parse_args([])) == SupervisedConfig()
    # --init_from is train.py's flag for both objectives; a supervised run's config carries it
    train_args = build_parser().parse_args(["--objective", "supervised", "--init_from",
                                            "runs/a"])
    assert supervised_config_from_flags(train_args).init_from == "runs/a"
    with pytest.raises(SystemExit):
        parser.parse_args(["--head", "arcface"])
    with pytest.raises(ValueError, match="num_speakers"):
        SupervisedConfig(num_speakers=1)


# === Label budget ===
def _listing(speakers: int = 6, utterances: int = 8) -> dict[str, list[str]]:
    return {f"spk{s}": [f"spk{s}/u{u:02d}.wav" for u in range(utterances)]
            for s in range(speakers)}


def test_label_budget_deterministic_and_per_speaker():
    listing = _listing()
    a = labelled.draw_label_budget(listing, 2, 0, seed=7)
    assert a == labelled.draw_label_budget(listing, 2, 0, seed=7)
    assert a.speakers == tuple(sorted(listing))
    for s in a.speakers:  # exactly N of each speaker, drawn from that speaker
        picked = [u for spk, u in a.utterances if spk == s]
        assert len(picked) == 2 and all(u.startswith(s + "/") for u in picked)
    assert [a.speakers[k] for k in a.labels] == [s for s, _ in a.utterances]
    # Per speaker: a speaker's draw does not depend on which other speakers are listed.
    fewer = {s: listing[s] for s in ("spk1", "spk4")}
    b = labelled.draw_label_budget(fewer, 2, 0, seed=7)
    assert set(b.utterances) == {x for x in a.utterances if x[0] in ("spk1", "spk4")}
    # Nested budgets, and another seed draws other utterances.
    one = labelled.draw_label_budget(listing, 1, 0, seed=7)
    assert set(one.utterances) <= set(a.utterances)
    assert labelled.draw_label_budget(listing, 2, 0, seed=8).utterances != a.utterances
    assert len(labelled.draw_label_budget(listing, 0, 0, seed=7).utterances) == 6 * 8


def test_label_budget_speaker_draw():
    listing = _listing(speakers=10, utterances=3)
    a = labelled.draw_label_budget(listing, 1, 4, seed=0)
    assert len(a.speakers) == 4 and list(a.speakers) == sorted(a.speakers)
    assert a == labelled.draw_label_budget(listing, 1, 4, seed=0)
    assert set(labelled.draw_label_budget(listing, 1, 2, seed=0).speakers) <= set(a.speakers)
    draws = {labelled.draw_label_budget(listing, 1, 4, seed=s).speakers for s in range(5)}
    assert len(draws) > 1


# === Labelled input ===
def test_labelled_folder_and_dataset(tmp_path):
    root = _copy_speakers(tmp_path, {s: 2 for s in _libri_speakers()[:3]})
    data = labelled.load_labelled_audio(root, labels_per_speaker=1, seed=0)
    assert data.num_classes == 3 and len(data.waveforms) == 3
    assert all(w.dtype == np.int16 and w.shape[0] > 16000 for w in data.waveforms)
    rel = data.selection.utterances[0][1]
    assert rel.startswith(data.selection.speakers[0] + os.sep + "ch" + os.sep)
    json.dumps(data.selection.to_dict())  # goes into the run's config

    def take(seed):
        ds = labelled.make_labelled_dataset(data, batch_size=3, crop_seconds=2.0, seed=seed)
        return [(b[labelled.AUDIO].numpy(), b[labelled.LABEL].numpy()) for b in ds.take(2)]

    first = take(0)
    audio, labels = first[0]
    assert audio.shape == (3, 32000) and audio.dtype == np.float32
    assert sorted(labels.tolist()) == [0, 1, 2]  # one epoch: every utterance once
    assert np.abs(audio).max() <= 1.0
    for a, b in zip(first, take(0)):  # deterministic
        np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(first[0][0], take(1)[0][0])
    # Each crop is a piece of its utterance, at a position that changes from epoch to epoch.
    by_label = {int(k): a for a, k in zip(*first[0])}
    by_label_2 = {int(k): a for a, k in zip(*first[1])}
    wav = data.waveforms[0].astype(np.float32) / 32768.0
    starts = [np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(wav, 8)
                                    == crop[:8], axis=1)) for crop in (by_label[0], by_label_2[0])]
    assert starts[0].size and starts[1].size and starts[0][0] != starts[1][0]


def test_tfrecord_identity_as_labels(tmp_path):
    path = write_random_shard(str(tmp_path / "a.tfrecord"), 4)  # identities id0..id3
    data = labelled.load_labelled_audio(str(tmp_path / "*.tfrecord"), labels_per_speaker=1)
    assert data.selection.speakers == ("id0", "id1", "id2", "id3")
    tracks = {t["track_id"].decode(): t for t in records.read_tracks(path)}
    for (_, track_id), wav in zip(data.selection.utterances, data.waveforms):
        np.testing.assert_allclose(wav / 32768.0, tracks[track_id]["audio"])


# === Bad input: one clear message each ===
def test_one_speaker_is_an_error(tmp_path):
    root = _copy_speakers(tmp_path, {_libri_speakers()[0]: 3})
    with pytest.raises(UserError, match="1 speaker .*at least 2"):
        labelled.load_labelled_audio(root)


def test_too_few_utterances_names_the_speakers(tmp_path):
    s = _libri_speakers()
    root = _copy_speakers(tmp_path, {s[0]: 3, s[1]: 1, s[2]: 2})
    with pytest.raises(UserError) as e:
        labelled.load_labelled_audio(root, labels_per_speaker=3)
    msg = str(e.value)
    assert f"{s[1]} (1)" in msg and f"{s[2]} (2)" in msg and f"{s[0]} (" not in msg
    assert "2 speaker(s)" in msg


def test_unreadable_audio_names_the_file(tmp_path):
    s = _libri_speakers()
    root = _copy_speakers(tmp_path, {s[0]: 1, s[1]: 1})
    (tmp_path / s[1] / "ch" / "broken.wav").write_bytes(b"RIFF not really a wav file")
    with pytest.raises(UserError, match=r"1 of 3 .*broken\.wav: corrupt"):
        labelled.load_labelled_audio(root)


def test_missing_folder_and_unlabelled_records(tmp_path):
    with pytest.raises(UserError, match="neither a folder nor TFRecords"):
        labelled.load_labelled_audio(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no .* files in speaker folders"):
        labelled.load_labelled_audio(str(tmp_path))
    with pytest.raises(UserError, match="--num_speakers 9, but .* only 2"):
        labelled.load_labelled_audio(_copy_speakers(tmp_path, {s: 1 for s in
                                                               _libri_speakers()[:2]}),
                                     num_speakers=9)
    with tf.io.TFRecordWriter(str(tmp_path / "x.tfrecord")) as w:
        audio = np.zeros(30 * 640, np.int16)
        w.write(records.encode_track(records.Track(np.zeros((30, 8, 8, 3), np.uint8), audio,
                                                   track_id="t0")))
    with pytest.raises(UserError, match="1 of 1 tracks .* empty `identity`"):
        labelled.load_labelled_audio(str(tmp_path / "x.tfrecord"))


# === init_from ===
def _fake_run(run_dir, model_config: ModelConfig, epochs: int = 2):
    """A self-supervised run directory as train.py leaves it: config.json and
    checkpoints/epoch-NNN.weights.h5 (weights differ between epochs). Returns the audio
    stream weights of each epoch and the model (at the last epoch)."""
    model = DisentangleModel(model_config, LossConfig())
    os.makedirs(run_dir / "checkpoints")
    with open(run_dir / "config.json", "w") as f:
        json.dump({"flags": {"model_size": "tiny"}, "model": to_dict(model_config),
                   "loss": to_dict(LossConfig())}, f)
    saved = []
    for epoch in range(1, epochs + 1):
        for v in model.weights:
            v.assign(v + tf.random.normal(v.shape, seed=epoch) * 0.1)
        model.save_weights(str(run_dir / "checkpoints" / f"epoch-{epoch:03d}.weights.h5"))
        saved.append([w.numpy() for w in model.audio_stream.weights])
    return saved, model


def _assert_weights_equal(stream, expected):
    assert len(stream.weights) == len(expected)
    for w, e in zip(stream.weights, expected):
        np.testing.assert_array_equal(w.numpy(), e, err_msg=w.path)


def test_init_from_run_dir_starts_from_latest_pretrained_weights(tmp_path):
    saved, pretrained = _fake_run(tmp_path / "run", TINY)
    config = SupervisedConfig(init_from=str(tmp_path / "run"))
    model = build_supervised_model(TINY, config, num_classes=3)
    _assert_weights_equal(model.audio_stream, saved[-1])
    _assert_weights_equal(model.face_stream, [w.numpy() for w in pretrained.face_stream.weights])
    # The same after compiling and building the optimizer (what train.py does next).
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.optimizer.build(model.trainable_variables)
    _assert_weights_equal(model.audio_stream, saved[-1])
    # A given weights file is used as is; a fresh model differs.
    first = tmp_path / "run" / "checkpoints" / "epoch-001.weights.h5"
    model_1 = build_supervised_model(TINY, SupervisedConfig(init_from=str(first)), 3)
    _assert_weights_equal(model_1.audio_stream, saved[0])
    scratch = build_supervised_model(TINY, SupervisedConfig(), 3)
    with pytest.raises(AssertionError):
        _assert_weights_equal(scratch.audio_stream, saved[-1])


@pytest.mark.slow
def test_init_from_saved_model(tmp_path):
    from av_disentangle.export import export_saved_model

    _, pretrained = _fake_run(tmp_path / "run", TINY, epochs=1)
    export = export_saved_model(pretrained.face_stream, pretrained.audio_stream, TINY,
                                str(tmp_path / "export" / "1"))
    model = build_supervised_model(TINY, SupervisedConfig(init_from=export), 3)
    _assert_weights_equal(model.audio_stream, [w.numpy() for w in pretrained.audio_stream.weights])


def test_init_from_other_model_size_names_the_mismatch(tmp_path):
    small = ModelConfig.small()
    run = tmp_path / "run"
    os.makedirs(run / "checkpoints")
    (run / "checkpoints" / "epoch-001.weights.h5").write_bytes(b"")  # never read
    with open(run / "config.json", "w") as f:
        json.dump({"flags": {"model_size": "small"}, "model": to_dict(small)}, f)
    with pytest.raises(UserError) as e:
        check_init_from(str(run), TINY)
    msg = str(e.value)
    assert "--model_size was small" in msg and "trunk_dim: pretrained 64 vs this run 16" in msg
    with open(run / "config.json", "w") as f:  # a supervised run is not a pretrained run
        json.dump({"model": to_dict(TINY), "supervised": to_dict(SupervisedConfig())}, f)
    with pytest.raises(UserError, match="is a supervised run"):
        check_init_from(str(run), TINY)
    with pytest.raises(UserError, match="no per-epoch weights"):
        check_init_from(str(tmp_path), TINY)
    with pytest.raises(UserError, match="does not exist"):
        check_init_from(str(tmp_path / "nope"), TINY)


# === Freezing and training ===
def _librispeech(labels_per_speaker: int) -> labelled.LabelledAudio:
    return labelled.load_labelled_audio(LIBRI, labels_per_speaker=labels_per_speaker, seed=0)


def test_freeze_trunk_trains_identity_head_and_classifier_only():
    data = _librispeech(1)
    model = build_supervised_model(TINY, SupervisedConfig(freeze_trunk=True), data.num_classes)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    parts = stream_parts(model.audio_stream)
    before = {v.path: v.numpy() for v in model.weights}
    batch = next(iter(labelled.make_labelled_dataset(data, batch_size=5, crop_seconds=1.0)))
    model.train_on_batch(batch)
    changed = {v.path for v in model.weights if not np.array_equal(before[v.path], v.numpy())}
    trunk = {v.path for layer in parts["trunk"] for v in layer.weights}
    content = {v.path for layer in parts["content_head"] for v in layer.weights}
    identity = {v.path for layer in parts["identity_head"] for v in layer.trainable_weights}
    face = {v.path for v in model.face_stream.weights}
    assert trunk and not changed & (trunk | content | face)  # BN statistics included
    assert identity <= changed and model.classifier.kernel.path in changed


@pytest.mark.slow
def test_short_supervised_run_lowers_loss():
    """30 steps on the 5 bundled LibriSpeech speakers (4 labels each): the loss of a fixed
    batch, measured in inference mode, drops."""
    keras.utils.set_random_seed(0)
    data = _librispeech(4)
    model = build_supervised_model(TINY, SupervisedConfig(head="aam"), data.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    ds = labelled.make_labelled_dataset(data, batch_size=10, crop_seconds=2.0, seed=0)
    fixed = next(iter(labelled.make_labelled_dataset(data, batch_size=20, seed=99)))
    before = model.compute_losses(fixed, training=False)[1].numpy()
    model.fit(ds, epochs=1, steps_per_epoch=30, verbose=0)
    after = model.compute_losses(fixed, training=False)[1].numpy()
    print(f"fixed-batch loss before {before:.3f} after {after:.3f}")
    assert np.isfinite(after) and after < 0.8 * before, (before, after)


@pytest.mark.slow
def test_train_py_supervised_objective_end_to_end(tmp_path):
    """`train.py --objective supervised` trains, records the drawn labels in config.json and
    exports the usual signatures; a one-speaker folder is one line, exit 2, nothing written."""
    from conftest import run_script

    data = os.path.join(REPO_ROOT, "data", "samples", "librispeech_subset")
    run_dir, export_dir = tmp_path / "run", tmp_path / "export" / "1"
    result = run_script(["train.py", "--objective", "supervised", "--labelled_audio", data,
                         "--labels_per_speaker", "2", "--model_size", "tiny",
                         "--batch_tracks", "4", "--epochs", "1", "--steps_per_epoch", "2",
                         "--model_dir", str(run_dir), "--export_dir", str(export_dir),
                         "--verbose", "2"])
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["flags"]["objective"] == "supervised"
    assert len(config["labels"]["speakers"]) == 5 and len(config["labels"]["utterances"]) == 10
    assert (export_dir / "saved_model.pb").is_file()
    loaded = tf.saved_model.load(str(export_dir))
    assert set(loaded.signatures) >= {"serving_default", "embed_audio", "embed_face"}

    one = tmp_path / "one_speaker"
    shutil.copytree(os.path.join(data, "1688"), one / "1688")
    bad = run_script(["train.py", "--objective", "supervised", "--labelled_audio", str(one),
                      "--model_size", "tiny", "--model_dir", str(tmp_path / "bad_run"),
                      "--no_export"])
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "train.py: error:" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad_run").exists()
