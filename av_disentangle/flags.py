"""`train.py`'s flags, generated from the config dataclasses, and its `--config` file.

Every flag is a field of one frozen dataclass: `RunConfig` (this module: data, run directory,
export, verbosity), `TrainConfig` and `LossConfig` (`config.py`), `SupervisedConfig`
(`supervised_config.py`); its default, type, choices and help are written once, on the field
(`config.field`), and `config.add_flags` turns them into argparse flags. A `--config` JSON file
(flag names as keys) is checked by the same parser as the command line, and both end in the
same dataclass validation (`resolve_settings`). TensorFlow-free, so `train.py --help` is fast
and `logs.quiet_tensorflow` can run before TensorFlow loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any, Sequence

from av_disentangle.config import (FRONT_ENDS, MODEL_SIZES, RECIPES, HelpFormatter,
                                   LossConfig, ModelConfig, TrainConfig, add_flags,
                                   check_choice, field, from_flags, to_dict)
from av_disentangle.files import read_json
from av_disentangle.logs import native_stderr_silenced
from av_disentangle.supervised_config import SupervisedConfig
from pipelines.data_service import DataServiceError, host_port  # TF-free

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBJECTIVES: tuple[str, ...] = ("self_supervised", "supervised")
MIXED_PRECISION: tuple[str, ...] = ("auto", "none", "float16", "bfloat16")
VERBOSITY: tuple[int, ...] = (0, 1, 2, 3)
DEBUG_VERBOSITY = 3  # `--verbose` alone: TensorFlow's own messages and tracebacks too
_PROGRESS = 1 if sys.stdout.isatty() else 2  # Keras' progress bar on a terminal only


def parse_profile_steps(value: str) -> tuple[int, int] | None:
    """`--profile_steps 'a,b'` -> (a, b); "" -> None. ValueError on anything else."""
    if not value:
        return None
    try:
        start, stop = (int(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"--profile_steps must be 'a,b' with integers, got {value!r}")
    return (start, stop)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What one `train.py` run trains on, where it writes, and how it reports. The model,
    optimisation and loss settings are `ModelConfig`, `TrainConfig`, `LossConfig`."""

    recipe: str = field(
        "default", "a named set of defaults (config.RECIPES; written to config.json): "
        "'default' = Adam 3e-3 without weight decay, what learns in CPU-sized budgets "
        "(BENCHMARKS.md, 'Recipes'; 'small_data' is the same); 'reference' = "
        "joonson/syncnet_trainer as its code runs (syncnet_trainer model, 224 px, stride 2, SGD "
        "1e-4 momentum 0.9, weight decay 1e-5, x0.95 per 100,000 tracks, batch 30 x 50 "
        "frames); 'sgd' = the default before December 2026 (SGD 1e-3, momentum 0.9, weight "
        "decay 1e-5: resumes runs it started); --config and explicit flags override it",
        choices=tuple(RECIPES))
    objective: str = field(
        "self_supervised", "self_supervised: the paper's face-voice training on --train_data; "
        "supervised: speaker-label training of the audio stream on --labelled_audio "
        "(optionally --init_from a self-supervised run)", choices=OBJECTIVES)
    train_data: str | None = field(None, "TFRecord glob(s), comma-separated (local or remote, "
                                   "e.g. gs://); default: the bundled sample data, prepared on "
                                   "first use", type=str)
    val_data: str | None = field(None, "TFRecord glob(s) for validation losses (optional)",
                                 type=str)
    validation_steps: int = field(10, "validation batches after each epoch (with --val_data)")
    model_dir: str = field("runs/sample", "checkpoints, TensorBoard logs and the resolved "
                           "config (local or remote, e.g. gs://bucket/run)")
    model_size: str = field("small", "stream sizes (config.ModelConfig)",
                            choices=tuple(sorted(MODEL_SIZES)))
    face_size: int | None = field(None, "override the model size's face crop size", type=int)
    front_end: str | None = field(
        None, "override the model size's log-mel front end (features.py): centered (ours), "
        "syncnet_trainer (the reference's), tf_mel_v1 (models trained before 2026-12: pass it "
        "to resume such a run)", type=str, choices=FRONT_ENDS)
    init_from: str = field(
        "", "start from pretrained weights: a self-supervised run dir (its latest "
        "checkpoints/epoch-NNN.weights.h5), one such file, an exported SavedModel, or a "
        "joonson/syncnet_trainer checkpoint (.model/.pt/.pth with torch, or .npz; needs "
        "--model_size syncnet_trainer). Both objectives; a resumed run restores its backup "
        "over it")
    mixed_precision: str = field(
        "auto", "mixed-precision compute: float16 (GPUs, with loss scaling), bfloat16 (CPUs "
        "with bf16 units, TPUs, new GPUs), none (float32); losses and features stay float32. "
        "auto: bfloat16 on a CPU-only machine with AMX-BF16 / AVX512-BF16, else none; a "
        "resumed run keeps the precision it started with", choices=MIXED_PRECISION)
    checkpoint_every_steps: int = field(0, "also back up every N steps (0: at each epoch end "
                                        "only); a resume continues from the exact step")
    log_every_steps: int = field(10, "TensorBoard batch_* scalars every N steps (and at each "
                                 "epoch end; 0: at each epoch end only)")
    allow_upsampling: bool = field(False, "resize stored face crops smaller than the model's "
                                   "face size up to it (default: refused, naming the shard)")
    all_chunks_per_pass: bool = field(
        False, "read every chunk of every track in each pass of chunked data (default: one "
        "chunk per track per pass in expectation, as the reference draws each track once per "
        "epoch; pipelines.input.InputConfig)")
    skip_bad_shards: bool = field(False, "train on the good shards when some are truncated or "
                                  "corrupt (default: stop and name them)")
    full_shard_check: bool = field(False, "verify every record's checksum at start (reads all "
                                   "the data; the default check reads only the record headers "
                                   "and the sidecar counts)")
    data_service: str | None = field(
        None, "grpc://HOST:PORT of a tf.data service dispatcher: run the training input "
        "pipeline on its workers (`python -m pipelines.data_service`; README \"Scaling the "
        "input out\"); default: in this process", type=str)
    cpu_replicas: int = field(1, "without GPUs, split the CPU into N logical devices (testing)")
    profile_steps: str = field("", "'a,b': write a TensorBoard profiler trace of steps a..b")
    export_dir: str | None = field(None, "SavedModel directory; default "
                                   "<export_root>/<export_name>/<next version>", type=str)
    export_root: str = field(os.path.join(REPO_ROOT, "saved_models"),
                             "folder of the versioned exports")
    export_name: str = field("av_disentangle", "model name under --export_root")
    no_export: bool = field(False, "train only; write no SavedModel")
    verbose: int = field(
        _PROGRESS, "0: silent; 1: Keras progress bar; 2: one line per epoch; 3 (or --verbose "
        "alone): 2, plus TensorFlow's own start-up messages and warnings, DEBUG logging and "
        "tracebacks", choices=VERBOSITY, const=DEBUG_VERBOSITY)

    def __post_init__(self) -> None:
        for name in ("recipe", "objective", "model_size", "mixed_precision", "verbose"):
            check_choice(self, name)
        parse_profile_steps(self.profile_steps)
        if self.data_service is not None:
            try:
                host_port(self.data_service)
            except DataServiceError as e:
                raise ValueError(f"--data_service: {e}")
            if self.objective != "self_supervised":
                raise ValueError("--data_service serves the self-supervised input only "
                                 f"(--objective {self.objective} reads its labelled audio here)")
        for name in ("validation_steps", "cpu_replicas"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("checkpoint_every_steps", "log_every_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def debug(self) -> bool:
        """`--verbose 3`: show TensorFlow's messages and tracebacks."""
        return self.verbose >= DEBUG_VERBOSITY

    @property
    def keras_verbose(self) -> int:
        """The `verbose` argument of `Model.fit` (0, 1 or 2)."""
        return min(self.verbose, 2)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything one training run needs, validated: what `run.train` takes.

    Attributes:
      supervised: the supervised settings with `--objective supervised`, else None.
      flags: every flag's value as given (recorded in the run's config.json).
    """

    run: RunConfig
    model: ModelConfig
    loss: LossConfig
    train: TrainConfig
    supervised: SupervisedConfig | None
    flags: dict[str, Any]


def build_parser() -> argparse.ArgumentParser:
    """All of train.py's flags: one per field of RunConfig, TrainConfig, LossConfig and
    SupervisedConfig, plus `--config`."""
    p = argparse.ArgumentParser(
        prog="train.py", description="Train the two-stream disentangling model and export a "
        "SavedModel.", formatter_class=HelpFormatter)
    p.add_argument("--config", help="JSON file of flag values (local or remote); command-line "
                   "flags override it")
    add_flags(p, RunConfig)
    add_flags(p.add_argument_group("training (config.TrainConfig)"), TrainConfig)
    add_flags(p.add_argument_group("losses (config.LossConfig)"), LossConfig)
    add_flags(p.add_argument_group("supervised objective (--objective supervised)"),
              SupervisedConfig)
    return p


class _ConfigValueError(Exception):
    pass


def config_file_values(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The values of a `--config` JSON file, checked exactly as the same flags on the command
    line (argparse's own `type` and `choices`). ValueError naming the file and the key."""
    try:
        if "://" in path:  # a remote --config: TensorFlow's file systems, start-up lines hidden
            with native_stderr_silenced(not logging.getLogger().isEnabledFor(logging.DEBUG)):
                import tensorflow  # noqa: F401
        values = read_json(path)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"cannot read --config {e} (expected a JSON object of flag names and "
                         "values)")
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    unknown = sorted(set(values) - set(actions) | ({"config", "help"} & set(values)))
    if unknown:
        raise ValueError(f"--config {path}: unknown keys {unknown}")
    argv = []
    for key, value in values.items():
        action, flag = actions[key], actions[key].option_strings[-1]
        if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
            if not isinstance(value, bool):
                raise ValueError(f"--config {path}: {key} must be true or false, got "
                                 f"{json.dumps(value)}")
            if isinstance(action, argparse.BooleanOptionalAction):  # --x / --no-x
                argv += [action.option_strings[0 if value else 1]]
            else:
                argv += [flag] if value else []
        elif value is None or isinstance(value, (bool, list, dict)):
            raise ValueError(f"--config {path}: {key} must be a single "
                             f"{getattr(action.type, '__name__', 'str')} value, got "
                             f"{json.dumps(value)}")
        else:
            argv += [flag, str(value)]
    checker = build_parser()

    def error(message):
        raise _ConfigValueError(message)

    checker.error = error
    try:
        checked = checker.parse_args(argv)
    except _ConfigValueError as e:
        raise ValueError(f"--config {path}: {e}")
    return {key: getattr(checked, key) for key in values}


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """Whether the command line itself asks for `--verbose 3` (or `--verbose` alone): read
    before `--config`, whose reading loads TensorFlow when the file is remote."""
    p = argparse.ArgumentParser(add_help=False)
    verbose = next(f for f in dataclasses.fields(RunConfig) if f.name == "verbose")
    p.add_argument("--verbose", type=int, nargs="?", const=verbose.metadata["const"])
    known, _ = p.parse_known_args(argv)
    return (known.verbose or 0) >= DEBUG_VERBOSITY


def parse_flags(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses flags. Precedence, lowest first: the dataclass defaults, the `--recipe`'s values
    (`config.RECIPES`; the recipe named on the command line or else in `--config`), the
    `--config` file's values, explicit flags. Bad flags or a bad `--config` exit with
    argparse's usage error (status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    file_values: dict[str, Any] = {}
    if args.config:
        try:
            file_values = config_file_values(args.config, parser)
        except ValueError as e:
            parser.error(str(e))
        parser.set_defaults(**file_values)
        args = parser.parse_args(argv)
    if RECIPES[args.recipe]:
        parser.set_defaults(**{**RECIPES[args.recipe], **file_values})
        args = parser.parse_args(argv)
    return args


def resolve_configs(args: argparse.Namespace) -> tuple[ModelConfig, LossConfig, TrainConfig]:
    """Flags -> (ModelConfig, LossConfig, TrainConfig); ValueError on inconsistent values."""
    model_config = MODEL_SIZES[args.model_size]()
    if args.face_size:
        model_config = dataclasses.replace(model_config, face_size=args.face_size)
    if args.front_end:
        model_config = dataclasses.replace(model_config, front_end=args.front_end)
    return model_config, from_flags(LossConfig, args), from_flags(TrainConfig, args)


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Flags (and `--config` values) -> validated Settings; ValueError naming the problem."""
    model_config, loss_config, train_config = resolve_configs(args)
    run_config = from_flags(RunConfig, args)
    supervised = (from_flags(SupervisedConfig, args) if run_config.objective == "supervised"
                  else None)
    return Settings(run=run_config, model=model_config, loss=loss_config, train=train_config,
                    supervised=supervised, flags=dict(vars(args)))


def settings_record(settings: Settings) -> dict[str, Any]:
    """The resolved configuration as written to `<model_dir>/config.json` (and compared by
    `run.config_differences` on a resume)."""
    record = {"flags": settings.flags, "model": to_dict(settings.model),
              "loss": to_dict(settings.loss), "train": to_dict(settings.train)}
    if settings.supervised is not None:
        record["supervised"] = to_dict(settings.supervised)
    return record
