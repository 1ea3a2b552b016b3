"""Deliberately broken converters: each must make tests/test_parity.py fail.

    python -m benchmarks.parity_mutations            # every mutation, a table of failures

Each mutation is applied by this module loaded as a pytest plugin in a subprocess
(`-p benchmarks.parity_mutations` with PARITY_MUTATION=<name>), which patches
`av_disentangle.convert` before the tests import it. A mutation that no test catches is
printed as `NOT CAUGHT` and makes the exit status 1.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np

MUTATIONS = ("swap_audio_heads", "face_channel_major", "no_bn_stats", "audio_time_mel_swapped",
             "swap_similarities", "rgb_faces", "centered_front_end", "normalized_steps")


def _apply(mode: str) -> None:
    """Patches `av_disentangle.convert` with the mutation `mode`."""
    import av_disentangle.convert as c

    keras_weights, config_from_state = c.keras_weights, c.config_from_state

    def patched_weights(change):
        def weights(state):
            layers = keras_weights(state)
            change(layers)
            return layers
        c.keras_weights = weights

    def patched_config(**changes):
        c.config_from_state = lambda *a, **k: dataclasses.replace(config_from_state(*a, **k),
                                                                  **changes)

    def no_bn_stats(layers):
        for name, values in layers.items():
            if name.endswith("_bn"):
                values[2], values[3] = np.zeros_like(values[2]), np.ones_like(values[3])

    def time_mel_swapped(layers):  # conv2's 5x5 kernel: a swap that keeps the shape
        layers["audio_conv2"][0] = layers["audio_conv2"][0].transpose(1, 0, 2, 3).copy()

    def channel_major(w):
        out, inputs, kt, kh, kw = w.shape
        return w.transpose(3, 4, 1, 2, 0).reshape(kh, kw, kt * inputs, out)

    if mode == "swap_audio_heads":
        c._HEADS = {**c._HEADS, "netfcaud": "audio_identity", "netfcspk": "audio_content"}
    elif mode == "face_channel_major":
        c._face_kernel = channel_major
    elif mode == "no_bn_stats":
        patched_weights(no_bn_stats)
    elif mode == "audio_time_mel_swapped":
        patched_weights(time_mel_swapped)
    elif mode == "swap_similarities":
        c._SIMILARITIES = {"content_similarity": ("__L__.wI", "__L__.bI"),
                           "identity_similarity": ("__L__.wC", "__L__.bC")}
    elif mode == "rgb_faces":
        patched_config(face_pixels="rgb_unit")
    elif mode == "centered_front_end":
        patched_config(front_end="centered")
    elif mode == "normalized_steps":
        patched_config(normalize_steps=True)
    else:
        raise ValueError(f"unknown mutation {mode!r}; known: {MUTATIONS}")

if os.environ.get("PARITY_MUTATION"):  # loaded as a pytest plugin
    _apply(os.environ["PARITY_MUTATION"])


def main() -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    uncaught = 0
    for mode in MUTATIONS:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "benchmarks.parity_mutations",
             "-p", "no:cacheprovider", "tests/test_parity.py"], cwd=root, capture_output=True,
            text=True, env={**os.environ, "PARITY_MUTATION": mode})
        failed = [line.split("::")[1].split(" ")[0] for line in run.stdout.splitlines()
                  if line.startswith("FAILED")]
        uncaught += not failed
        print(f"{mode:24s} {len(failed):2d} failing: {', '.join(failed) or 'NOT CAUGHT'}",
              flush=True)
    return 1 if uncaught else 0


if __name__ == "__main__":
    sys.exit(main())
