"""`av_disentangle.files`: atomic writes (local and remote), fault points, media listing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from av_disentangle import files


def _names(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_writes_replace_the_file_and_leave_no_temp(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    files.write_json_atomic(target, {"a": [1, 2]}, indent=1)
    assert json.loads(target.read_text()) == {"a": [1, 2]}
    assert target.read_text() == json.dumps({"a": [1, 2]}, indent=1)
    files.write_text_atomic(tmp_path / "report.txt", "é\n")
    files.write_atomic(tmp_path / "blob.bin", b"\x00\x01")
    assert (tmp_path / "report.txt").read_bytes() == "é\n".encode()
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\x01"
    assert _names(tmp_path) == ["blob.bin", "report.txt", "state.json"]


def test_a_failed_write_keeps_the_old_files_and_removes_the_temps(tmp_path):
    (tmp_path / "a.tfrecord").write_text("old a")
    (tmp_path / "manifest.json").write_text("old manifest")

    def write(temps):
        for tmp in temps:
            with open(tmp, "w") as f:
                f.write("new, half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        files.write_all_atomic([tmp_path / "a.tfrecord", tmp_path / "manifest.json"], write)
    assert (tmp_path / "a.tfrecord").read_text() == "old a"
    assert (tmp_path / "manifest.json").read_text() == "old manifest"
    assert _names(tmp_path) == ["a.tfrecord", "manifest.json"]


def test_temp_names_are_hidden_and_never_match_the_final_pattern(tmp_path):
    shard = files.temp_path(tmp_path / "shard-00000-of-00001.tfrecord")
    name = os.path.basename(shard)
    assert name.startswith(".tmp-") and not name.endswith(".tfrecord")
    weights = os.path.basename(files.temp_path(tmp_path / "step.weights.h5", keep_suffix=True))
    assert weights.startswith(".tmp-") and weights.endswith(".weights.h5")
    for stale in (name, weights):
        (tmp_path / stale).write_text("left by a killed writer")
    (tmp_path / "keep.json").write_text("{}")
    assert len(files.remove_stale_temps(tmp_path)) == 2
    assert _names(tmp_path) == ["keep.json"]


def test_fault_point_kills_after_the_temp_is_complete(tmp_path):
    """`<fault>.written`: SIGKILL before the rename; the target keeps its old content."""
    target = tmp_path / "config.json"
    target.write_text("old")
    code = textwrap.dedent(f"""
        from av_disentangle import files
        files.write_json_atomic({str(target)!r}, {{"new": 1}}, fault="config")
    """)
    env = {**os.environ, files.FAULT_ENV: "config.written:1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "fault injection: SIGKILL at config.written:1" in proc.stderr
    assert target.read_text() == "old"
    (temp,) = [n for n in _names(tmp_path) if n.startswith(".tmp-")]
    assert json.loads((tmp_path / temp).read_text()) == {"new": 1}


def test_list_files_is_recursive_sorted_and_case_insensitive(tmp_path):
    for rel in ("b/clip.MP4", "a/x/clip.avi", "a/notes.txt", "a/y.Wav", "top.mpg", "dir.mp4/z"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    found = files.list_files(tmp_path, (".mp4", ".avi", ".mpg"))
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a/x/clip.avi", "b/clip.MP4", "top.mpg"]
    assert [p.name for p in files.list_files(tmp_path, (".wav",))] == ["y.Wav"]
    assert files.list_files(tmp_path / "missing", (".mp4",)) == []


def test_local_use_does_not_import_tensorflow(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from av_disentangle import constants, files
        files.write_json_atomic({str(tmp_path / 'x.json')!r}, {{}})
        files.list_files({str(tmp_path)!r}, constants.VIDEO_EXTENSIONS)
        assert "tensorflow" not in sys.modules and "keras" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_remote_paths_go_through_tf_io_gfile():
    tf = pytest.importorskip("tensorflow")
    folder = "ram://files_test"
    tf.io.gfile.makedirs(folder)
    path = f"{folder}/config.json"
    files.write_json_atomic(path, {"remote": True})
    files.write_json_atomic(path, {"remote": 2})  # overwrites
    with tf.io.gfile.GFile(path) as f:
        assert json.load(f) == {"remote": 2}
    files.write_text_atomic(f"{folder}/a.txt", "text")
    assert sorted(tf.io.gfile.listdir(folder)) == ["a.txt", "config.json"]
