"""Tracks stored as chunks (pipelines.prepare --chunk_seconds, data format version 2).

Chunk boundaries (every frame once, audio aligned per chunk, room for two windows), both windows
of an example from one chunk without overlap, chunks of one video never in one batch, whole
tracks back for evaluation, fewer bytes read per example, old-format shards refused.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from av_disentangle.constants import AUDIO, AUDIO_2, FRAMES, TRACK_ID, VIDEO_ID
from pipelines.shard_check import check_shard
from conftest import write_mp4
from pipelines import input_stats
from pipelines import labelled, prepare, records
from pipelines.input import InputConfig, list_shards, make_dataset


def _marked_track(track: int, frames: int, video: str, size: int = 16) -> records.Track:
    """Frame i has pixel value (10 * track + i) % 256; the audio of frame i is the constant
    track * 1000 + i, so a window's audio says which frames of which track it holds."""
    pix = ((10 * track + np.arange(frames)) % 256).astype(np.uint8)
    video_frames = np.broadcast_to(pix[:, None, None, None], (frames, size, size, 3)).copy()
    audio = np.repeat((track * 1000 + np.arange(frames)).astype(np.int16), 640)
    return records.Track(video_frames, audio, track_id=f"{video}/t{track}", video_id=video,
                         identity=f"person{track}")


def _write(path, tracks: list[records.Track], chunk_frames: int) -> str:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for track in tracks:
            for chunk in records.split_track(track, chunk_frames):
                writer.write(records.encode_track(chunk))
    return str(path)


@pytest.mark.parametrize("num_frames", [1, 99, 100, 199, 200, 201, 250, 299, 300, 1007])
def test_chunk_bounds_hold_every_frame_once_with_room_for_two_windows(num_frames):
    chunk = 100  # 4 s: two windows of 50 frames
    bounds = records.chunk_bounds(num_frames, chunk)
    assert bounds[0][0] == 0 and bounds[-1][1] == num_frames
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # none lost or duplicated
    if num_frames < 2 * chunk:
        assert bounds == [(0, num_frames)]  # short tracks whole
    else:
        assert len(bounds) == num_frames // chunk
        assert all(chunk <= stop - start < 2 * chunk for start, stop in bounds)
    assert records.chunk_bounds(num_frames, 0) == [(0, num_frames)]


def test_a_chunk_must_hold_two_windows():
    assert prepare.PrepareConfig(min_frames=50, chunk_seconds=4).chunk_frames == 100
    prepare.PrepareConfig(min_frames=50, chunk_seconds=0)  # whole tracks: allowed
    with pytest.raises(ValueError, match="two windows"):
        prepare.PrepareConfig(min_frames=50, chunk_seconds=3.9)
    with pytest.raises(ValueError, match="jpeg_quality"):
        prepare.PrepareConfig(jpeg_quality=0)


def test_chunks_keep_audio_aligned_and_join_back_to_the_track(tmp_path):
    track = _marked_track(3, 250, "vidA")
    chunks = records.split_track(track, 100)
    assert [(c.chunk_index, c.num_chunks, c.chunk_start_frame, c.frames.shape[0])
            for c in chunks] == [(0, 2, 0, 125), (1, 2, 125, 125)]
    for c in chunks:
        frame_of_audio = c.audio[::640] - 3000  # audio says which frame of the track it is
        np.testing.assert_array_equal(frame_of_audio,
                                      c.chunk_start_frame + np.arange(c.frames.shape[0]))
        np.testing.assert_array_equal(c.frames[:, 0, 0, 0], (30 + frame_of_audio) % 256)
        assert (c.track_id, c.video_id, c.identity) == (track.track_id, "vidA", "person3")
    path = _write(tmp_path / "c.tfrecord", [track, _marked_track(4, 120, "vidB")], 100)
    stored = records.read_tracks(path, join=False)
    assert [int(t["chunk_index"]) for t in stored] == [0, 1, 0]
    whole = records.read_tracks(path)
    assert [t["track_id"].decode() for t in whole] == ["vidA/t3", "vidB/t4"]
    assert int(whole[0]["num_frames"]) == 250 and whole[0]["frames"].shape[0] == 250
    np.testing.assert_array_equal(np.round(whole[0]["audio"] * 32768).astype(np.int16),
                                  track.audio)
    np.testing.assert_allclose(whole[0]["frames"][:, 8, 8, 0], track.frames[:, 8, 8, 0], atol=2)
    with pytest.raises(ValueError, match="vidA/t3"):  # a missing chunk is an error
        records.join_chunks(stored[1:], path)


def test_both_windows_of_an_example_come_from_one_chunk_and_never_overlap(tmp_path):
    window = 50
    tracks = [_marked_track(t, 250 + 40 * t, f"vid{t}") for t in range(4)]
    path = _write(tmp_path / "c.tfrecord", tracks, 2 * window)
    bounds = {t: records.chunk_bounds(250 + 40 * t, 2 * window) for t in range(4)}
    ds = make_dataset(InputConfig(path, batch_tracks=2, window_frames=window, face_size=16,
                                  seed=1))
    seen = set()
    for batch in ds.take(20):
        audio = np.round(batch[AUDIO].numpy() * 32768).astype(int)
        audio_2 = np.round(batch[AUDIO_2].numpy() * 32768).astype(int)
        frames = batch[FRAMES].numpy().astype(int)
        for b in range(2):
            track = audio[b, 0] // 1000
            idx_1, idx_2 = audio[b, ::640] % 1000, audio_2[b, ::640] % 1000
            np.testing.assert_allclose(frames[b, :, 8, 8, 0], (10 * track + idx_1) % 256, atol=2)
            (chunk,) = [c for c in bounds[track] if c[0] <= idx_1[0] < c[1]]
            assert chunk[0] <= idx_1.min() and idx_1.max() < chunk[1]
            assert chunk[0] <= idx_2.min() and idx_2.max() < chunk[1]  # the same chunk
            assert abs(int(idx_1[0]) - int(idx_2[0])) >= window  # no overlap
            seen.add((track, chunk))
    assert len(seen) >= 6  # the examples come from many chunks


def test_chunks_of_one_video_are_never_in_one_batch(tmp_path):
    # 6 videos x 2 tracks x 3 chunks = 36 records, 6 records per video
    tracks = [_marked_track(2 * v + k, 300, f"video{v}") for v in range(6) for k in range(2)]
    path = _write(tmp_path / "c.tfrecord", tracks, 100)
    config = InputConfig(path, batch_tracks=3, window_frames=25, face_size=16, seed=0,
                         repeat=False, include_ids=True, video_group_batches=6,
                         all_chunks_per_pass=True)
    batches = [(b[VIDEO_ID].numpy().tolist(), b[TRACK_ID].numpy().tolist())
               for b in make_dataset(config)]
    assert sum(len(v) for v, _ in batches) >= 30  # nearly all 36 chunks are used in a pass
    for videos, _ in batches:
        assert len(set(videos)) == len(videos)
    stats = input_stats.input_statistics(dataclasses.replace(config, repeat=True), 5)
    assert stats["tracks"] == 36 and stats["same_video_pairs"] == 0  # records, per chunk


def _clip(tmp_path, seconds: float = 10.0, size: int = 32) -> str:
    rng = np.random.default_rng(0)
    n = int(seconds * 25)
    frames = np.clip(rng.normal(128, 40, (n, size, size, 3)), 0, 255).astype(np.uint8)
    audio = (0.2 * np.sin(2 * np.pi * 220 * np.arange(n * 640) / 16000)).astype(np.float32)
    folder = tmp_path / "videos" / "personA"
    folder.mkdir(parents=True)
    write_mp4(folder / "clip.mp4", frames, audio)
    return str(tmp_path / "videos")


def _shard_bytes(folder) -> int:
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
               if f.endswith(".tfrecord"))


def _jpeg_bytes(folder) -> int:
    (shard,) = list_shards(os.path.join(folder, "*.tfrecord"))
    return sum(len(j) for raw in tf.data.TFRecordDataset(shard)
               for j in records.parse_example(raw)["frames"].numpy())


def test_prepare_chunks_read_fewer_bytes_per_example_and_evaluate_whole(tmp_path, capsys):
    videos = _clip(tmp_path)
    common = ["--source", "videos", "--no_detect", "--input", videos, "--face_size", "32",
              "--min_frames", "25", "--workers", "1", "--no_progress"]
    # Both qualities set explicitly: the comparison must not move with the prepare default.
    assert prepare.main(common + ["--output", str(tmp_path / "whole"),
                                  "--chunk_seconds", "0", "--jpeg_quality", "95"]) == 0
    assert prepare.main(common + ["--output", str(tmp_path / "chunks"),
                                  "--chunk_seconds", "2", "--jpeg_quality", "95"]) == 0
    assert prepare.main(common + ["--output", str(tmp_path / "q50"), "--chunk_seconds", "2",
                                  "--jpeg_quality", "50"]) == 0
    whole_shard, = list_shards(str(tmp_path / "whole" / "*.tfrecord"))
    chunk_shard, = list_shards(str(tmp_path / "chunks" / "*.tfrecord"))
    assert len(records.read_tracks(chunk_shard, join=False)) == 5  # 250 frames / 50
    manifest = json.loads((tmp_path / "chunks" / "manifest.json").read_text())
    assert manifest["format_version"] == prepare.FORMAT_VERSION == 2
    assert manifest["num_tracks"] == 1 and manifest["num_records"] == 5
    assert manifest["tracks"][0]["chunks"] == [[50 * i, 50 * i + 50] for i in range(5)]
    assert check_shard(chunk_shard, full=True) is None  # sidecar counts records
    # bytes one example reads: the whole shard per record
    per_example_whole = _shard_bytes(tmp_path / "whole") / 1
    per_example_chunk = _shard_bytes(tmp_path / "chunks") / 5
    assert per_example_chunk < 0.3 * per_example_whole
    # --jpeg_quality applies (32x32 frames: ~600 of the ~770 bytes a frame are JPEG headers)
    assert _jpeg_bytes(tmp_path / "q50") < 0.97 * _jpeg_bytes(tmp_path / "chunks")
    # evaluation sees the same whole track either way
    (a,), (b,) = records.read_tracks(whole_shard), records.read_tracks(chunk_shard)
    np.testing.assert_array_equal(a["frames"], b["frames"])
    np.testing.assert_array_equal(a["audio"], b["audio"])
    assert a["track_id"] == b["track_id"] and int(b["num_frames"]) == 250
    # labelled audio from TFRecords: one utterance per track, its whole audio
    listing = labelled.list_labelled_records(chunk_shard)
    assert listing == {"personA": ["personA/clip"]}
    selection = labelled.LabelledSelection(source=chunk_shard, speakers=("personA",),
                                           utterances=(("personA", "personA/clip"),),
                                           labels_per_speaker=0, num_speakers=0, seed=0)
    (wave,) = labelled._load_record_audio(selection)
    np.testing.assert_array_equal(wave / 32768.0, a["audio"])


def test_prepare_rejects_a_chunk_shorter_than_two_windows(tmp_path, capsys):
    videos = _clip(tmp_path, seconds=3)
    rc = prepare.main(["--source", "videos", "--input", videos, "--output", str(tmp_path / "o"),
                       "--min_frames", "50", "--chunk_seconds", "3"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "two windows" in err and len(err.splitlines()) == 1


def _old_format_folder(folder, with_manifest: bool):
    """A folder as version 1 of `prepare` wrote it: shard + sidecar without format_version,
    manifest with format_version 1."""
    folder.mkdir()
    shard = folder / "shard-00000-of-00001.tfrecord"
    _write(shard, [_marked_track(0, 60, "v")], 0)
    (folder / "shard-00000-of-00001.json").write_text(json.dumps(
        {"shard": shard.name, "index": 0, "num_shards": 1, "fingerprint": "x", "num_tracks": 1,
         "tracks": []}))
    if with_manifest:
        (folder / "manifest.json").write_text(json.dumps(
            {"format_version": 1, "shards": [{"file": shard.name, "num_tracks": 1}],
             "tracks": []}))
    return str(shard)


@pytest.mark.parametrize("with_manifest", [True, False])
def test_old_format_shards_are_refused_naming_the_file(tmp_path, capsys, with_manifest):
    shard = _old_format_folder(tmp_path / "old", with_manifest)
    with pytest.raises(ValueError, match=f"{shard} was prepared with data format version 1"):
        list_shards(str(tmp_path / "old" / "*.tfrecord"))
    with pytest.raises(ValueError, match=shard):
        make_dataset(InputConfig(shard, batch_tracks=1, window_frames=10, face_size=16))
    assert input_stats.main(["--stats", shard]) == 2
    err = capsys.readouterr().err.strip()
    assert shard in err and len(err.splitlines()) == 1
    # records without any prepare metadata (synthetic worlds, tests) are not refused
    other = _write(tmp_path / "other.tfrecord", [_marked_track(0, 60, "v")], 0)
    assert list_shards(other) == [other]
