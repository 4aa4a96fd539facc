"""Media checks: every video/image URL is fetched and verified here before a backend sees it.

Accepted URLs:

- ``data:<mime>;base64,<payload>``: valid base64, ``video/*`` for videos and ``image/*`` for images,
  decoded size within the limit. ``data:video/jpeg;base64,<f1>,<f2>,...`` is vLLM's frame-list form.
- ``http(s)://``: fetched only from public addresses, within a byte cap and a timeout
  (``media_sources.py``). The backend gets the bytes as a data URL, so it never fetches an
  untrusted URL.
- ``file://`` paths that resolve (symlinks followed) inside the media directory
  (``media_sources.py``). They are forwarded as ``file://`` when inside the backend's
  ``--allowed-local-media-path``, else as a data URL.

Every video is read the way the engine's loader reads it (``server/video.py``: vLLM 0.32's
in-memory OpenCV loader, its edit-list correction and frame sampling, restated call for call), so
what passes here is what the engine can encode: a video the engine would read no frame of, or
only part of, is a 400 naming the parameter -- except when a plain decode reads it (a 1-frame
mp4: the engine's seek skips its only frame), which is then forwarded as vLLM's frame-list form.
Images are decoded as the engine decodes them (PIL, EXIF orientation, RGB), from a smaller list
of formats (JPEG, PNG, WebP, GIF, BMP, TIFF). Width x height is checked against ``max_pixels``
before anything is decoded.

Every parse of these untrusted strings and bytes refuses with :class:`MediaError` (a 4xx), never
an exception of another class: odd media types, invalid base64, undecodable images of any kind
(and, in ``media_sources.py``, hostile paths and host names).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from earlytom_server import video as engine_video
from earlytom_server.media_sources import (  # MediaError, MediaPolicy: this module's API too
    MediaError,
    MediaPolicy,
    MediaSources,
    file_url,
    is_inside,
)
from earlytom_server.vllm_rules import DEFAULT as DEFAULT_RULES
from earlytom_server.vllm_rules import EngineRules, rules_for

if TYPE_CHECKING:
    from PIL import Image

_JPEG_QUALITY = 95
#: Image formats accepted (PIL names; all in vLLM 0.32's ``ALLOWED_IMAGE_FORMATS``).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
#: ``type/subtype`` of a data URL (RFC 6838 restricted-name characters).
_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


@dataclass(frozen=True)
class PreparedVideo:
    """A checked video: the URL to forward, the frames the backend will sample, and ``key``, a
    digest of its content (the bytes checked; for a frame list, its frames in order): the same
    video gives the same key however it was sent, so requests about it can go to one backend."""

    url: str
    frames: int
    key: str = ""


def media_digest(*blobs: bytes) -> str:
    """A short content digest of ``blobs`` in order (routing only: not a security boundary)."""
    h = hashlib.blake2b(digest_size=16)
    for blob in blobs:
        h.update(blob)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Pure helpers


def sample_indices(total: int, num_frames: int) -> list[int]:
    """The frames vLLM samples from ``total`` (see :func:`video.sample_indices`); [] for none."""
    return engine_video.sample_indices(total, num_frames) if total > 0 else []


def parse_data_url(url: str, *, param: str | None) -> tuple[str, str]:
    """``data:<mime>[;...];base64,<payload>`` -> (lower-cased mime, payload). One copy of the
    payload (a video's can be 100 MiB)."""
    comma = url.find(",", 5)
    if comma < 0:
        raise MediaError("malformed data URL: no ',' after the media type", param=param)
    header, payload = url[5:comma], url[comma + 1:]
    fields = [f.strip() for f in header.split(";")]
    mime = fields[0].lower()
    if "base64" not in (f.lower() for f in fields[1:]):
        raise MediaError("data URLs must be base64-encoded (data:<type>;base64,...)", param=param)
    if not _MIME.fullmatch(mime):
        raise MediaError(f"data URL has no valid media type: {mime[:60]!r}", param=param)
    return mime, payload


def decode_base64(payload: str, *, param: str | None, limit: int, what: str) -> bytes:
    if len(payload) // 4 * 3 > limit + 3:
        raise MediaError(f"{what} is larger than the limit of {limit} bytes", param=param,
                         code="media_too_large")
    try:  # strict: only the base64 alphabet and correct padding (as validate=True checks),
        # read from the str itself (b64decode would first copy it into bytes)
        data = _a2b(payload)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(f"invalid base64 in the {what} data URL: {exc}", param=param,
                         code="invalid_base64") from None
    if not data:
        raise MediaError(f"the {what} data URL is empty", param=param)
    if len(data) > limit:
        raise MediaError(f"{what} is larger than the limit of {limit} bytes", param=param,
                         code="media_too_large")
    return data


def _a2b(payload: str) -> bytes:
    if sys.version_info >= (3, 11):
        return binascii.a2b_base64(payload, strict_mode=True)
    return base64.b64decode(payload, validate=True)  # pragma: no cover - Python 3.10



# --------------------------------------------------------------------------------------------------
# Decoding (blocking; run in worker threads)


def _too_large(width: int, height: int, max_pixels: int, what: str, param: str | None
               ) -> MediaError:
    return MediaError(f"the {what} is {width}x{height} = {width * height} pixels; the limit is "
                      f"{max_pixels}", param=param, code="media_too_large")


def check_video(data: bytes, *, num_frames: int, max_frames: int, max_pixels: int,
                param: str | None = None, rules: EngineRules = DEFAULT_RULES
                ) -> engine_video.VideoProbe:
    """What the engine's loader gets from ``data``, or :class:`MediaError` where it gets less
    than a whole video. A probe with no valid frame but a sequential decode that works is
    returned as is (the caller re-encodes it)."""
    try:
        probe = engine_video.probe_video(data, num_frames=num_frames, max_frames=max_frames,
                                         max_pixels=max_pixels, count_frames=rules.count_frames)
    except MediaError:
        raise
    except Exception as exc:  # cv2.error and whatever a hostile container makes OpenCV raise
        raise MediaError(f"the video could not be read ({exc.__class__.__name__})",
                         param=param, code="invalid_video") from None
    if not probe.opened:
        raise MediaError("the video could not be opened: not a video, or truncated/corrupt",
                         param=param, code="invalid_video")
    if probe.width <= 0 or probe.height <= 0:
        raise MediaError("the video has no picture (zero frame size)", param=param,
                         code="invalid_video")
    if probe.width * probe.height > max_pixels:
        raise _too_large(probe.width, probe.height, max_pixels, "video frame", param)
    if probe.total > max_frames:
        raise MediaError(f"the video has {probe.total} frames; the limit is {max_frames}",
                         param=param, code="too_many_frames")
    if probe.frames == 0:
        return probe
    failed = [i for i in probe.sampled if i not in set(probe.valid)]
    # Headers sometimes over-count by one frame: only a missing last frame is forgiven.
    if failed and (len(failed) > 1 or failed[0] != probe.sampled[-1]):
        raise MediaError(
            f"the video is truncated or corrupt: {len(failed)} of {len(probe.sampled)} sampled "
            "frames do not decode, so the model would not see the whole video", param=param,
            code="invalid_video")
    return probe


def inspect_video_bytes(data: bytes, *, num_frames: int, max_frames: int,
                        max_pixels: int = 4096 * 4096, param: str | None = None,
                        rules: EngineRules = DEFAULT_RULES) -> tuple[int, str | None]:
    """(frames the engine encodes, a frame-list data URL to forward instead, or None), by the
    rules of the engine's vLLM release."""
    probe = check_video(data, num_frames=num_frames, max_frames=max_frames,
                        max_pixels=max_pixels, param=param, rules=rules)
    if probe.frames:
        return probe.frames, None
    try:
        frames = engine_video.sequential_frames(data, num_frames=num_frames,
                                                max_frames=max_frames)
    except Exception:
        frames = []
    if not frames:
        raise MediaError("the video has no frame the model can read (the engine's video loader "
                         "decodes none of it: truncated, corrupt, or an unsupported codec)",
                         param=param, code="invalid_video")
    return len(frames), frames_to_jpeg_video([_bgr_to_image(f) for f in frames])


def inspect_video_file(path: str | os.PathLike[str], *, num_frames: int, max_frames: int,
                       max_pixels: int = 4096 * 4096, param: str | None = None) -> int:
    """Frames the engine encodes from the video file (it reads files into memory too)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise MediaError(f"cannot read the video file: {exc.__class__.__name__}",
                         param=param) from None
    return inspect_video_bytes(data, num_frames=num_frames, max_frames=max_frames,
                               max_pixels=max_pixels, param=param)[0]


def _bgr_to_image(frame: Any) -> Image.Image:
    from PIL import Image

    return Image.fromarray(frame[:, :, ::-1].copy())


def decode_image(data: bytes, *, param: str | None = None, max_pixels: int = 4096 * 4096,
                 rules: EngineRules = DEFAULT_RULES) -> Image.Image:
    """The image as the engine loads it (``ImageMediaIO.load_bytes``: PIL, EXIF orientation,
    RGB), or :class:`MediaError`. The size is checked before the pixels are decoded."""
    from PIL import Image, ImageOps

    try:
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ValueError("zero size")
        if width * height > max_pixels:
            raise _too_large(width, height, max_pixels, "image", param)
        with contextlib.suppress(Exception):  # vLLM ignores a broken EXIF block too
            img = ImageOps.exif_transpose(img) or img
        img.load()
        return rules.to_rgb(img)
    except MediaError:
        raise
    except Exception:  # OSError, SyntaxError, struct.error, ValueError, ... from PIL's plugins
        raise MediaError("not a decodable image (JPEG, PNG, WebP, GIF, BMP or TIFF expected)",
                         param=param, code="invalid_image") from None


def frames_to_jpeg_video(frames: Sequence[Image.Image]) -> str:
    """Frames -> ``data:video/jpeg;base64,<f1>,<f2>,...`` (all resized to the first frame's size,
    which vLLM needs to stack them)."""
    from PIL import Image

    size = frames[0].size
    parts = []
    for frame in frames:
        if frame.size != size:
            frame = frame.resize(size, Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        frame.save(buf, "JPEG", quality=_JPEG_QUALITY)
        parts.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return "data:video/jpeg;base64," + ",".join(parts)


# --------------------------------------------------------------------------------------------------
# The processor


class MediaProcessor(MediaSources):
    """Checks and rewrites media URLs for the backend (async; decoding runs in threads)."""

    def __init__(self, policy: MediaPolicy, *,
                 vllm_version: Callable[[], str | None] | None = None) -> None:
        super().__init__(policy)
        self._vllm_version = vllm_version  # the backends' vLLM (BackendPool.vllm_version)
        self._limiter = anyio.CapacityLimiter(policy.max_concurrent_decodes)

    @property
    def rules(self) -> EngineRules:
        """The media rules of the backends' vLLM release (server/vllm_rules.py)."""
        return rules_for(self._vllm_version() if self._vllm_version else None)

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(
            lambda: fn(*args, **kwargs), limiter=self._limiter)

    # -- videos ---------------------------------------------------------------------------------
    def _check(self, data: bytes, param: str | None) -> tuple[int, str | None, str]:
        """(frames, replacement URL or None, content digest), in a worker thread."""
        p = self.policy
        frames, replacement = inspect_video_bytes(
            data, num_frames=p.num_frames, max_frames=p.max_video_frames,
            max_pixels=p.max_pixels, param=param, rules=self.rules)
        return frames, replacement, media_digest(data)

    async def video(self, url: str, *, param: str | None = None) -> PreparedVideo:
        p = self.policy
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            mime, payload = parse_data_url(url, param=param)
            if not mime.startswith("video/"):
                raise MediaError(f"video_url data must have a video/* media type, got {mime}",
                                 param=param, code="invalid_media_type")
            if mime == "video/jpeg":  # vLLM's frame-list form
                return await self._frame_list(payload.split(","), param=param)
            data = decode_base64(payload, param=param, limit=p.max_video_bytes, what="video")
            frames, replacement, key = await self._run(self._check, data, param)
            del data
            if replacement is None and not url.startswith(f"data:{mime};base64,"):
                replacement = f"data:{mime};base64,{payload}"  # the header normalised
            return PreparedVideo(url=replacement or url, frames=frames, key=key)
        if scheme in ("http", "https"):
            data, ctype = await self.fetch(url, limit=p.max_video_bytes, param=param, what="video")
            frames, replacement, key = await self._run(self._check, data, param)
            mime = ctype if ctype and _MIME.fullmatch(ctype) and ctype.startswith("video/") \
                and ctype != "video/jpeg" else "video/mp4"
            return PreparedVideo(
                url=replacement or f"data:{mime};base64,{base64.b64encode(data).decode()}",
                frames=frames, key=key)
        if scheme == "file":
            path = self.local_path(url, param=param, limit=p.max_video_bytes, what="video")
            data = await self._read(path, param=param, what="video")
            frames, replacement, key = await self._run(self._check, data, param)
            if replacement is not None:
                return PreparedVideo(url=replacement, frames=frames, key=key)
            if self._backend_dir is not None and is_inside(path, self._backend_dir):
                return PreparedVideo(url=file_url(path), frames=frames, key=key)
            return PreparedVideo(url=f"data:video/mp4;base64,{base64.b64encode(data).decode()}",
                                 frames=frames, key=key)
        raise MediaError("video_url must be a data:, http(s):// or file:// URL", param=param,
                         code="unsupported_url")

    async def _read(self, path: Path, *, param: str | None, what: str) -> bytes:
        try:
            return await anyio.Path(path).read_bytes()
        except OSError as exc:  # removed or made unreadable since it was checked
            raise MediaError(f"cannot read the {what} file: {exc.__class__.__name__}",
                             param=param) from None

    async def _frame_list(self, payloads: list[str], *, param: str | None) -> PreparedVideo:
        p = self.policy
        if len(payloads) > p.max_video_frames:
            raise MediaError(f"{len(payloads)} frames; the limit is {p.max_video_frames}",
                             param=param, code="too_many_frames")
        picked = [payloads[i] for i in sample_indices(len(payloads), p.num_frames)]
        total = 0
        blobs = []
        for payload in picked:
            blob = decode_base64(payload, param=param, limit=p.max_image_bytes, what="frame")
            total += len(blob)
            if total > p.max_video_bytes:
                raise MediaError(f"video is larger than the limit of {p.max_video_bytes} bytes",
                                 param=param, code="media_too_large")
            blobs.append(blob)
        return await self._encode_frames(blobs, params=[param] * len(blobs))

    async def _encode_frames(self, blobs: list[bytes], *, params: list[str | None]
                             ) -> PreparedVideo:
        max_pixels = self.policy.max_pixels

        def work() -> tuple[str, str]:
            images = [decode_image(b, param=pr, max_pixels=max_pixels, rules=self.rules)
                      for b, pr in zip(blobs, params, strict=True)]
            return frames_to_jpeg_video(images), media_digest(*blobs)

        url, key = await self._run(work)
        return PreparedVideo(url=url, frames=len(blobs), key=key)

    async def frames_as_video(self, urls: Sequence[tuple[str, str | None]]) -> PreparedVideo:
        """Image URLs (with their params) -> one ``data:video/jpeg`` video of at most
        ``num_frames`` uniformly chosen frames."""
        p = self.policy
        if len(urls) > p.max_video_frames:
            raise MediaError(f"{len(urls)} frames; the limit is {p.max_video_frames}",
                             param="earlytom.frames_as_video", code="too_many_frames")
        picked = [urls[i] for i in sample_indices(len(urls), p.num_frames)]
        blobs: list[bytes] = []
        total = 0
        for url, param in picked:
            blob = await self.image_bytes(url, param=param)
            total += len(blob)
            if total > p.max_video_bytes:
                raise MediaError(f"the frames exceed the video limit of {p.max_video_bytes} bytes",
                                 param=param, code="media_too_large")
            blobs.append(blob)
        return await self._encode_frames(blobs, params=[pr for _, pr in picked])

    # -- images ---------------------------------------------------------------------------------
    async def image_bytes(self, url: str, *, param: str | None = None) -> bytes:
        p = self.policy
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            mime, payload = parse_data_url(url, param=param)
            if not mime.startswith("image/"):
                raise MediaError(f"image_url data must have an image/* media type, got {mime}",
                                 param=param, code="invalid_media_type")
            return decode_base64(payload, param=param, limit=p.max_image_bytes, what="image")
        if scheme in ("http", "https"):
            data, _ = await self.fetch(url, limit=p.max_image_bytes, param=param, what="image")
            return data
        if scheme == "file":
            path = self.local_path(url, param=param, limit=p.max_image_bytes, what="image")
            return await self._read(path, param=param, what="image")
        raise MediaError("image_url must be a data:, http(s):// or file:// URL", param=param,
                         code="unsupported_url")

    async def image(self, url: str, *, param: str | None = None) -> str:
        """A checked image, as the URL to forward."""
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        max_pixels = self.policy.max_pixels
        if scheme == "file":
            path = self.local_path(url, param=param, limit=self.policy.max_image_bytes,
                                   what="image")
            data = await self._read(path, param=param, what="image")
            await self._run(decode_image, data, param=param, max_pixels=max_pixels,
                            rules=self.rules)
            if self._backend_dir is not None and is_inside(path, self._backend_dir):
                return file_url(path)
            mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
            return f"data:{mime};base64,{base64.b64encode(data).decode()}"
        data = await self.image_bytes(url, param=param)
        await self._run(decode_image, data, param=param, max_pixels=max_pixels,
                            rules=self.rules)
        if scheme == "data":
            return url
        mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"
