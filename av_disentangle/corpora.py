"""File names of the speech corpora read here: who speaks, and what, from a clip's path.

TF-free (standard library only), shared by the real-voices world builder
(`pipelines.voices`) and the trial makers (`av_disentangle.evaluation.trials`).

  LibriSpeech      `<speaker>-<chapter>-<utterance>.<ext>` or `<speaker>/<chapter>/<utterance>.<ext>`
                   (speaker, chapter and utterance are decimal numbers)
  Speech Commands  `<speaker>/<word>_<speaker>_nohash_<n>.<ext>` (v0.01 / v0.02: speaker = 8 hex
                   digits, the same in the folder and the name; `word` = the spoken command)
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

LIBRISPEECH = "librispeech"
SPEECH_COMMANDS = "speech_commands"

_LIBRISPEECH_FLAT = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_SPEECH_COMMANDS = re.compile(r"^(?P<word>[a-z_]+?)_(?P<speaker>[0-9a-f]{8})_nohash_(?P<n>\d+)$")


@dataclasses.dataclass(frozen=True)
class ClipName:
    """What a clip's path says: `utterance_id` is unique within a corpus; `word` is the spoken
    word for Speech Commands and "" for LibriSpeech (whose content the name does not say)."""

    corpus: str
    speaker: str
    utterance_id: str
    word: str = ""


def _stem(path: pathlib.Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def parse_librispeech(path: str | pathlib.Path) -> ClipName | None:
    """`<spk>-<chap>-<utt>.ext` or `<spk>/<chap>/<utt>.ext` -> utterance id `<spk>-<chap>-<utt>`."""
    path = pathlib.Path(path)
    stem = _stem(path)
    m = _LIBRISPEECH_FLAT.match(stem)
    if m:
        return ClipName(LIBRISPEECH, m.group(1), stem)
    parts = path.parts
    if len(parts) >= 3 and parts[-3].isdigit() and parts[-2].isdigit() and stem.isdigit():
        return ClipName(LIBRISPEECH, parts[-3], f"{parts[-3]}-{parts[-2]}-{stem}")
    return None


def parse_speech_commands(path: str | pathlib.Path) -> ClipName | None:
    """`<speaker>/<word>_<speaker>_nohash_<n>.ext` -> utterance id `<word>_<speaker>_nohash_<n>`.

    None when the name is not Speech Commands' or its speaker differs from its folder's name
    (a file moved into another speaker's folder must not be scored as that speaker)."""
    path = pathlib.Path(path)
    stem = _stem(path)
    m = _SPEECH_COMMANDS.match(stem)
    if not m or path.parent.name != m.group("speaker"):
        return None
    return ClipName(SPEECH_COMMANDS, m.group("speaker"), stem, m.group("word"))


def parse_clip_name(path: str | pathlib.Path) -> ClipName | None:
    """The first corpus whose naming `path` follows (LibriSpeech, then Speech Commands)."""
    return parse_librispeech(path) or parse_speech_commands(path)


EXPECTED_NAMES = ("<speaker>-<chapter>-<utterance>{ext} or <speaker>/<chapter>/<utterance>{ext} "
                  "(LibriSpeech), or <speaker>/<word>_<speaker>_nohash_<n>{ext} with the same "
                  "8-hex-digit speaker (Speech Commands)")
"""The error text of a name no parser reads; `.format(ext=suffix)`."""
