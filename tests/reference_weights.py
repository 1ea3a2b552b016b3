"""Seeded weights for a joonson/syncnet_trainer state dict, from numpy alone.

The parity fixture (`tests/fixtures/make_syncnet_trainer_fixture.py`, run with PyTorch) loads
these values into the reference's own `SyncNet` and records what its code computes; the tests
(no PyTorch) regenerate the same values from the same seed and key shapes, so the fixture
holds no 55 MB of weights. BatchNorm running statistics are not drawn here: the generator
calibrates them on its inputs and stores them (they are small).
"""

from __future__ import annotations

import os
import zlib
from typing import Mapping

import numpy as np

SEED = 20261202


def seeded_value(key: str, shape: tuple[int, ...], seed: int = SEED) -> np.ndarray:
    """The value of one parameter: He-normal conv weights, BatchNorm gammas in [0.5, 1.5],
    small biases, and similarity scales/biases away from their 10 / -5 initialisation so that
    a swapped or dropped one shows."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    name = key.rsplit(".", 1)[-1]
    if key.startswith("__L__."):
        low, high = {"w": (6.0, 14.0), "b": (-8.0, -2.0)}[name[0]]
        return np.asarray(rng.uniform(low, high), np.float32)
    if name == "weight" and len(shape) > 1:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    if name == "weight":  # BatchNorm gamma
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if name == "bias":
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    raise ValueError(f"{key} is not a parameter")


def is_parameter(key: str) -> bool:
    """True for the keys `seeded_value` draws (not BatchNorm buffers or front-end buffers)."""
    return key.rsplit(".", 1)[-1] in ("weight", "bias") or key.startswith("__L__.")


def seeded_parameters(shapes: Mapping[str, tuple[int, ...]],
                      seed: int = SEED) -> dict[str, np.ndarray]:
    """{key: value} for every parameter key of `shapes` (key -> shape)."""
    return {k: seeded_value(k, tuple(s), seed) for k, s in shapes.items() if is_parameter(k)}


FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                       "syncnet_trainer_parity.npz")


def load_fixture(path: str = FIXTURE) -> dict[str, np.ndarray]:
    """The parity fixture's arrays (`tests/fixtures/make_syncnet_trainer_fixture.py`)."""
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def reference_state(ref: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The fixture's syncnet_trainer state dict: parameters regenerated from its seed, plus the
    BatchNorm running statistics and torchaudio front-end buffers it stores."""
    shapes = {k: tuple(int(x) for x in s.split(",") if x) for k, s in zip(ref["keys"],
                                                                          ref["shapes"])}
    state = seeded_parameters(shapes, int(ref["seed"]))
    state.update({k[len("bn/"):]: v for k, v in ref.items() if k.startswith("bn/")})
    state.update({k[len("buffer/"):]: v for k, v in ref.items() if k.startswith("buffer/")})
    return state
