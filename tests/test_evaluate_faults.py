"""evaluate.py under faults: bad files, bad paths, bad videos; and what it shows in TensorBoard.

Each test runs `evaluate.py`'s `main(argv)` (`av_disentangle.evaluation.cli`) in-process
against a small stand-in SavedModel with the export contract (the real exported model's
in-graph checks are tested in test_export.py).
"""

from __future__ import annotations

import glob
import os
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from av_disentangle.evaluation import EvaluationError, cli, verification
from av_disentangle.evaluation.trials import make_trials
from conftest import run_script, write_wav

REPO = Path(__file__).resolve().parents[1]

FACE = 16  # static face size of the stand-in's face signatures
D = 8


class StandIn(tf.Module):
    """Fixed features with the four serving signatures; D-dim embeddings, 4-dim content."""

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform")])
    def embed(self, waveform):
        spectrum = tf.abs(tf.signal.rfft(tf.signal.frame(waveform, 400, 160)))  # (B, F, 201)
        feat = tf.math.log(tf.reduce_mean(spectrum, axis=1)[:, 4:4 + 4 * D:4] + 1e-3)
        return {"embedding": tf.math.l2_normalize(feat - tf.reduce_mean(feat), axis=-1)}

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, FACE, FACE, 3], tf.uint8, name="frames")])
    def embed_face(self, frames):
        x = tf.reduce_mean(tf.cast(frames, tf.float32), axis=[1, 2]) / 255.0  # (B, W, 3)
        feat = tf.reshape(x[:, :, :1], [-1, FACE])[:, :D]
        return {"embedding": tf.math.l2_normalize(feat + 1e-3, axis=-1)}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform")])
    def content(self, waveform):
        s = tf.shape(waveform)
        steps = s[1] // 640
        x = tf.reshape(waveform[:, :steps * 640], [s[0], steps, 4, 160])
        return {"content": tf.reduce_mean(tf.abs(x), axis=-1)}

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, FACE, FACE, 3], tf.uint8, name="frames")])
    def face_content(self, frames):
        g = tf.reduce_mean(tf.cast(frames, tf.float32), axis=[-1, -2])  # (B, T, H)
        s = tf.shape(g)
        return {"content": tf.reduce_mean(tf.reshape(g, [s[0], s[1], 4, FACE // 4]), -1)}


def save_standin(path: Path) -> str:
    module = StandIn()
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.embed, "embed_face": module.embed_face,
        "content": module.content, "face_content": module.face_content})
    return str(path)


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    """`<root>/standin/{1,3}`: two versions, as `train.py` exports them."""
    root = tmp_path_factory.mktemp("saved_models") / "standin"
    save_standin(root / "1")
    save_standin(root / "3")
    return root


@pytest.fixture(scope="module")
def model(model_root) -> str:
    return str(model_root / "3")


# === Data ===



def write_float_wav(path: Path, x: np.ndarray, rate: int = 16000) -> None:
    """IEEE-float WAV (format 3): the one common format that can hold NaN and Inf."""
    data = np.asarray(x, "<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE")
        f.write(b"fmt " + struct.pack("<I", len(fmt)) + fmt)
        f.write(b"data" + struct.pack("<I", len(data)) + data)


@pytest.fixture()
def audio_root(tmp_path) -> Path:
    """3 'speakers' (tone mixtures) x 2 utterances of 1.2 s."""
    rng = np.random.default_rng(0)
    t = np.arange(int(1.2 * 16000)) / 16000
    for spk, freqs in (("spkA", (220, 660)), ("spkB", (400, 1300)), ("spkC", (300, 900))):
        for u in range(2):
            x = sum(0.2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in freqs)
            write_wav(tmp_path / "audio" / spk / f"u{u}.wav", x + 0.01 * rng.normal(size=t.size))
    return tmp_path / "audio"


@pytest.fixture()
def trials(audio_root, tmp_path) -> Path:
    path = tmp_path / "trials.txt"
    make_trials(audio_root, path)  # 15 trials, 3 target
    return path


def make_clip(path: Path, n_frames: int = 40, size: int = 32, seed: int = 0) -> None:
    """A small mp4 (MPEG-4 video + AAC 16 kHz audio) of noise blocks and noise audio."""
    from conftest import write_mp4

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (n_frames, 4, 4, 3), dtype=np.uint8)
    frames = blocks.repeat(size // 4, 1).repeat(size // 4, 2)
    write_mp4(path, frames, 0.3 * rng.normal(size=n_frames * 640))


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """3 good clips and 3 unreadable ones (empty, truncated, not a video)."""
    root = tmp_path_factory.mktemp("videos")
    for i in range(3):
        make_clip(root / f"good{i}.mp4", seed=i)
    (root / "bad_empty.mp4").write_bytes(b"")
    (root / "bad_truncated.mp4").write_bytes((root / "good0.mp4").read_bytes()[:700])
    (root / "bad_text.mp4").write_bytes(b"this is not a video\n" * 50)
    return root


def error_lines(captured) -> list[str]:
    """The user-error lines of a run (`evaluate: error: <message>` on stderr, from
    `av_disentangle.errors.run_cli`), as messages; `captured` = `capsys.readouterr()`."""
    prefix = "evaluate: error: "
    return [ln[len(prefix):] for ln in captured.err.splitlines() if ln.startswith(prefix)]


def warning_lines(captured) -> list[str]:
    """The messages of the WARNING log lines a run wrote to stderr (`setup_logging` replaces
    the root handlers, pytest's log capture among them, so the lines are read back)."""
    return [ln.split(": ", 1)[1] for ln in captured.err.splitlines()
            if " WARNING " in ln and ": " in ln]


# === Item 2: non-finite audio ===


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_audio_named(bad, model, audio_root, trials, capsys):
    x = (0.1 * np.sin(np.arange(20000) / 7)).astype(np.float32)
    x[12345] = bad
    write_float_wav(audio_root / "spkB" / "u1.wav", x)
    with pytest.raises(EvaluationError,
                       match=r"spkB/u1\.wav.*1 non-finite sample \(NaN or Inf\).*0\.77 s"):
        verification.load_audio(audio_root / "spkB" / "u1.wav")

    argv = ["--model", model, "--trials", str(trials), "--audio_root", str(audio_root),
            "--num_crops", "2"]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert any("spkB/u1.wav" in e and "non-finite" in e for e in error_lines(captured))
    assert captured.out == ""

    assert cli.main(argv + ["--skip_missing"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("EER ")
    warnings = " ".join(warning_lines(captured))
    assert "1 of 6 audio files could not be used" in warnings and "spkB/u1.wav" in warnings
    assert "dropped 5 of 15 trials" in warnings


# === Item 3: TensorBoard images and the embedding projector ===


def _event_tags(logdir: Path) -> dict[str, list]:
    """tag -> [(step, kind, value)] over every event file under `logdir`."""
    tags: dict[str, list] = {}
    for path in glob.glob(str(logdir / "**" / "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                kind = v.metadata.plugin_data.plugin_name
                tensor = tf.make_ndarray(v.tensor)
                tags.setdefault(v.tag, []).append((event.step, kind, tensor))
    return tags


def test_verification_logdir_and_projector(model, audio_root, trials, tmp_path, capsys):
    logdir, projector = tmp_path / "logs", tmp_path / "projector"
    assert cli.main(["--model", model, "--trials", str(trials), "--audio_root",
                     str(audio_root), "--num_crops", "2", "--logdir", str(logdir),
                     "--projector_out", str(projector)]) == 0
    eer_line = capsys.readouterr().out.strip()
    tags = _event_tags(logdir)
    [(step, kind, image)] = tags["verification/det_curve"]
    assert step == 3 and kind == "images"  # step = the model's version folder
    width, height, png = image  # tf.summary.image: [width, height, encoded image...]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int(width) > 300 and int(height) > 200
    [(_, kind, eer)] = tags["verification/eer"]
    assert kind == "scalars" and f"EER {100 * float(eer):.2f}%" in eer_line

    from google.protobuf import text_format
    from tensorboard.plugins.projector import projector_config_pb2

    config = text_format.Parse((projector / "projector_config.pbtxt").read_text(),
                               projector_config_pb2.ProjectorConfig())
    [embedding] = config.embeddings
    tensors = np.loadtxt(projector / embedding.tensor_path, delimiter="\t", ndmin=2)
    metadata = (projector / embedding.metadata_path).read_text().splitlines()
    assert tensors.shape == (6, D)  # one row per distinct file
    np.testing.assert_allclose(np.linalg.norm(tensors, axis=1), 1.0, rtol=1e-4)
    assert metadata[0] == "speaker\tfile" and len(metadata) == 1 + 6
    assert sorted(m.split("\t")[0] for m in metadata[1:]) == ["spkA"] * 2 + ["spkB"] * 2 + \
        ["spkC"] * 2
    assert not list(projector.glob("*.tmp*"))


def test_sync_and_crossmodal_logdir(model, videos, tmp_path, capsys):
    good = tmp_path / "good"
    good.mkdir()
    for i in range(3):
        os.symlink(videos / f"good{i}.mp4", good / f"good{i}.mp4")
    ids = tmp_path / "ids.csv"  # cross-modal targets need another clip of the same identity
    ids.write_text("good0.mp4,a\ngood1.mp4,a\ngood2.mp4,b\n")
    logdir = tmp_path / "logs"
    assert cli.main(["--task", "sync", "--model", model, "--videos", str(good),
                     "--max_offset", "3", "--shifts", "0,2", "--logdir",
                     str(logdir)]) == 0
    projector = tmp_path / "projector"
    assert cli.main(["--task", "crossmodal", "--model", model, "--videos", str(good),
                     "--identities", str(ids),
                     "--segment_seconds", "0.6", "--logdir", str(logdir),
                     "--projector_out", str(projector)]) == 0
    tags = _event_tags(logdir)
    [(_, kind, image)] = tags["sync/offset_curve"]
    assert kind == "images" and image[2][:4] == b"\x89PNG"
    assert {"sync/exact", "sync/within1", "crossmodal/det_curve", "crossmodal/eer"} <= set(tags)
    metadata = (projector / "metadata.tsv").read_text().splitlines()
    assert metadata[0] == "identity\tmodality\tsegment"
    assert sorted({m.split("\t")[1] for m in metadata[1:]}) == ["face", "voice"]
    rows = len((projector / "tensors.tsv").read_text().splitlines())
    assert rows == len(metadata) - 1 == 3 * 2 * 2  # clips x segments x modalities


# === Item 5: one line naming the file, exit 2 ===


def test_model_folder_not_a_saved_model(model_root, trials, audio_root, tmp_path, capsys):
    base = ["--trials", str(trials), "--audio_root", str(audio_root)]
    assert cli.main(["--model", str(model_root), *base]) == 2
    [msg] = error_lines(capsys.readouterr())
    assert str(model_root) in msg and "not a SavedModel" in msg
    assert "version folders 1, 3" in msg and f"--model {model_root / '3'}" in msg

    empty = tmp_path / "empty_model"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    assert cli.main(["--model", str(empty), *base]) == 2
    [msg] = error_lines(capsys.readouterr())
    assert "not a SavedModel" in msg and "no version folders" in msg

    broken = tmp_path / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"\x00garbage")
    assert cli.main(["--model", str(broken), *base]) == 2
    [msg] = error_lines(capsys.readouterr())
    assert str(broken) in msg and "cannot load" in msg and "\n" not in msg


class Foreign(tf.Module):
    """A SavedModel of other code: its serving_default takes `x`, returns `y`."""

    @tf.function(input_signature=[tf.TensorSpec([None, 10], tf.float32, name="x")])
    def f(self, x):
        return {"y": 2.0 * x}


def test_a_foreign_saved_model_or_an_edited_model_config_is_one_line(trials, audio_root,
                                                                    tmp_path, capsys):
    """A SavedModel that is not an av-disentangle export failed with a 116-line TypeError
    dumping the waveform; an edited model_config.json beside an export went unnoticed."""
    base = ["--trials", str(trials), "--audio_root", str(audio_root)]
    foreign = tmp_path / "foreign" / "1"
    module = Foreign()
    tf.saved_model.save(module, str(foreign), signatures={"serving_default": module.f})
    assert cli.main(["--model", str(foreign), *base]) == 2
    [msg] = error_lines(capsys.readouterr())
    assert str(foreign) in msg and "not an av-disentangle export" in msg
    assert "takes ['x'] and returns ['y']" in msg and "'embedding'" in msg

    export = Path(save_standin(tmp_path / "standin" / "1"))
    config = export / "model_config.json"
    config.write_text('{"face_size": %d, "front_end": "centered"}' % FACE)
    assert cli.main(["--model", str(export), *base]) == 0  # consistent: fine
    capsys.readouterr()
    for text, problem in (('{"face_size": 224}', "face_size 224 disagrees"),
                          ('{"face_size": ', "unreadable"), ("[1, 2]", "expected a JSON object")):
        config.write_text(text)
        assert cli.main(["--model", str(export), *base]) == 2
        [msg] = error_lines(capsys.readouterr())
        assert str(config) in msg and problem in msg, msg
    config.unlink()  # a SavedModel of other code has none: evaluated with the defaults
    assert cli.main(["--model", str(export), *base]) == 0


def test_missing_inputs_named(model, audio_root, tmp_path, capsys):
    missing = tmp_path / "nope" / "trials.txt"
    assert cli.main(["--model", model, "--trials", str(missing), "--audio_root",
                     str(audio_root)]) == 2
    [msg] = error_lines(capsys.readouterr())
    assert str(missing) in msg and "--trials" in msg and "not found" in msg
    assert cli.main(["--task", "sync", "--model", model, "--videos",
                     str(tmp_path / "novideos")]) == 2
    [msg] = error_lines(capsys.readouterr())
    assert "novideos" in msg and "--videos" in msg


@pytest.mark.parametrize("flag", ["--scores_out", "--plot_out"])
def test_unwritable_outputs_checked_before_any_work(flag, model, trials, audio_root, tmp_path,
                                                    capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(verification, "ExportedModel", no_work)
    base = ["--model", model, "--trials", str(trials), "--audio_root", str(audio_root)]
    for target in (tmp_path / "no_such_dir" / "out.txt", tmp_path):  # missing folder, a folder
        assert cli.main([*base, flag, str(target)]) == 2
        [msg] = error_lines(capsys.readouterr())
        assert flag in msg and str(target) in msg


def test_output_failure_after_the_work_keeps_the_summary(model, trials, audio_root, tmp_path,
                                                          capsys, monkeypatch):
    """If writing the scores fails anyway (folder removed, disk full), the EER line is already
    printed and the failure is one line, exit 2."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real_score_pairs = verification.score_pairs

    def score_then_remove_folder(*args, **kwargs):
        result = real_score_pairs(*args, **kwargs)
        out_dir.rmdir()
        return result

    monkeypatch.setattr(verification, "score_pairs", score_then_remove_folder)
    scores = out_dir / "scores.txt"
    assert cli.main(["--model", model, "--trials", str(trials), "--audio_root",
                     str(audio_root), "--num_crops", "2", "--scores_out",
                     str(scores)]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith("EER ")
    [msg] = error_lines(captured)
    assert str(scores) in msg and "cannot write" in msg


@pytest.mark.slow  # a subprocess: imports TensorFlow again (~10-25 s)
def test_cli_one_line_exit_2(model_root):
    r = run_script([str(REPO / "evaluate.py"), "--model", str(model_root), "--trials",
                    "x.txt", "--audio_root", "."], timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("evaluate: error: ")]
    assert len(errors) == 1 and "x.txt" in errors[0] and "not found" in errors[0]
    assert r.stderr.strip().splitlines() == errors, r.stderr[-2000:]  # no TensorFlow noise
    r = run_script([str(REPO / "evaluate.py"), "--model", str(model_root), "--trials",
                    "x.txt", "--audio_root", ".", "--verbose"], timeout=300)
    assert r.returncode == 2 and "Traceback" in r.stderr  # --verbose: the stack trace too


# === Item 6: unreadable videos are skipped with a report, or stop the run with --strict ===


@pytest.mark.parametrize("task", ["sync", "crossmodal"])
def test_bad_videos_skipped_with_report(task, model, videos, capsys, tmp_path):
    ids = tmp_path / "ids.csv"  # every video needs an identity (checked before decoding)
    ids.write_text("good0.mp4,a\ngood1.mp4,a\ngood2.mp4,b\nbad_empty.mp4,b\n"
                   "bad_text.mp4,b\nbad_truncated.mp4,b\n")
    argv = ["--task", task, "--model", model, "--videos", str(videos), "--max_offset", "3",
            "--shifts", "0", "--segment_seconds", "0.6", "--identities", str(ids)]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "3 of 6 videos skipped (unreadable)" in out, out
    warnings = warning_lines(captured)
    report = [w for w in warnings if "videos could not be read" in w]
    assert len(report) == 1
    assert all(name in report[0] for name in ("bad_empty.mp4", "bad_text.mp4",
                                              "bad_truncated.mp4"))

    assert cli.main(argv + ["--strict"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [msg] = error_lines(captured)
    assert "bad_empty.mp4" in msg and "--strict" in msg


def test_all_videos_bad_is_an_error(model, videos, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("bad_empty.mp4", "bad_text.mp4"):
        os.symlink(videos / name, bad / name)
    assert cli.main(["--task", "sync", "--model", model, "--videos", str(bad)]) == 2
    [msg] = error_lines(capsys.readouterr())
    assert "none of the 2 videos" in msg and "bad_empty.mp4" in msg


def test_what_evaluation_does_to_unusual_audio_is_said_once_per_condition(model, tmp_path,
                                                                          capsys):
    """8 / 44.1 kHz files were resampled, stereo downmixed, short clips repeated and all-zero
    files scored, all without a word: one warning line per condition, with the count."""
    rng = np.random.default_rng(0)
    root = tmp_path / "audio"
    write_wav(root / "a" / "normal.wav", 0.1 * rng.normal(size=32000))
    write_wav(root / "a" / "phone.wav", 0.1 * rng.normal(size=16000), rate=8000)
    stereo = root / "b" / "stereo.wav"
    stereo.parent.mkdir(parents=True)
    with wave.open(str(stereo), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes((0.1 * rng.normal(size=(88200, 2)) * 32767).astype("<i2").tobytes())
    write_wav(root / "b" / "short.wav", 0.1 * rng.normal(size=9000))
    write_wav(root / "b" / "silent.wav", np.zeros(32000))
    trials = tmp_path / "trials.txt"
    trials.write_text("1 a/normal.wav a/phone.wav\n0 a/normal.wav b/stereo.wav\n"
                      "0 a/phone.wav b/short.wav\n0 a/normal.wav b/silent.wav\n")
    assert cli.main(["--model", model, "--trials", str(trials), "--audio_root", str(root)]) == 0
    warnings = warning_lines(capsys.readouterr())
    assert "2 of 5 audio files resampled to 16 kHz from 8000/44100 Hz (e.g. a/phone.wav, " \
           "b/stereo.wav)" in warnings, warnings
    assert "1 of 5 audio files downmixed to mono (e.g. b/stereo.wav)" in warnings
    assert "1 of 5 audio files shorter than a crop (2.000 s): repeated to fill it (e.g. " \
           "b/short.wav)" in warnings
    assert any(w.startswith("1 of 5 audio files all zeros") for w in warnings), warnings
