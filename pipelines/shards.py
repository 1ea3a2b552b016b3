"""Shard files: one name and one plan for every writer (`prepare`, `synthetic`, `voices`).

A dataset is `shard-{s:05d}-of-{S:05d}.tfrecord` files (plus `manifest.json`). The tracks are
put in a seeded random order before they are split into shards, so every shard is a random
sample of all identities and videos: shards of id-sorted tracks (one person each) would fill
training batches with several tracks of one person, false negatives of the identity task
(DESIGN.md "Negatives"; the reference trainer shuffles its whole file list every epoch,
joonson/syncnet_trainer DatasetLoader.py). TF-free.
"""

from __future__ import annotations

import re

from typing import Any, Sequence, TypeVar

import numpy as np

SHARD_PATTERN = "shard-*-of-*.tfrecord"
"""Glob of the shard files in a dataset folder."""

T = TypeVar("T")


def shard_name(index: int, total: int) -> str:
    """`shard-00001-of-00004.tfrecord`: shard `index` (from 0) of `total`."""
    return f"shard-{index:05d}-of-{total:05d}.tfrecord"


def sidecar_name(index: int, total: int) -> str:
    """`shard-00001-of-00004.json`: what `prepare` records about that shard."""
    return shard_name(index, total)[: -len(".tfrecord")] + ".json"


def shuffle(items: Sequence[T], seed: Any) -> list[T]:
    """`items` in the random order drawn from `seed` (anything `np.random.default_rng` takes:
    an int or a list of ints); None keeps their order."""
    items = list(items)
    if seed is None:
        return items
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in order]


def plan_shards(items: Sequence[T], seed: Any, *, tracks_per_shard: int | None = None,
                num_shards: int | None = None) -> list[list[T]]:
    """Puts `items` in a seeded random order (`shuffle`) and splits them into shards.

    Args:
      items: the tracks (any objects), in a canonical order (e.g. sorted by track id): the
        plan is a deterministic function of this order and `seed`.
      seed: of the order (see `shuffle`); None keeps the order of `items`.
      tracks_per_shard: consecutive chunks of this many (the last may hold fewer); the number
        of shards follows from the inputs (`prepare`).
      num_shards: dealt round-robin into exactly this many shards (at most len(items)):
        shard s holds items s, s + S, s + 2S, ... of the random order (`synthetic`).
        Give exactly one of `tracks_per_shard` and `num_shards`.
    Returns:
      The shards, each a list of items in the order they are written.
    """
    if (tracks_per_shard is None) == (num_shards is None):
        raise ValueError("give exactly one of tracks_per_shard and num_shards")
    items = shuffle(items, seed)
    if num_shards is not None:
        count = max(1, min(int(num_shards), len(items)))
        return [items[s::count] for s in range(count)]
    per = max(1, int(tracks_per_shard))
    return [items[i:i + per] for i in range(0, len(items), per)]


SHARD_NAME_RE = re.compile(r"shard-(\d{5})-of-(\d{5})\.(tfrecord|json)$")
"""A prepared shard's or sidecar's file name: groups index, total, ending."""


def shard_sets(names) -> dict[int, list[str]]:
    """{total: [names]} of the `shard-i-of-total` files among `names` (base names or paths):
    one key per shard set (a set is the shards of one preparation's plan)."""
    sets: dict[int, list[str]] = {}
    for name in names:
        match = SHARD_NAME_RE.search(str(name))
        if match:
            sets.setdefault(int(match.group(2)), []).append(str(name))
    return sets
