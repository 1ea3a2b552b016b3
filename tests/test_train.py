"""train.py end to end (subprocesses): default data, resume after kill, 2 CPU replicas, errors."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from harness import run_train, tiny_model
from av_disentangle import flags
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


def _scalars(logdir) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(run, tag) -> [(step, value)] of every scalar in the TensorBoard event files."""
    import tensorflow as tf

    found = {}
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        run = path.parent.relative_to(logdir).as_posix()
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                scalar = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") \
                    else value.simple_value
                found.setdefault((run, value.tag), []).append((event.step, scalar))
    return found


def _logged_keys(output: str) -> set[str]:
    line = [ln for ln in output.splitlines() if re.search(r"/step - .* - loss: ", ln)][-1]
    return set(re.findall(r" - (\w+): [-+\w.]+", line))


def _steps(scalars, run, tag) -> list[int]:
    return [step for step, _ in scalars.get((run, tag), [])]


@pytest.mark.slow
def test_quick_start_tensorboard_resume_kill_complete_and_config_check(random_shards, tmp_path):
    """One run directory through a user's life: the README quick start (TensorBoard shows every
    scalar), a resume with another model size (refused before anything is written), a longer
    run killed inside a backup write, its resume (exact step, step axis continues, a truncated
    shard skipped), and a rerun of the finished command (no training, no duplicate export)."""
    run = tmp_path / "run"
    quick = ["train.py", "--train_data", random_shards, "--model_dir", str(run),
             "--epochs", "1", "--steps_per_epoch", "5", "--no_export", *TINY]
    first = run_script(quick)
    assert first.returncode == 0, first.stderr[-3000:]
    keys = _logged_keys(first.stdout + first.stderr)
    assert {"loss", "content_acc", "identity_acc"} <= keys
    scalars = _scalars(run / "logs")
    for key in keys | {"learning_rate"}:
        assert _steps(scalars, "train", f"epoch_{key}") == [5], key
        assert _steps(scalars, "train", f"batch_{key}") == [5], key
    lr = scalars[("train", "epoch_learning_rate")][0][1]
    assert lr == pytest.approx(flags.TrainConfig().learning_rate, rel=1e-6)

    config_before = (run / "config.json").read_bytes()
    other = run_script(quick + ["--model_size", "small"])
    assert other.returncode == 2, other.stderr[-3000:]
    error = other.stderr.strip().splitlines()[-1]
    assert "Traceback" not in other.stderr and error.startswith("train.py: error: --model_dir")
    assert "model.trunk_dim: 16 -> 64" in error and "new --model_dir" in error
    assert (run / "config.json").read_bytes() == config_before

    data = tmp_path / "data"
    data.mkdir()
    for i, shard in enumerate(sorted(glob.glob(random_shards))):
        shutil.copy(shard, data / f"shard-{i}.tfrecord")
    bad = data / "shard-9.tfrecord"
    bad.write_bytes((data / "shard-0.tfrecord").read_bytes()[:100000])
    longer = ["train.py", "--train_data", str(data / "*.tfrecord"), "--model_dir", str(run),
              "--epochs", "3", "--steps_per_epoch", "5", "--checkpoint_every_steps", "1",
              "--skip_bad_shards", "--export_root", str(tmp_path / "exports"), *TINY]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "AV_DISENTANGLE_FAULT": "backup.weights.half:3"}  # the backup of step 8, midway
    killed = subprocess.run([sys.executable, *longer], cwd=REPO_ROOT, env=env, text=True,
                            capture_output=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "SIGKILL at backup.weights.half:3" in killed.stderr
    assert f"skipping bad shard {bad}: truncated" in killed.stderr
    assert "training on 2 of 3 --train_data shards (1 bad skipped)" in killed.stderr

    resumed = run_script(longer)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = resumed.stdout + resumed.stderr
    assert "resuming at step 7 (epoch 2, step 2 of 5)" in out
    assert "finishing epoch 2: steps 8..10" in out and "Epoch 3/3" in out
    assert "trained to step 15" in out
    scalars = _scalars(run / "logs")
    for key in keys | {"learning_rate"}:  # the step axis continues, nothing drawn twice
        assert _steps(scalars, "train", f"epoch_{key}") == [5, 10, 15], key
        assert _steps(scalars, "train", f"batch_{key}") == [5, 10, 15], key
    exports = tmp_path / "exports" / "av_disentangle"
    assert (exports / "1" / "saved_model.pb").is_file()

    again = run_script(longer)
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout + again.stderr
    assert "is complete: step 15 of 15" in out and "Epoch " not in out
    assert "not exporting a duplicate" in out
    assert sorted(os.listdir(exports)) == ["1"]


def test_resume_config_check_names_model_and_loss_keys_only():
    from av_disentangle.run import config_differences

    stored = {"model": {"face_size": 64, "trunk_dim": 64}, "loss": {"disentangle": "grl"},
              "train": {"optimizer": "sgd", "epochs": 3, "learning_rate": 0.1,
                        "batch_tracks": 8, "window_frames": 25},
              "flags": {"mixed_precision": "none", "verbose": 2}}
    same_model = {"model": {"face_size": 64, "trunk_dim": 64}, "loss": {"disentangle": "grl"},
                  "train": {"optimizer": "sgd", "epochs": 9, "learning_rate": 0.01,
                            "batch_tracks": 8, "window_frames": 25},
                  "flags": {"mixed_precision": "none", "verbose": 0}}
    assert config_differences(stored, same_model) == []
    other = {**same_model, "model": {"face_size": 32, "trunk_dim": 64},
             "loss": {"disentangle": "none"}, "flags": {"mixed_precision": "float16"}}
    assert config_differences(stored, other) == [
        "model.face_size: 64 -> 32", 'loss.disentangle: "grl" -> "none"',
        'flags.mixed_precision: "none" -> "float16"']


def test_a_run_started_with_the_earlier_sgd_default_is_refused_with_the_recipe_that_resumes_it(
        tmp_path):
    """Runs started before the default became Adam 3e-3 stored `train.optimizer: sgd`; resuming
    one with today's default must say how to resume it (`--recipe sgd`), and that must work."""
    from av_disentangle.run import check_model_dir

    def resolved(*argv):
        return flags.settings_record(flags.resolve_settings(flags.parse_flags(list(argv))))

    run_dir = tmp_path / "run"
    (run_dir / "backup").mkdir(parents=True)
    (run_dir / "backup" / "model.weights.h5").write_bytes(b"trained")
    old = resolved("--recipe", "sgd")
    old["flags"]["recipe"] = "default"  # what an earlier version wrote for its SGD default
    (run_dir / "config.json").write_text(json.dumps(old))
    with pytest.raises(ValueError) as e:
        check_model_dir(str(run_dir), resolved())
    assert 'train.optimizer: "sgd" -> "adam"' in str(e.value)
    assert "--recipe sgd" in str(e.value)
    check_model_dir(str(run_dir), resolved("--recipe", "sgd"))  # resumes
    check_model_dir(str(run_dir), resolved("--optimizer", "sgd"))


def test_mixed_precision_auto_resolves_by_machine_and_keeps_a_resumed_runs_precision():
    from av_disentangle.training import choose_mixed_precision

    amd = {"avx2", "avx512f", "avx512_bf16"}
    assert choose_mixed_precision("auto", None, False, amd)[0] == "bfloat16"
    assert choose_mixed_precision("auto", None, False, {"avx2", "amx_bf16"})[0] == "bfloat16"
    value, why = choose_mixed_precision("auto", None, False, {"avx2", "avx512f"})
    assert value == "none" and "no bf16 units" in why
    assert choose_mixed_precision("auto", None, True, amd)[0] == "none"  # a GPU: float32
    assert choose_mixed_precision("auto", "none", False, amd) == (
        "none", "auto: the precision this run was started with")
    assert choose_mixed_precision("auto", "float16", False, amd)[0] == "float16"
    for given in ("none", "float16", "bfloat16"):
        assert choose_mixed_precision(given, "none", True, set()) == (given, "as requested")


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


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    code, _, err = run_train(["--train_data", str(tmp_path / "none-*.tfrecord"),
                              "--model_dir", str(tmp_path / "run")], capsys)
    assert code == 2
    assert "no TFRecord files match" in err and "Traceback" not in err
    (tmp_path / "empty.tfrecord").write_bytes(b"")
    code, _, err = run_train(["--train_data", str(tmp_path / "*.tfrecord"),
                              "--model_dir", str(tmp_path / "run")], capsys)
    assert code == 2 and "are empty" in err
    code, _, err = run_train(["--disentangle", "fancy"], capsys)
    assert code == 2 and "invalid choice: 'fancy'" in err
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"epochs": 1, "no_such_flag": 3}))
    code, _, err = run_train(["--config", str(config)], capsys)
    assert code == 2 and "unknown keys ['no_such_flag']" in err


def test_config_file_values_are_checked_as_flags(tmp_path, capsys):
    config = tmp_path / "config.json"
    for values, message in [
            ({"epochs": "ten"}, "argument --epochs: invalid int value: 'ten'"),
            ({"epochs": 2.5}, "argument --epochs: invalid int value: '2.5'"),
            ({"disentangle": "fancy"}, "argument --disentangle: invalid choice: 'fancy'"),
            ({"verbose": 7}, "argument --verbose: invalid choice: 7"),
            ({"no_export": "yes"}, "no_export must be true or false"),
            ({"epochs": [1]}, "epochs must be a single int value")]:
        config.write_text(json.dumps(values))
        with pytest.raises(SystemExit) as exit_info:
            flags.parse_flags(["--config", str(config)])
        assert exit_info.value.code == 2, values
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"error: --config {config}: {message}" in error, error
    config.write_text(json.dumps({"epochs": 3, "learning_rate": "0.5", "no_export": True}))
    args = flags.parse_flags(["--config", str(config)])
    assert (args.epochs, args.learning_rate, args.no_export) == (3, 0.5, True)


def test_unusable_model_dir_and_bad_shards_are_one_line_errors(random_shards, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    data = tmp_path / "data"
    data.mkdir()
    good = sorted(glob.glob(random_shards))[0]
    shutil.copy(good, data / "shard-00000-of-00002.tfrecord")
    # a shard cut short by an interrupted copy, with the sidecar `prepare` wrote for it
    truncated = data / "shard-00001-of-00002.tfrecord"
    truncated.write_bytes(open(good, "rb").read()[:250000])
    (data / "shard-00001-of-00002.json").write_text(json.dumps({"num_tracks": 6}))
    common = ["--train_data", str(data / "*.tfrecord"), *TINY]
    for model_dir, message in [(blocker / "run", f"cannot create --model_dir {blocker / 'run'}"),
                               (tmp_path / "run", f"--train_data shard {truncated} is truncated")]:
        code, _, err = run_train(["--model_dir", str(model_dir), *common], capsys)
        assert code == 2, err[-3000:]
        error = err.strip().splitlines()[-1]
        assert error.startswith(f"train.py: error: {message}"), err[-3000:]
        assert "Traceback" not in err
    assert not (tmp_path / "run" / "config.json").exists()  # nothing written before the checks


@pytest.mark.slow
def test_data_too_small_for_one_batch_is_an_error_not_an_export(random_shards, tmp_path):
    # 12 tracks cannot make a batch of 16: Keras only warns that the input ran out, and the
    # untrained model used to be exported with exit status 0.
    model_dir = tmp_path / "run"
    result = run_script(["train.py", "--model_dir", str(model_dir), "--train_data",
                         random_shards, *TINY, "--batch_tracks", "16", "--epochs", "1",
                         "--steps_per_epoch", "2", "--export_dir", str(tmp_path / "export")])
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("train.py: error: the training data ran out after 0 of 2 steps"), error
    assert "Your input ran out of data" not in result.stderr + result.stdout  # Keras' warning
    assert f"{random_shards} makes no full batch" in error, error
    assert not (tmp_path / "export").exists()
    # Nothing was trained, so nothing that looks trained is kept (an epoch checkpoint would be
    # loaded by --init_from), and the corrected command is not refused as another run's.
    assert not list(model_dir.glob("backup/*.h5")) and not list(model_dir.glob("checkpoints/*"))
    result = run_script(["train.py", "--model_dir", str(model_dir), "--train_data",
                         random_shards, *TINY, "--batch_tracks", "4", "--epochs", "1",
                         "--steps_per_epoch", "2", "--no_export"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "never completed a step; starting it again" in result.stderr


def test_shard_check_finds_truncation_corruption_and_count_mismatch(random_shards, tmp_path):
    from pipelines.shard_check import check_shard

    good = sorted(glob.glob(random_shards))[0]
    data = open(good, "rb").read()
    assert check_shard(good) is None and check_shard(good, full=True) is None
    cut = tmp_path / "cut.tfrecord"
    cut.write_bytes(data[:len(data) // 2])
    assert check_shard(str(cut)).startswith("truncated: record")
    header = tmp_path / "header.tfrecord"
    header.write_bytes(data[:3] + b"\x7f" + data[4:])
    assert "fails its checksum" in check_shard(str(header))
    body = tmp_path / "body.tfrecord"
    body.write_bytes(data[:5000] + b"x" * 16 + data[5016:])
    assert check_shard(str(body)) is None  # headers intact: only the full check reads data
    assert check_shard(str(body), full=True).startswith("corrupt: a record fails its data")
    copy = tmp_path / "shard-00000-of-00001.tfrecord"
    copy.write_bytes(data)
    (tmp_path / "shard-00000-of-00001.json").write_text(json.dumps({"num_tracks": 7}))
    assert check_shard(str(copy)) == ("holds 6 records but its sidecar shard-00000-of-00001.json "
                                      "says 7 (truncated or replaced after `prepare` wrote it)")


def test_config_file_values_are_defaults_and_flags_override(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"epochs": 7, "disentangle": "grl", "learning_rate": 0.5}))
    args = flags.parse_flags(["--config", str(config), "--learning_rate", "0.01"])
    assert (args.epochs, args.disentangle, args.learning_rate) == (7, "grl", 0.01)
    with pytest.raises(ValueError, match="window_frames must be >= 10"):
        flags.resolve_configs(flags.parse_flags(["--window_frames", "4"]))


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
    assert "Invalid loss" not in exploding.stdout + exploding.stderr  # Keras' TerminateOnNaN
    # the message names what is kept (it promised a backup also where none existed)
    kept = model_dir / "backup" / "step-000000003.weights.h5"
    assert f"The last good state is step 3 in {kept}" in exploding.stderr, exploding.stderr
    fresh = run_script(["train.py", "--train_data", random_shards, "--model_dir",
                        str(tmp_path / "fresh"), "--steps_per_epoch", "3", "--no_export", *TINY,
                        "--epochs", "1", "--learning_rate", "1e30"])
    assert fresh.returncode == 3 and "No backup was written" in fresh.stderr, fresh.stderr
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


@pytest.mark.slow
def test_remote_paths_train_resume_and_export_on_ram_filesystem(random_shards, caplog):
    """`--train_data`, `--config`, `--model_dir` and `--export_dir` on a file system only
    tf.io.gfile reaches (TF's in-memory ram://, standing in for gs://): train 2 steps, resume
    to 4, export, load the export, and a rerun does not export a duplicate. In-process, since
    ram:// lives in this process's memory."""
    import tensorflow as tf

    from av_disentangle import run

    root = f"ram://test_train_{os.getpid()}"
    tf.io.gfile.makedirs(f"{root}/data")
    for shard in sorted(glob.glob(random_shards)):
        tf.io.gfile.copy(shard, f"{root}/data/{os.path.basename(shard)}")
    with tf.io.gfile.GFile(f"{root}/flags.json", "w") as f:
        json.dump({"model_size": "tiny", "window_frames": 15, "batch_tracks": 4,
                   "optimizer": "adam", "steps_per_epoch": 2}, f)
    model_dir, export_dir = f"{root}/run", f"{root}/exports/1"
    argv = ["--config", f"{root}/flags.json", "--train_data", f"{root}/data/*.tfrecord",
            "--model_dir", model_dir, "--verbose", "0"]

    def train(*more):
        return run.train(flags.resolve_settings(flags.parse_flags(argv + list(more))))

    def read_json(path):
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)

    assert train("--epochs", "1", "--no_export", "--mixed_precision", "none") == (None, False)
    assert read_json(f"{model_dir}/config.json")["model"]["trunk_dim"] == 16
    assert read_json(f"{model_dir}/backup/training_metadata.json")["step"] == 2
    assert tf.io.gfile.exists(f"{model_dir}/checkpoints/epoch-001.weights.h5")
    assert tf.io.gfile.glob(f"{model_dir}/logs/train/events.out.tfevents.*")
    assert not tf.io.gfile.glob(f"{model_dir}/*/.tmp-*") + tf.io.gfile.glob(f"{model_dir}/.tmp-*")

    caplog.set_level("INFO")
    assert train("--epochs", "2", "--export_dir", export_dir) == (export_dir, True)
    assert "resuming at step 2 (epoch 1 done)" in caplog.text and "trained to step 4" in caplog.text
    # The default --mixed_precision auto resumes in the precision the run was started with.
    assert "mixed precision: none (auto: the precision this run was started with)" in caplog.text
    assert read_json(f"{model_dir}/config.json")["flags"]["mixed_precision"] == "none"
    # A bf16 run leaves the caller's Keras policy as it found it (float32 here).
    import keras

    assert train("--epochs", "3", "--no_export", "--mixed_precision", "bfloat16",
                 "--model_dir", f"{root}/bf16") == (None, False)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert read_json(f"{model_dir}/backup/training_metadata.json")["step"] == 4
    assert read_json(f"{model_dir}/export.json")["export_dir"] == export_dir
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    wave = (0.1 * np.random.default_rng(0).normal(size=(1, 16000))).astype(np.float32)
    emb = serve(waveform=wave, sample_rate=tf.constant(16000))["embedding"].numpy()
    np.testing.assert_allclose(np.linalg.norm(emb), 1.0, rtol=1e-5)
    assert train("--epochs", "2", "--export_dir", export_dir) == (export_dir, False)
    assert "not exporting a duplicate" in caplog.text
    tf.io.gfile.rmtree(root)
    assert not os.path.exists("ram:")  # nothing went to a local folder named after the URL


_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING) [\w.]+: ")


@pytest.mark.slow
def test_normal_run_stderr_holds_only_log_lines_and_verbose_shows_more(random_shards, tmp_path):
    """No TensorFlow start-up noise, warnings or tracebacks on a normal run (stderr is our log
    lines only); `--verbose` alone adds DEBUG logging and the traceback of a user error."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    common = [sys.executable, "train.py", "--model_dir", str(tmp_path / "run"), *TINY]
    result = subprocess.run(common + ["--train_data", random_shards, "--epochs", "1",
                                      "--steps_per_epoch", "2", "--no_export"],
                            cwd=REPO_ROOT, env=env, text=True, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    noise = [line for line in result.stderr.splitlines() if not _LOG_LINE.match(line)]
    assert noise == [], result.stderr[-3000:]
    assert all(np.isfinite(_losses(result.stdout)))
    missing = common + ["--train_data", str(tmp_path / "none-*.tfrecord")]
    quiet = subprocess.run(missing, cwd=REPO_ROOT, env=env, text=True, capture_output=True,
                           timeout=600)
    assert quiet.returncode == 2 and quiet.stderr.count("\n") == 1, quiet.stderr[-3000:]
    verbose = subprocess.run(missing + ["--verbose"], cwd=REPO_ROOT, env=env, text=True,
                             capture_output=True, timeout=600)
    assert verbose.returncode == 2, verbose.stderr[-3000:]
    assert "Traceback" in verbose.stderr and " DEBUG " in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1] == quiet.stderr.strip()


def test_flags_are_the_config_dataclass_fields_with_their_defaults_and_choices(tmp_path):
    """Each default and choice list is written once, on the dataclass field: the flag has it,
    no flag means the dataclass default, and a --config value meets the same validation."""
    import dataclasses

    from av_disentangle.config import LossConfig, ModelConfig, TrainConfig
    from av_disentangle.supervised_config import SupervisedConfig

    actions = {a.dest: a for a in flags.build_parser()._actions}
    for cls in (flags.RunConfig, TrainConfig, LossConfig, SupervisedConfig):
        for f in dataclasses.fields(cls):
            assert actions[f.name].default == f.default, f.name
            assert actions[f.name].choices == f.metadata["choices"], f.name
    settings = flags.resolve_settings(flags.parse_flags([]))
    assert (settings.train, settings.loss, settings.model, settings.supervised) == (
        TrainConfig(), LossConfig(), ModelConfig.small(), None)
    assert flags.parse_flags(["--verbose"]).verbose == flags.DEBUG_VERBOSITY
    assert flags.parse_flags(["--verbose", "0"]).verbose == 0
    config = tmp_path / "flags.json"
    config.write_text(json.dumps({"window_frames": 4, "log_every_steps": 0}))
    for argv in (["--config", str(config)], ["--window_frames", "4"]):
        with pytest.raises(ValueError, match="window_frames must be >= 10"):
            flags.resolve_settings(flags.parse_flags(argv))
    with pytest.raises(ValueError, match="profile_steps must be 'a,b'"):
        flags.resolve_settings(flags.parse_flags(["--profile_steps", "3"]))


def test_flags_load_without_tensorflow():
    """`train.py --help` and flag errors stay fast, and quiet_tensorflow runs before TF loads."""
    code = ("import sys; from av_disentangle import flags; flags.parse_flags([]); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], text=True, capture_output=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_an_unusable_export_location_is_found_before_training(random_shards, tmp_path, capsys):
    """An unwritable --export_dir was found only after training (a NotFoundError traceback).
    (The tests run as root, whom permissions do not stop: the location here is below a
    file.)"""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    model_dir = tmp_path / "run"
    code, _, err = run_train(["--model_dir", str(model_dir), "--train_data", random_shards,
                              *TINY, "--epochs", "1", "--steps_per_epoch", "1",
                              "--export_dir", str(blocker / "exports" / "1")], capsys)
    assert code == 2, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line == (f"train.py: error: cannot export to {blocker / 'exports' / '1'} "
                    f"(--export_dir): {blocker} is not a folder"), line
    assert not (model_dir / "backup").exists()  # nothing trained


def test_a_failed_export_is_not_remembered(tmp_path, monkeypatch):
    """export.json used to keep a failed target, so a later plain rerun exported there."""
    from av_disentangle import checkpoints, run

    model = tiny_model()
    model_dir = str(tmp_path / "run")
    os.makedirs(model_dir)

    def failing(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run, "export_saved_model", failing)  # the name run.export calls
    kwargs = dict(model_dir=model_dir, step=5, export_dir=None,
                  export_root=str(tmp_path / "saved_models"), export_name="m")
    with pytest.raises(OSError):
        run.export(model, model.model_config, weights_sha256="abc", **kwargs)
    assert checkpoints.read_export_record(model_dir) is None
    checkpoints.write_export_record(model_dir, str(tmp_path / "old" / "1"), 3, "old")
    with pytest.raises(OSError):
        run.export(model, model.model_config, weights_sha256="abc", **kwargs)
    assert checkpoints.read_export_record(model_dir) == {
        "export_dir": str(tmp_path / "old" / "1"), "step": 3, "weights_sha256": "old"}


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_run_resumes(random_shards, tmp_path):
    """Training on a full disk printed 1,023 lines (226 h5py tracebacks) and ended in SIGSEGV.
    The disk fills (injected ENOSPC) while the second backup is written: one line naming the
    file and 'no space left', exit 2, and the rerun resumes from the first backup."""
    model_dir = tmp_path / "run"
    command = ["train.py", "--train_data", random_shards, "--model_dir", str(model_dir), *TINY,
               "--epochs", "2", "--steps_per_epoch", "2", "--no_export", "--verbose", "2"]
    result = run_script(command, env={"AV_DISENTANGLE_FAULT": "enospc:backup.weights.half:2"})
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "train.py: error" in line]
    assert len(errors) == 1 and len(result.stderr.splitlines()) < 10, result.stderr[-3000:]
    assert errors[0].startswith("train.py: error: no space left on device writing "
                                f"{model_dir / 'backup'}"), errors[0]
    assert "Traceback" not in result.stderr
    result = run_script(command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming at step 2" in result.stderr


def test_a_disk_too_full_for_a_checkpoint_is_refused_before_writing(tmp_path):
    """The weights file's size is known: a folder with less free space is refused before
    h5py starts writing (a real full disk: a 1 MB tmpfs; skipped where mounting one is not
    permitted)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        from av_disentangle import checkpoints
        from av_disentangle.config import LossConfig, ModelConfig
        from av_disentangle.errors import DiskFullError
        from av_disentangle.model import DisentangleModel

        model = DisentangleModel(ModelConfig.small(), LossConfig())  # ~1.7 MB of weights
        with pytest.raises(DiskFullError, match=r"no space left on device writing .*w\.weights"
                                                r"\.h5 \(1\.0 MB free, about \d\.\d MB needed\)"):
            checkpoints.save_weights_atomic(model, str(mount / "w.weights.h5"))
        assert os.listdir(mount) == []  # nothing half-written
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def _start_training(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(proc: subprocess.Popen, marker: str, timeout: float = 240) -> str:
    """The process's output up to the first line containing `marker`."""
    import time

    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    proc.kill()
    raise AssertionError(f"no {marker!r} in: {''.join(seen)[-2000:]}")


@pytest.mark.slow
def test_one_training_per_model_dir_and_ctrl_c_says_where_to_resume(random_shards, tmp_path):
    """Two trainings in one model_dir ran side by side (racing at export, every TensorBoard
    point twice); Ctrl-C printed a KeyboardInterrupt traceback."""
    model_dir = str(tmp_path / "run")
    args = ["--train_data", random_shards, "--model_dir", model_dir, *TINY, "--epochs", "500",
            "--steps_per_epoch", "1", "--no_export", "--verbose", "2"]
    first = _start_training(args)
    try:
        _wait_for(first, "Epoch 3/500")
        second = run_script(["train.py", *args])
        assert second.returncode == 2
        line = second.stderr.strip().splitlines()[-1]
        assert line == (f"train.py: error: --model_dir {model_dir} is in use by another "
                        f"process (pid {first.pid}, lock {model_dir}/.lock): wait for it to "
                        "finish, or use another --model_dir"), line
        first.send_signal(signal.SIGINT)
        out, _ = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130, out[-2000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-2000:]
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"train\.py: interrupted at step \d+; rerun the same command: it "
                        r"resumes from the backup of step \d+", last), last
    # the lock went with the process: the same command resumes
    resumed = run_script(["train.py", *args[:-7], "--epochs", "4", "--steps_per_epoch", "1",
                          "--no_export"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at step" in resumed.stderr or "is complete" in resumed.stderr


def test_help_texts_show_real_defaults_and_no_double_negative():
    help_text = run_script(["train.py", "--help"]).stdout
    assert "(default: None)" not in help_text and "--no-no_export" not in help_text
    assert "--no_export " in help_text and "--no-skip_bad_shards" in help_text
    prepare_help = run_script(["-m", "pipelines.prepare", "--help"]).stdout
    for flag, default in (("--face_size", "112"), ("--min_frames", "50"),
                          ("--tracks_per_shard", "64"), ("--shard_seed", "0"),
                          ("--log_level", "INFO"), ("--max_side", "720")):
        block = prepare_help.split(f"  {flag}", 1)[1].split("\n  --", 1)[0]
        assert f"(default: {default})" in " ".join(block.split()), (flag, block)


@pytest.mark.parametrize("command", [["-m", "pipelines.input", "--help"],
                                     ["-m", "pipelines.prepare", "--help"],
                                     ["-m", "pipelines.synthetic", "--help"],
                                     ["-m", "pipelines.data_service", "--help"]])
def test_pipelines_commands_keep_tensorflows_start_up_lines_off_stderr(command):
    """As a user runs them (no TF_CPP_MIN_LOG_LEVEL set): no oneDNN / cuInit lines."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, *command], cwd=REPO_ROOT, env=env, text=True,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == "", result.stderr[-2000:]


def test_recipe_reference_is_the_reference_schedule_and_model_and_flags_override_it(tmp_path):
    """`--recipe reference` = TrainConfig.syncnet_trainer() + ModelConfig.syncnet_trainer()
    (224 px, stride 2); precedence recipe < --config < explicit flags; recorded in the flags."""
    from av_disentangle.config import ModelConfig, TrainConfig

    def settings(*argv):
        return flags.resolve_settings(flags.parse_flags(list(argv)))

    ref = settings("--recipe", "reference")
    assert ref.train == TrainConfig.syncnet_trainer()
    assert ref.model == ModelConfig.syncnet_trainer()
    assert ref.model.face_size == 224 and ref.model.temporal_stride == 2
    assert ref.train.learning_rate == 1e-4 and ref.train.batch_tracks == 30
    assert ref.flags["recipe"] == "reference"
    default = settings()
    assert default.train == TrainConfig() and default.flags["recipe"] == "default"
    override = settings("--recipe", "reference", "--learning_rate", "0.003")
    assert override.train == TrainConfig.syncnet_trainer(learning_rate=0.003)
    config = tmp_path / "flags.json"
    config.write_text(json.dumps({"recipe": "reference", "batch_tracks": 12}))
    from_file = settings("--config", str(config))
    assert from_file.train == TrainConfig.syncnet_trainer(batch_tracks=12)
    assert settings("--config", str(config), "--batch_tracks", "6").train.batch_tracks == 6
    assert settings("--config", str(config), "--recipe", "default").train == TrainConfig(
        batch_tracks=12)
    small = settings("--recipe", "small_data")
    assert small.train == TrainConfig(optimizer="adam", learning_rate=3e-3, weight_decay=0.0)
    # The default recipe is what the evidence supports (BENCHMARKS.md, issue 26): Adam 3e-3.
    assert default.train == small.train
    old_default = settings("--recipe", "sgd")
    assert old_default.train == TrainConfig(optimizer="sgd", learning_rate=1e-3,
                                            weight_decay=1e-5)
    assert small.model == ModelConfig.small()
