"""The backend pool: health polling, routing, and relaying (JSON and SSE).

A backend is *ready* when ``GET /health`` answers 200 and ``GET /v1/models`` lists its models.
Requests go to the ready backend serving the model with the fewest requests in flight (ties
rotate), except requests about a video: those carry an *affinity key* (the video's content
digest) and go to the ready backend that key ranks first by rendezvous (highest-random-weight)
hashing, so that follow-up questions about a video meet the engine whose multimodal and prefix
caches already hold it. When that backend is at its in-flight limit the request goes to the least
loaded one instead; when it is down the key's next-ranked backend takes it (and only the keys of
a backend that left move: the others keep theirs). A backend that fails a request (connection refused, reset, garbage) is marked down at once
and re-checked at the next poll; a request that could not even connect is retried on another
backend, a request that was already sent is not (it may have run).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import httpx

from earlytom_server.errors import REQUEST_ID, APIError, normalize_error_body
from earlytom_server.metrics import Metrics
from earlytom_server.vllm_rules import release_of

log = logging.getLogger("earlytom_server.proxy")


@dataclass(eq=False)
class Backend:
    url: str
    managed: bool = False
    healthy: bool = False
    in_flight: int = 0
    models: list[dict[str, Any]] = field(default_factory=list)
    last_error: str | None = "not checked yet"
    last_ok: float | None = None
    vllm_version: str | None = None  # its GET /version, read when it becomes ready

    @property
    def model_ids(self) -> list[str]:
        return [str(m.get("id")) for m in self.models if m.get("id") is not None]

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ready": self.healthy,
            "in_flight": self.in_flight,
            "models": self.model_ids,
            "managed": self.managed,
            "last_error": None if self.healthy else self.last_error,
        }


class BackendUnavailable(Exception):
    """The request never reached the backend (safe to retry elsewhere)."""


class BackendFailed(Exception):
    """The backend failed after the request was sent."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class BackendPool:
    def __init__(
        self,
        urls: list[str] | tuple[str, ...] = (),
        *,
        metrics: Metrics,
        health_interval: float = 2.0,
        health_timeout: float = 5.0,
        request_timeout: float = 600.0,
        api_key: str | None = None,
        max_in_flight: int | None = None,
        backend_max_in_flight: int | None = None,
    ) -> None:
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.backend_max_in_flight = backend_max_in_flight
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.request_timeout = request_timeout
        self.api_key = api_key
        self.backends: list[Backend] = []
        for url in urls:
            self.add(url)
        self._rr = 0
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._changed: asyncio.Condition | None = None
        self._client: httpx.AsyncClient | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def add(self, url: str, *, managed: bool = False) -> Backend:
        backend = Backend(url=url.rstrip("/"), managed=managed)
        self.backends.append(backend)
        self.metrics.backend_up.labels(backend=backend.url).set(0)
        return backend

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                trust_env=False,
                timeout=httpx.Timeout(self.request_timeout, connect=min(10.0, self.request_timeout)),
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
            )
        return self._client

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        _ = self.client
        await self.poll_once()
        self._task = asyncio.create_task(self._poll_loop(), name="earlytom-health-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _poll_loop(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.health_interval)
            self._wake.clear()
            try:
                await self.poll_once()
            except Exception:  # pragma: no cover - never let the poller die
                log.exception("health poll failed")

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- health -----------------------------------------------------------------------------------
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def poll_once(self) -> None:
        await asyncio.gather(*(self.check(b) for b in list(self.backends)))

    async def check(self, backend: Backend) -> bool:
        try:
            r = await self.client.get(f"{backend.url}/health", timeout=self.health_timeout)
            if r.status_code != 200:
                raise BackendFailed(f"/health returned HTTP {r.status_code}")
            r = await self.client.get(f"{backend.url}/v1/models", headers=self.headers(),
                                      timeout=self.health_timeout)
            if r.status_code != 200:
                raise BackendFailed(f"/v1/models returned HTTP {r.status_code}")
            data = r.json().get("data")
            if not isinstance(data, list) or not data:
                raise BackendFailed("/v1/models lists no model")
            models = [m for m in data if isinstance(m, dict)]
        except (httpx.HTTPError, BackendFailed, ValueError, AttributeError) as exc:
            self.set_health(backend, False, _describe(exc))
            return False
        backend.models = models
        if not backend.healthy:
            backend.vllm_version = await self._read_version(backend)
        self.set_health(backend, True)
        return True

    async def _read_version(self, backend: Backend) -> str | None:
        """The backend's vLLM version (``GET /version``), or None where it does not say: the
        media rules the front end mirrors depend on it (server/vllm_rules.py)."""
        try:
            r = await self.client.get(f"{backend.url}/version", headers=self.headers(),
                                      timeout=self.health_timeout)
            version = r.json().get("version") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return version if isinstance(version, str) else None

    def vllm_version(self) -> str | None:
        """The vLLM version of the ready backends (the oldest where they differ), None until
        one has told it."""
        known = [b.vllm_version for b in self.backends if b.healthy and b.vllm_version]
        known = [v for v in known if release_of(v) is not None]
        return min(known, key=release_of) if known else None

    def set_health(self, backend: Backend, healthy: bool, error: str | None = None) -> None:
        was = backend.healthy
        backend.healthy = healthy
        if healthy:
            backend.last_error = None
            backend.last_ok = time.monotonic()
        else:
            backend.last_error = error
        self.metrics.backend_up.labels(backend=backend.url).set(1 if healthy else 0)
        if was != healthy:
            if healthy:
                log.info("backend %s is ready (models: %s)", backend.url,
                         ", ".join(backend.model_ids))
            else:
                log.warning("backend %s is down: %s", backend.url, error)
            self._notify()

    def _notify(self) -> None:
        cond = self._changed
        if cond is None:
            return

        async def notify() -> None:
            async with cond:
                cond.notify_all()

        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(notify())

    def report_failure(self, backend: Backend, reason: str) -> None:
        """A request saw the backend fail: mark it down now, re-check soon."""
        self.set_health(backend, False, reason)
        self.wake()

    async def wait_ready(self, timeout: float | None = None) -> bool:
        assert self._changed is not None

        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: self.ready)
        try:
            await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    @property
    def ready(self) -> bool:
        return any(b.healthy for b in self.backends)

    def models(self) -> list[dict[str, Any]]:
        """Models of the ready backends (first seen wins per id)."""
        seen: dict[str, dict[str, Any]] = {}
        for b in self.backends:
            if b.healthy:
                for m in b.models:
                    seen.setdefault(str(m.get("id")), m)
        return list(seen.values())

    # -- routing ----------------------------------------------------------------------------------
    def candidates(self, model: str, exclude: Collection[int] = ()) -> list[Backend]:
        ready = [b for b in self.backends if b.healthy and model in b.model_ids
                 and id(b) not in exclude]
        if not ready:
            return []
        n = len(self.backends)
        start = self._rr % n
        order = {id(b): (i - start) % n for i, b in enumerate(self.backends)}
        return sorted(ready, key=lambda b: (b.in_flight, order[id(b)]))

    def affinity_limit(self, ready: int) -> int | None:
        """In-flight requests at which a backend stops taking affine requests: the setting, else
        its fair share of the front end's ``max_in_flight`` over ``ready`` backends."""
        if self.backend_max_in_flight is not None:
            return self.backend_max_in_flight
        if self.max_in_flight is None:
            return None
        return math.ceil(self.max_in_flight / max(1, ready))

    def pick(self, model: str, exclude: Collection[int] = (), *, key: str | None = None
             ) -> Backend | None:
        """The backend for a request, skipping ``exclude`` (ids of backends already tried).

        Without ``key``: the ready backend serving ``model`` with the fewest requests in flight
        (ties rotate). With ``key``: the ready one ``key`` ranks first by rendezvous hashing,
        unless it is at its in-flight limit (then the least loaded)."""
        ranked = self.candidates(model, exclude)
        if not ranked:
            return None
        self._rr += 1
        if key is None:
            self.metrics.routed.labels("least_loaded").inc()
            return ranked[0]
        affine = max(ranked, key=lambda b: rendezvous_score(key, b.url))
        limit = self.affinity_limit(len(ranked))
        if limit is None or affine.in_flight < limit:
            self.metrics.routed.labels("affinity").inc()
            return affine
        self.metrics.routed.labels("affinity_overflow").inc()
        return ranked[0]

    def pick_any(self) -> Backend | None:
        """The ready backend with the fewest requests in flight, whatever it serves."""
        ready = [b for b in self.backends if b.healthy]
        return min(ready, key=lambda b: b.in_flight) if ready else None

    # -- requests ---------------------------------------------------------------------------------
    async def send(self, backend: Backend, path: str, content: bytes | None, *, stream: bool,
                   request_id: str | None = None, method: str = "POST") -> httpx.Response:
        """POST the JSON ``content`` to the backend (with ``X-Request-Id``: vLLM makes it the
        engine's request id), or ``method`` without a body; the response is open (streamed) if
        ``stream``."""
        headers = {**self.headers(),
                   "accept": "text/event-stream" if stream else "application/json"}
        if content is not None:
            headers["content-type"] = "application/json"
        if request_id:
            headers["x-request-id"] = request_id
        request = self.client.build_request(method, f"{backend.url}{path}", content=content,
                                            headers=headers)
        try:
            response = await self.client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            self.report_failure(backend, _describe(exc))
            raise BackendUnavailable(_describe(exc)) from exc
        except httpx.TimeoutException as exc:
            raise BackendFailed(_describe(exc), timeout=True) from exc
        except httpx.TransportError as exc:
            self.report_failure(backend, _describe(exc))
            raise BackendFailed(_describe(exc)) from exc
        if stream and response.status_code == 200:
            return response
        try:
            await response.aread()
        except httpx.TimeoutException as exc:
            await response.aclose()
            raise BackendFailed(_describe(exc), timeout=True) from exc
        except httpx.TransportError as exc:
            await response.aclose()
            self.report_failure(backend, _describe(exc))
            raise BackendFailed(_describe(exc)) from exc
        return response

    async def send_picked(self, model: str, path: str, content: bytes, *, stream: bool,
                          key: str | None = None) -> tuple[Any, Backend]:
        """Send to the backend :meth:`pick` picks (``key``: the request's media affinity key);
        retry elsewhere if it cannot be reached. A streamed 200 response stays open and keeps
        the backend's in-flight count."""
        tried: set[int] = set()
        last: BackendUnavailable | None = None
        while True:
            backend = self.pick(model, tried, key=key)
            if backend is None:
                if last is not None:
                    raise last
                raise APIError(503, "no backend serving this model is ready",
                               code="backend_unavailable")
            tried.add(id(backend))
            backend.in_flight += 1
            try:
                response = await self.send(backend, path, content, stream=stream,
                                           request_id=REQUEST_ID.get())
            except BackendUnavailable as exc:
                backend.in_flight -= 1
                last = exc
                continue
            except BaseException:
                backend.in_flight -= 1
                raise
            if not stream or response.status_code != 200:
                backend.in_flight -= 1
            return response, backend


def rendezvous_score(key: str, url: str) -> int:
    """The weight of backend ``url`` for ``key`` (rendezvous hashing: the highest wins)."""
    digest = hashlib.blake2b(f"{key}\n{url}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


# --------------------------------------------------------------------------------------------------
# SSE relay


@dataclass
class StreamState:
    """What the relay learned from a stream (read by the metrics)."""

    first_content_at: float | None = None
    usage: dict[str, Any] | None = None
    done: bool = False
    error_status: int | None = None


def _has_content(chunk: dict[str, Any]) -> bool:
    """A chat chunk with content in its delta, or a completion chunk with text."""
    for choice in chunk.get("choices") or ():
        if isinstance(choice, dict) and isinstance(choice.get("text"), str) and choice["text"]:
            return True
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and (
            delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
            or delta.get("tool_calls")
        ):
            return True
    return False


async def relay_sse(
    response: httpx.Response,
    state: StreamState,
    *,
    strip_usage: bool,
    clock: Callable[[], float] = time.perf_counter,
) -> AsyncIterator[bytes]:
    """Re-emit the backend's SSE events, watching for content, usage and errors.

    ``strip_usage``: the client did not ask for usage (the front end always asks the backend for
    it, to count tokens): drop the final usage-only chunk. Raises :class:`BackendFailed` if the
    stream breaks or ends without ``[DONE]``.
    """
    data_lines: list[str] = []

    def flush() -> bytes | None:
        if not data_lines:
            return None
        payload = "\n".join(data_lines)
        data_lines.clear()
        if payload.strip() == "[DONE]":
            state.done = True
            return b"data: [DONE]\n\n"
        try:
            chunk = json.loads(payload)
        except (ValueError, RecursionError):
            return f"data: {payload}\n\n".encode()
        if isinstance(chunk, dict):
            if isinstance(chunk.get("error"), dict):
                code = chunk["error"].get("code")
                status = code if isinstance(code, int) and 400 <= code < 600 else 500
                state.error_status = status
                # the same OpenAI shape as the front end's own errors (and this request's id)
                body = normalize_error_body(status, payload.encode("utf-8", "replace"))
                return b"data: " + json.dumps(body).encode() + b"\n\n"
            if state.first_content_at is None and _has_content(chunk):
                state.first_content_at = clock()
            if isinstance(chunk.get("usage"), dict):
                state.usage = chunk["usage"]
                if strip_usage:
                    if not chunk.get("choices"):
                        return None
                    chunk = {k: v for k, v in chunk.items() if k != "usage"}
                    return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()
        return f"data: {payload}\n\n".encode()

    try:
        async for line in response.aiter_lines():
            if line == "":
                out = flush()
                if out is not None:
                    yield out
                continue
            if line.startswith("data:"):
                value = line[5:]
                data_lines.append(value[1:] if value.startswith(" ") else value)
            elif line.startswith(":"):
                yield f"{line}\n\n".encode()  # comment / keep-alive
            # other SSE fields (event:, id:, retry:) are not used by vLLM; dropped
        out = flush()
        if out is not None:
            yield out
    except httpx.TimeoutException as exc:
        raise BackendFailed(f"backend stopped sending ({_describe(exc)})", timeout=True) from exc
    except httpx.TransportError as exc:
        raise BackendFailed(f"backend connection broke mid-stream ({_describe(exc)})") from exc
    if not state.done and state.error_status is None:
        raise BackendFailed("backend closed the stream before [DONE]")


def backend_error(exc: BackendFailed | BackendUnavailable) -> APIError:
    if isinstance(exc, BackendUnavailable):
        return APIError(503, f"no backend could take the request ({exc})",
                        code="backend_unavailable")
    if exc.timeout:
        return APIError(504, f"the backend timed out ({exc})", code="backend_timeout")
    return APIError(502, f"the backend failed ({exc})", code="backend_error")
