"""Configuration as frozen dataclasses: model sizes, loss weights, training settings."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

DISENTANGLE_MODES: tuple[str, ...] = ("confusion", "adversarial", "grl", "none")
FACE_IDENTITY_POOLINGS: tuple[str, ...] = ("random_step", "mean")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
FRONT_ENDS: tuple[str, ...] = ("centered", "syncnet_trainer", "tf_mel_v1")  # features.py
FACE_PIXELS: tuple[str, ...] = ("rgb_unit", "bgr_255")
# ModelConfig fields added after models were saved without them, and the value those models
# were built with (`ModelConfig.from_saved`): an old run resumes and an old export reloads as
# it was trained, instead of silently taking a new default.
LEGACY_MODEL_VALUES: dict[str, Any] = {"front_end": "tf_mel_v1", "face_pixels": "rgb_unit",
                                       "normalize_steps": True}


def field(default: Any, help: str, choices: tuple | None = None, **metadata: Any) -> Any:
    """A dataclass field whose flag (see `add_flags`) gets this help text and choice list.

    Extra `metadata`: `type` (flag type when `default` is None), `const` (the value of the bare
    flag, e.g. `--verbose` alone), `flag` (False: no flag for this field)."""
    return dataclasses.field(default=default,
                             metadata={"help": help, "choices": choices, **metadata})


def check_choice(config: Any, name: str) -> None:
    """ValueError unless `config.<name>` is one of its field's `choices`."""
    choices = next(f for f in dataclasses.fields(config) if f.name == name).metadata["choices"]
    if getattr(config, name) not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {getattr(config, name)!r}")


# === Model ===
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes of the two streams. The layers are those of the public reference code
    (joonson/syncnet_trainer, models/SyncNetModelFBank.py; see `streams.py`); `reference()` also
    has its sizes: 224x224 faces, VGG-M widths 96-256-256-256-256 (face) and 96-256-384-256-256
    (audio), 512-wide fc6 and heads, 1024-d embeddings, temporal stride 2 (its README's command).

    Attributes:
      face_size: side of the square RGB face crop fed to the face stream; >= 51 (the smallest
        input the reference face trunk takes, see `streams.py`).
      face_channels: widths of the 5 face-trunk convs (conv1 is 3-D, 5-frame temporal kernel).
      audio_channels: widths of the 5 audio-trunk 2-D convs over (time, mel).
      trunk_dim: width of the trunk output sequence (the "fc6" layer).
      head_hidden: hidden width of each 2-layer 1x1 temporal-conv head.
      embedding_dim: D, the output width of content and identity heads.
      num_mels: log-mel bands of the audio features (>= 15, the smallest the audio trunk takes).
      temporal_stride: stride of the trunk's temporal output; T' = (T - 5) // stride + 1.
      front_end: the log-mel front end (`features.py`): `centered` (ours: the reference's
        features with frame n centred on sample n * 160, so audio and face steps are centred
        on the same instant), `syncnet_trainer` (the reference's exactly: first and last frame
        dropped) or `tf_mel_v1` (models made before 2026-12: 20-7600 Hz bands).
      face_pixels: how uint8 RGB frames enter the first face conv: `rgb_unit` (ours: RGB scaled
        to [-1, 1]) or `bgr_255` (the reference's: OpenCV's BGR order, values 0..255 as floats,
        syncnet_trainer dataLoader.get_frames). BatchNorm follows that conv, so the scale only
        changes conv1's effective learning rate (not measured; kept so our trained models and
        their evidence stay what they were).
      normalize_steps: L2-normalise every output step of the four heads (ours). The
        reference's heads output raw steps (its losses take cosines, so per step it is the
        same), and its voice identity is the time-mean of the RAW steps, then a cosine;
        `losses.time_pool` of raw steps is exactly that. Ours averages unit steps, weighting
        every step alike. Not measured yet (the evidence issue compares both); kept so our
        trained models and their evidence stay what they were.
    """

    face_size: int = 224
    face_channels: tuple[int, ...] = (96, 256, 256, 256, 256)
    audio_channels: tuple[int, ...] = (96, 256, 384, 256, 256)
    trunk_dim: int = 512
    head_hidden: int = 512
    embedding_dim: int = 1024
    num_mels: int = 40
    temporal_stride: int = 2
    front_end: str = "centered"
    face_pixels: str = "rgb_unit"
    normalize_steps: bool = True

    def __post_init__(self) -> None:
        if self.front_end not in FRONT_ENDS:
            raise ValueError(f"front_end must be one of {FRONT_ENDS}, got {self.front_end!r}")
        if self.face_pixels not in FACE_PIXELS:
            raise ValueError(f"face_pixels must be one of {FACE_PIXELS}, got "
                             f"{self.face_pixels!r}")
        if len(self.face_channels) != 5 or len(self.audio_channels) != 5:
            raise ValueError("face_channels and audio_channels need exactly 5 widths each")
        # Smallest sizes for which the reference trunks (streams.py) leave a map before fc6.
        if self.face_size < 51:
            raise ValueError(f"face_size must be >= 51, got {self.face_size}")
        if self.num_mels < 15:
            raise ValueError(f"num_mels must be >= 15, got {self.num_mels}")
        if self.temporal_stride < 1:
            raise ValueError(f"temporal_stride must be >= 1, got {self.temporal_stride}")

    @classmethod
    def reference(cls) -> "ModelConfig":
        """The reference code's sizes: 13,840,512 trainable parameters, as SyncNetModelFBank
        at nOut 1024; `--face_size 112` for a ~4x cheaper face stream."""
        return cls()

    @classmethod
    def syncnet_trainer(cls, embedding_dim: int = 1024,
                        temporal_stride: int = 2) -> "ModelConfig":
        """The reference model with the reference's conventions, so that its checkpoints
        (`convert.py`) compute exactly what its code computes: its front end, BGR 0..255 faces,
        raw head outputs. `temporal_stride` is not in a checkpoint (the weights fit any);
        2 is its README's training and evaluation command."""
        return cls(embedding_dim=embedding_dim, temporal_stride=temporal_stride,
                   front_end="syncnet_trainer", face_pixels="bgr_255", normalize_steps=False)

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> "ModelConfig":
        """A ModelConfig from a saved `to_dict` (model_config.json, a run's config.json):
        fields the file predates take the value such models were built with
        (`LEGACY_MODEL_VALUES`), not today's default."""
        return from_dict(cls, {**LEGACY_MODEL_VALUES, **values})

    @classmethod
    def small(cls) -> "ModelConfig":
        """A CPU-sized model (138,496 trainable parameters in the two streams) for the sample
        data and tests."""
        return cls(face_size=64, face_channels=(16, 32, 32, 32, 32),
                   audio_channels=(16, 32, 32, 32, 32), trunk_dim=64, head_hidden=64,
                   embedding_dim=64)

    @classmethod
    def tiny(cls) -> "ModelConfig":
        """The smallest sensible model (11,392 trainable parameters in the streams), for unit
        tests; 64x64 faces (the reference face trunk needs >= 51)."""
        return cls(face_size=64, face_channels=(4, 8, 8, 8, 8), audio_channels=(4, 8, 8, 8, 8),
                   trunk_dim=16, head_hidden=16, embedding_dim=16)

    def num_steps(self, num_frames: int) -> int:
        """T', the output length of both streams for a window of `num_frames` video frames."""
        return (num_frames - 5) // self.temporal_stride + 1


MODEL_SIZES = {"reference": ModelConfig.reference, "small": ModelConfig.small,
               "tiny": ModelConfig.tiny, "syncnet_trainer": ModelConfig.syncnet_trainer}


# === Losses ===
@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Weights and modes of the three losses (see `losses.py`).

    Attributes:
      content_weight, identity_weight, disentangle_weight: a_c, a_i, a_d of the total loss.
      disentangle: `confusion` (uniform-target CE, parameter-free, default), `adversarial`
        (learned auxiliary heads + confusion), `grl` (gradient reversal), or `none`.
      grl_scale: lambda of the gradient-reversal layer.
      symmetric_identity: also match voice -> face in the identity term.
      face_identity_pooling: `random_step` (reference code: one random time step) or `mean`.
      gather_negatives: under a distribution strategy, all-gather the identity embeddings of
        all replicas so each track is matched against the voices of the whole global batch
        (default: per-replica negatives, as on one GPU of the reference code).
    """

    content_weight: float = field(1.0, "a_c, weight of the content (synchronisation) loss")
    identity_weight: float = field(1.0, "a_i, weight of the identity (face-voice) loss")
    disentangle_weight: float = field(0.5, "a_d, weight of the disentanglement loss")
    disentangle: str = field("confusion", "how content and identity are kept apart",
                             choices=DISENTANGLE_MODES)
    grl_scale: float = field(1.0, "lambda of the gradient-reversal layer (--disentangle grl)")
    symmetric_identity: bool = field(False, "also match voice -> face in the identity loss")
    face_identity_pooling: str = field("random_step", "face identity from one random time "
                                       "step (reference code) or the time mean",
                                       choices=FACE_IDENTITY_POOLINGS)
    gather_negatives: bool = field(False, "all-gather identity embeddings across replicas: "
                                   "negatives from the whole global batch instead of each "
                                   "replica's slice")

    def __post_init__(self) -> None:
        check_choice(self, "disentangle")
        check_choice(self, "face_identity_pooling")
        for name in ("content_weight", "identity_weight", "disentangle_weight", "grl_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def to_dict(config: Any) -> dict[str, Any]:
    """Dataclass -> JSON-friendly dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """dict -> dataclass, rejecting unknown keys with a clear message."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {unknown}; known: {sorted(names)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**kwargs)


# === Training ===
REFERENCE_LEARNING_RATE = 1e-4
"""The learning rate joonson/syncnet_trainer actually trains with (SyncNetDist.py:25, 33; see
`TrainConfig`)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Reference code (github joonson/syncnet_trainer, commit 15e5cfc):
    SGD, momentum 0.9, weight decay 1e-5 (SyncNetDist.py:33), learning rate 1e-4 x0.95
    (trainSyncNet.py:38, applied at :138) after every epoch of 100,000 tracks
    (trainSyncNet.py:24, `nTrainPerEpoch`) in batches of 30 (:23): every 3,333 steps.
    The rate it RUNS is 1e-4, not its `--lr` flag's 1e-3: trainSyncNet.py:37 defines `--lr`
    and :74 calls `SyncNet(**vars(args))`, but `SyncNet.__init__` takes
    `learning_rate=0.0001` (SyncNetDist.py:25) and hands that to SGD (:33); `lr` lands in
    `**kwargs`, unused (`REFERENCE_LEARNING_RATE`, `syncnet_trainer()`). The defaults here are
    not the reference's: Adam 3e-3 without weight decay, what learned in CPU-sized budgets on
    the synthetic and the real-voices worlds where SGD at 1e-3 and 1e-4 barely moved
    (BENCHMARKS.md, "Recipes"); `--recipe reference` is the reference's schedule and
    `--recipe sgd` the earlier default (SGD 1e-3, weight decay 1e-5).
    TensorFlow-free (`train.py --help` imports it); `training.py` re-exports it.

    Attributes:
      lr_decay_steps: optimizer steps between two x`lr_decay_rate` decays, independent of
        `steps_per_epoch` (which only sets how often Keras logs, validates and backs up). The
        reference counts tracks (100,000 per decay); the default 3,333 steps is that at its
        batch of 30 tracks. With another `batch_tracks`, pass 100000 // batch_tracks to decay
        after the same number of tracks (e.g. 1,666 at 60).
      weight_decay: PyTorch-style (coupled, L2) weight decay on every trainable variable,
        BatchNorm gammas/betas and similarity scales/biases included, as torch.optim.SGD's
        `weight_decay` on `self.parameters()` in the reference; see `CoupledDecaySGD`.
    """

    epochs: int = field(10, "epochs to train (a rerun with more epochs continues the run)")
    steps_per_epoch: int = field(50, "optimizer steps per epoch (logging, validation, backup)")
    batch_tracks: int = field(8, "global batch of distinct tracks; negatives are per replica")
    window_frames: int = field(25, "video frames per window at 25 fps (reference: 50)")
    optimizer: str = field("adam", "Adam, or SGD with momentum 0.9 (the reference's)",
                           choices=OPTIMIZERS)
    learning_rate: float = field(3e-3, "initial learning rate (the reference trainer runs "
                                 "SGD at 1e-4: its --lr flag never reaches its optimizer)")
    lr_decay_rate: float = field(0.95, "multiply the learning rate by this every "
                                 "--lr_decay_steps steps")
    lr_decay_steps: int = field(3333, "steps between learning-rate decays, whatever "
                                "--steps_per_epoch is; the reference decays every 100,000 "
                                "tracks (3,333 steps of 30): for the same per-track schedule "
                                "pass 100000 // --batch_tracks")
    weight_decay: float = field(0.0, "PyTorch-style (L2, coupled: added to the gradient) "
                                "weight decay on all trainable variables, as the reference's "
                                "SGD (1e-5)")
    seed: int = field(0, "seed of the weights, the data order and the windows")

    @classmethod
    def syncnet_trainer(cls, **overrides: Any) -> "TrainConfig":
        """The schedule the reference trainer runs with its README's command
        (`--temporal_stride 2 --maxFrames 50`): batch 30, 50-frame windows, SGD momentum 0.9 at
        1e-4, x0.95 every 3,333 steps, coupled weight decay 1e-5."""
        values = dict(batch_tracks=30, window_frames=50, optimizer="sgd",
                      learning_rate=REFERENCE_LEARNING_RATE, lr_decay_rate=0.95,
                      lr_decay_steps=3333, weight_decay=1e-5)
        return cls(**{**values, **overrides})

    def __post_init__(self) -> None:
        check_choice(self, "optimizer")
        for name in ("epochs", "steps_per_epoch", "batch_tracks", "lr_decay_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.window_frames < 10:
            raise ValueError(f"window_frames must be >= 10 (0.4 s), got {self.window_frames}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 < self.lr_decay_rate <= 1:
            raise ValueError(f"lr_decay_rate must be in (0, 1], got {self.lr_decay_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


# === Recipes: named sets of flag defaults ===
def _reference_recipe() -> dict[str, Any]:
    """joonson/syncnet_trainer as its code runs with its README's command: its model and
    conventions (`--model_size syncnet_trainer`: 224 px faces, temporal stride 2, its front end
    and pixels) and its schedule (`TrainConfig.syncnet_trainer`: SGD momentum 0.9 at the 1e-4
    it actually runs, x0.95 per 100,000 tracks, weight decay 1e-5, batch 30 x 50 frames)."""
    schedule = TrainConfig.syncnet_trainer()
    keys = ("batch_tracks", "window_frames", "optimizer", "learning_rate", "lr_decay_rate",
            "lr_decay_steps", "weight_decay")
    return {"model_size": "syncnet_trainer", **{k: getattr(schedule, k) for k in keys}}


# `train.py --recipe NAME`: flag values that replace the dataclass defaults; a `--config` file
# and command-line flags override them (flags.parse_flags). "default" is the dataclasses' own
# defaults: since December 2026 Adam 3e-3 without weight decay, the optimizer that learns in
# CPU-sized budgets (BENCHMARKS.md, issue 26: 150 steps on two synthetic worlds and 250 on 30
# real LibriSpeech voices through this trainer, 3 seeds each; SGD at 1e-3 and at the
# reference's 1e-4 stayed near the untrained network). "small_data" names the same values
# explicitly (runs recorded with it keep them); "sgd" is the default before then (SGD 1e-3,
# momentum 0.9, weight decay 1e-5), which resumes the runs it started (run.check_model_dir).
SGD_RECIPE: dict[str, Any] = {"optimizer": "sgd", "learning_rate": 1e-3, "weight_decay": 1e-5}
RECIPES: dict[str, dict[str, Any]] = {
    "default": {}, "reference": _reference_recipe(),
    "small_data": {"optimizer": "adam", "learning_rate": 3e-3, "weight_decay": 0.0},
    "sgd": SGD_RECIPE}


# === Flags generated from the dataclasses (each default and choice written once) ===
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except where there is none to show: "(default: None)" after a
    help text that says what happens without the flag read as noise."""

    def _get_help_string(self, action):
        if action.default is None or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """One `--<field>` flag per field of the dataclass `cls` (fields made with `field`), with
    its default, type, choices and help. Booleans are `--x` / `--no-x` (a field named `no_...`
    only `--no_...`)."""
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("flag", True) is False or "help" not in meta:
            continue
        if isinstance(f.default, bool) and f.name.startswith("no_"):
            # `--no_export` has no `--no-no_export`: a negative flag is only ever switched on
            parser.add_argument(f"--{f.name}", action="store_true", default=f.default,
                                help=meta["help"])
            continue
        if isinstance(f.default, bool):
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction,
                                default=f.default, help=meta["help"])
            continue
        kwargs = {"nargs": "?", "const": meta["const"]} if "const" in meta else {}
        parser.add_argument(f"--{f.name}", type=meta.get("type") or type(f.default),
                            default=f.default, choices=meta["choices"], help=meta["help"],
                            **kwargs)


def from_flags(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The dataclass `cls` from the parsed flags of its fields (ValueError on bad values)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if hasattr(args, f.name)}
    return cls(**{**values, **overrides})
