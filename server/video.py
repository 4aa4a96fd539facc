"""What a video is, as vLLM 0.32's default (OpenCV) video loader sees it, without importing vLLM
(0.33 and 0.34 count frames differently: ``server/vllm_rules.py``).

The engine decodes a ``video/mp4``-style video from memory with
``vllm.multimodal.video_decoders.opencv`` and samples it with
``vllm.multimodal.video.VideoBackend.compute_frames_index_to_sample`` (``--media-io-kwargs
{"video": {"num_frames": N}}``, no ``fps``). The rules are restated here, call for call, so that
the front end accepts exactly the videos the engine can encode (importing vLLM takes ~15 s and
pulls in torch; the front end imports neither):

1. ``cv2.VideoCapture(BytesIO(data), api, [])`` with the first stream-buffered backend that has a
   usable plugin ABI (``get_cv2_video_api``); not opened -> the engine fails.
2. Frame count: ``CAP_PROP_FRAME_COUNT``, corrected for mp4 edit lists by seeking to the end
   (``CAP_PROP_POS_AVI_RATIO = 1``): when the stream really ends there and the position is more
   than one frame short of the header's count, the position is the count
   (``get_video_metadata``). The seek back to frame 0 is what makes the engine read NO frame of a
   1-frame mp4 (``cv2`` lands past the only frame), which is why the front end must run the same
   calls rather than decode the file its own way.
3. Sampling: ``n = min(num_frames, total)`` (all when ``num_frames <= 0``), at least 1; all frames
   when ``n == total``, else ``np.linspace(0, total - 1, n, dtype=int)``.
4. Reading (no frame recovery): grab every frame up to the last sampled one, retrieve the sampled
   ones; a frame that fails to grab or retrieve is skipped (the engine then encodes fewer frames).

:func:`probe_video` runs 1-4 and reports what the engine would get. Where the engine would get no
frame at all but a plain decode from the start reads the video fine (the 1-frame mp4),
:func:`sequential_frames` decodes the sampled frames so that the front end can forward them as
vLLM's frame-list form (``data:video/jpeg;base64,<f1>,...``), which the engine reads with PIL.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any


@functools.cache
def stream_buffered_api() -> int | None:
    """vLLM's ``OpenCVVideoBackendMixin.get_cv2_video_api``."""
    import cv2.videoio_registry as vr

    for backend in vr.getStreamBufferedBackends():
        if not vr.hasBackend(backend):
            continue
        if not vr.isBackendBuiltIn(backend):
            _, abi, api = vr.getStreamBufferedBackendPluginVersion(backend)
            if abi < 1 or (abi == 1 and api < 2):
                continue
        return int(backend)
    return None


class _Capture:
    """A ``cv2.VideoCapture`` reading from memory, and the stream it reads: OpenCV does not keep
    the Python stream alive, and releasing a capture whose stream was freed crashes the process."""

    def __init__(self, data: bytes) -> None:
        import cv2

        self.stream = BytesIO(data)
        self.cap = cv2.VideoCapture(self.stream, stream_buffered_api(), [])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cap, name)

    def release(self) -> None:
        self.cap.release()
        self.stream.close()


def open_capture(data: bytes) -> Any:
    """vLLM's ``open_video_capture`` (None where the engine raises "Could not open")."""
    cap = _Capture(data)
    if not cap.isOpened():
        cap.release()
        return None
    return cap


def frame_count(cap: Any) -> int:
    """vLLM's ``get_video_metadata`` frame count, edit-list correction included."""
    import cv2

    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if total > 0 and cap.set(cv2.CAP_PROP_POS_AVI_RATIO, 1.0):
        visible = int(cap.get(cv2.CAP_PROP_POS_FRAMES))
        at_stream_end = not cap.grab()
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        if at_stream_end and 0 < visible < total - 1:
            total = visible
    return total


def sample_indices(total: int, num_frames: int) -> list[int]:
    """vLLM's ``VideoBackend.compute_frames_index_to_sample`` without ``fps`` (the front end sets
    only ``num_frames``). Same values as ``np.linspace(0, total - 1, n, dtype=int)``."""
    n = total
    if num_frames > 0:
        n = min(num_frames, total)
    n = max(1, n)
    if n == total:
        return list(range(n))
    if n == 1:
        return [0]
    step = (total - 1) / (n - 1)
    # numpy computes start + i * step and truncates toward zero; the last one is exactly the end
    return [int(i * step) for i in range(n - 1)] + [total - 1]


def read_valid(cap: Any, indices: list[int], *, keep: bool = False
               ) -> tuple[list[int], list[Any]]:
    """vLLM's ``_read_frames_no_recovery``: the sampled indices that decode (and, with ``keep``,
    the frames, BGR)."""
    wanted = set(indices)
    valid: list[int] = []
    frames: list[Any] = []
    for idx in range(max(indices) + 1):
        if not cap.grab():
            continue
        if idx in wanted:
            ok, frame = cap.retrieve()
            if ok:
                valid.append(idx)
                if keep:
                    frames.append(frame)
    return valid, frames


@dataclass(frozen=True)
class VideoProbe:
    """What the engine's loader gets from a video."""

    opened: bool
    width: int = 0
    height: int = 0
    total: int = 0  # frame count after the edit-list correction
    sampled: tuple[int, ...] = ()  # the indices the engine samples
    valid: tuple[int, ...] = ()  # those that decode: the frames the engine encodes

    @property
    def frames(self) -> int:
        return len(self.valid)


def probe_video(data: bytes, *, num_frames: int, max_frames: int, max_pixels: int,
                count_frames: Callable[[Any, bytes], int] | None = None) -> VideoProbe:
    """Run the engine's loader on ``data`` without keeping frames. Stops before decoding when the
    frame size exceeds ``max_pixels`` or the count exceeds ``max_frames`` (``valid`` is then
    empty and ``total``/``width``/``height`` say why). ``count_frames(cap, data)`` is the engine
    release's count (``server/vllm_rules.py``; default: 0.32's, :func:`frame_count`)."""
    import cv2

    cap = open_capture(data)
    if cap is None:
        return VideoProbe(opened=False)
    try:
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width <= 0 or height <= 0 or width * height > max_pixels:
            return VideoProbe(opened=True, width=width, height=height)
        total = count_frames(cap, data) if count_frames else frame_count(cap)
        if total > max_frames:
            return VideoProbe(opened=True, width=width, height=height, total=total)
        indices = sample_indices(total, num_frames)
        valid, _ = read_valid(cap, indices)
        return VideoProbe(opened=True, width=width, height=height, total=total,
                          sampled=tuple(indices), valid=tuple(valid))
    finally:
        cap.release()


def sequential_frames(data: bytes, *, num_frames: int, max_frames: int) -> list[Any]:
    """The video decoded from the start with no seek (what the engine's loader misses on, e.g.,
    a 1-frame mp4): count the frames (bounded by ``max_frames``), sample them with the engine's
    rule, return the sampled frames (BGR). Empty when nothing decodes or there are too many."""
    cap = open_capture(data)
    if cap is None:
        return []
    try:
        total = 0
        while cap.grab():
            total += 1
            if total > max_frames:
                return []
    finally:
        cap.release()
    if total == 0:
        return []
    cap = open_capture(data)
    if cap is None:  # pragma: no cover - it opened a moment ago
        return []
    try:
        _, frames = read_valid(cap, sample_indices(total, num_frames), keep=True)
    finally:
        cap.release()
    return frames
