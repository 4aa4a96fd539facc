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

Every video is opened with OpenCV and the frames the backend will sample are decoded (vLLM's own
rule: ``min(num_frames, frame count)`` frames, uniformly spaced), so a truncated or corrupt file is
a 400 here rather than an error deep in the engine; the count of decodable sampled frames is the
``T`` used for token accounting.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import os
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urljoin, urlsplit
from urllib.request import pathname2url

import anyio
import httpx

if TYPE_CHECKING:
    import numpy as np

    from earlytom_server.settings import Settings

MAX_REDIRECTS = 3
_JPEG_QUALITY = 95


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
            num_frames=settings.num_frames,
            download_timeout=settings.download_timeout,
            max_concurrent_decodes=settings.max_concurrent_decodes,
        )


@dataclass(frozen=True)
class PreparedVideo:
    """A checked video: the URL to forward and the frames the backend will sample."""

    url: str
    frames: int


# --------------------------------------------------------------------------------------------------
# Pure helpers


def sample_indices(total: int, num_frames: int) -> list[int]:
    """Frame indices vLLM's default (OpenCV) loader samples: all frames if ``total <= num_frames``,
    else ``num_frames`` uniformly spaced (``np.linspace(0, total - 1, n, dtype=int)``)."""
    if total <= 0:
        return []
    n = total if num_frames <= 0 else min(num_frames, total)
    n = max(1, n)
    if n == total:
        return list(range(total))
    # Same values as numpy.linspace(0, total - 1, n, dtype=int): truncated i * step, and the
    # last sample exactly at the end.
    if n == 1:
        return [0]
    step = (total - 1) / (n - 1)
    return [int(i * step) for i in range(n - 1)] + [total - 1]


def parse_data_url(url: str, *, param: str | None) -> tuple[str, str]:
    """``data:<mime>[;...];base64,<payload>`` -> (lower-cased mime, payload)."""
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise MediaError("malformed data URL: no ',' after the media type", param=param)
    fields = [f.strip() for f in header.split(";")]
    mime = fields[0].lower()
    if "base64" not in (f.lower() for f in fields[1:]):
        raise MediaError("data URLs must be base64-encoded (data:<type>;base64,...)", param=param)
    if "/" not in mime:
        raise MediaError(f"data URL has no valid media type: {mime or '(empty)'}", param=param)
    return mime, payload


def decode_base64(payload: str, *, param: str | None, limit: int, what: str) -> bytes:
    if len(payload) // 4 * 3 > limit + 3:
        raise MediaError(f"{what} is larger than the limit of {limit} bytes", param=param,
                         code="media_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(f"invalid base64 in the {what} data URL: {exc}", param=param,
                         code="invalid_base64") from None
    if not data:
        raise MediaError(f"the {what} data URL is empty", param=param)
    if len(data) > limit:
        raise MediaError(f"{what} is larger than the limit of {limit} bytes", param=param,
                         code="media_too_large")
    return data


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address may not be fetched (None: it is a public unicast address)."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return address_problem(mapped)
        if ip.teredo is not None:
            return "a Teredo tunnel address"
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


def inspect_video_file(path: str | os.PathLike[str], *, num_frames: int, max_frames: int,
                       param: str | None = None) -> int:
    """Open a video with OpenCV, decode the frames vLLM would sample, return how many it gets.

    Raises :class:`MediaError` when the file is not a video, is truncated or corrupt, or has more
    than ``max_frames`` frames.
    """
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise MediaError("the video could not be opened: not a video, or truncated/corrupt",
                             param=param, code="invalid_video")
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width <= 0 or height <= 0:
            raise MediaError("the video has no picture (zero frame size)", param=param,
                             code="invalid_video")
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if total > max_frames:
            raise MediaError(f"the video has {total} frames; the limit is {max_frames}",
                             param=param, code="too_many_frames")
        if total <= 0:  # container without a frame count: count by decoding, bounded
            total = 0
            while cap.grab():
                total += 1
                if total > max_frames:
                    raise MediaError(f"the video has more than {max_frames} frames, the limit",
                                     param=param, code="too_many_frames")
            if total == 0:
                raise MediaError("the video has no decodable frames (truncated or corrupt)",
                                 param=param, code="invalid_video")
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        targets = sample_indices(total, num_frames)
        wanted = set(targets)
        decoded = 0
        failed: list[int] = []
        for idx in range(targets[-1] + 1):
            if not cap.grab():
                failed.extend(t for t in targets if t >= idx)
                break
            if idx in wanted:
                ok, frame = cap.retrieve()
                if ok and frame is not None and frame.size > 0:
                    decoded += 1
                else:
                    failed.append(idx)
        # Headers sometimes over-count by one frame (vLLM tolerates that too): only a missing
        # last frame is forgiven.
        if decoded == 0 or (failed and failed != [total - 1]) or len(failed) > 1:
            raise MediaError(
                f"the video is truncated or corrupt: {len(failed)} of {len(targets)} sampled "
                "frames do not decode", param=param, code="invalid_video")
        true_total = total - len(failed)
        return min(num_frames, true_total) if num_frames > 0 else true_total
    finally:
        cap.release()


def inspect_video_bytes(data: bytes, *, num_frames: int, max_frames: int,
                        param: str | None = None) -> int:
    fd, name = tempfile.mkstemp(prefix="earlytom-video-", suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return inspect_video_file(name, num_frames=num_frames, max_frames=max_frames, param=param)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def decode_image(data: bytes, *, param: str | None = None) -> np.ndarray:
    import cv2
    import numpy as np

    arr = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(arr, cv2.IMREAD_COLOR) if arr.size else None
    if img is None or img.size == 0:
        raise MediaError("not a decodable image (JPEG, PNG, WebP, BMP or TIFF expected)",
                         param=param, code="invalid_image")
    return img


def frames_to_jpeg_video(frames: Sequence[np.ndarray]) -> str:
    """Frames (BGR arrays) -> ``data:video/jpeg;base64,<f1>,<f2>,...`` (all resized to the first
    frame's size, which vLLM needs to stack them)."""
    import cv2

    height, width = frames[0].shape[:2]
    parts = []
    for frame in frames:
        if frame.shape[:2] != (height, width):
            frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:  # pragma: no cover - OpenCV encodes any valid BGR array
            raise MediaError("could not re-encode a frame as JPEG")
        parts.append(base64.b64encode(buf.tobytes()).decode("ascii"))
    return "data:video/jpeg;base64," + ",".join(parts)


# --------------------------------------------------------------------------------------------------
# The processor


class MediaProcessor:
    """Checks and rewrites media URLs for the backend (async; decoding runs in threads)."""

    def __init__(self, policy: MediaPolicy) -> None:
        self.policy = policy
        self._media_dir = policy.media_dir.resolve() if policy.media_dir else None
        self._backend_dir = (policy.backend_media_dir.resolve()
                             if policy.backend_media_dir else None)
        self._limiter = anyio.CapacityLimiter(policy.max_concurrent_decodes)
        self._client = httpx.AsyncClient(
            follow_redirects=False, trust_env=False,
            timeout=httpx.Timeout(policy.download_timeout),
            headers={"user-agent": "earlytom-server"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(
            lambda: fn(*args, **kwargs), limiter=self._limiter)

    # -- videos ---------------------------------------------------------------------------------
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
            frames = await self._run(inspect_video_bytes, data, num_frames=p.num_frames,
                                     max_frames=p.max_video_frames, param=param)
            return PreparedVideo(url=f"data:{mime};base64,{payload}", frames=frames)
        if scheme in ("http", "https"):
            data, ctype = await self.fetch(url, limit=p.max_video_bytes, param=param, what="video")
            frames = await self._run(inspect_video_bytes, data, num_frames=p.num_frames,
                                     max_frames=p.max_video_frames, param=param)
            mime = ctype if ctype and ctype.startswith("video/") and ctype != "video/jpeg" \
                else "video/mp4"
            return PreparedVideo(url=f"data:{mime};base64,{base64.b64encode(data).decode()}",
                                 frames=frames)
        if scheme == "file":
            path = self.local_path(url, param=param, limit=p.max_video_bytes, what="video")
            frames = await self._run(inspect_video_file, path, num_frames=p.num_frames,
                                     max_frames=p.max_video_frames, param=param)
            if self._backend_dir is not None and is_inside(path, self._backend_dir):
                return PreparedVideo(url=file_url(path), frames=frames)
            data = await anyio.Path(path).read_bytes()
            return PreparedVideo(url=f"data:video/mp4;base64,{base64.b64encode(data).decode()}",
                                 frames=frames)
        raise MediaError("video_url must be a data:, http(s):// or file:// URL", param=param,
                         code="unsupported_url")

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
        def work() -> str:
            arrays = [decode_image(b, param=pr) for b, pr in zip(blobs, params, strict=True)]
            return frames_to_jpeg_video(arrays)

        url = await self._run(work)
        return PreparedVideo(url=url, frames=len(blobs))

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
            return await anyio.Path(path).read_bytes()
        raise MediaError("image_url must be a data:, http(s):// or file:// URL", param=param,
                         code="unsupported_url")

    async def image(self, url: str, *, param: str | None = None) -> str:
        """A checked image, as the URL to forward."""
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "file":
            path = self.local_path(url, param=param, limit=self.policy.max_image_bytes,
                                   what="image")
            data = await anyio.Path(path).read_bytes()
            await self._run(decode_image, data, param=param)
            if self._backend_dir is not None and is_inside(path, self._backend_dir):
                return file_url(path)
            mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
            return f"data:{mime};base64,{base64.b64encode(data).decode()}"
        data = await self.image_bytes(url, param=param)
        await self._run(decode_image, data, param=param)
        if scheme == "data":
            return url
        mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"

    # -- file:// --------------------------------------------------------------------------------
    def local_path(self, url: str, *, param: str | None, limit: int, what: str) -> Path:
        if self._media_dir is None:
            raise MediaError("file:// URLs are disabled (no media directory configured)",
                             param=param, code="url_not_allowed", status=403)
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise MediaError("file:// URLs must not name a host", param=param,
                             code="url_not_allowed")
        raw = unquote(parts.path)
        if not raw.startswith("/"):
            raise MediaError("file:// URLs need an absolute path", param=param)
        try:
            path = Path(raw).resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            if not is_inside(Path(os.path.abspath(raw)), self._media_dir):
                raise MediaError("file:// URLs must point inside the media directory",
                                 param=param, code="url_not_allowed", status=403) from None
            raise MediaError(f"no such {what} file in the media directory", param=param,
                             code="file_not_found", status=404) from None
        except (OSError, RuntimeError) as exc:  # symlink loops, permissions
            raise MediaError(f"cannot open the {what} file: {exc.__class__.__name__}",
                             param=param) from None
        if not is_inside(path, self._media_dir):
            raise MediaError("file:// URLs must point inside the media directory",
                             param=param, code="url_not_allowed", status=403)
        if not path.is_file():
            raise MediaError(f"the {what} path is not a regular file", param=param)
        if path.stat().st_size > limit:
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
                raise MediaError(f"cannot resolve host {host!r}: {exc}", param=param,
                                 code="fetch_failed") from None
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
            except (httpx.InvalidURL, ValueError) as exc:
                raise MediaError(f"invalid URL: {exc}", param=param) from None
            if target.scheme not in ("http", "https") or not target.host:
                raise MediaError("only http(s) URLs with a host can be fetched", param=param,
                                 code="unsupported_url")
            port = target.port or (443 if target.scheme == "https" else 80)
            addrs = await self.check_host(target.host, port, param=param)
            # Connect to the address just checked (no second DNS lookup), keep Host/SNI.
            pinned = target.copy_with(host=addrs[0])
            host_header = target.netloc.decode("ascii").rsplit("@", 1)[-1]
            request = self._client.build_request(
                "GET", pinned, headers={"host": host_header},
                extensions={"sni_hostname": target.host},
            )
            try:
                response = await self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise MediaError(f"could not fetch the {what}: {exc.__class__.__name__}",
                                 param=param, code="fetch_failed") from None
            try:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(str(target), response.headers["location"])
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
