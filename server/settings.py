"""Every knob of the front end, read from ``EARLYTOM_*`` environment variables (or the CLI).

This class is the one list of settings: ``earlytom-serve``'s flags are generated from its fields
(``server/cli.py``), field ``x`` is flag ``--x`` (dashes for underscores) and environment variable
``EARLYTOM_X``, and each field's docstring is its ``--help`` text.

Lists (``EARLYTOM_BACKENDS``, ``EARLYTOM_BACKEND_ARGS``) take JSON (``'["http://a:8000"]'``) or a
comma-separated string; ``EARLYTOM_COMPRESSION`` takes a JSON object of ``EarlyTomConfig`` fields.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from earlytom_vllm import EarlyTomConfig

MiB = 1024 * 1024

#: Served model name of the embedded tiny checkpoint.
TINY_MODEL_NAME = "earlytom-tiny-llava-onevision"

#: Where the front end keeps its own files (the example video, the default media dir).
DEFAULT_HOME = Path.home() / ".cache" / "earlytom-vllm"


def _split_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Front-end settings. Field ``x`` is environment variable ``EARLYTOM_X`` and flag ``--x``."""

    model_config = SettingsConfigDict(env_prefix="EARLYTOM_", extra="ignore",
                                      validate_default=True, use_attribute_docstrings=True)

    # -- listening -------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = Field(8000, ge=0, le=65535)
    """Port to listen on (0: any free one)."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """Log level of the front end (every line about a request carries its request id)."""

    # -- auth ------------------------------------------------------------------------------------
    api_key: SecretStr | None = None
    """Bearer key required on /v1/* when set ('Authorization: Bearer KEY')."""
    protect_health_metrics: bool = False
    """Also require the key on /health and /metrics."""

    # -- limits of a public endpoint -------------------------------------------------------------
    max_in_flight: int = Field(64, ge=1)
    """Chat requests served at once, all backends together; more wait in the queue."""
    max_queued: int = Field(128, ge=0)
    """Chat requests that may wait for a slot; beyond it: HTTP 429 with Retry-After."""
    queue_timeout: float = Field(30.0, gt=0)
    """Seconds a request may wait in the queue before it gets HTTP 429."""
    retry_after: int = Field(2, ge=1)
    """Seconds a refused client is told to wait (Retry-After of 429 and of 503 while draining)."""
    max_buffered_bytes: int | None = Field(None, ge=1)
    """Request-body bytes held by the requests in flight together (a request waits for room
    before its body is read; one larger than this runs alone). Unset: 1 GiB, or one largest
    request if that is larger."""
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    """Largest request line plus headers, in bytes (more: HTTP 431)."""
    max_header_count: int = Field(100, ge=8)
    """Most request headers (more: HTTP 431)."""
    header_timeout: float = Field(10.0, gt=0)
    """Seconds a client may take to send a request's line and headers (then the connection is
    closed)."""
    keep_alive_timeout: int = Field(5, ge=1)
    """Seconds an idle keep-alive connection stays open."""
    body_timeout: float = Field(60.0, gt=0)
    """Seconds a client may take to upload a request body (slower: HTTP 408)."""
    max_request_seconds: float = Field(1800.0, gt=0)
    """Cap on one chat request from its first byte to its last, upload and generation included
    (non-streaming: HTTP 504; streaming: an error event ends the stream)."""
    drain_grace: float = Field(30.0, ge=0)
    """On SIGTERM: seconds in-flight requests and streams get to finish while new ones get 503;
    then the backend is stopped and the process exits 0."""
    expose_openapi: bool = True
    """Serve the OpenAPI schema at /openapi.json and its pages at /docs and /redoc, as vLLM does
    (no CDN: the pages' assets are served locally). --no-expose-openapi: none of them."""

    # -- backends --------------------------------------------------------------------------------
    backends: Annotated[list[str], NoDecode] = Field(
        default_factory=list, json_schema_extra={"flag": "--backend"})
    """vLLM server URLs to proxy to (repeatable flag; env: JSON list or comma-separated). None:
    start one vLLM server as a supervised child."""
    backend_max_in_flight: int | None = Field(None, ge=1)
    """Requests one backend may serve before requests about a video it holds go to the least
    loaded backend instead (media affinity gives way). Unset: max_in_flight divided by the ready
    backends, rounded up."""
    backend_api_key: SecretStr | None = None
    """Bearer key sent to the backends (a random one is generated for a spawned backend)."""
    health_interval: float = Field(2.0, gt=0)
    """Seconds between two health checks of each backend."""
    backend_health_timeout: float = Field(5.0, gt=0)
    """Seconds a backend's /health and /v1/models may take before it counts as down."""
    request_timeout: float = Field(600.0, gt=0)
    """Upper bound on one upstream request (seconds; streaming: between two chunks)."""

    # -- the spawned backend ---------------------------------------------------------------------
    model: str | None = None
    """Checkpoint path or name for the spawned backend; unset: the tiny local checkpoint."""
    served_model_name: str | None = None
    """Model name clients use (default: the checkpoint's directory name or hub name)."""
    backend_host: str = "127.0.0.1"
    """Address the spawned backend listens on (keep it private)."""
    backend_port: int = Field(0, ge=0, le=65535)
    """Private port of the spawned backend (0: a free one)."""
    max_model_len: int | None = Field(None, ge=1)
    """vLLM --max-model-len (unset: the checkpoint's)."""
    max_images_per_prompt: int = Field(1, ge=0)
    """Images per prompt the backend accepts."""
    kv_cache_space_gib: int = Field(1, ge=1, json_schema_extra={"aliases": ["--kv-cache-space"]})
    """VLLM_CPU_KVCACHE_SPACE for a CPU backend (ignored if already set in the environment)."""
    omp_threads_bind: str = "nobind"
    """VLLM_CPU_OMP_THREADS_BIND for a CPU backend (ignored if already set in the environment)."""
    enforce_eager: bool = True
    """vLLM --enforce-eager (--no-enforce-eager lets vLLM compile: slower start)."""
    dtype: str = "auto"
    """vLLM --dtype. "auto" means float32 on a machine without CUDA (vLLM's CPU platform would
    pick bfloat16, which is much slower on CPUs without AMX and changes the tiny model's outputs),
    and the checkpoint's own dtype on a GPU."""
    earlytom_arch: bool = True
    """Select the EarlyTom architecture with --hf-overrides (--no-earlytom-arch: the stock model,
    debugging only)."""
    backend_args: Annotated[list[str], NoDecode] = Field(
        default_factory=list, json_schema_extra={"flag": "--backend-arg"})
    """Extra arguments appended to the vLLM command line (repeatable flag, each shell-split)."""
    startup_timeout: float = Field(900.0, gt=0)
    """Seconds the spawned backend may take to become ready."""
    stop_timeout: float = Field(15.0, gt=0)
    """Seconds between SIGTERM and SIGKILL when stopping the backend's process group."""
    restart_backoff_max: float = Field(30.0, gt=0)
    """Longest wait between two restarts of a backend that exited."""
    backend_log: bool = Field(True, json_schema_extra={"aliases": ["--quiet-backend"]})
    """Relay the backend's log lines (prefixed ``[vllm]``) to stderr (--quiet-backend: don't)."""

    # -- compression defaults ----------------------------------------------------------------------
    compression: dict[str, Any] = Field(default_factory=dict)
    """Server-wide EarlyTomConfig fields as a JSON object (sent to a spawned backend in
    --hf-overrides; with --backend they must match what the backends run, they drive the metrics'
    method label). Shortcuts: --retain-ratio, --method, --no-compression."""

    # -- media -----------------------------------------------------------------------------------
    num_frames: int = Field(32, ge=1)
    """Frames the backend samples per video (--media-io-kwargs); also the frames-as-video cap."""
    media_dir: Path | None = None
    """file:// URLs are accepted only inside this directory (unset: a private cache directory)."""
    backend_media_dir: Path | None = None
    """A directory the backends read as --allowed-local-media-path: media inside it is forwarded
    as file://. Unset: the media dir for a spawned backend, nothing with --backend."""
    allow_private_urls: bool = False
    """Allow http(s) media URLs that resolve to loopback/private/link-local/... addresses."""
    max_video_bytes: int = Field(100 * MiB, ge=1)
    """Largest video, in bytes."""
    max_image_bytes: int = Field(20 * MiB, ge=1)
    """Largest image (or frame of a frame list), in bytes."""
    max_video_frames: int = Field(10_000, ge=1)
    """Largest frame count of a video (or frames-as-video list) accepted."""
    max_pixels: int = Field(4096 * 4096, ge=1)
    """Largest image or video frame, in pixels (width x height), checked before decoding."""
    max_request_bytes: int | None = Field(None, ge=1)
    """Largest request body (default: enough for a base64 video and images at the limits)."""
    download_timeout: float = Field(30.0, gt=0)
    """Seconds to download one http(s) media URL."""
    max_concurrent_decodes: int = Field(2, ge=1)
    """Videos and images checked (decoded) at once."""
    frames_as_video: bool = False
    """Treat a request's ``image_url`` parts as the frames of ONE video, in order (what clients
    such as lmms-eval's ``openai_compatible`` model send for a video). A request's
    ``"earlytom": {"frames_as_video": ...}`` overrides it either way."""

    # -- validators ------------------------------------------------------------------------------
    @field_validator("backends", "backend_args", mode="before")
    @classmethod
    def _lists(cls, value: Any, info: Any) -> Any:
        if info.field_name == "backend_args" and isinstance(value, str) and \
                not value.strip().startswith("["):
            return shlex.split(value)
        return _split_list(value)

    @field_validator("backends")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        out = []
        for url in value:
            url = url.strip().rstrip("/")
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"backend URL must start with http:// or https://, got {url!r}")
            out.append(url)
        return out

    @field_validator("compression", mode="before")
    @classmethod
    def _compression(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        if value is None:
            return {}
        EarlyTomConfig.from_dict(value)  # raises ValueError naming the field
        return value

    @model_validator(mode="after")
    def _derived(self) -> Settings:
        if self.media_dir is not None:
            self.media_dir = self.media_dir.expanduser()
        if self.backend_media_dir is not None:
            self.backend_media_dir = self.backend_media_dir.expanduser()
        return self

    # -- derived -----------------------------------------------------------------------------------
    @property
    def spawns_backend(self) -> bool:
        return not self.backends

    @property
    def earlytom_config(self) -> EarlyTomConfig:
        return EarlyTomConfig.from_dict(self.compression)

    @property
    def request_body_limit(self) -> int:
        if self.max_request_bytes is not None:
            return self.max_request_bytes
        media = self.max_video_bytes + max(1, self.max_images_per_prompt) * self.max_image_bytes
        return media * 4 // 3 + 4 * MiB

    @property
    def buffered_bytes_limit(self) -> int:
        # A body larger than the budget still runs, alone (see admission.py).
        if self.max_buffered_bytes is not None:
            return self.max_buffered_bytes
        return max(1024 * MiB, self.request_body_limit)

    def resolved_media_dir(self) -> Path:
        return (self.media_dir or DEFAULT_HOME / "media").expanduser()
