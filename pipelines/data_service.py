"""Scaling the training input out: the same pipeline on tf.data service workers.

`train.py --data_service grpc://HOST:PORT` runs `pipelines.input.make_dataset` - record
reading, shuffling, batch assembly, JPEG decoding, windowing - on the workers of a tf.data
service (`tf.data.experimental.service`, TensorFlow's own engine) instead of the trainer's
CPU cores; the trainer only receives finished batches over gRPC. Start the service on CPU
machines that can read `--train_data` (the shard paths are resolved by the trainer and read by
the workers: shared or remote storage, e.g. gs://):

    python -m pipelines.data_service --dispatcher --port 5050 [--work_dir DIR]
    python -m pipelines.data_service --worker --dispatcher_address HOST:5050 --port 5051
    ...  (one worker per CPU machine; each uses all its cores)
    python train.py --data_service grpc://HOST:5050 ...

Processing mode: "distributed_epoch" (`ShardingPolicy.DYNAMIC`). What each worker produces:
the dispatcher hands the shard files of each pass over the data (each repetition of the
pipeline's `repeat`) to the workers one file at a time, as they ask for work; a worker runs the
whole seeded pipeline on the files it was given - it shuffles their records, deals them into
batches of distinct tracks of distinct videos (`pipelines.input.record_batches`) and decodes the
windows - so every batch is assembled by one worker, with the same guarantees as on one
machine. The trainer takes whole batches from whichever worker has one ready.
  - Epoch semantics: within a pass every shard goes to exactly one worker, so no track is read
    twice in a pass (at most once: the files a worker was reading when it died are lost for
    that pass). A worker shuffles only the records of its own files, and each worker drops its
    own last incomplete batch per pass (at most k * B - 1 tracks per worker and pass, k =
    `video_group_batches`), against one per pass on a single machine. Training "epochs" are
    `--steps_per_epoch` steps of an endless stream either way.
  - Determinism: the seeds are the same as without the service, but which worker gets which
    file, and the order in which batches arrive, depend on timing: a run is not bit-for-bit
    reproducible. (A resumed run draws a new sequence anyway: `run.dataset_maker`.)
  - Duplicates: none by construction. "parallel_epochs" (`ShardingPolicy.OFF`) was rejected:
    there every worker runs the entire pipeline, and since the pipeline is seeded every worker
    produces the SAME batches - with 2 workers, 32 batches held 21 and 23 distinct ones in two
    runs (measured, TF 2.21; `tests/test_data_service.py` fails on it). Static sharding
    (FILE/DATA) needs a fixed worker list and workers on the trainer's machine, which is not
    this use.

Job names: the trainer registers the dataset under, and reads it as the job, `dataset_key`: a
hash of --model_dir, the input settings and seed, the shard list and the pipeline's code. The
workers of a MultiWorkerMirroredStrategy run (same model_dir, same seeded dataset) thus share
one job and split its batches first come, first served (tf.distribute's auto-sharding is off
for a named job, TF docs) instead of each getting the same batches from a job of its own (the
dispatcher gives a rebuilt dataset a new id: measured), while another run or another dataset (a
resumed run's new seed, other data) never joins a job it did not create. A reused id or job
name silently serves the old dataset (measured: a job "j" asked for range(5, ...) returned the
old range(0, ...) job's elements), hence the hash of everything that shapes the dataset.

Fault tolerance: give the dispatcher a `--work_dir` (local or remote) for long jobs: it then
journals its state (`fault_tolerant_mode`) and a restarted dispatcher resumes the jobs; without
one a dispatcher restart ends the run's input. A worker that dies loses its in-flight files for
that pass; a restarted worker registers again and gets new work. Trainer crashes resume from
the backup with a new dataset, hence a new job.

A wrong address: `check_dispatcher` asks the dispatcher for its workers with a short timeout
before anything is trained and raises a one-line `DataServiceError` naming the address (the
service itself would retry for a very long time: measured, `distribute` to a closed port was
still waiting after 60 s).

Bandwidth: batches travel decoded: per clip T*S*S*3 bytes of frames plus 2*T*640*4 bytes of
audio (T = 50, S = 112: 2.1 MB; S = 224: 7.8 MB), compressed with snappy when the service finds
it worth it ("AUTO").
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import re
import socket
import sys
import time
from typing import TYPE_CHECKING, Sequence

from av_disentangle.errors import UserError, run_cli
from av_disentangle.logs import native_stderr_silenced, setup_logging

if TYPE_CHECKING:
    import tensorflow as tf

    from pipelines.input import InputConfig

log = logging.getLogger("pipelines.data_service")  # also under python -m

PROCESSING_MODE = "distributed_epoch"
PROBE_TIMEOUT_S = 10.0  # the trainer's check of --data_service
WORKER_CONNECT_TIMEOUT_S = 60.0  # a worker waits this long for its dispatcher to answer
# [grpc://]HOST:PORT, HOST a name, an IPv4 address or a bracketed IPv6 address
ADDRESS = re.compile(r"(?:grpc://)?(?P<hostport>(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5})")
_GET_WORKERS = "/tensorflow.data.DispatcherService/GetWorkers"  # dispatcher.proto, TF 2.21


class DataServiceError(UserError):
    """The tf.data service address is malformed or no dispatcher answers there."""


def host_port(address: str) -> str:
    """`grpc://HOST:PORT` or `HOST:PORT` -> `HOST:PORT`. DataServiceError otherwise."""
    match = ADDRESS.fullmatch(address.strip())
    if not match:
        raise DataServiceError(f"tf.data service address {address!r} is not grpc://HOST:PORT")
    return match.group("hostport")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _string_fields(message: bytes, number: int) -> list[bytes]:
    """The length-delimited fields `number` of a serialized protobuf message (other fields
    skipped). Enough to read GetWorkersResponse {repeated WorkerInfo workers = 1} and
    WorkerInfo {string address = 1} without the dispatcher's .proto, which TF's wheel lacks."""
    out, pos = [], 0
    while pos < len(message):
        key, pos = _varint(message, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(message, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(message, pos)
            if key >> 3 == number:
                out.append(message[pos:pos + size])
            pos += size
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    return out


def check_dispatcher(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """Asks the dispatcher at `address` for its registered workers, waiting up to `timeout_s`.

    Returns:
      the workers' addresses (HOST:PORT), possibly none yet.
    Raises:
      DataServiceError: one line naming the address: nothing answers there, or what answers
        is not a tf.data service dispatcher (e.g. a worker's port).
    """
    import grpc

    target = host_port(address)
    start = ("start one with `python -m pipelines.data_service --dispatcher --port "
             f"{target.rsplit(':', 1)[1]}`, or fix the address")
    with grpc.insecure_channel(target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise DataServiceError(f"no tf.data service dispatcher answers at {address} "
                                   f"(waited {timeout_s:g} s); {start}") from None
        get_workers = channel.unary_unary(_GET_WORKERS)  # bytes in, bytes out
        try:
            reply = get_workers(b"", timeout=timeout_s)
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise DataServiceError(f"{address} is not a tf.data service dispatcher (a "
                                       "worker's port?); pass the dispatcher's address") from None
            raise DataServiceError(f"the tf.data service dispatcher at {address} did not "
                                   f"answer: {code.name}: {e.details()}") from None
    workers = [_string_fields(info, 1) for info in _string_fields(reply, 1)]
    return [worker[0].decode() if worker else "?" for worker in workers]


def dataset_key(config: InputConfig, model_dir: str) -> str:
    """The dataset id and job name of one run's training input on the service.

    Equal for every worker of a MultiWorkerMirroredStrategy run (same model_dir, same
    settings, same shards, same code), so they register one dataset and share its job; any
    change to what the pipeline produces - settings, seed (a resumed run's seed + step), the
    shard list, the code of the input pipeline, TensorFlow's version - or another run gives
    another key. (The dispatcher gives each registration of a rebuilt dataset a new id -
    measured, TF 2.21 - and a registered id or job name is silently reused with its old
    dataset: the key must cover everything that shapes the dataset.)
    """
    import tensorflow as tf

    from av_disentangle import constants
    from pipelines import input as input_pipeline
    from pipelines import records

    code = hashlib.sha256()
    for module in (input_pipeline, records, constants):
        with open(module.__file__, "rb") as f:
            code.update(f.read())
    described = {"model_dir": model_dir, "config": dataclasses.asdict(config),
                 "shards": input_pipeline.list_shards(config.file_pattern),
                 "code": code.hexdigest(), "tensorflow": tf.__version__}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode())
    return f"av_disentangle-{digest.hexdigest()[:24]}"


def distribute(ds: tf.data.Dataset, address: str, key: str) -> tf.data.Dataset:
    """`ds` (batches from `pipelines.input.make_dataset`) produced on the tf.data service at
    `address` in "distributed_epoch" mode (module doc), registered under the dataset id `key`
    and read as the job `key` (`dataset_key`: consumers with the same key share the job).

    Same elements as `ds`: frames (B, T, S, S, 3) uint8, audio and audio_2 (B, T * 640)
    float32. Check the address first (`check_dispatcher`): this call waits for the dispatcher.
    """
    import tensorflow as tf

    service = f"grpc://{host_port(address)}"
    dataset_id = tf.data.experimental.service.register_dataset(service, ds, dataset_id=key)
    log.info("input from the tf.data service at %s (job %s, %s)", service, key,
             PROCESSING_MODE)
    out = tf.data.experimental.service.from_dataset_id(
        PROCESSING_MODE, service, dataset_id, ds.element_spec, job_name=key)
    return out.prefetch(tf.data.AUTOTUNE)


# === Servers ===
def start_dispatcher(port: int = 0, work_dir: str | None = None):
    """A running dispatcher on `port` (0: a free one). With `work_dir` it journals its state
    there and recovers it after a restart (`fault_tolerant_mode`)."""
    import tensorflow as tf

    config = tf.data.experimental.service.DispatcherConfig(
        port=port, work_dir=work_dir, fault_tolerant_mode=bool(work_dir))
    return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher_address: str, port: int = 0, worker_host: str = "localhost"):
    """A running worker on `port` (0: a free one) that registers with the dispatcher as
    `worker_host:<port>`: the address the trainers connect to, so it must resolve there."""
    import tensorflow as tf

    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=host_port(dispatcher_address), worker_address=f"{worker_host}:%port%",
        port=port, data_transfer_address=f"{worker_host}:%dts_port%")  # TF's default: localhost
    return tf.data.experimental.service.WorkerServer(config)


def server_port(server) -> int:
    """The port a DispatchServer or WorkerServer listens on (useful with port 0)."""
    return int(server._address.rsplit(":", 1)[1])  # noqa: SLF001 (TF keeps it private)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.data_service",
        description="Run a tf.data service dispatcher or worker for `train.py --data_service` "
        "(runs until killed).")
    role = p.add_mutually_exclusive_group(required=True)
    role.add_argument("--dispatcher", action="store_true", help="run the dispatcher (one)")
    role.add_argument("--worker", action="store_true", help="run a worker (one per CPU machine)")
    p.add_argument("--port", type=int, default=0, help="port to serve on (0: a free one)")
    p.add_argument("--work_dir", help="dispatcher: journal its state here (local or remote, "
                   "e.g. gs://) and recover it after a restart; use it for long jobs")
    p.add_argument("--dispatcher_address", help="worker: the dispatcher's HOST:PORT")
    p.add_argument("--worker_host", default=socket.gethostname(),
                   help="worker: the host name the trainers reach this worker by")
    p.add_argument("--verbose", action="store_true", help="DEBUG logging, TensorFlow's messages")
    args = p.parse_args(argv)
    if args.worker and not args.dispatcher_address:
        p.error("--worker needs --dispatcher_address HOST:PORT")
    if args.dispatcher and args.dispatcher_address:
        p.error("--dispatcher_address is for --worker")
    if args.worker and args.work_dir:
        p.error("--work_dir is for --dispatcher")
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be in 0..65535, got {args.port}")
    return args


def _serve(args: argparse.Namespace):
    """Starts the dispatcher or the worker of `args`; returns the running server."""
    if args.dispatcher:
        server = start_dispatcher(args.port, args.work_dir)
        log.info("tf.data service dispatcher serving on grpc://%s:%d%s", socket.gethostname(),
                 server_port(server), f" (journal in {args.work_dir})" if args.work_dir else "")
        return server
    check_dispatcher(args.dispatcher_address, WORKER_CONNECT_TIMEOUT_S)
    server = start_worker(args.dispatcher_address, args.port, args.worker_host)
    address = f"{args.worker_host}:{server_port(server)}"
    deadline = time.monotonic() + WORKER_CONNECT_TIMEOUT_S
    while address not in check_dispatcher(args.dispatcher_address):
        if time.monotonic() > deadline:
            raise DataServiceError(f"worker {address} did not register with the dispatcher at "
                                   f"{args.dispatcher_address}")
        time.sleep(0.2)
    log.info("tf.data service worker serving on %s, registered with the dispatcher at %s",
             address, args.dispatcher_address)
    return server


def _main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    setup_logging(verbose=args.verbose)
    with native_stderr_silenced(not args.verbose):  # TF's start-up lines no log level hides
        import tensorflow  # noqa: F401
    server = None
    try:  # until killed; a sleeping main thread (unlike server.join()) lets Ctrl-C through
        server = _serve(args)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping")
        if server is not None:
            server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; a `UserError` becomes one line on stderr and exit status 2."""
    return run_cli(_main, "pipelines.data_service", argv)


if __name__ == "__main__":
    sys.exit(main())
