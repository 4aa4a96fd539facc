"""Where media bytes come from, checked before anything is read: ``http(s)://`` URLs and
``file://`` paths (data URLs are parsed in ``media.py``).

- ``http(s)://``: the host is resolved and EVERY address must be public (no loopback, private,
  link-local, multicast, reserved, unspecified, CGNAT or other non-global address:
  :func:`address_problem`) unless ``allow_private_urls`` is set; the connection goes to the checked
  address (no DNS rebinding between check and connect), redirects are followed by hand and
  re-checked, the body is streamed with a byte cap and an overall timeout.
- ``file://`` paths that resolve (symlinks followed) inside the media directory.

Every refusal is a :class:`MediaError` (a 4xx), never an exception of another class: NUL bytes and
invalid UTF-8 in paths, host names the IDNA codec refuses, malformed IPv6 literals, bad ports.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urljoin, urlsplit
from urllib.request import pathname2url

import httpx

if TYPE_CHECKING:
    from earlytom_server.settings import Settings

MAX_REDIRECTS = 3


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


class MediaSources:
    """Reads media from ``file://`` paths and ``http(s)://`` URLs under ``policy`` (async)."""

    def __init__(self, policy: MediaPolicy) -> None:
        self.policy = policy
        self._media_dir = policy.media_dir.resolve() if policy.media_dir else None
        self._backend_dir = (policy.backend_media_dir.resolve()
                             if policy.backend_media_dir else None)
        self._client = httpx.AsyncClient(
            follow_redirects=False, trust_env=False,
            timeout=httpx.Timeout(policy.download_timeout),
            headers={"user-agent": "earlytom-server"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

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
