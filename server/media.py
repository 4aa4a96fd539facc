"""Media checks: every video/image URL is fetched and verified here before a backend sees it.

Accepted URLs:

- ``data:<mime>;base64,<payload>``: valid base64, ``video/*`` for videos and ``image/*`` for images,
  decoded size within the limit. ``data:video/jpeg;base64,<f1>,<f2>,...`` is vLLM's frame-list form.
- ``http(s)://``: the host is resolved and EVERY address must be public (no loopback, private,
  link-local, multicast, reserved, unspecified, CGNAT or other non-global address) unless
  ``allow_private_urls`` is set; the connection goes to the checked address (no DNS rebinding
  between check and connect), redirects are followed by hand and re-checked, the body is streamed
  with a byte cap and an overall timeout. The backend gets the bytes as a data URL, so it never
  fetches an untrusted URL.
- ``file://`` paths that resolve (symlinks followed) inside the media directory. They are forwarded
  as ``file://`` when inside the backend's ``--allowed-local-media-path``, else as a data URL.

Every video is read the way the engine's loader reads it (``server/video.py``: vLLM 0.32's
in-memory OpenCV loader, its edit-list correction and frame sampling, restated call for call), so
what passes here is what the engine can encode: a video the engine would read no frame of, or
only part of, is a 400 naming the parameter -- except when a plain decode reads it (a 1-frame
mp4: the engine's seek skips its only frame), which is then forwarded as vLLM's frame-list form.
Images are decoded as the engine decodes them (PIL, EXIF orientation, RGB), from a smaller list
of formats (JPEG, PNG, WebP, GIF, BMP, TIFF). Width x height is checked against ``max_pixels``
before anything is decoded.

Every parse of these untrusted strings and bytes refuses with :class:`MediaError` (a 4xx), never
an exception of another class: NUL bytes and invalid UTF-8 in ``file://`` paths, host names the
IDNA codec refuses, malformed IPv6 literals, odd media types, undecodable images of any kind.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import io
import ipaddress
import os
import re
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urljoin, urlsplit
from urllib.request import pathname2url

import anyio
import httpx

from earlytom_server import video as engine_video
from earlytom_server.vllm_rules import DEFAULT as DEFAULT_RULES
from earlytom_server.vllm_rules import EngineRules, rules_for

if TYPE_CHECKING:
    from PIL import Image

    from earlytom_server.settings import Settings

MAX_REDIRECTS = 3
_JPEG_QUALITY = 95
#: Image formats accepted (PIL names; all in vLLM 0.32's ``ALLOWED_IMAGE_FORMATS``).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
#: ``type/subtype`` of a data URL (RFC 6838 restricted-name characters).
_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


class MediaError(Exception):
    """A media URL the front end refuses (rendered as a 4xx OpenAI error)."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_media",
                 status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status


@dataclass(frozen=True)
class MediaPolicy:
    media_dir: Path | None
    backend_media_dir: Path | None = None
    allow_private_urls: bool = False
    max_video_bytes: int = 100 * 1024 * 1024
    max_image_bytes: int = 20 * 1024 * 1024
    max_video_frames: int = 10_000
    max_pixels: int = 4096 * 4096
    num_frames: int = 32
    download_timeout: float = 30.0
    max_concurrent_decodes: int = 2

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaPolicy:
        media_dir = settings.resolved_media_dir()
        backend_dir = settings.backend_media_dir
        if backend_dir is None and settings.spawns_backend:
            backend_dir = media_dir
        return cls(
            media_dir=media_dir,
            backend_media_dir=backend_dir,
            allow_private_urls=settings.allow_private_urls,
            max_video_bytes=settings.max_video_bytes,
            max_image_bytes=settings.max_image_bytes,
            max_video_frames=settings.max_video_frames,
            max_pixels=settings.max_pixels,
            num_frames=settings.num_frames,
            download_timeout=settings.download_timeout,
            max_concurrent_decodes=settings.max_concurrent_decodes,
        )


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


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address may not be fetched (None: it is a public unicast address)."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return address_problem(mapped)
        if ip.teredo is not None:
            return "a Teredo tunnel address"
        if ip in _NAT64:
            return "a NAT64 address"
        if ip.is_site_local:  # fec0::/10, deprecated, yet ipaddress calls it global
            return "a site-local address"
    checks = (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private-network address"),
        ("is_reserved", "a reserved address"),
    )
    for attr, why in checks:
        if getattr(ip, attr):
            return why
    if not ip.is_global:
        return "a non-public address"
    return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_inside(path: Path, directory: Path) -> bool:
    try:
        path.relative_to(directory)
    except ValueError:
        return False
    return True


def file_url(path: Path) -> str:
    return "file://" + pathname2url(str(path))


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


class MediaProcessor:
    """Checks and rewrites media URLs for the backend (async; decoding runs in threads)."""

    def __init__(self, policy: MediaPolicy, *,
                 vllm_version: Callable[[], str | None] | None = None) -> None:
        self.policy = policy
        self._vllm_version = vllm_version  # the backends' vLLM (BackendPool.vllm_version)
        self._media_dir = policy.media_dir.resolve() if policy.media_dir else None
        self._backend_dir = (policy.backend_media_dir.resolve()
                             if policy.backend_media_dir else None)
        self._limiter = anyio.CapacityLimiter(policy.max_concurrent_decodes)
        self._client = httpx.AsyncClient(
            follow_redirects=False, trust_env=False,
            timeout=httpx.Timeout(policy.download_timeout),
            headers={"user-agent": "earlytom-server"},
        )

    @property
    def rules(self) -> EngineRules:
        """The media rules of the backends' vLLM release (server/vllm_rules.py)."""
        return rules_for(self._vllm_version() if self._vllm_version else None)

    async def aclose(self) -> None:
        await self._client.aclose()

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

    # -- file:// --------------------------------------------------------------------------------
    def local_path(self, url: str, *, param: str | None, limit: int, what: str) -> Path:
        if self._media_dir is None:
            raise MediaError("file:// URLs are disabled (no media directory configured)",
                             param=param, code="url_not_allowed", status=403)
        try:
            parts = urlsplit(url)
            raw = unquote(parts.path, errors="strict")
        except ValueError as exc:  # "Invalid IPv6 URL", invalid UTF-8 in a %-escape
            raise MediaError(f"malformed file:// URL ({exc})", param=param) from None
        if parts.netloc not in ("", "localhost"):
            raise MediaError("file:// URLs must not name a host", param=param,
                             code="url_not_allowed")
        if not raw.startswith("/"):
            raise MediaError("file:// URLs need an absolute path", param=param)
        if "\x00" in raw:
            raise MediaError("the file:// path contains a NUL byte", param=param)
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            raise MediaError("the file:// path is not valid Unicode", param=param) from None
        try:
            path = Path(raw).resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            if not is_inside(Path(os.path.abspath(raw)), self._media_dir):
                raise MediaError("file:// URLs must point inside the media directory",
                                 param=param, code="url_not_allowed", status=403) from None
            raise MediaError(f"no such {what} file in the media directory", param=param,
                             code="file_not_found", status=404) from None
        except (OSError, RuntimeError, ValueError) as exc:  # loops, permissions, name too long
            raise MediaError(f"cannot open the {what} file: {exc.__class__.__name__}",
                             param=param) from None
        if not is_inside(path, self._media_dir):
            raise MediaError("file:// URLs must point inside the media directory",
                             param=param, code="url_not_allowed", status=403)
        try:
            regular = path.is_file()
            size = path.stat().st_size if regular else 0
        except OSError as exc:
            raise MediaError(f"cannot open the {what} file: {exc.__class__.__name__}",
                             param=param) from None
        if not regular:
            raise MediaError(f"the {what} path is not a regular file", param=param)
        if size > limit:
            raise MediaError(f"{what} is larger than the limit of {limit} bytes", param=param,
                             code="media_too_large")
        return path

    # -- http(s):// -----------------------------------------------------------------------------
    async def check_host(self, host: str, port: int, *, param: str | None) -> list[str]:
        """Resolve ``host`` and return its addresses; refuse if any is not public."""
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            addrs = [str(literal)]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                    timeout=self.policy.download_timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                raise MediaError(f"cannot resolve host {host[:100]!r}: {exc}", param=param,
                                 code="fetch_failed") from None
            except (UnicodeError, ValueError) as exc:  # labels the IDNA codec refuses, NUL
                raise MediaError(f"invalid host name {host[:100]!r} ({exc.__class__.__name__})",
                                 param=param) from None
            addrs = list(dict.fromkeys(info[4][0] for info in infos))
            if not addrs:
                raise MediaError(f"host {host!r} has no address", param=param,
                                 code="fetch_failed")
        if not self.policy.allow_private_urls:
            for addr in addrs:
                problem = address_problem(ipaddress.ip_address(addr.split("%", 1)[0]))
                if problem:
                    raise MediaError(
                        f"URL host {host!r} resolves to {addr}, {problem}; such URLs are not "
                        "fetched", param=param, code="url_not_allowed", status=403)
        return addrs

    async def fetch(self, url: str, *, limit: int, param: str | None, what: str
                    ) -> tuple[bytes, str | None]:
        try:
            return await asyncio.wait_for(self._fetch(url, limit=limit, param=param, what=what),
                                          timeout=self.policy.download_timeout)
        except asyncio.TimeoutError:
            raise MediaError(
                f"downloading the {what} took longer than {self.policy.download_timeout:g} s",
                param=param, code="fetch_timeout") from None

    async def _fetch(self, url: str, *, limit: int, param: str | None, what: str
                     ) -> tuple[bytes, str | None]:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                target = httpx.URL(url)
                has_host = bool(target.host)  # decodes punycode: UnicodeError on "xn--0"
            except (httpx.InvalidURL, ValueError) as exc:  # UnicodeError is a ValueError
                raise MediaError(f"invalid URL: {exc}", param=param) from None
            if target.scheme not in ("http", "https") or not has_host:
                raise MediaError("only http(s) URLs with a host can be fetched", param=param,
                                 code="unsupported_url")
            port = target.port or (443 if target.scheme == "https" else 80)
            if not 0 < port < 65536:  # httpx accepts any number; connect() overflows
                raise MediaError(f"invalid port {port} in the URL", param=param)
            try:  # the IDNA-encoded (ASCII) name: what DNS is asked, no second IDNA pass
                ascii_host = target.raw_host.decode("ascii")
            except UnicodeDecodeError:
                raise MediaError("invalid host name in the URL", param=param) from None
            addrs = await self.check_host(ascii_host, port, param=param)
            # Connect to the address just checked (no second DNS lookup), keep Host/SNI.
            pinned = target.copy_with(host=addrs[0])
            host_header = target.netloc.decode("ascii").rsplit("@", 1)[-1]
            request = self._client.build_request(
                "GET", pinned, headers={"host": host_header},
                extensions={"sni_hostname": ascii_host},
            )
            try:
                response = await self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise MediaError(f"could not fetch the {what}: {exc.__class__.__name__}",
                                 param=param, code="fetch_failed") from None
            try:
                if response.is_redirect and "location" in response.headers:
                    try:
                        url = urljoin(str(target), response.headers["location"])
                    except ValueError:
                        raise MediaError(f"the {what} URL redirects to an invalid URL",
                                         param=param, code="fetch_failed") from None
                    continue
                if response.status_code != 200:
                    raise MediaError(f"fetching the {what} returned HTTP {response.status_code}",
                                     param=param, code="fetch_failed")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise MediaError(f"{what} is larger than the limit of {limit} bytes",
                                     param=param, code="media_too_large")
                chunks = []
                size = 0
                try:
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > limit:
                            raise MediaError(f"{what} is larger than the limit of {limit} bytes",
                                             param=param, code="media_too_large")
                        chunks.append(chunk)
                except httpx.HTTPError as exc:
                    raise MediaError(f"could not fetch the {what}: {exc.__class__.__name__}",
                                     param=param, code="fetch_failed") from None
                ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
                return b"".join(chunks), ctype or None
            finally:
                await response.aclose()
        raise MediaError(f"too many redirects (more than {MAX_REDIRECTS})", param=param,
                         code="fetch_failed")
