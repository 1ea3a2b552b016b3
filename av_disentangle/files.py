"""Files written as state, and media files found on disk: one implementation of each.

Atomic writes: every file is written to a hidden temp name beside its target, flushed to disk
(fsync) and renamed over the target (`os.replace`), so a file under its final name is always
complete - a reader never sees a half-written manifest, shard or checkpoint, and a killed
writer leaves at most a `.tmp-*` file that `remove_stale_temps` clears.

Temp names: `.tmp-<pid>-<name>.partial` - hidden, starting with `.tmp-` (one glob finds them
all) and ending in `.partial`, so a half-written `shard-*.tfrecord` never matches a user's
`*.tfrecord` glob (`tf.io.gfile.glob` does match hidden files). Keras' `save_weights` insists
on the `.weights.h5` ending, so `write_atomic_with(..., keep_suffix=True)` uses
`.tmp-<pid>-<name>` for it.

Remote paths (`gs://...`, `ram://...`: any string containing "://") are written with
`tf.io.gfile` (temp file, then `tf.io.gfile.rename(overwrite=True)`); TensorFlow is imported
only then, so local use stays TF-free.

Fault injection (tests only): `AV_DISENTANGLE_FAULT=<point>:<n>` kills the process with SIGKILL
the n-th time it reaches `<point>` (`fault_point`); a write given `fault="x"` passes the points
`x.half` (temp file cut to half its size, the state a kill in the middle of the write leaves),
`x.written` (complete, before the rename) and `x.renamed` (after it). Used by
tests/test_faults.py through tests/fault_driver.py.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import pathlib
import shutil
import signal
import sys
from typing import IO, Any, Callable, Iterable, Sequence

from av_disentangle.errors import DiskFullError, UserError, is_disk_full

log = logging.getLogger(__name__)

FAULT_ENV = "AV_DISENTANGLE_FAULT"
TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".partial"

PathLike = str | os.PathLike


# === Fault injection (tests) ===
_fault_counts: collections.Counter = collections.Counter()


def fault_point(name: str, path: PathLike | None = None) -> None:
    """Kills this process (SIGKILL) if `AV_DISENTANGLE_FAULT` names `name` and this is its n-th
    visit. With `path`, the file is first cut to half its size (a write killed midway).
    `AV_DISENTANGLE_FAULT=enospc:<name>:<n>` raises the OSError of a full disk there instead."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, nth = spec.rpartition(":")
    disk_full = point.startswith("enospc:")  # `enospc:<point>:<n>`: the disk fills there
    if disk_full:
        point = point[len("enospc:"):]
    if point != name:
        return
    _fault_counts[name] += 1
    if _fault_counts[name] != int(nth):
        return
    if disk_full:
        sys.stderr.write(f"fault injection: ENOSPC at {name}:{nth}\n")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path) if path else None)
    if path is not None and os.path.isfile(path):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
            os.fsync(f.fileno())
    sys.stderr.write(f"fault injection: SIGKILL at {name}:{nth}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


# === Atomic writes ===
def is_remote(path: PathLike) -> bool:
    """True for a URL-style path (`gs://bucket/x`, `ram://x`) that only `tf.io.gfile` can write."""
    return "://" in str(path)


def temp_path(path: PathLike, keep_suffix: bool = False) -> str:
    """Hidden temp name beside `path`: `.tmp-<pid>-<name>.partial`, or `.tmp-<pid>-<name>`
    with `keep_suffix` (for writers that check the ending, like Keras' `.weights.h5`)."""
    folder, name = os.path.split(str(path))
    return os.path.join(folder, f"{TEMP_PREFIX}{os.getpid()}-{name}"
                        f"{'' if keep_suffix else TEMP_SUFFIX}")


def _fsync_dir(folder: str) -> None:
    """Makes a rename in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_all_atomic(paths: Sequence[PathLike], write: Callable[[list[str]], Any], *,
                     fault: str | None = None, keep_suffix: bool = False,
                     required_bytes: int = 0) -> None:
    """Calls `write(temps)` to create one temp file beside each of `paths`, flushes them to disk
    and only then renames them to `paths`, in order; every temp file is removed if anything
    fails. For a set of files that belong together (a dataset's shards and then its manifest):
    an interruption before the renames leaves the previous set untouched.

    Args:
      paths: the final files; local or remote (see the module docstring).
      write: writes the complete files to the temp paths it is given, in the order of `paths`.
      fault: prefix of the fault points `<fault>.half` (cuts the first temp file),
        `.written`, `.renamed` (tests).
      keep_suffix: keep each path's ending on its temp name (see `temp_path`).
      required_bytes: the size the files will need: a local folder with less free space is a
        `DiskFullError` before anything is written.

    Raises:
      DiskFullError: no space left (found before the write, or met during it: the temp files
        are removed and the previous files are untouched).
    """
    paths = [str(p) for p in paths]
    temps = [temp_path(p, keep_suffix) for p in paths]
    if required_bytes and not any(is_remote(p) for p in paths):
        folder = os.path.dirname(os.path.abspath(paths[0]))
        free = shutil.disk_usage(folder).free
        if free < required_bytes:  # before writing: a half-written h5 file floods stderr
            raise DiskFullError(paths[0], f" ({free / 1e6:.1f} MB free, about "
                                          f"{required_bytes / 1e6:.1f} MB needed)")
    try:
        _write_all(paths, temps, write, fault)
    except DiskFullError:
        raise
    except Exception as err:
        if is_disk_full(err):
            raise DiskFullError(paths[0]) from err
        raise


def _write_all(paths: list[str], temps: list[str], write: Callable[[list[str]], Any],
               fault: str | None) -> None:
    if any(is_remote(p) for p in paths):
        import tensorflow as tf  # only remote file systems need TensorFlow

        try:
            write(temps)
            for tmp, path in zip(temps, paths):
                tf.io.gfile.rename(tmp, path, overwrite=True)
        finally:
            for tmp in temps:
                if tf.io.gfile.exists(tmp):
                    tf.io.gfile.remove(tmp)
        return
    try:
        write(temps)
        if fault:
            fault_point(f"{fault}.half", temps[0])
        for tmp in temps:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if fault:
            fault_point(f"{fault}.written")
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.remove(tmp)
    for folder in sorted({os.path.dirname(p) for p in paths}):
        _fsync_dir(folder)
    if fault:
        fault_point(f"{fault}.renamed")


def write_atomic_with(path: PathLike, write: Callable[[str], Any], *, fault: str | None = None,
                      keep_suffix: bool = False, required_bytes: int = 0) -> None:
    """Calls `write(temp)` to create a temp file beside `path`, flushes it to disk and renames
    it to `path`; the temp file is removed if anything fails.

    Args:
      path: the final file; local or remote (see the module docstring).
      write: writes the complete file to the path it is given (e.g. `model.save_weights`).
      fault: prefix of the fault points `<fault>.half`, `.written`, `.renamed` (tests).
      keep_suffix: keep `path`'s ending on the temp name (see `temp_path`).
      required_bytes: see `write_all_atomic`.
    """
    write_all_atomic([path], lambda temps: write(temps[0]), fault=fault, keep_suffix=keep_suffix,
                     required_bytes=required_bytes)


def _open(path: str, mode: str) -> IO:
    """`open`, or `tf.io.gfile.GFile` for a remote path."""
    if is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.GFile(path, mode)
    return open(path, mode, encoding=None if "b" in mode else "utf-8")


def write_atomic(path: PathLike, data: bytes, *, fault: str | None = None) -> None:
    """Writes `data` to `path` atomically (temp file + fsync + rename)."""
    def write(tmp: str) -> None:
        with _open(tmp, "wb") as f:
            f.write(data)

    write_atomic_with(path, write, fault=fault)


def write_text_atomic(path: PathLike, text: str, *, fault: str | None = None) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    write_atomic(path, text.encode("utf-8"), fault=fault)


def write_json_atomic(path: PathLike, obj: Any, *, indent: int = 2,
                      fault: str | None = None) -> None:
    """Writes `obj` as JSON (UTF-8, `indent`) to `path` atomically."""
    def write(tmp: str) -> None:
        with _open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)

    write_atomic_with(path, write, fault=fault)


def read_json(path: PathLike, *, missing_ok: bool = False,
              unreadable_ok: bool = False) -> dict[str, Any] | None:
    """The JSON object in `path`, local or remote (through `tf.io.gfile`, imported only then).

    The one reader of the JSON files written as state (configs, manifests, sidecars, records of
    a run); callers word the error for their flag or file.

    Returns:
      The object; None if `missing_ok` and there is no file at `path`, or if `unreadable_ok`
      and it cannot be read, is not JSON or is not a JSON object (a file that is only
      consulted, or rewritten when it does not hold what is needed).
    Raises:
      FileNotFoundError: no file at `path` (unless `missing_ok`).
      ValueError: "PATH: ..." when it cannot be read, is not JSON, or is not a JSON object
        (unless `unreadable_ok`).
    """
    path = str(path)
    if is_remote(path):
        import tensorflow as tf

        exists, errors = tf.io.gfile.exists(path), (OSError, ValueError, tf.errors.OpError)
    else:
        exists, errors = os.path.isfile(path), (OSError, ValueError)
    if not exists:
        if missing_ok:
            return None
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with _open(path, "r") as f:
            value = json.load(f)
    except errors as e:
        if unreadable_ok:
            return None
        raise ValueError(f"{path}: {getattr(e, 'message', None) or e}") from e
    if not isinstance(value, dict):
        if unreadable_ok:
            return None
        raise ValueError(f"{path}: not a JSON object")
    return value


def remove_stale_temps(folder: PathLike) -> list[str]:
    """Removes the temp files (and temp folders) a killed writer left in `folder` (local; one
    writer per folder); returns their paths."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        if not name.startswith(TEMP_PREFIX):
            continue
        stale = os.path.join(folder, name)
        log.info("removing a temp file left by an interrupted write: %s", stale)
        if os.path.isdir(stale):
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.remove(stale)
        removed.append(stale)
    return removed


# === Finding media files ===
def list_files(directory: PathLike, extensions: Iterable[str]) -> list[pathlib.Path]:
    """Every file under `directory` (recursive, following symbolic links) whose name ends in
    one of `extensions` (compared case-insensitively, e.g. `(".mp4", ".avi")`), sorted by path.

    Used for videos (`constants.VIDEO_EXTENSIONS`) and audio (`constants.AUDIO_EXTENSIONS`).
    Returns [] when `directory` does not exist.
    """
    endings = tuple(e.lower() for e in extensions)
    found = []
    for dirpath, _, filenames in os.walk(directory, followlinks=True):
        for name in filenames:
            path = pathlib.Path(dirpath) / name
            if name.lower().endswith(endings) and path.is_file():
                found.append(path)
    return sorted(found)


# === Run-directory lock ===
class FolderInUse(UserError):
    """Another live process holds the folder's lock."""


def lock_folder(folder: PathLike, name: str = ".lock", what: str = "folder") -> IO | None:
    """Takes an exclusive lock on `<folder>/<name>` for the life of this process (flock: the
    OS releases it when the process ends, a kill -9 included, so it never stays stuck) and
    writes this process's id into it. Returns the open lock file (keep it referenced), or None
    for a remote folder (object stores have no locks: not checked there).

    Raises:
      FolderInUse: another process holds it (the message names its pid and the lock file).
    """
    if is_remote(folder):
        log.debug("%s is remote: no lock taken", folder)
        return None
    import fcntl  # POSIX only, like the rest of the crash-safety here

    path = os.path.join(str(folder), name)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise FolderInUse(f"{what} {folder} is in use by another process (pid {holder}, lock "
                          f"{path}): wait for it to finish, or use another {what}")
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
