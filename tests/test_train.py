"""train.py end to end (subprocesses): default data, resume after kill, 2 CPU replicas, errors."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO_ROOT, run_script

TINY = ["--model_size", "tiny", "--window_frames", "15", "--batch_tracks", "4",
        "--optimizer", "adam", "--verbose", "2"]


def _losses(output: str) -> list[float]:
    return [float(v) for v in re.findall(r" - loss: ([-+\w.]+)", output)]


@pytest.mark.slow
def test_default_run_trains_on_bundled_data_and_exports(tmp_path):
    export = tmp_path / "export" / "1"
    result = run_script(["train.py", "--model_dir", str(tmp_path / "run"), "--epochs", "1",
                         "--steps_per_epoch", "2", "--export_dir", str(export)])
    assert result.returncode == 0, result.stderr[-3000:]
    losses = _losses(result.stdout + result.stderr)
    assert losses and all(np.isfinite(losses))
    assert (export / "saved_model.pb").is_file()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert "data/prepared/samples_64" in config["train_data"]
    assert config["model"]["face_size"] == 64

    import tensorflow as tf

    serve = tf.saved_model.load(str(export)).signatures["serving_default"]
    wave = (0.1 * np.random.default_rng(0).normal(size=(1, 48000))).astype(np.float32)
    emb = serve(waveform=wave, sample_rate=tf.constant(16000))["embedding"].numpy()
    np.testing.assert_allclose(np.linalg.norm(emb), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_resume_training_after_kill(random_shards, tmp_path):
    model_dir = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--train_data", random_shards, "--model_dir",
           str(model_dir), "--epochs", "3", "--steps_per_epoch", "40", "--no_export", *TINY]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metadata = model_dir / "backup" / "training_metadata.json"
    deadline = time.time() + 300
    while not metadata.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert metadata.exists(), "no checkpoint was written before the kill"
    done_epochs = json.loads(metadata.read_text())["epoch"]
    assert done_epochs < 3, "training finished before it could be interrupted"

    result = run_script(cmd[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    epochs_run = [int(e) for e in re.findall(r"Epoch (\d+)/3", out)]
    assert epochs_run[0] == done_epochs + 1  # resumed, not restarted
    assert f"resuming after epoch {done_epochs}" in out
    assert "trained to step 120" in out  # the step counter continued from the checkpoint


@pytest.mark.slow
def test_mirrored_strategy_over_two_cpu_replicas(random_shards, tmp_path):
    result = run_script(["train.py", "--train_data", random_shards, "--model_dir",
                         str(tmp_path / "run"), "--epochs", "1", "--steps_per_epoch", "2",
                         "--cpu_replicas", "2", "--no_export", *TINY])
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "2 replica(s); 2 tracks per replica" in out
    losses = _losses(out)
    assert losses and all(np.isfinite(losses))


def test_bad_inputs_give_clear_errors(tmp_path):
    missing = run_script(["train.py", "--train_data", str(tmp_path / "none-*.tfrecord"),
                          "--model_dir", str(tmp_path / "run")])
    assert missing.returncode == 2
    assert "no TFRecord files match" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "empty.tfrecord").write_bytes(b"")
    empty = run_script(["train.py", "--train_data", str(tmp_path / "*.tfrecord"),
                        "--model_dir", str(tmp_path / "run")])
    assert empty.returncode == 2 and "are empty" in empty.stderr
    bad_choice = run_script(["train.py", "--disentangle", "fancy"])
    assert bad_choice.returncode == 2 and "invalid choice: 'fancy'" in bad_choice.stderr
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"epochs": 1, "no_such_flag": 3}))
    bad_config = run_script(["train.py", "--config", str(config)])
    assert bad_config.returncode == 2 and "unknown keys ['no_such_flag']" in bad_config.stderr


def test_config_file_values_are_defaults_and_flags_override(tmp_path):
    sys.path.insert(0, REPO_ROOT)
    import train

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"epochs": 7, "disentangle": "grl", "learning_rate": 0.5}))
    args = train.parse_flags(["--config", str(config), "--learning_rate", "0.01"])
    assert (args.epochs, args.disentangle, args.learning_rate) == (7, "grl", 0.01)
    with pytest.raises(ValueError, match="window_frames must be >= 10"):
        train.resolve_configs(train.parse_flags(["--window_frames", "4"]))


@pytest.mark.slow
def test_resume_after_nan_keeps_last_good_checkpoint(random_shards, tmp_path):
    model_dir = tmp_path / "run"
    common = ["train.py", "--train_data", random_shards, "--model_dir", str(model_dir),
              "--steps_per_epoch", "3", "--no_export", *TINY]
    good = run_script(common + ["--epochs", "1"])
    assert good.returncode == 0, good.stderr[-3000:]
    backup = model_dir / "backup" / "latest.weights.h5"
    saved = backup.read_bytes()
    exploding = run_script(common + ["--epochs", "3", "--learning_rate", "1e30"])
    assert exploding.returncode == 3
    assert "loss became NaN/Inf" in exploding.stderr and "Traceback" not in exploding.stderr
    assert json.loads((model_dir / "backup" / "training_metadata.json").read_text())["epoch"] == 1
    assert backup.read_bytes() == saved  # the last good state was not overwritten
    resumed = run_script(common + ["--epochs", "2"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = resumed.stdout + resumed.stderr
    assert "Epoch 2/2" in out and "Epoch 1/2" not in out and "trained to step 6" in out
    assert all(np.isfinite(_losses(out)))


@pytest.mark.slow
def test_profile_steps_and_mixed_precision(random_shards, tmp_path):
    model_dir = tmp_path / "run"
    result = run_script(["train.py", "--train_data", random_shards, "--model_dir",
                         str(model_dir), "--epochs", "1", "--steps_per_epoch", "4",
                         "--profile_steps", "2,3", "--mixed_precision", "bfloat16",
                         "--export_dir", str(tmp_path / "export"), *TINY])
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(np.isfinite(_losses(result.stdout + result.stderr)))
    traces = list((model_dir / "logs").rglob("*.xplane.pb"))
    assert traces, "no profiler trace written"

    import tensorflow as tf

    serve = tf.saved_model.load(str(tmp_path / "export")).signatures["serving_default"]
    emb = serve(waveform=np.zeros((1, 16000), np.float32), sample_rate=tf.constant(16000))
    assert emb["embedding"].dtype == tf.float32
