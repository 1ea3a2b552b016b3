"""`pipelines.prepare` under faults: killed parent, nothing written, interrupted writes."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from benchmarks import negatives
from pipelines import prepare, synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]
GRID = REPO / "data" / "samples" / "grid" / "s1"


def _children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_prepare_is_killed(tmp_path):
    """kill -9 of the parent: its worker processes (spawned, blocked on the task pipe) must
    not live on as orphans."""
    cmd = [sys.executable, "-m", "pipelines.prepare", "--source", "videos", "--input",
           str(GRID), "--output", str(tmp_path / "out"), "--workers", "2",
           "--tracks_per_shard", "2", "--face_size", "64", "--min_frames", "25", "--no_progress"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            # the spawned workers (the multiprocessing resource tracker is a child too)
            workers = [c for c in _children(proc.pid)
                       if b"spawn_main" in pathlib.Path(f"/proc/{c}/cmdline").read_bytes()]
            if len(workers) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None and len(workers) >= 2, "workers never started"
        time.sleep(1.0)  # let them pick up clips
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 20
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        assert not [w for w in workers if _alive(w)], "workers outlived the killed parent"
    finally:
        for w in workers:  # only the processes this test started
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


def test_zero_tracks_written_is_an_error_with_the_report(tmp_path, capsys):
    data = tmp_path / "in"
    data.mkdir()
    (data / "empty.mp4").write_bytes(b"")
    (data / "junk.mp4").write_bytes(b"not a video at all" * 100)
    out = tmp_path / "out"
    rc = prepare.main(["--source", "videos", "--input", str(data), "--output", str(out),
                       "--no_detect", "--workers", "1", "--no_progress"])
    assert rc == 1
    printed = capsys.readouterr()
    assert "0 tracks" in printed.out and "report.txt" in printed.out
    report = json.loads((out / "report.json").read_text())
    assert report["num_tracks"] == 0 and report["num_skipped"] == 2


def test_interrupted_synthetic_write_leaves_no_partial_files(tmp_path, monkeypatch):
    """A crash while writing a synthetic dataset leaves neither half-written shards under
    their final names nor a truncated manifest: files appear complete or not at all."""
    config = synthetic.SyntheticConfig(num_identities=2, tracks_per_identity=2, num_frames=4,
                                       face_size=16, seed=0)
    out = tmp_path / "syn"
    synthetic.write_dataset(config, str(out), num_shards=2)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    calls = {"n": 0}
    real = synthetic.records.encode_track

    def failing_encode(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic.records, "encode_track", failing_encode)
    with pytest.raises(RuntimeError, match="killed"):
        synthetic.write_dataset(config, str(out), num_shards=2)
    after = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    assert after == before  # the old complete dataset is untouched

    monkeypatch.setattr(synthetic.records, "encode_track", real)
    real_dump = json.dump

    def failing_dump(obj, fh, **kwargs):
        fh.write("{")
        raise RuntimeError("killed")

    monkeypatch.setattr(synthetic.json, "dump", failing_dump)
    with pytest.raises(RuntimeError, match="killed"):
        synthetic.write_dataset(config, str(out), num_shards=2)
    monkeypatch.setattr(synthetic.json, "dump", real_dump)
    assert json.loads((out / "manifest.json").read_text()) == json.loads(before["manifest.json"])


def test_interrupted_merge_keeps_the_previous_manifest(tmp_path, monkeypatch):
    """prepare's manifest and report are replaced only by complete files."""
    negatives.write_layout(negatives.simulated_specs(2, 1, 2), tmp_path, shard_seed=0,
                           tracks_per_shard=2)
    before = {n: (tmp_path / n).read_text() for n in ("manifest.json", "report.json",
                                                      "report.txt")}

    def failing_dump(obj, fh, **kwargs):
        fh.write("{")
        raise RuntimeError("killed")

    monkeypatch.setattr(prepare.json, "dump", failing_dump)
    with pytest.raises(RuntimeError, match="killed"):
        prepare.merge_reports(tmp_path)
    assert {n: (tmp_path / n).read_text() for n in before} == before
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]  # temp removed
