"""Negatives are other people: shard plan (prepare, synthetic) and batch assembly (input).

The reference trainer shuffles its whole track list every epoch (joonson/syncnet_trainer
DatasetLoader.py: `random.shuffle` of the file list in the sampler), so two tracks of one
person rarely share a batch; these tests hold the sharded input to the same standard
(DESIGN.md "Negatives").
"""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import tensorflow as tf

from av_disentangle.constants import AUDIO, TRACK_ID, VIDEO_ID
from benchmarks import negatives
from pipelines import prepare, records, shards, synthetic
from pipelines.input import InputConfig, deal_into_batches, make_dataset
from pipelines.input_stats import (batch_metadata, input_statistics, main,
                                   uniform_batch_expectation)


def _shard_identities(paths):
    return [[t["identity"].decode() for t in records.read_tracks(p)] for p in sorted(paths)]


def test_prepare_deals_tracks_into_shards_in_seeded_random_order(tmp_path):
    specs = negatives.simulated_specs(identities=4, videos=2, tracks=3)  # 24 clips, id order
    paths = negatives.write_layout(specs, tmp_path / "a", shard_seed=0, tracks_per_shard=6)
    assert len(paths) == 4
    shards = _shard_identities(paths)
    # id-sorted shards would hold one person each; a random order mixes them
    assert all(len(set(ids)) >= 2 for ids in shards), shards
    assert sorted(i for ids in shards for i in ids) == sorted(s.identity for s in specs)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["shard_seed"] == 0 and manifest["num_tracks"] == 24
    assert json.loads((tmp_path / "a" / "report.json").read_text())["shard_seed"] == 0
    plan = prepare.plan_shards(list(reversed(specs)), 6, seed=0)  # input order is irrelevant
    assert [[s.track_id for s in chunk] for chunk in plan] == [
        [t["track_id"].decode() for t in records.read_tracks(p)] for p in sorted(paths)]

    # resumable: the same inputs and seed give the same plan, nothing is rewritten
    again = negatives.write_layout(specs, tmp_path / "a", shard_seed=0, tracks_per_shard=6)
    assert again == paths and _shard_identities(again) == shards
    # another seed, another plan (all shards redone, as their fingerprints changed)
    other = negatives.write_layout(specs, tmp_path / "b", shard_seed=1, tracks_per_shard=6)
    assert _shard_identities(other) != shards
    # None: the old id-sorted layout, kept only for comparisons
    sorted_plan = prepare.plan_shards(specs, 6, seed=None)
    assert [len({s.identity for s in chunk}) for chunk in sorted_plan] == [1, 1, 1, 1]


def test_one_shard_plan_chunks_or_deals_the_seeded_order():
    """`pipelines.shards`: prepare cuts the random order into chunks, synthetic deals it."""
    items = list(range(10))
    order = shards.shuffle(items, 3)
    assert sorted(order) == items and order != items and order == shards.shuffle(items, 3)
    assert shards.plan_shards(items, 3, tracks_per_shard=4) == [order[:4], order[4:8], order[8:]]
    assert shards.plan_shards(items, 3, num_shards=3) == [order[0::3], order[1::3], order[2::3]]
    assert shards.plan_shards(items, None, num_shards=20) == [[i] for i in items]
    with pytest.raises(ValueError, match="exactly one"):
        shards.plan_shards(items, 3)
    assert shards.shard_name(1, 4) == "shard-00001-of-00004.tfrecord"
    assert shards.sidecar_name(1, 4) == "shard-00001-of-00004.json"


def test_synthetic_shards_are_in_seeded_random_order(tmp_path):
    config = synthetic.SyntheticConfig(num_identities=4, tracks_per_identity=3, num_frames=4,
                                       face_size=16, seed=0)
    order = synthetic.shard_order(config)
    assert sorted(order) == [(i, t) for i in range(4) for t in range(3)]
    assert order != sorted(order) and order == synthetic.shard_order(config)
    paths = synthetic.write_dataset(config, str(tmp_path), num_shards=2)
    ids = [t["track_id"].decode() for p in paths for t in records.read_tracks(p)]
    expected = [synthetic.track_id(i, t) for i, t in order]
    assert ids == expected[0::2] + expected[1::2]  # dealt round-robin in that order
    manifest = synthetic.load_manifest(str(tmp_path))
    assert [t["track_id"] for t in manifest["tracks"]] == sorted(expected)


def test_deal_into_batches_never_repeats_a_key_in_a_batch():
    keys = tf.constant([5, 5, 5, 1, 2, 3, 4, 6, 7, 8, 9, 5], tf.int64)
    batches = deal_into_batches(tf.range(12), keys, batch=3, num_batches=4).numpy()
    # the four 5s first, one per batch; then the rest in order; every batch full
    assert batches.tolist() == [[0, 3, 4], [1, 5, 6], [2, 7, 8], [11, 9, 10]]
    assert all(len(set(keys.numpy()[b])) == 3 for b in batches)
    # a repeated key at the end of a group still finds a place (in arrival order the last
    # 4 would meet its twin in the only batch with room)
    batches = deal_into_batches(tf.range(6), tf.constant([1, 2, 3, 4, 5, 4], tf.int64), 3, 2)
    assert batches.numpy().tolist() == [[3, 0, 1], [5, 2, 4]]
    # a key that fits nowhere is dropped, with the batch it leaves incomplete
    batches = deal_into_batches(tf.range(4), tf.constant([1, 1, 1, 2], tf.int64), 2, 2).numpy()
    assert batches.tolist() == [[0, 3]]


def _tiny_track_shard(path, video_of_track, frames=24):
    """Tracks whose audio in frame i is (1000 * track + i); video ids as given."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for t, video in enumerate(video_of_track):
            audio = np.repeat((t * 1000 + np.arange(frames)).astype(np.int16), 640)
            video_frames = np.full((frames, 8, 8, 3), t, np.uint8)
            writer.write(records.encode_track(records.Track(
                video_frames, audio, track_id=f"{video}/{t:03d}", video_id=video,
                identity=video.split("_")[0])))


def test_batches_carry_ids_and_never_two_tracks_of_one_video(tmp_path):
    # 3 videos x 8 tracks, one video per shard: a plain shuffle puts tracks of one video
    # together in most batches of 3
    for s in range(3):
        _tiny_track_shard(tmp_path / f"shard-{s}.tfrecord", [f"p{s}_v{s}"] * 8)
    pattern = str(tmp_path / "*.tfrecord")
    config = InputConfig(pattern, batch_tracks=3, window_frames=10, face_size=8, seed=1,
                         shuffle_buffer=16, include_ids=True)
    batches = list(make_dataset(config).take(12))
    for batch in batches:
        assert batch[TRACK_ID].shape == (3,) and batch[VIDEO_ID].dtype == tf.string
        videos = batch[VIDEO_ID].numpy().tolist()
        assert len(set(videos)) == 3, videos
        tracks = [int(t.decode().split("/")[1]) for t in batch[TRACK_ID].numpy()]
        # the ids belong to the windows beside them
        audio = np.round(batch[AUDIO].numpy() * 32768).astype(int)
        assert (audio[:, 0] // 1000).tolist() == tracks
    # the statistics see exactly the training batches
    meta = batch_metadata(config, 12)
    assert [[t["track_id"] for t in b] for b in meta] == [
        [t.decode() for t in b[TRACK_ID].numpy()] for b in batches]
    assert "track_id" not in next(iter(make_dataset(InputConfig(pattern, 3, 10, 8))))
    old = InputConfig(pattern, batch_tracks=3, window_frames=10, seed=1, shuffle_buffer=16,
                      distinct_videos=False)
    assert sum(len({t["video_id"] for t in b}) < 3 for b in batch_metadata(old, 12)) >= 6


def test_uniform_batch_expectation_matches_simulation():
    sizes = [1] * 10 + [3] * 5 + [10]  # 35 tracks in 16 groups
    expected = uniform_batch_expectation(sizes, batch=6)
    groups = np.repeat(np.arange(len(sizes)), sizes)
    rng = np.random.default_rng(0)
    pairs, distinct = [], []
    for _ in range(20000):
        counts = collections.Counter(rng.choice(groups, 6, replace=False))
        pairs.append(sum(n * (n - 1) // 2 for n in counts.values()))
        distinct.append(len(counts))
    assert expected["same_group_pairs"] == pytest.approx(np.mean(pairs), rel=0.03)
    assert expected["distinct_groups"] == pytest.approx(np.mean(distinct), rel=0.01)


def test_batches_hold_other_people_on_a_voxceleb2_like_layout(tmp_path, capsys):
    """200 identities x 3 videos x 4 tracks, prepared by `prepare` (decoding stubbed out):
    same-identity pairs per batch of 30 within 2x of a uniformly random batch, no same-video
    pair. The shuffle buffer is scaled down with the dataset (2400 tracks against 128; the
    default 2048 against VoxCeleb2's 1.09 M tracks is smaller still), or every layout would
    look uniform. The old layout and input (id-sorted shards, 16 interleaved, no video rule)
    fail the same check."""
    specs = negatives.simulated_specs(identities=200, videos=3, tracks=4)
    for layout, seed in (("random", 0), ("sorted", None)):
        negatives.write_layout(specs, tmp_path / layout, shard_seed=seed, tracks_per_shard=32)

    def stats(layout, **kwargs):
        return input_statistics(InputConfig(str(tmp_path / layout / "shard-*.tfrecord"),
                                            batch_tracks=30, window_frames=2,
                                            shuffle_buffer=128, seed=0, **kwargs), 40)

    new = stats("random")
    assert new["tracks"] == 2400 and new["identities"] == 200
    assert new["same_video_pairs"] == 0
    assert 0.5 < new["same_identity_pairs"] / new["uniform_same_identity_pairs"] < 2, new
    old = stats("sorted", **negatives.OLD_INPUT)
    assert old["same_identity_pairs"] > 4 * old["uniform_same_identity_pairs"], old
    assert old["same_video_pairs"] > 2 * old["uniform_same_video_pairs"], old

    assert main(["--stats", str(tmp_path / "random" / "shard-*.tfrecord"), "--batch_tracks",
                 "30", "--window_frames", "2", "--shuffle_buffer", "128", "--batches",
                 "40", "--json", str(tmp_path / "stats.json")]) == 0
    out = capsys.readouterr().out
    assert "same-identity pairs" in out and "200 identities" in out
    assert json.loads((tmp_path / "stats.json").read_text()) == pytest.approx(new)
    assert main(["--stats", str(tmp_path / "none-*.tfrecord")]) == 2
