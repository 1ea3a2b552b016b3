"""Fault injection: training killed (SIGKILL) at many points, inside writes included, always
resumes to the right step with the weights of an uninterrupted run (tests/fault_driver.py)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import REPO_ROOT

EPOCHS, STEPS, EVERY = 3, 4, 1
TARGET = EPOCHS * STEPS

# (fault point, n-th visit) of each killed run, in order; "damage" truncates the newest backup
# between two runs (a disk fault after the write) and "external" is a SIGKILL from outside
# during the steps. `<x>.half`: the temp file is cut to half its size before the kill.
KILLS = [
    ("backup.weights.half", 2), ("backup.weights.written", 2), ("backup.weights.renamed", 2),
    ("backup.metadata.half", 1), ("backup.metadata.written", 1),
    ("backup.metadata.renamed", 1), ("damage", 0), ("epoch_checkpoint.half", 1),
    ("epoch_checkpoint.renamed", 1), ("backup.cleaned", 1), ("config.half", 1),
    ("external", 0),
]


def _driver(model_dir, fault=None, sleep=0.0):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    env.pop("AV_DISENTANGLE_FAULT", None)
    if fault:
        env["AV_DISENTANGLE_FAULT"] = fault
    cmd = [sys.executable, "tests/fault_driver.py", str(model_dir), str(EPOCHS), str(STEPS),
           str(EVERY), str(sleep)]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _expected_resume_step(model_dir) -> int:
    """Independent oracle: the newest generation in the metadata whose file is intact."""
    meta_path = model_dir / "backup" / "training_metadata.json"
    if not meta_path.exists():
        return 0
    for gen in json.loads(meta_path.read_text())["generations"]:
        path = model_dir / "backup" / gen["weights"]
        if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == gen["sha256"]:
            return gen["step"]
    raise AssertionError("no intact generation")


@pytest.mark.slow
def test_kills_at_every_write_point_resume_to_the_right_step(tmp_path):
    reference = _driver(tmp_path / "reference")
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]
    assert f"finished at step {TARGET} iterations {TARGET}" in out
    expected_weights = np.load(tmp_path / "reference" / "final_weights.npy")

    model_dir = tmp_path / "run"
    survived, damaged_warning_expected = 0, None
    for point, nth in KILLS:
        resume = _expected_resume_step(model_dir)
        if point == "damage":  # truncate the newest backup file: the resume must fall back
            meta = json.loads((model_dir / "backup" / "training_metadata.json").read_text())
            newest = model_dir / "backup" / meta["generations"][0]["weights"]
            newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
            damaged_warning_expected = f"backup {newest} is damaged"
            continue
        if point == "external":
            proc = _driver(model_dir, sleep=0.3)
            assert proc.stdout.readline().strip() == f"resumed at step {resume}"
            assert proc.stdout.readline().strip() == "training"
            time.sleep(1.0)
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=300)
            out = f"resumed at step {resume}\n" + out
        else:
            proc = _driver(model_dir, fault=f"{point}:{nth}")
            out, err = proc.communicate(timeout=300)
            assert f"fault injection: SIGKILL at {point}:{nth}" in err, err[-3000:]
        assert proc.returncode == -signal.SIGKILL, (point, err[-3000:])
        if not point.startswith("config."):  # config.json is written before the resume
            assert f"resumed at step {resume}\n" in out, (point, resume, out, err[-3000:])
        if damaged_warning_expected:
            assert damaged_warning_expected in err, err[-3000:]
            assert "falling back to the previous backup" in err
            damaged_warning_expected = None
        survived += 1
        assert _expected_resume_step(model_dir) >= resume  # no kill loses a finished backup

    final = _driver(model_dir)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err[-3000:]
    assert f"finished at step {TARGET} iterations {TARGET}" in out, out + err[-3000:]
    # Resumed exactly: same batches, same optimizer state -> the uninterrupted run's weights.
    np.testing.assert_allclose(np.load(model_dir / "final_weights.npy"), expected_weights,
                               rtol=1e-6, atol=1e-7)
    for epoch in range(1, EPOCHS + 1):
        with h5py.File(model_dir / "checkpoints" / f"epoch-{epoch:03d}.weights.h5", "r") as f:
            assert len(f.keys()) > 0
    assert json.loads((model_dir / "config.json").read_text())["epochs"] == EPOCHS
    assert not list(model_dir.rglob(".tmp-*")), "temp files left behind"
    kills = sum(point != "damage" for point, _ in KILLS)
    assert survived == kills
    print(f"fault injection: {kills} kills tried, {survived} survived")
