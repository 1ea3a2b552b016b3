"""Tests of the preparation command (pipelines.media, pipelines.faces, pipelines.prepare).

Real bundled clips (data/samples) and small synthetic clips generated with PyAV; face size 64
and few clips to stay quick on 2 cores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil

import av
import numpy as np
import pytest

from conftest import run_script
from pipelines import media, prepare, records, sources
from pipelines.shards import SHARD_PATTERN, shard_name

REPO = pathlib.Path(__file__).resolve().parents[1]

SAMPLES = REPO / "data" / "samples"
PCAVS = [SAMPLES / "pcavs_vox2/Audio_Source/00086.mp4", SAMPLES / "pcavs_vox2/Input/00002.mp4"]
GRID = [SAMPLES / "grid/s1/bbaf2n.mpg", SAMPLES / "grid/lipnet_samples/sbia1a.mpg"]
FAST = prepare.PrepareConfig(face_size=64, min_frames=25, tracks_per_shard=2)


def make_clip(path: pathlib.Path, seconds: float = 3.0, size: int = 64,
              audio_rate: int = 16000, channels: int = 1, with_audio: bool = True,
              click_at: float | None = None, sine: bool = False, vcodec: str = "mpeg4",
              acodec: str = "aac", flash_frame: int | None = None) -> pathlib.Path:
    """Writes a synthetic clip: grey frames with a moving square (frame `flash_frame`, if
    given, is all white); silent audio except an optional 1 ms click at `click_at` seconds
    and/or a 440 Hz sine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), "w")
    vstream = container.add_stream(vcodec, rate=25)
    vstream.width = vstream.height = size
    vstream.pix_fmt = "yuv420p"
    layout = "mono" if channels == 1 else "stereo"
    astream = container.add_stream(acodec, rate=audio_rate, layout=layout) if with_audio else None
    for i in range(int(round(seconds * 25))):
        img = np.full((size, size, 3), 128, np.uint8)
        img[8:20, 8 + i % 40:20 + i % 40] = 255
        if i == flash_frame:
            img[:] = 255
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = i
        for packet in vstream.encode(frame):
            container.mux(packet)
    for packet in vstream.encode(None):
        container.mux(packet)
    if astream is not None:
        n = int(round(seconds * audio_rate))
        x = np.zeros((channels, n), np.float32)
        if sine:
            x[:] = 0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / audio_rate)
        if click_at is not None:
            s = int(round(click_at * audio_rate))
            x[:, s:s + 16] = 0.9
        frame_size = astream.codec_context.frame_size or 1024
        fmt = astream.codec_context.format.name
        for start in range(0, n, frame_size):
            chunk = x[:, start:start + frame_size]
            chunk = np.pad(chunk, ((0, 0), (0, frame_size - chunk.shape[1])))
            if fmt == "fltp":
                arr = chunk
            elif fmt == "s16":
                arr = (chunk.T.reshape(1, -1) * 32767).astype(np.int16)
            else:
                raise AssertionError(f"unexpected encoder format {fmt}")
            aframe = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format=fmt,
                                                layout=layout)
            aframe.sample_rate = audio_rate
            aframe.pts = start
            for packet in astream.encode(aframe):
                container.mux(packet)
        for packet in astream.encode(None):
            container.mux(packet)
    container.close()
    return path


def write_vox_txt(path: pathlib.Path, identity: str, reference: str, offset: int,
                  num_frames: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{i:06d} \t0.300 \t0.200 \t0.400 \t0.500 \n" for i in range(num_frames))
    path.write_text(f"Identity  : \t{identity}\nReference : \t{reference}\nOffset    : \t{offset}\n"
                    f"FV Conf   : \t16.647\t(1)\n\nFRAME \tX \tY \tW \tH \n{rows}")


def test_decode_real_clips():
    for path in PCAVS + GRID:
        frames, audio = media.decode_video(path)
        assert frames.dtype == np.uint8 and audio.dtype == np.int16
        assert frames.shape[1:] == ((224, 224, 3) if path.suffix == ".mp4" else (288, 360, 3))
        assert audio.shape == (frames.shape[0] * 640,)
        assert np.abs(audio).max() > 1000  # real speech, converted not zeroed
    # GRID: 3 s at 25 fps, 44.1 kHz stereo MP2 converted to 16 kHz mono
    clip = media.decode_clip(GRID[0])
    assert clip.num_frames == 75 and (clip.source_sample_rate, clip.source_channels) == (44100, 2)


def test_timestamp_quirk_00086():
    # the header of this file has been seen to claim 1 fps; frames are 0.04 s apart, audio 5.25 s
    clip = media.decode_clip(PCAVS[0])
    assert 129 <= clip.num_frames <= 132
    assert abs(clip.num_frames / 25.0 - 5.25) < 0.1
    assert clip.audio.shape[0] == clip.num_frames * 640
    assert not clip.warnings


def test_prepare_round_trip_real_clips(tmp_path):
    specs = ([sources.ClipSpec(str(p), f"pcavs/{p.stem}", identity=p.parent.name, detect=False)
              for p in PCAVS] +
             [sources.ClipSpec(str(p), f"grid/{p.stem}", identity=p.parent.name, detect=True)
              for p in GRID])
    summary = prepare.prepare(specs, tmp_path, FAST, progress=False)
    assert summary.complete and summary.tracks_written == 4 and summary.shards_total == 2
    tracks = {}
    for shard in summary.shard_paths:
        for t in records.read_tracks(shard):
            tracks[t["track_id"].decode()] = t
    assert sorted(tracks) == ["grid/bbaf2n", "grid/sbia1a", "pcavs/00002", "pcavs/00086"]
    for t in tracks.values():
        n = int(t["num_frames"])
        assert t["frames"].shape == (n, 64, 64, 3)
        assert t["audio"].shape == (n * 640,) and int(t["num_samples"]) == n * 640
        assert t["fps"] == pytest.approx(25.0) and int(t["sample_rate"]) == 16000
    assert int(tracks["grid/bbaf2n"]["num_frames"]) == 75
    assert 129 <= int(tracks["pcavs/00086"]["num_frames"]) <= 132
    # the face crop of a GRID clip is not the whole (mostly blue) frame: a face is centred
    centre = tracks["grid/bbaf2n"]["frames"][:, 16:48, 16:48].astype(float)
    assert centre[..., 0].mean() > centre[..., 2].mean()  # skin, not blue background
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["num_tracks"] == 4 and manifest["complete"]
    assert {t["track_id"]: t["num_frames"] for t in manifest["tracks"]}["grid/bbaf2n"] == 75


def test_shift_audio_uses_syncnet_sign():
    """Offset k: the sound of video frame i is source audio frame i - k, so after the shift
    source frame j sits at frame j + k (and the vacated frames are silent)."""
    audio = np.repeat(np.arange(1, 7, dtype=np.int16), 640)  # frame j holds value j + 1
    delayed = media.shift_audio(audio, 2)
    assert delayed[::640].tolist() == [0, 0, 1, 2, 3, 4]
    advanced = media.shift_audio(audio, -2)
    assert advanced[::640].tolist() == [3, 4, 5, 6, 0, 0]


@pytest.mark.parametrize("offset", [-5, -2, 0, 1, 3, 5])
def test_voxceleb2_offset_puts_click_on_the_flash_frame(tmp_path, offset):
    """VoxCeleb2's `Offset` is SyncNet's (syncnet_python SyncNetInstance.py, `calc_pdist` +
    `offset = opt.vshift - minidx`): the sound of video frame i is at audio frame i - Offset.
    A clip whose video flashes at frame 40 and whose audio clicks at audio frame 40 - Offset
    must come out of `prepare` with the click on the flash frame."""
    flash = 40
    click = flash - offset  # where SyncNet's convention puts the flash's sound
    root = tmp_path / "vox2"
    make_clip(root / "mp4/id00001/vidA/00001.mp4", seconds=3.2, flash_frame=flash,
              click_at=(click + 0.5) / 25)  # mid-frame, so +-half a frame of codec jitter is fine
    write_vox_txt(root / "txt/id00001/vidA/00001.txt", "id00001", "vidA", offset, 80)
    out = tmp_path / "out"
    assert prepare.main(["--source", "voxceleb2", "--input", str(root), "--output", str(out),
                         "--workers", "1", "--face_size", "64", "--min_frames", "25",
                         "--no_progress"]) == 0
    (track,) = records.read_tracks(str(out / "shard-00000-of-00001.tfrecord"))
    assert track["track_id"] == b"id00001/vidA/00001" and track["identity"] == b"id00001"
    assert track["video_id"] == b"vidA" and int(track["av_offset_frames"]) == offset
    # the |offset| frames the shift leaves without audio are dropped (the first ones for a
    # positive offset, the last ones for a negative one)
    frames = 80 - abs(offset)
    assert track["audio"].shape == (frames * 640,)
    flash_out = int(np.argmax(track["frames"].reshape(frames, -1).mean(axis=1)))
    assert flash_out == flash - max(offset, 0)
    click_out = int(np.argmax(np.abs(track["audio"]))) // 640
    assert abs(click_out - flash_out) <= 1, (click_out, flash_out)


@pytest.mark.parametrize("offset", [-3, 3])
def test_an_av_offset_leaves_no_zero_filled_audio(tmp_path, offset):
    """The reference draws windows only where both streams are valid (syncnet_trainer
    DatasetLoader.py: `firststart = 2 - min(off, 0)`, `laststart = len - max(off, 0) -
    (T + 2)`); the shift's zero fill (|offset| frames at one end) must not reach a record,
    where training windows could start in it. Audio: a sine from the first sample to the last."""
    path = make_clip(tmp_path / "clip.mp4", seconds=2.0, sine=True)
    clip = media.decode_clip(path, av_offset_frames=offset)
    plain = media.decode_clip(path)
    # up to |offset| frames fewer: the audio (here ~1.5 frames longer than the video, AAC's
    # padding) covers part of what a negative offset would leave unheard
    assert plain.num_frames - abs(offset) - 2 <= clip.num_frames < plain.num_frames
    assert clip.first_frame == max(offset, 0)
    per_frame = np.abs(clip.audio.reshape(clip.num_frames, 640)).max(axis=1)
    assert per_frame.min() > 0, per_frame  # no frame of zero fill (the sine never is 0)
    # still synchronised: frame i's sound is source audio frame (i + first_frame) - offset
    source = plain.audio.reshape(plain.num_frames, 640)
    i = 10
    np.testing.assert_array_equal(clip.audio.reshape(-1, 640)[i],
                                  source[i + clip.first_frame - offset])


def test_voxceleb2_missing_txt_is_a_warning(tmp_path):
    root = tmp_path / "vox2"
    make_clip(root / "mp4/id00002/vidB/00003.mp4", seconds=2.0)
    out = tmp_path / "out"
    summary = prepare.prepare(sources.list_voxceleb2(root), out, FAST, progress=False)
    assert summary.tracks_written == 1 and summary.files_skipped == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["warnings"]) == 1 and "missing txt" in report["warnings"][0]["message"]
    (track,) = records.read_tracks(summary.shard_paths[0])
    assert track["identity"] == b"id00002" and int(track["av_offset_frames"]) == 0


def test_prepare_bad_inputs(tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    raw = PCAVS[1].read_bytes()
    (data / "truncated.mp4").write_bytes(raw[: len(raw) // 2])
    make_clip(data / "noaudio.mp4", with_audio=False)
    make_clip(data / "short.mp4", seconds=0.5)
    make_clip(data / "stereo44k.mpg", seconds=3.0, audio_rate=44100, channels=2, sine=True,
              vcodec="mpeg1video", acodec="mp2")
    out = tmp_path / "out"
    rc = prepare.main(["--source", "videos", "--input", str(data), "--output", str(out),
                       "--no_detect", "--workers", "1", "--face_size", "64",
                       "--min_frames", "50", "--tracks_per_shard", "2", "--no_progress"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    reasons = {pathlib.Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert reasons == {"truncated.mp4": "corrupt", "noaudio.mp4": "no_audio",
                       "short.mp4": "too_short"}
    text = (out / "report.txt").read_text()
    for name in reasons:
        assert name in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_tracks"] == 1
    tracks = [t for s in sorted(out.glob(SHARD_PATTERN))
              for t in records.read_tracks(str(s))]
    (track,) = tracks
    assert track["track_id"] == b"stereo44k" and int(track["sample_rate"]) == 16000
    assert int(track["num_frames"]) == 75 and track["audio"].shape == (75 * 640,)
    # the 440 Hz tone survives the 44.1 kHz stereo -> 16 kHz mono conversion
    spectrum = np.abs(np.fft.rfft(track["audio"][640:-640]))
    freqs = np.fft.rfftfreq(track["audio"].shape[0] - 1280, 1 / 16000)
    assert abs(freqs[np.argmax(spectrum)] - 440) < 5
    assert 0.15 < np.abs(track["audio"]).max() < 0.5


def test_resume_skips_finished_shards_and_ignores_temp(tmp_path):
    data = tmp_path / "in"
    for i in range(3):
        make_clip(data / "spk" / f"clip{i}.mp4", seconds=1.2 + 0.2 * i)
    specs = sources.list_videos(data, detect=False)
    config = prepare.PrepareConfig(face_size=64, min_frames=25, tracks_per_shard=1)
    out = tmp_path / "out"
    first = prepare.prepare(specs, out, config, progress=False)
    assert first.shards_written == 3 and first.tracks_written == 3
    shards = sorted(out.glob(SHARD_PATTERN))
    assert [s.name for s in shards] == [shard_name(i, 3) for i in range(3)]
    mtimes = {s.name: s.stat().st_mtime_ns for s in shards}

    again = prepare.prepare(specs, out, config, progress=False)
    assert again.shards_written == 0 and again.shards_skipped_finished == 3
    assert {s.name: s.stat().st_mtime_ns for s in shards} == mtimes

    # a "killed" run: shard 1 never got renamed, only a half-written temp file is left
    killed = out / shard_name(1, 3)
    killed.unlink()
    (out / "shard-00001-of-00003.json").unlink()
    temp = out / f".tmp-99999-{killed.name}.partial"  # files.temp_path of another process
    temp.write_bytes(b"\x00" * 100)
    assert temp not in set(out.glob(SHARD_PATTERN))
    manifest = prepare.merge_reports(out)
    assert not manifest["complete"] and manifest["missing_shards"] == [killed.name]
    assert all(not s["file"].startswith(".") for s in manifest["shards"])

    third = prepare.prepare(specs, out, config, workers=2, progress=False)
    assert third.shards_written == 1 and third.complete and third.tracks_written == 3
    assert not temp.exists()
    for name, mtime in mtimes.items():
        if name != killed.name:
            assert (out / name).stat().st_mtime_ns == mtime
    ids = [t["track_id"] for s in sorted(out.glob(SHARD_PATTERN))
           for t in records.read_tracks(str(s))]
    assert sorted(ids) == [b"spk/clip0", b"spk/clip1", b"spk/clip2"]  # shards: random order


def test_split_jobs_share_one_folder(tmp_path):
    data = tmp_path / "in"
    for i in range(3):
        make_clip(data / f"clip{i}.mp4", seconds=1.2)
    specs = sources.list_videos(data, detect=False)
    config = prepare.PrepareConfig(face_size=32, min_frames=25, tracks_per_shard=1)
    out = tmp_path / "out"
    a = prepare.prepare(specs, out, config, num_jobs=2, job_index=0, progress=False)
    assert a.shards_written == 2 and not a.complete
    b = prepare.prepare(specs, out, config, num_jobs=2, job_index=1, progress=False)
    assert b.shards_written == 1 and b.complete
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_tracks"] == 3


def test_a_rerun_with_another_shard_plan_leaves_one_shard_set(tmp_path):
    """Rerunning prepare into the same folder with another --tracks_per_shard left the old
    `*-of-00003` shards beside the new `*-of-00002`: the README's `shard-*.tfrecord` glob then
    trained on every track twice. Now the other set is removed (with its sidecars), and
    train.py refuses a glob that still matches two sets or two copies of a track."""
    from pipelines.input import check_one_copy_of_each_track

    data = tmp_path / "in"
    for i in range(3):
        make_clip(data / f"clip{i}.mp4", seconds=1.2)
    specs = sources.list_videos(data, detect=False)
    out = tmp_path / "out"
    config = prepare.PrepareConfig(face_size=64, min_frames=25, tracks_per_shard=1)
    prepare.prepare(specs, out, config, progress=False)
    assert len(list(out.glob("shard-*-of-00003.tfrecord"))) == 3
    prepare.prepare(specs, out, dataclasses.replace(config, tracks_per_shard=2), progress=False)
    assert sorted(p.name for p in out.glob("shard-*")) == [
        "shard-00000-of-00002.json", "shard-00000-of-00002.tfrecord",
        "shard-00001-of-00002.json", "shard-00001-of-00002.tfrecord"]
    check_one_copy_of_each_track(sorted(str(p) for p in out.glob("shard-*.tfrecord")))

    # what train.py refuses: a stale set put back, and a copy of a shard
    shutil.copy(out / "shard-00000-of-00002.tfrecord", out / "shard-00000-of-00007.tfrecord")
    with pytest.raises(ValueError, match=r"matches 2 shard sets in .*out: 2 of 2 .* 1 of 7"):
        check_one_copy_of_each_track(sorted(str(p) for p in out.glob("shard-*.tfrecord")))
    (out / "shard-00000-of-00007.tfrecord").unlink()
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    both = sorted(str(p) for p in [*out.glob("*.tfrecord"), *copy.glob("*.tfrecord")])
    with pytest.raises(ValueError, match=r"track .* is in two of the training shards"):
        check_one_copy_of_each_track(both)
    result = run_script(["train.py", "--train_data", f"{out}/*.tfrecord,{copy}/*.tfrecord",
                         "--model_dir", str(tmp_path / "run"), "--model_size", "tiny"])
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("train.py: error: track ") and "two of the training shards" in line


def test_no_face_is_skipped(tmp_path):
    path = make_clip(tmp_path / "in" / "blank.mp4", seconds=2.5)
    result = prepare.process_clip(sources.ClipSpec(str(path), "blank", detect=True), FAST)
    assert result.skip_reason == "no_face" and result.frames is None


@pytest.mark.slow
def test_prepare_bundled_samples(tmp_path):
    shards = prepare.prepare_bundled_samples(tmp_path, face_size=64)
    assert shards and all(pathlib.Path(s).is_file() for s in shards)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_tracks"] >= 30
    assert prepare.prepare_bundled_samples(tmp_path, face_size=64) == shards


@pytest.mark.slow
def test_resume_prepare_after_kill(tmp_path):
    """kill -9 in the middle of a preparation job, rerun: every clip ends up in exactly one
    finished shard, and shards finished before the kill are not rewritten."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipelines.prepare", "--source", "videos", "--input",
           str(SAMPLES / "grid" / "s1"), "--output", str(out), "--workers", "1",
           "--tracks_per_shard", "2", "--face_size", "64", "--min_frames", "25", "--no_progress"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(out.glob("shard-*.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tfrecord")}
    assert 1 <= len(finished) < 6, "the job was not interrupted in the middle"

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for name, mtime in finished.items():
        assert (out / name).stat().st_mtime_ns == mtime  # not redone
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"]
    ids = [t["track_id"] for shard in sorted(out.glob("shard-*.tfrecord"))
           for t in records.read_tracks(str(shard))]
    assert len(ids) == len(set(ids)) == 12  # nothing lost, nothing duplicated
    assert not list(out.glob(".*tmp*"))  # no half-written shard left behind


def test_a_full_disk_stops_prepare_in_one_line_and_it_resumes(tmp_path):
    """`prepare` on a full disk ended in a raw ResourceExhaustedError traceback. The disk
    fills (injected ENOSPC) while the second shard is written: one line, exit 2, the first
    shard kept, and the rerun writes only the missing one."""
    data = tmp_path / "in"
    for i in range(2):
        make_clip(data / f"clip{i}.mp4", seconds=1.2)
    out = tmp_path / "out"
    command = ["-m", "pipelines.prepare", "--source", "videos", "--no_detect", "--input",
               str(data), "--output", str(out), "--face_size", "64", "--min_frames", "25",
               "--tracks_per_shard", "1", "--workers", "1", "--no_progress"]
    result = run_script(command, env={"AV_DISENTANGLE_FAULT": "enospc:shard.half:2"})
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [line for line in errors if line.startswith(
        "pipelines.prepare: error: no space left on device writing ")] and len(errors) == 1
    assert "Traceback" not in result.stderr
    assert len(list(out.glob("shard-*.tfrecord"))) == 1 and not list(out.glob(".tmp-*"))
    result = run_script(command)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 of this job's 2 shards already finished" in result.stderr
