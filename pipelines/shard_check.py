"""Validation of TFRecord shards before training: structure, checksums, sidecar counts.

TFRecord layout (tensorflow/core/lib/io/record_writer.cc): for each record
  uint64 length (little endian) | uint32 masked CRC-32C of length | data | uint32 masked CRC of data
The quick check walks the record headers only (12 bytes read per record; a truncated file or a
damaged header is found without reading the data); `full=True` also verifies every data
checksum, reading the whole shard. A shard written by `pipelines.prepare` has a sidecar
`shard-....json` beside it whose `num_records` (`num_tracks` before data format version 2, when a
record was a whole track) must equal the number of records.
"""

from __future__ import annotations

import os
import re
import struct

import tensorflow as tf

from av_disentangle.files import read_json


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC (tensorflow/core/lib/hash/crc32c.h, `Mask`)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def count_records(path: str) -> int:
    """Records in a TFRecord file, walking the headers. ValueError saying what is wrong."""
    size = tf.io.gfile.stat(path).length
    count, pos = 0, 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while pos < size:
            header = f.read(12)
            if len(header) < 12:
                raise ValueError(f"truncated: the file ends inside the header of record "
                                 f"{count + 1} (byte {pos} of {size})")
            (length,) = struct.unpack("<Q", header[:8])
            (length_crc,) = struct.unpack("<I", header[8:])
            if masked_crc32c(header[:8]) != length_crc:
                raise ValueError(f"corrupt: the header of record {count + 1} (byte {pos}) "
                                 "fails its checksum")
            end = pos + 12 + length + 4
            if end > size:
                raise ValueError(f"truncated: record {count + 1} needs {end} bytes, the file "
                                 f"has {size}")
            f.seek(end)
            pos = end
            count += 1
    return count


def _verify_data(path: str) -> int:
    """Reads every record with TensorFlow, which checks each data CRC."""
    try:
        return int(tf.data.TFRecordDataset(path).reduce(
            tf.constant(0, tf.int64), lambda n, _: n + 1).numpy())
    except tf.errors.DataLossError as e:
        found = re.search(r"corrupted record at \d+", e.message)
        raise ValueError("corrupt: a record fails its data checksum"
                         + (f" ({found.group(0)})" if found else "")) from e


def sidecar_path(path: str) -> str:
    """`shard-00000-of-00004.tfrecord` -> `shard-00000-of-00004.json` (pipelines/prepare.py)."""
    return path[: -len(".tfrecord")] + ".json" if path.endswith(".tfrecord") else path + ".json"


def check_shard(path: str, full: bool = False) -> str | None:
    """What is wrong with one shard, or None."""
    try:
        count = count_records(path)
        if full:
            count = _verify_data(path)
    except ValueError as e:
        return str(e)
    sidecar = sidecar_path(path)
    if tf.io.gfile.exists(sidecar):
        try:
            data = read_json(sidecar)
            expected = data.get("num_records", data["num_tracks"])  # records: chunks (v2)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            return f"its sidecar {os.path.basename(sidecar)} is unreadable ({e})"
        if count != expected:
            return (f"holds {count} records but its sidecar {os.path.basename(sidecar)} says "
                    f"{expected} (truncated or replaced after `prepare` wrote it)")
    return None


def check_shards(files: list[str], full: bool = False) -> list[tuple[str, str]]:
    """(file, problem) for every bad shard among `files`."""
    bad = []
    for path in files:
        problem = check_shard(path, full)
        if problem is not None:
            bad.append((path, problem))
    return bad
