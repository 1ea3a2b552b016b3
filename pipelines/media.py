"""Decoding of talking-face videos with PyAV: frames at exactly 25 fps, audio at 16 kHz mono.

This module must stay free of TensorFlow: it runs inside the preparation worker processes.
The time base (25 fps, 16 kHz, 640 samples per frame) is `av_disentangle.constants`.

Timing is taken from frame TIMESTAMPS, never from the container's declared average rate
(real files lie: a bundled clip declares 1 fps while its frames are 0.04 s apart). Output
frame `j` is the decoded frame whose presentation time is nearest to `t0 + j / 25`, where
`t0` is the time of the first decoded video frame; the audio is aligned to the same `t0`,
so audio sample `j * 640` starts output frame `j`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os

import av
import numpy as np

from av_disentangle.constants import SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS
from av_disentangle.errors import UserError

log = logging.getLogger(__name__)

# Audio may be longer or shorter than the video by up to this many frames (80 ms) and is
# then silently padded / trimmed to F * 640 samples. AAC audio comes in 1024-sample packets
# (1.6 video frames at 16 kHz), so a 1-frame tolerance would flag ordinary files.
DEFAULT_MAX_AV_MISMATCH_FRAMES = 2.0

# If the container declares a frame count and we decode far fewer, the file is truncated.
_MIN_DECODED_FRACTION = 0.9


class MediaError(UserError):
    """A file that cannot be used. `reason` is a short machine-readable code.

    Codes: `corrupt` (unreadable / truncated), `no_video`, `no_audio`, `empty` (no frames
    or no samples decoded).
    """

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


@dataclasses.dataclass(frozen=True)
class DecodedClip:
    """A decoded, synchronised clip.

    Attributes:
      frames: (F, H, W, 3) uint8 RGB at exactly 25 fps.
      audio: (F * 640,) int16 mono PCM at 16 kHz; sample `i * 640` starts frame `i`.
      warnings: human-readable notes (e.g. audio/video length mismatch that was trimmed).
      source_sample_rate, source_channels: of the first audio stream before conversion.
      source_num_frames: number of video frames actually decoded (before resampling).
      av_offset_frames: offset applied to the audio (see `records.py` for the convention).
      first_frame: source frames dropped at the start because the offset left them without
        audio (`heard_frames`): frame i here is frame i + first_frame of the source.
    """

    frames: np.ndarray
    audio: np.ndarray
    warnings: tuple[str, ...] = ()
    source_sample_rate: int = 0
    source_channels: int = 0
    source_num_frames: int = 0
    av_offset_frames: int = 0
    first_frame: int = 0

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def _frame_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    # even sizes keep swscale happy for yuv420p sources
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def shift_audio(audio: np.ndarray, offset_frames: int) -> np.ndarray:
    """Applies a SyncNet audio-video offset, keeping the length; vacated samples become zeros.

    Offset `k` (VoxCeleb2's txt `Offset`, computed by SyncNet) means the sound of video frame
    `i` is at audio frame `i - k` of the source: syncnet_python SyncNetInstance.py,
    `calc_pdist` compares video feature i with audio feature i + j - vshift and reports
    `offset = opt.vshift - minidx`, i.e. audio frame i - offset; syncnet_trainer
    DatasetLoader.py reads video from `startidx + offset - 1` for audio from `startidx`, the
    same sign (its extra frame is discussed in `records.py`). Positive `k`: the audio leads.
    The output is therefore the source delayed by k frames, `out[s] = audio[s - k * 640]`
    (zero where that index is out of range), so sample `i * 640` starts frame `i`'s sound.

    Args:
      audio: (S,) samples.
      offset_frames: k.
    Returns:
      (S,) array of the same dtype.
    """
    shift = int(offset_frames) * SAMPLES_PER_FRAME
    out = np.zeros_like(audio)
    n = audio.shape[0]
    if shift >= 0:
        if shift < n:
            out[shift:] = audio[: n - shift]
    else:
        if -shift < n:
            out[: n + shift] = audio[-shift:]
    return out


def heard_frames(num_frames: int, num_samples: int, offset_frames: int) -> tuple[int, int]:
    """The frames [first, stop) whose sound `shift_audio(audio, offset_frames)` kept: the
    others got its zero fill. With offset k > 0 the first k frames have no audio (their sound
    is before the file's start), with k < 0 the last |k| frames of the audio's length.

    The reference trainer draws its windows only there (syncnet_trainer DatasetLoader.py:
    `firststart = 2 - min(offset, 0)`, `laststart = len - max(offset, 0) - (T + 2)`); keeping
    the zero-filled frames would train the sync task on silence for them.

    Args:
      num_frames: F, video frames; num_samples: S, audio samples before the shift.
    """
    first = max(offset_frames, 0)
    stop = min(num_frames, (num_samples + min(offset_frames, 0) * SAMPLES_PER_FRAME)
               // SAMPLES_PER_FRAME)
    return first, max(stop, first)


def reconcile_lengths(
    frames: np.ndarray,
    audio: np.ndarray,
    max_mismatch_frames: float = DEFAULT_MAX_AV_MISMATCH_FRAMES,
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Makes `len(audio) == len(frames) * 640`.

    A mismatch of at most `max_mismatch_frames` pads the audio with zeros or trims it.
    A larger one trims both streams to the shorter one and returns a warning.

    Args:
      frames: (F, H, W, 3).
      audio: (S,) int16.
    Returns:
      (frames (F', H, W, 3), audio (F' * 640,), warning or None).
    """
    num_frames = frames.shape[0]
    audio_frames = audio.shape[0] / SAMPLES_PER_FRAME
    warning = None
    if abs(audio_frames - num_frames) > max_mismatch_frames:
        keep = min(num_frames, int(audio_frames))
        warning = (f"audio/video length mismatch: video {num_frames} frames "
                   f"({num_frames / VIDEO_FPS:.2f} s), audio {audio_frames:.1f} frames "
                   f"({audio.shape[0] / SAMPLE_RATE:.2f} s); trimmed both to {keep} frames")
        num_frames = keep
        frames = frames[:keep]
    target = num_frames * SAMPLES_PER_FRAME
    if audio.shape[0] >= target:
        audio = audio[:target]
    else:
        audio = np.concatenate([audio, np.zeros(target - audio.shape[0], audio.dtype)])
    return frames, audio, warning


def decode_clip(
    path: str | os.PathLike,
    av_offset_frames: int = 0,
    max_side: int | None = None,
    max_mismatch_frames: float = DEFAULT_MAX_AV_MISMATCH_FRAMES,
    threads: int = 0,
) -> DecodedClip:
    """Decodes a video file with audio into synchronised 25 fps frames and 16 kHz mono audio.

    Args:
      path: video file (anything FFmpeg reads: mp4, mpg, avi, mov, mkv, webm, ...).
      av_offset_frames: audio-video offset `k` to apply (sound of frame i at (i+k)/25 s).
      max_side: if set, frames whose longer side exceeds it are downscaled while decoding.
      max_mismatch_frames: see `reconcile_lengths`.
      threads: decoder threads (0 = FFmpeg's choice; 1 in worker pools).
    Returns:
      DecodedClip with frames (F, H, W, 3) uint8 and audio (F * 640,) int16.
    Raises:
      MediaError: corrupt/unreadable/truncated file, no video stream, no audio stream, or
        nothing decoded.
    """
    path = str(path)
    with _opened(path) as container:
        return _decode_open(container, path, av_offset_frames, max_side, max_mismatch_frames,
                            threads)


@contextlib.contextmanager
def _opened(path: str):
    """Opens a media file with PyAV and closes it; PyAV/OS errors while opening or decoding
    become `MediaError(path, "corrupt", ...)` naming the file."""
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as e:
        raise MediaError(path, "corrupt", f"cannot open: {e}") from e
    try:
        yield container
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError, MemoryError) as e:
        raise MediaError(path, "corrupt", f"decoding failed: {e}") from e
    finally:
        container.close()


def _decode_open(container, path: str, av_offset_frames: int, max_side: int | None,
                 max_mismatch_frames: float, threads: int) -> DecodedClip:
    if not container.streams.video:
        raise MediaError(path, "no_video", "no video stream")
    if not container.streams.audio:
        raise MediaError(path, "no_audio", "no audio stream")
    vstream = container.streams.video[0]
    astream = container.streams.audio[0]
    if threads:
        vstream.thread_count = threads
    vstream.thread_type = "AUTO"
    width, height = vstream.codec_context.width, vstream.codec_context.height
    if not width or not height:
        raise MediaError(path, "corrupt", "video stream has no frame size")
    out_w, out_h = _frame_size(width, height, max_side)
    fallback_rate = float(vstream.guessed_rate or vstream.average_rate or VIDEO_FPS)
    declared_frames = int(vstream.frames or 0)
    src_rate = int(astream.codec_context.sample_rate or astream.rate or 0)
    src_channels = int(astream.codec_context.channels or 0)

    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    audio_chunks: list[np.ndarray] = []
    audio_t0: float | None = None

    out_frames: list[np.ndarray] = []  # resampled to 25 fps while decoding
    video_t0: float | None = None
    prev_img: np.ndarray | None = None
    prev_t: float | None = None
    diffs: list[float] = []
    decoded = 0
    eps = 1e-3 / VIDEO_FPS

    def emit_until(limit: float) -> None:
        # output frame j (time video_t0 + j/25) takes prev_img while its time < limit
        while video_t0 + len(out_frames) / VIDEO_FPS < limit - eps:
            out_frames.append(prev_img)

    for packet in container.demux(vstream, astream):
        try:
            frames = packet.decode()
        except av.InvalidDataError as e:  # a damaged packet: skip it, keep going
            log.debug("%s: bad packet skipped (%s)", path, e)
            continue
        for frame in frames:
            if packet.stream.type == "video":
                t = frame.time
                if t is None:
                    t = (prev_t + 1.0 / fallback_rate) if prev_t is not None else 0.0
                img = frame.to_ndarray(format="rgb24", width=out_w, height=out_h)
                decoded += 1
                if prev_img is None:
                    video_t0 = t
                else:
                    if t <= prev_t:  # duplicate / backwards timestamp: keep the newer image
                        prev_img = img
                        continue
                    diffs.append(t - prev_t)
                    emit_until((prev_t + t) / 2)
                prev_img, prev_t = img, t
            else:
                if audio_t0 is None:
                    audio_t0 = frame.time if frame.time is not None else 0.0
                for rframe in resampler.resample(frame):
                    audio_chunks.append(rframe.to_ndarray().reshape(-1))
    for rframe in resampler.resample(None):
        audio_chunks.append(rframe.to_ndarray().reshape(-1))

    if prev_img is None:
        raise MediaError(path, "corrupt", "no video frame could be decoded")
    if declared_frames > 10 and decoded < _MIN_DECODED_FRACTION * declared_frames:
        raise MediaError(path, "corrupt",
                         f"truncated: decoded {decoded} of {declared_frames} declared frames")
    frame_dur = float(np.median(diffs)) if diffs else 1.0 / VIDEO_FPS
    emit_until(prev_t + frame_dur)
    if not out_frames:
        out_frames.append(prev_img)
    frames_arr = np.stack(out_frames)

    audio = (np.concatenate(audio_chunks).astype(np.int16) if audio_chunks
             else np.zeros(0, np.int16))
    if audio.shape[0] == 0:
        raise MediaError(path, "no_audio", "audio stream has no decodable samples")
    # align the audio start to the first video frame
    lead = int(round((audio_t0 - video_t0) * SAMPLE_RATE))
    if lead > 0:
        audio = np.concatenate([np.zeros(lead, np.int16), audio])
    elif lead < 0:
        audio = audio[-lead:]

    warnings = []
    first = 0
    if av_offset_frames:
        first, stop = heard_frames(frames_arr.shape[0], audio.shape[0], av_offset_frames)
        valid_end = audio.shape[0] + min(av_offset_frames, 0) * SAMPLES_PER_FRAME
        audio = shift_audio(audio, av_offset_frames)[first * SAMPLES_PER_FRAME:valid_end]
        frames_arr = frames_arr[first:stop]  # no frame keeps the shift's zero fill
        if frames_arr.shape[0] == 0:
            raise MediaError(path, "empty", f"no frame has audio after applying the AV "
                                            f"offset of {av_offset_frames} frames")
    frames_arr, audio, warning = reconcile_lengths(frames_arr, audio, max_mismatch_frames)
    if warning:
        warnings.append(warning)
    return DecodedClip(frames=frames_arr, audio=audio, warnings=tuple(warnings),
                       source_sample_rate=src_rate, source_channels=src_channels,
                       source_num_frames=decoded, av_offset_frames=int(av_offset_frames),
                       first_frame=first)


@dataclasses.dataclass(frozen=True)
class SourceAudio:
    """What an audio file held before `decode_audio_file` converted it (16 kHz mono)."""

    sample_rate: int
    channels: int


def decode_audio_file(path: str, sample_format: str = "s16",
                      source: list | None = None) -> np.ndarray:
    """Decodes any FFmpeg-readable audio file (wav, flac, m4a, or a video's first audio
    stream) to (S,) int16 mono at 16 kHz, with the same PyAV resampler settings as
    `decode_clip` (s16, mono, 16 kHz).

    Args:
      sample_format: "s16" (int16, as `decode_clip`) or "flt" (float32 in [-1, 1] as FFmpeg
        converts it; the same values / 32768 for 16-bit sources, and it keeps the NaN/Inf of
        a float file, which "s16" would turn into full-scale samples: `evaluate` reports them).
      source: a list to append the file's `SourceAudio` (rate, channels) to.

    Raises:
      MediaError: `corrupt` (cannot open / decode), `no_audio`, or `empty` (no samples).
    """
    path = str(path)
    dtype = {"s16": np.int16, "flt": np.float32}[sample_format]
    with _opened(path) as container:
        if not container.streams.audio:
            raise MediaError(path, "no_audio", "no audio stream")
        stream = container.streams.audio[0]
        if source is not None:  # the caller wants to know what was converted
            source.append(SourceAudio(int(stream.codec_context.sample_rate or 0),
                                      int(stream.codec_context.channels or 0)))
        resampler = av.AudioResampler(format=sample_format, layout="mono", rate=SAMPLE_RATE)
        chunks = []
        for frame in container.decode(stream):
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
        chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    audio = np.concatenate(chunks).astype(dtype) if chunks else np.zeros(0, dtype)
    if audio.shape[0] == 0:
        raise MediaError(path, "empty", "no audio samples decoded")
    return audio


def decode_video(path: str | os.PathLike, av_offset_frames: int = 0,
                 max_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decodes a video file; see `decode_clip` (warnings are logged).

    Returns:
      frames: (F, H, W, 3) uint8 RGB at exactly 25 fps (resampled by frame timestamps).
      audio: (F * 640,) int16 mono 16 kHz, sample `i * 640` starting frame `i`.
    Raises:
      MediaError: corrupt file, no video stream or no audio stream.
    """
    clip = decode_clip(path, av_offset_frames=av_offset_frames, max_side=max_side)
    for w in clip.warnings:
        log.warning("%s: %s", path, w)
    return clip.frames, clip.audio
