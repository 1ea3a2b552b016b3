"""What `pipelines.prepare` reads: one `ClipSpec` per input video, listed from a folder.

- `list_voxceleb2`: `DIR/mp4/<id>/<video>/<utt>.mp4` (or DIR is the mp4 folder) with the txt
  of each clip (`DIR/txt/...`, a sibling `txt/` folder, or beside the .mp4): its `Offset` and
  `Identity`; a missing or unreadable txt means offset 0 and the folder's identity, listed as a
  warning. The clips are face crops already (no detection).
- `list_videos`: any folder of videos (recursive), identity = the parent folder.
- `bundled_sample_specs`: the bundled sample clips (data/samples: VoxCeleb2-style crops, GRID).

TF-free and OpenCV-free: listing never decodes a file.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib

from av_disentangle import files
from av_disentangle.constants import VIDEO_EXTENSIONS

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT / "data" / "samples"


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """One input file and what to do with it.

    Attributes:
      path: the video file.
      track_id, video_id, identity: metadata written with the track.
      source: `voxceleb2` or `videos` (recorded in the manifest).
      av_offset_frames: offset to apply (VoxCeleb2 txt `Offset`).
      detect: True to detect/track/crop the face, False to resize whole frames.
      warnings: notes found while listing (e.g. a missing txt).
    """

    path: str
    track_id: str
    video_id: str = ""
    identity: str = ""
    source: str = "videos"
    av_offset_frames: int = 0
    detect: bool = True
    warnings: tuple[str, ...] = ()


def parse_voxceleb_txt(path: str | os.PathLike) -> dict[str, str]:
    """Reads the `Key : value` header of a VoxCeleb txt (Identity, Reference, Offset, ...)."""
    header = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                break  # the FRAME table follows the first blank line
            if ":" in line:
                key, value = line.split(":", 1)
                header[key.strip()] = value.strip().split()[0] if value.strip() else ""
    return header


def list_voxceleb2(input_dir: str | os.PathLike) -> list[ClipSpec]:
    """Lists `mp4/<id>/<video>/<utt>.mp4` files with offsets and identities from their txt."""
    root = pathlib.Path(input_dir)
    mp4_root = root / "mp4" if (root / "mp4").is_dir() else root
    txt_roots = [r for r in (root / "txt", mp4_root.parent / "txt") if r.is_dir()]
    specs = []
    for path in sorted(mp4_root.rglob("*.mp4")):
        rel = path.relative_to(mp4_root).with_suffix("")
        parts = rel.parts
        identity = parts[0] if len(parts) >= 2 else ""
        video_id = parts[-2] if len(parts) >= 2 else ""
        warnings = []
        candidates = [r / rel.with_suffix(".txt") for r in txt_roots] + [path.with_suffix(".txt")]
        txt = next((c for c in candidates if c.is_file()), None)
        offset = 0
        if txt is None:
            warnings.append("missing txt: offset 0 assumed, identity from folder name")
        else:
            try:
                header = parse_voxceleb_txt(txt)
                offset = int(header["Offset"])
                identity = header.get("Identity") or identity
            except (KeyError, ValueError, OSError) as e:
                warnings.append(f"unreadable txt {txt} ({e!r}): offset 0 assumed")
                offset = 0
        specs.append(ClipSpec(path=str(path), track_id=rel.as_posix(), video_id=video_id,
                              identity=identity, source="voxceleb2", av_offset_frames=offset,
                              detect=False, warnings=tuple(warnings)))
    return specs


def list_videos(input_dir: str | os.PathLike, detect: bool = True,
                prefix: str = "") -> list[ClipSpec]:
    """Lists video files (recursive). track_id = `prefix` + relative path without extension."""
    root = pathlib.Path(input_dir)
    paths = files.list_files(root, VIDEO_EXTENSIONS)
    stems = collections.Counter(p.relative_to(root).with_suffix("").as_posix() for p in paths)
    specs = []
    for path in paths:
        rel = path.relative_to(root)
        track_id = rel.with_suffix("").as_posix()
        if stems[track_id] > 1:  # a.mp4 and a.avi side by side
            track_id = rel.as_posix()
        identity = rel.parent.name if rel.parent.parts else root.name
        specs.append(ClipSpec(path=str(path), track_id=prefix + track_id,
                              video_id=prefix + track_id, identity=identity, source="videos",
                              detect=detect))
    return specs


def bundled_sample_specs() -> list[ClipSpec]:
    """The bundled sample clips: pcavs_vox2 mp4 (crops, no detection) + GRID mpg (detection)."""
    pcavs = [s for s in list_videos(SAMPLES_DIR / "pcavs_vox2", detect=False,
                                    prefix="pcavs_vox2/") if s.path.endswith(".mp4")]
    grid = [s for s in list_videos(SAMPLES_DIR / "grid", detect=True, prefix="grid/")
            if s.path.endswith(".mpg")]
    return pcavs + grid
