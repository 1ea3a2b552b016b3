"""Settings of a supervised (speaker-label) run and their flags. Free of TensorFlow, so that
`train.py --help` stays fast; the model and training code are in `supervised.py`."""

from __future__ import annotations

import argparse
import dataclasses

from av_disentangle.config import add_flags, check_choice, from_flags
from av_disentangle.config import field as _field

HEAD_NAMES: tuple[str, ...] = ("aam", "softmax")  # heads.HEADS


@dataclasses.dataclass(frozen=True)
class SupervisedConfig:
    """Settings of a supervised (speaker-label) run, on top of ModelConfig and TrainConfig.

    Attributes:
      labelled_audio: folder `<speaker>/.../<utt>.<audio extension>` (constants.AUDIO_EXTENSIONS)
        or TFRecord glob whose `identity` field is the label (pipelines/labelled.py).
      labels_per_speaker: utterances per speaker (0: all).
      num_speakers: speakers (0: all).
      label_seed: seed of the label-budget draw (independent of the training seed, so several
        training seeds can share one labelled subset).
      head: `aam` (additive angular margin softmax) or `softmax`.
      aam_margin, aam_scale: m (radians) and s of the AAM head (voxceleb_trainer /
        wespeaker: 0.2 and 30).
      freeze_trunk: train only the identity head and the classifier (see module docstring).
      init_from: self-supervised run dir, its weights file, SavedModel dir or syncnet_trainer
        checkpoint ("" = scratch; `pretrained.py`).
      crop_seconds: length of the random training crops.
    """

    labelled_audio: str = _field("", "folder <speaker>/.../<utt>.{wav,flac,m4a,mp3,ogg,"
                                 "opus,aac}, or a TFRecord glob whose `identity` field is the label")
    labels_per_speaker: int = _field(0, "labelled utterances per speaker (0: all)")
    num_speakers: int = _field(0, "labelled speakers (0: all)")
    label_seed: int = _field(0, "seed of the label-budget draw (written to config.json)")
    head: str = _field("aam", "speaker classifier: additive angular margin or plain softmax",
                       choices=HEAD_NAMES)
    aam_margin: float = _field(0.2, "AAM margin m in radians")
    aam_scale: float = _field(30.0, "AAM scale s")
    freeze_trunk: bool = _field(False, "train only the audio identity head and the classifier "
                                "(the trunk keeps its init weights and BatchNorm statistics)")
    # The flag is train.py's --init_from (flags.RunConfig, both objectives); this field
    # carries its value for a supervised run.
    init_from: str = _field("", "see RunConfig.init_from", flag=False)
    crop_seconds: float = _field(2.0, "length of the random training crops")

    def __post_init__(self) -> None:
        check_choice(self, "head")
        if self.labels_per_speaker < 0:
            raise ValueError(f"labels_per_speaker must be >= 0 (0: all), got "
                             f"{self.labels_per_speaker}")
        if self.num_speakers < 0 or self.num_speakers == 1:
            raise ValueError(f"num_speakers must be 0 (all) or >= 2, got {self.num_speakers}")
        if not 0.0 <= self.aam_margin < 1.5:
            raise ValueError(f"aam_margin must be in [0, 1.5) radians, got {self.aam_margin}")
        if self.aam_scale <= 0:
            raise ValueError(f"aam_scale must be > 0, got {self.aam_scale}")
        if self.crop_seconds < 0.52:
            raise ValueError(f"crop_seconds must be >= 0.52, got {self.crop_seconds}")


def add_supervised_flags(parser: argparse.ArgumentParser) -> None:
    """One `--<field>` flag per SupervisedConfig field, with its default, type and help
    (booleans: `--freeze_trunk` / `--no-freeze_trunk`)."""
    add_flags(parser, SupervisedConfig)


def supervised_config_from_flags(args: argparse.Namespace) -> SupervisedConfig:
    """SupervisedConfig from parsed flags (ValueError on bad values)."""
    return from_flags(SupervisedConfig, args)
