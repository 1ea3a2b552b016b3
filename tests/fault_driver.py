"""Fault-injection driver: a tiny Keras model trained with the same crash-safe state machinery
as train.py (atomic config, CrashSafeBackup, EpochCheckpoint, resumable_fit), fast enough to be
killed many times. Batches depend only on the global step, so an interrupted and resumed run
must end with exactly the weights of an uninterrupted one.

    python tests/fault_driver.py MODEL_DIR EPOCHS STEPS_PER_EPOCH EVERY_STEPS [SLEEP_S]
"""

import os
import sys
import time

from av_disentangle.logs import setup_logging

setup_logging()  # before TensorFlow loads: its start-up messages stay quiet

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from av_disentangle import checkpoints, files  # noqa: E402


class _Sleep(keras.callbacks.Callback):
    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(self.seconds)


def main() -> int:
    model_dir, epochs, steps_per_epoch, every = sys.argv[1], *map(int, sys.argv[2:5])
    sleep = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    checkpoints.prepare_run_dir(model_dir)
    files.write_json_atomic(os.path.join(model_dir, "config.json"),
                                  {"epochs": epochs, "steps_per_epoch": steps_per_epoch},
                                  fault="config")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    backup = checkpoints.CrashSafeBackup(os.path.join(model_dir, "backup"), steps_per_epoch,
                                         every_steps=every)
    backup.set_model(model)
    start = backup.restore()
    print(f"resumed at step {start}", flush=True)

    def make_dataset(step: int) -> tf.data.Dataset:
        def batch(i):  # batch i + 1 is the same whichever run trains it
            x = tf.random.stateless_normal([8, 4], tf.stack([i, tf.constant(1, tf.int64)]))
            return x, tf.reduce_sum(x, axis=1, keepdims=True)
        return tf.data.Dataset.range(step, 1 << 40).map(batch)

    callbacks = [checkpoints.EpochCheckpoint(os.path.join(model_dir, "checkpoints"))]
    if sleep:
        callbacks.append(_Sleep(sleep))
    print("training", flush=True)
    step = checkpoints.resumable_fit(model, make_dataset, start_step=start, epochs=epochs,
                                     steps_per_epoch=steps_per_epoch,
                                     callbacks=callbacks + [backup], verbose=0)
    weights = np.concatenate([w.ravel() for w in model.get_weights()])
    np.save(os.path.join(model_dir, "final_weights.npy"), weights)
    print(f"finished at step {step} iterations {int(model.optimizer.iterations.numpy())}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
