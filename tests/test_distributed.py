"""Distribution: 2-process MultiWorkerMirroredStrategy on 127.0.0.1, gathered negatives."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from av_disentangle import compat
from av_disentangle.training import TrainConfig, make_optimizer
from conftest import REPO_ROOT, run_script
from harness import tiny_model


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _trainable_weights(path) -> list[np.ndarray]:
    """Trainable weights of a tiny DisentangleModel backup. BatchNorm moving statistics are
    left out: like unsynchronised BN on several GPUs, each worker keeps its own."""
    model = tiny_model()
    model.compile(optimizer=make_optimizer(TrainConfig()))  # train.py's optimizer: same variables
    model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    return [v.numpy() for v in model.trainable_variables]


@pytest.mark.slow
def test_multiworker_two_processes_finish_with_identical_weights(random_shards, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    model_dir = tmp_path / "run"
    procs = []
    try:
        for index in range(2):
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                   "TF_CONFIG": json.dumps({"cluster": cluster,
                                            "task": {"type": "worker", "index": index}})}
            log = open(tmp_path / f"worker{index}.log", "w")
            procs.append(subprocess.Popen(
                [sys.executable, "train.py", "--train_data", random_shards, "--model_dir",
                 str(model_dir), "--epochs", "2", "--steps_per_epoch", "3", "--model_size",
                 "tiny", "--window_frames", "15", "--batch_tracks", "4", "--verbose", "2",
                 "--export_dir", str(tmp_path / "export")],
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        codes = [p.wait(timeout=400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert all("2 replica(s); 2 tracks per replica" in log for log in logs)
    assert all("trained to step 6" in log for log in logs)
    chief = _trainable_weights(model_dir / "backup" / "latest.weights.h5")
    other = _trainable_weights(model_dir / "backup_worker_1" / "latest.weights.h5")
    initial = _trainable_weights_of_fresh_model()
    assert len(chief) == len(other) == len(initial) > 40
    assert sum(not np.array_equal(c, i) for c, i in zip(chief, initial)) > 40  # it trained
    for index, (c, o) in enumerate(zip(chief, other)):
        np.testing.assert_array_equal(c, o, err_msg=f"trainable variable {index}")
    assert (tmp_path / "export" / "saved_model.pb").is_file()  # written once, by the chief
    assert "exported SavedModel" in logs[0] and "exported SavedModel" not in logs[1]


def _trainable_weights_of_fresh_model() -> list[np.ndarray]:
    keras.utils.set_random_seed(0)  # train.py's --seed 0
    return [v.numpy() for v in tiny_model()
            .trainable_variables]


GATHER_CHECK = textwrap.dedent("""
    import sys, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    from av_disentangle.config import LossConfig, ModelConfig
    from av_disentangle.model import DisentangleModel
    from pipelines.input import InputConfig, make_dataset
    batch = next(iter(make_dataset(InputConfig(sys.argv[1], batch_tracks=6, window_frames=15,
                                               face_size=64, seed=0))))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    result = {}
    for gather in (True, False):
        with strategy.scope():
            model = DisentangleModel(ModelConfig.tiny(), LossConfig(gather_negatives=gather,
                                     symmetric_identity=True))
        model.set_weights(weights) if not gather else None
        weights = model.get_weights()
        single, _, _ = model.compute_losses(batch, training=False)
        per_replica = strategy.experimental_distribute_values_from_function(
            lambda ctx: {k: v[3 * ctx.replica_id_in_sync_group:3 * ctx.replica_id_in_sync_group + 3]
                         for k, v in batch.items()})
        values = strategy.run(lambda b: model.compute_losses(b, training=False)[0],
                              args=(per_replica,))
        for key in ("identity_loss", "identity_acc", "content_loss"):
            distributed = strategy.reduce("MEAN", values[key], axis=None)
            result[(gather, key)] = (float(single[key]), float(distributed))
    for (gather, key), (single, distributed) in sorted(result.items()):
        print(f"{'gather' if gather else 'local'} {key} {single:.7f} {distributed:.7f}")
""")


@pytest.mark.slow
def test_gathered_negatives_equal_single_replica_loss_on_global_batch(random_shards):
    result = run_script(["-c", GATHER_CHECK, random_shards], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {}
    for line in result.stdout.splitlines():
        mode, key, single, distributed = line.split()
        rows[(mode, key)] = (float(single), float(distributed))
    single, distributed = rows[("gather", "identity_loss")]
    np.testing.assert_allclose(distributed, single, rtol=1e-5)
    np.testing.assert_allclose(*rows[("gather", "identity_acc")], rtol=1e-6)
    np.testing.assert_allclose(*rows[("gather", "content_loss")], rtol=1e-5)  # within-track
    # Without gathering each replica sees 3 of the 6 voices: a different (easier) task.
    local_single, local_distributed = rows[("local", "identity_loss")]
    assert local_distributed < local_single - 1e-3


ONE_STEP_CHECK = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]  # before TF initialises its devices
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    from av_disentangle.config import LossConfig, ModelConfig
    from av_disentangle.model import DisentangleModel
    from av_disentangle.training import TrainConfig, make_optimizer
    mode, frames = sys.argv[1], 9
    size = ModelConfig.tiny().face_size
    rng = np.random.default_rng(0)
    half = {"frames": rng.integers(0, 256, (2, frames, size, size, 3), dtype=np.uint8),
            "audio": (0.1 * rng.normal(size=(2, frames * 640))).astype(np.float32),
            "audio_2": (0.1 * rng.normal(size=(2, frames * 640))).astype(np.float32)}
    batch = {k: np.concatenate([v, v]) for k, v in half.items()}  # identical halves
    deltas = {}
    for name, devices in (("one", ["/cpu:0"]), ("two", ["/cpu:0", "/cpu:1"])):
        strategy = tf.distribute.MirroredStrategy(devices)
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = DisentangleModel(ModelConfig.tiny(), LossConfig(
                disentangle=mode, gather_negatives=True, symmetric_identity=True,
                face_identity_pooling="mean"))
            model.compile(optimizer=make_optimizer(
                TrainConfig(optimizer="sgd", learning_rate=0.05)))
            model.optimizer.build(model.trainable_variables)
        before = [v.numpy() for v in model.trainable_variables]
        history = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, steps_per_epoch=1,
                            verbose=0).history
        assert model.distribute_strategy.num_replicas_in_sync == len(devices)
        deltas[name] = [v.numpy() - b for v, b in zip(model.trainable_variables, before)]
        deltas[name + "_loss"] = history["loss"][-1]
    np.savez(sys.argv[2], **{f"{k}_{i}": d for k in ("one", "two")
                             for i, d in enumerate(deltas[k])})
    print(json.dumps({"one_loss": deltas["one_loss"], "two_loss": deltas["two_loss"],
                      "variables": len(deltas["one"])}))
""")


@pytest.mark.slow
# `confusion` covers every term of `none` plus the confusion terms, whose identity-task part
# must use the gathered voices too (it did not before: 0.5 * log 2 off per replica).
@pytest.mark.parametrize("mode", ["confusion"])
def test_one_mirrored_step_on_two_replicas_equals_one_device(tmp_path, mode):
    """One `fit` step with gathered negatives on 2 logical CPUs moves every trainable weight
    as one device does on the same global batch of 4 tracks (train.py's SGD, weight decay
    included). This checks the `/ replicas` loss scaling (Keras sums the replicas' gradients)
    and the gradient of the all-gathered identity embeddings.

    BatchNorm is per replica under MirroredStrategy (no SyncBatchNorm), so each replica
    normalises with the statistics of its own half; with any two different halves the batch
    statistics, hence the losses, differ from one device's. The global batch is therefore two
    IDENTICAL halves [X, X]: each replica's statistics are those of X, as are the global ones,
    and every other term (within-track content, identity over all 4 gathered voices, tracks
    b and b + 2 being duplicates in both settings) is the same function of the weights. The
    time-mean face identity avoids per-replica random draws."""
    out = tmp_path / "deltas.npz"
    result = run_script(["-c", ONE_STEP_CHECK, mode, str(out)], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(summary["two_loss"], summary["one_loss"], rtol=1e-5)
    deltas = np.load(out)
    ones = [deltas[f"one_{i}"] for i in range(summary["variables"])]
    twos = [deltas[f"two_{i}"] for i in range(summary["variables"])]
    # Conv biases before a BatchNorm get only rounding noise (~1e-7): BN removes the mean.
    noise = 1e-4 * max(float(np.abs(d).max()) for d in ones)
    assert sum(float(np.abs(d).max()) > 100 * noise for d in ones) > 40  # the step trained
    for i, (one, two) in enumerate(zip(ones, twos)):
        np.testing.assert_allclose(two, one, rtol=1e-3, atol=noise,
                                   err_msg=f"trainable variable {i}")


MODES_GATHER_CHECK = textwrap.dedent("""
    import json
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    from av_disentangle.config import DISENTANGLE_MODES, LossConfig, ModelConfig
    from av_disentangle.model import DisentangleModel
    size, frames = ModelConfig.tiny().face_size, 9
    rng = np.random.default_rng(0)
    batch = {"frames": rng.integers(0, 256, (4, frames, size, size, 3), dtype=np.uint8),
             "audio": (0.1 * rng.normal(size=(4, frames * 640))).astype(np.float32),
             "audio_2": (0.1 * rng.normal(size=(4, frames * 640))).astype(np.float32)}
    batch = {k: tf.constant(v) for k, v in batch.items()}
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: {k: v[2 * ctx.replica_id_in_sync_group:2 * ctx.replica_id_in_sync_group + 2]
                     for k, v in batch.items()})
    rows = {}
    for mode in DISENTANGLE_MODES:
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = DisentangleModel(ModelConfig.tiny(), LossConfig(
                disentangle=mode, gather_negatives=True, symmetric_identity=True))
        single = model.compute_losses(batch, training=False).values
        values = strategy.run(lambda b: model.compute_losses(b, training=False).values,
                              args=(per_replica,))
        rows[mode] = {k: [float(single[k]), float(strategy.reduce("MEAN", values[k], axis=None))]
                      for k in single}
    print(json.dumps(rows))
""")


@pytest.mark.slow
def test_gathered_negatives_give_every_mode_the_single_device_terms():
    """Evaluation mode (no BatchNorm batch statistics, time-mean face identity), 2 replicas of
    2 tracks each with gathered negatives: every logged term of every mode - the identity loss
    and, with the same all-gathered negatives, the identity-task confusion, its auxiliary-head
    CE (`adversarial`) and leak accuracy - equals one device's on the global batch of 4."""
    result = run_script(["-c", MODES_GATHER_CHECK], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(rows) == {"none", "confusion", "adversarial", "grl"}
    for mode, values in rows.items():
        assert "confusion_identity" in values and "aux_loss" in values
        for key, (single, distributed) in values.items():
            np.testing.assert_allclose(distributed, single, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{mode} {key}")
    assert rows["confusion"]["confusion_identity"][0] > 0.0
    assert rows["adversarial"]["aux_loss"][0] > 0.0


def test_compat_is_written_for_the_pinned_keras_and_warns_on_another():
    setup_cfg = open(os.path.join(REPO_ROOT, "setup.cfg")).read()
    assert f"keras=={compat.KERAS_VERSION}" in setup_cfg
    assert compat.check_keras_version(compat.KERAS_VERSION)
    with pytest.warns(RuntimeWarning, match="keras==9.0.0 is installed"):
        assert not compat.check_keras_version("9.0.0")
