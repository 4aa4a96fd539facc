"""``earlytom-serve`` as a subprocess of a client benchmark: start, wait, stop, the flags such a
benchmark takes, and what the server reports about its backends."""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import families
from benchmarks.harness.arms import VLLM_ARMS, VLLM_METHOD, Arm
from earlytom_vllm.families import Family


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_executable() -> str:
    beside = Path(sys.executable).with_name("earlytom-serve")
    if beside.exists():
        return str(beside)
    found = shutil.which("earlytom-serve")
    if found:
        return found
    raise FileNotFoundError("earlytom-serve is not installed in this environment")


@dataclass
class Server:
    """An ``earlytom-serve``: spawned here (``proc`` set, its own process group) or given by URL."""

    url: str
    proc: subprocess.Popen | None = None
    log: Path | None = None
    command: list[str] = field(default_factory=list)

    def tail(self, n: int = 60) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout: float = 60.0) -> None:
        """SIGINT (earlytom-serve stops its vLLM backend), then SIGKILL to the whole group."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def launch_serve(serve_args: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None,
                 env_defaults: Mapping[str, str] | None = None) -> Server:
    """Start ``earlytom-serve --port <free> <serve_args>`` in a new session, logging to ``log``
    (not waited for: see :func:`wait_ready`); ``env`` overrides this process's environment,
    ``env_defaults`` fills what it lacks."""
    port = free_port()
    cmd = [serve_executable(), "--port", str(port), *serve_args]
    full_env = dict(os.environ)
    full_env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    full_env.setdefault("TOKENIZERS_PARALLELISM", "false")
    for key, value in (env_defaults or {}).items():
        full_env.setdefault(key, value)
    full_env.update(env or {})
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env,
                                start_new_session=True)
    return Server(url=f"http://127.0.0.1:{port}", proc=proc, log=log, command=cmd)


#: ``--api-key``'s default for a client benchmark, read once at import: ``OPENAI_API_KEY``.
DEFAULT_API_KEY = os.environ.get("OPENAI_API_KEY", "none")


def add_endpoint_args(p: Any, checkpoint_help: str) -> None:
    """The flags of a benchmark that talks to an ``earlytom-serve``, spawned here or given by
    ``--url``: --url, --api-key, --model, --checkpoint (``checkpoint_help``), --serve-arg,
    --timeout, --startup-timeout (``p``: an ``argparse.ArgumentParser``)."""
    p.add_argument("--url", help="a running earlytom-serve (default: start one here)")
    p.add_argument("--api-key", default=DEFAULT_API_KEY,
                   help="bearer key for --url [OPENAI_API_KEY]")
    p.add_argument("--model", help="served model name (default: the server's first model)")
    p.add_argument("--checkpoint", help=checkpoint_help)
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                   help="extra earlytom-serve argument (repeatable; shell-split)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per request")
    p.add_argument("--startup-timeout", type=float, default=900.0,
                   help="seconds the spawned server may take to become ready")


def _get(url: str, api_key: str, timeout: float = 30.0):
    import httpx

    return httpx.get(url, timeout=timeout, headers={"authorization": f"Bearer {api_key}"})


def wait_ready(server: Server, timeout: float, api_key: str) -> None:
    """Until ``/health`` answers 200; raises with the log's tail if the server exits or times out."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError(f"earlytom-serve exited ({server.proc.returncode}):\n"
                               f"{server.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if _get(f"{server.url}/health", api_key, timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"earlytom-serve not ready after {timeout:.0f} s:\n{server.tail()}")


def served_model(url: str, api_key: str) -> str:
    """The first served model name."""
    r = _get(f"{url}/v1/models", api_key)
    r.raise_for_status()
    return str(r.json()["data"][0]["id"])


def backend_urls(url: str, api_key: str) -> list[str]:
    """The vLLM backends behind an earlytom-serve (``/health`` lists them for callers with the
    key): where the engine's own ``/metrics`` are."""
    return [str(b["url"]).rstrip("/") for b in _get(f"{url}/health", api_key).json()["backends"]]




def launch_family_server(fam: Family, *, checkpoint: str, media_dir: Path, frames: int,
                         per_frame: int, max_tokens: int, log: Path, extra: Sequence[str] = (),
                         serve_arg: Sequence[str] = ()) -> Server:
    """A client benchmark's ``earlytom-serve`` for ``fam``: room for a full-token prompt (its
    rows, 256 text tokens, the output) and the family's KV cache."""
    max_len = families.expected_rows(fam, "none", None, frames, per_frame) + 256 + max_tokens
    return launch_bench_server(checkpoint=checkpoint, media_dir=media_dir, frames=frames,
                               max_model_len=max_len, log=log,
                               kv_cache_gib=fam.benchmark.kv_cache_gib, extra=extra,
                               serve_arg=serve_arg)


def chat_template_args(fam: Family, checkpoint: str, workdir: Path) -> list[str]:
    """earlytom-serve arguments that give every server of a chat benchmark the family's
    rewritten video layout (``benchmark.chat_video_rewrite``; none when it has none): the
    checkpoint's own chat template with the video written the other way, as a file."""
    rewrite = fam.benchmark.chat_video_rewrite
    if rewrite is None:
        return []
    from transformers import AutoTokenizer

    template = AutoTokenizer.from_pretrained(checkpoint).chat_template
    if not isinstance(template, str) or rewrite[0] not in template:
        raise ValueError(f"{checkpoint}'s chat template does not write {rewrite[0]!r}")
    path = workdir / "chat_template.jinja"
    path.write_text(template.replace(rewrite[0], rewrite[1]))
    return [f"--backend-arg=--chat-template={path}"]


def launch_bench_server(*, checkpoint: str, media_dir: Path, frames: int, max_model_len: int,
                        log: Path, kv_cache_gib: int, extra: Sequence[str] = (),
                        serve_arg: Sequence[str] = ()) -> Server:
    """A client benchmark's ``earlytom-serve`` on ``checkpoint``: videos from ``media_dir``,
    ``frames`` per video, served as ``earlytom-bench``; ``extra`` and the shell-split
    ``serve_arg`` (``--serve-arg``) append to its arguments. ``kv_cache_gib``:
    ``VLLM_CPU_KVCACHE_SPACE`` unless the environment sets it."""
    serve_args = ["--media-dir", str(media_dir), "--num-frames", str(frames),
                  "--max-model-len", str(max_model_len), "--health-interval", "0.5",
                  "--log-level", "warning", "--model", checkpoint,
                  "--served-model-name", "earlytom-bench", *extra]
    for chunk in serve_arg:
        serve_args += shlex.split(chunk)
    return launch_serve(serve_args, log,
                        env_defaults={"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib)})


def vllm_arm_servers(fam: Family, arms: Sequence[Arm], frames: int, per_frame: int
                     ) -> dict[str, dict[str, Any]]:
    """Server key -> what the server of each vLLM arm runs: the family's vLLM architecture
    (``--no-earlytom-arch``) with the arm's ``--video-pruning-method`` at the
    ``--video-pruning-rate`` whose count is EarlyTom's at the arm's ratio."""
    out = {}
    for arm in arms:
        if arm.method in VLLM_ARMS and arm.server not in out:
            method = VLLM_METHOD[arm.method]
            q = families.vllm_pruning_rate(fam, frames, per_frame, arm.ratio, method)
            out[arm.server] = {
                "ratio": arm.ratio, "video_pruning_method": method, "video_pruning_rate": q,
                "arch": fam.base_architecture,
                "evs_tokens": families.vllm_pruning_rows(fam, frames, per_frame, arm.ratio,
                                                         method),
                "earlytom_tokens": families.expected_rows(fam, "earlytom", arm.ratio, frames,
                                                          per_frame),
                "serve_args": ["--no-earlytom-arch",
                               f"--backend-arg=--video-pruning-method={method}",
                               f"--backend-arg=--video-pruning-rate={q}"]}
    return out


def batching_budget(vllm_servers: Mapping[str, Mapping[str, Any]], in_flight: int,
                    max_tokens: int) -> int | None:
    """The ``--max-num-batched-tokens`` every server gets when a vLLM arm is measured: enough
    for ``in_flight`` compressed prompts in ONE step, so that no compressed prefill is split
    into chunks.

    vLLM 0.32's EVS crashes its engine (``IndexError`` in ``video_prune/evs.py``
    ``recompute_mrope_positions``) when a prefill chunk starts on a video's first token, which
    chunked prefill does under load (seen here at concurrency 8 with vLLM's default budget; vLLM
    issue #48833, open). EarlyTom's positions are placed one medium at a time from that medium's
    ``vision_start`` (``earlytom_vllm.vllm.qwen2_5_vl.place_media``) and do not hit it. None
    (vLLM's default) when no vLLM arm runs."""
    if not vllm_servers:
        return None
    rows = max(spec["evs_tokens"] for spec in vllm_servers.values())
    return max(4096, 1024 * math.ceil(in_flight * (rows + 256 + max_tokens) / 1024))
