"""The data contract's constants, defined once.

TF-free (imports nothing but the standard library), so data preparation, tools and tests can
use it without starting TensorFlow.

Time base: video at 25 fps, audio mono 16 kHz, so one video frame is 640 audio samples
(40 ms). The log-mel front end (`av_disentangle.features`) uses a 10 ms hop, i.e. 160 samples,
so one video frame is 4 feature frames - the 4:1 ratio of the reference
(syncnet_trainer `models/SyncNetModelFBank.py`: 4 mel frames per video frame).
"""

from __future__ import annotations

SAMPLE_RATE = 16000
"""Audio sample rate everywhere (records, features, export, evaluation), Hz."""

VIDEO_FPS = 25.0
"""Video frame rate of prepared tracks, frames/s."""

SAMPLES_PER_FRAME = 640
"""Audio samples per video frame: SAMPLE_RATE / VIDEO_FPS."""

MEL_HOP_SAMPLES = 160
"""Hop of the log-mel front end: 10 ms at 16 kHz."""

MEL_FRAMES_PER_VIDEO_FRAME = SAMPLES_PER_FRAME // MEL_HOP_SAMPLES
"""Log-mel frames per video frame: 4."""

VIDEO_EXTENSIONS = (".mp4", ".mpg", ".mpeg", ".avi", ".mov", ".mkv", ".webm")
"""File endings read as video by `prepare` and `evaluate` (lower case)."""

AUDIO_EXTENSIONS = (".wav", ".flac", ".m4a", ".mp3", ".ogg", ".opus", ".aac")
"""File endings read as audio by labelled input and `evaluate` (lower case)."""

# Keys of a training batch (`pipelines.input.make_dataset` -> `DisentangleModel.train_step`).
FRAMES = "frames"
"""(B, T, S, S, 3) uint8: window 1, face crops of T video frames."""

AUDIO = "audio"
"""(B, T * SAMPLES_PER_FRAME) float32 in [-1, 1]: window 1 audio, synchronised with FRAMES."""

AUDIO_2 = "audio_2"
"""(B, T * SAMPLES_PER_FRAME) float32: a different window of the same track (identity term)."""

FACE_STEP = "face_step"
"""() int32, optional: the time step whose face identity embedding the identity task uses for
the whole batch (default: one drawn at random per batch, as the reference trainer); given to
reproduce a draw, e.g. the reference's in `tests/test_parity.py`."""

TRACK_ID = "track_id"
"""(B,) string: the track of each row (only with `InputConfig.include_ids`)."""

VIDEO_ID = "video_id"
"""(B,) string: the video of each row (only with `InputConfig.include_ids`)."""

# Keys of a labelled batch (`pipelines.labelled.make_labelled_dataset` ->
# `SpeakerClassifier.train_step`); the audio key is AUDIO above, a (B, S) float32 crop.
LABEL = "label"
"""(B,) int32: the speaker index of each labelled crop."""

assert SAMPLE_RATE == int(VIDEO_FPS) * SAMPLES_PER_FRAME
assert SAMPLES_PER_FRAME % MEL_HOP_SAMPLES == 0
