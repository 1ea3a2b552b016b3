"""Configuration as frozen dataclasses: model sizes, loss weights, training settings."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

DisentangleMode = Literal["confusion", "adversarial", "grl", "none"]
DISENTANGLE_MODES: tuple[str, ...] = ("confusion", "adversarial", "grl", "none")


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
    """

    face_size: int = 224
    face_channels: tuple[int, ...] = (96, 256, 256, 256, 256)
    audio_channels: tuple[int, ...] = (96, 256, 384, 256, 256)
    trunk_dim: int = 512
    head_hidden: int = 512
    embedding_dim: int = 1024
    num_mels: int = 40
    temporal_stride: int = 2

    def __post_init__(self) -> None:
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
               "tiny": ModelConfig.tiny}


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

    content_weight: float = 1.0
    identity_weight: float = 1.0
    disentangle_weight: float = 0.5
    disentangle: str = "confusion"
    grl_scale: float = 1.0
    symmetric_identity: bool = False
    face_identity_pooling: str = "random_step"
    gather_negatives: bool = False

    def __post_init__(self) -> None:
        if self.disentangle not in DISENTANGLE_MODES:
            raise ValueError(f"disentangle must be one of {DISENTANGLE_MODES}, "
                             f"got {self.disentangle!r}")
        if self.face_identity_pooling not in ("random_step", "mean"):
            raise ValueError("face_identity_pooling must be 'random_step' or 'mean', got "
                             f"{self.face_identity_pooling!r}")
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
