"""The engine rules the front end mirrors, per vLLM release.

The front end accepts a medium only if the engine will read it the same way, so it restates a few
of vLLM's media rules (``server/video.py``, ``server/media.py``). Two changed in vLLM 0.33 and
are the same in 0.34; the backend's ``GET /version`` picks the set (:func:`rules_for`):

- **frame counting** (``video_decoders/opencv.py: get_video_metadata``). 0.32 counts on the
  capture the frames are then read from, and its seek back to frame 0 leaves a 1-frame mp4 with
  no frame to read. 0.33 counts on a capture of its own (the reading one is never seeked), and a
  header count <= 0 is replaced by a demuxer-only count (``demux_count_frames``).
- **colour conversion** (``multimodal/image.py: convert_image_mode``, called by
  ``ImageMediaIO``). 0.32 returns an RGB image as it is; 0.33 checks transparency first, so an
  RGB (or L) PNG with a ``tRNS`` chunk is put on white like an RGBA one.

Until a backend has told its version the front end uses 0.32's rules (the CPU engine's).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any

from earlytom_server import video

if TYPE_CHECKING:
    from PIL import Image


def has_transparency(img: Image.Image) -> bool:
    """vLLM's ``_has_transparency`` (0.32 = 0.34): RGBA/LA/PA, or a ``tRNS`` chunk."""
    return img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info


def on_white(img: Image.Image) -> Image.Image:
    """vLLM's ``rgba_to_rgb`` after ``convert("RGBA")``: transparency over a white background."""
    from PIL import Image

    rgba = img.convert("RGBA")
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.split()[3])
    return out


def to_rgb_032(img: Image.Image) -> Image.Image:
    """vLLM 0.32 ``ImageMediaIO._convert_image_mode`` to RGB: same mode first, then
    transparency."""
    if img.mode == "RGB":
        return img
    return on_white(img) if has_transparency(img) else img.convert("RGB")


def to_rgb_033(img: Image.Image) -> Image.Image:
    """vLLM 0.33/0.34 ``convert_image_mode(img, "RGB")``: transparency first, then same mode."""
    if has_transparency(img):
        return on_white(img)
    return img if img.mode == "RGB" else img.convert("RGB")


def count_on_reader(cap: Any, data: bytes) -> int:
    """vLLM 0.32 ``get_video_metadata(cap)``: on the capture the frames are read from."""
    return video.frame_count(cap)


def demux_count(data: bytes) -> int:
    """vLLM 0.33 ``demux_count_frames``: frames grabbed by OpenCV's demuxer-only mode (0 where
    the engine raises "Could not determine the number of video frames")."""
    import cv2

    stream = BytesIO(data)  # must outlive the capture (see video._Capture)
    cap = cv2.VideoCapture(stream, video.stream_buffered_api(), [cv2.CAP_PROP_FORMAT, -1])
    try:
        count = 0
        while cap.grab():
            count += 1
        return count
    finally:
        cap.release()
        stream.close()


def count_on_own_capture(cap: Any, data: bytes) -> int:
    """vLLM 0.33/0.34 ``get_video_metadata(data)``: a capture of its own (``cap``, the reading
    one, is left where it is); header count, a demuxer count when the header has none, else the
    edit-list correction of 0.32."""
    import cv2

    own = video.open_capture(data)
    if own is None:  # the engine opened it a moment before: it fails the same way
        return 0
    try:
        if int(own.get(cv2.CAP_PROP_FRAME_COUNT)) <= 0:
            return demux_count(data)
        return video.frame_count(own)
    finally:
        own.release()


@dataclass(frozen=True)
class EngineRules:
    """The rules of one vLLM release line."""

    release: str  # "0.32", "0.33" (0.34 has 0.33's)
    count_frames: Callable[[Any, bytes], int]  # (reading capture, bytes) -> frame count
    to_rgb: Callable[[Image.Image], Image.Image]


RULES_032 = EngineRules("0.32", count_on_reader, to_rgb_032)
RULES_033 = EngineRules("0.33", count_on_own_capture, to_rgb_033)
#: (major, minor) -> rules; the supported releases (earlytom_vllm.vllm.compat.SUPPORTED_VLLM).
RULES = {(0, 32): RULES_032, (0, 33): RULES_033, (0, 34): RULES_033}
DEFAULT = RULES_032


def release_of(version: str | None) -> tuple[int, int] | None:
    """``(major, minor)`` of a version string such as ``0.33.0`` or ``0.34.1.dev3+g12``."""
    m = re.match(r"\s*(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def rules_for(version: str | None) -> EngineRules:
    """The rules of the vLLM ``version`` (a backend's ``GET /version``); 0.32's for an unknown
    or unsupported one (the plugin refuses those at start-up)."""
    return RULES.get(release_of(version), DEFAULT)
